"""OCP MX block quantization (every element format, scale rule, rounding mode and option).

One block is 32 consecutive elements of a row; blocks are independent and run in parallel.
The scale exponent comes from the float64 bits of the block's finite absolute maximum (the
reference's ``np.frexp`` rules written on the significand; FLOOR, ``k = floor(log2 amax) -
emax``, straight from the float32 exponent field), and the elements are rounded with the
divisor's power of two applied as an exact product (``core.encode_sat32``) or to the exponent
(``core.encode_one``), never by a float division. The pre-scale multiplies in float64, exact
under ``mx.check_prescale_exact``. Dequantize: ``fl32(v * 2**(s - 127))``, one float32 product
of exact operands, i.e. the exact value rounded once.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from lowbit.numerics import mx as ref
from lowbit.numerics.api import DEFAULT_PRESCALE
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.specs import ElementFormat
from lowbit.numerics.tensor import QuantizedTensor

from .core import (
    RNE_FLAGS,
    Unsupported,
    bits_f32,
    check_rbits,
    element_table,
    encode_fast,
    encode_one,
    encode_sat32,
    f32_bits_of,
    f64_bits,
    fast_params,
    i32_and,
    i32_max,
    i32_or,
    kernel_input,
    load,
    load32,
    mode_flags,
    pow2,
    rbits_width,
)
from .elementwise import use_fast
from .layout import from_rows, rows_rbits, to_rows

BLOCKS_PER_TASK = 256
SCALE_RULE = {name: i for i, name in enumerate(ref.SCALE_RULES)}
INF_POLICY = {name: i for i, name in enumerate(ref.INF_POLICIES)}
CODE0_DIVISOR = {name: i for i, name in enumerate(ref.CODE0_DIVISORS)}
FLOOR, CEIL, RCEIL, RCEIL_EXACT, EVEN = (
    SCALE_RULE[r] for r in ("floor", "ceil", "rceil", "rceil_exact", "even")
)
INF_NAN, INF_MAX_SCALE, INF_EXP128 = (INF_POLICY[p] for p in ("nan", "max_scale", "exponent_128"))
DIV_EXACT, DIV_F32_MIN, DIV_ONE = (CODE0_DIVISOR[d] for d in ("exact", "f32_min_normal", "one"))
# scale parameters (int64 array)
(S_RULE, S_EMAX, S_EVEN_BITS, S_RCEIL_E, S_RCEIL_SIG, S_INF, S_DIV, S_ZERO_CODE,
 S_RECIP_BITS, N_SPRM) = range(10)
SIG_MASK = (1 << 52) - 1


def scale_params(elem: ElementFormat, opts: ref.MXOptions) -> tuple[int, ...]:
    """The per-(element format, options) constants of ``block_scale``."""
    mm, em = np.frexp(elem.max)
    p = np.zeros(N_SPRM, dtype=np.int64)
    p[S_RULE] = SCALE_RULE[opts.scale_rule]
    p[S_EMAX] = elem.emax
    p[S_EVEN_BITS] = elem.man_bits if elem.encoding == "float" else elem.frac_bits
    p[S_RCEIL_E] = int(em)
    p[S_RCEIL_SIG] = int(np.ldexp(mm, 53))
    p[S_INF] = INF_POLICY[opts.inf_policy]
    p[S_DIV] = CODE0_DIVISOR[opts.code0_divisor]
    nz = elem.negative_zero_code
    p[S_ZERO_CODE] = nz if (opts.zero_sign == "zero_input_negative" and nz is not None) else -1
    p[S_RECIP_BITS] = int((np.float32(1) / np.float32(elem.max)).view(np.int32))
    return tuple(int(v) for v in p)


@njit(cache=True, inline="always")
def scale_exponent(amax: float, sp) -> int:
    """Unclamped scale exponent k of a finite ``amax >= 0`` (very negative for zero)."""
    if amax == 0:
        return -(1 << 20)
    b = f64_bits(amax)
    fl = ((b >> 52) & 0x7FF) - 1023
    if fl == -1023:  # float64 subnormal: normalise
        b = f64_bits(amax * pow2(64))
        fl = ((b >> 52) & 0x7FF) - 1023 - 64
    sig = (b & SIG_MASK) | (np.int64(1) << 52)
    rule = sp[S_RULE]
    if rule == FLOOR:
        return fl - sp[S_EMAX]
    if rule == CEIL:
        return fl + ((b & SIG_MASK) != 0) - sp[S_EMAX]
    if rule == EVEN:
        return fl + (sig >= (np.int64(1) << 53) - (np.int64(1) << (51 - sp[S_EVEN_BITS]))) \
            - sp[S_EMAX]
    if rule == RCEIL_EXACT:
        return fl + 1 - sp[S_RCEIL_E] + (sig > sp[S_RCEIL_SIG])
    # RCEIL: float32 product amax * fl32(1 / max) rounded up to a power of two
    d = np.float32(amax) * bits_f32(np.int32(sp[S_RECIP_BITS]))
    if d == 0:
        return -(1 << 20)
    if d == np.inf:
        return 1 << 20  # satfinite: the largest scale
    db = f64_bits(np.float64(d))
    return ((db >> 52) & 0x7FF) - 1023 + ((db & SIG_MASK) != 0)


@njit(cache=True, inline="always")
def block_scale(amax: float, has_nan: bool, has_inf: bool, sp) -> tuple[int, int, bool]:
    """(E8M0 scale code, divisor exponent, NaN block) of one block."""
    k = min(max(scale_exponent(amax, sp), -127), 127)
    policy = sp[S_INF]
    if has_inf and policy == INF_MAX_SCALE:
        k = 127
    elif has_inf and policy == INF_EXP128:
        k = 128 - sp[S_EMAX]
    code = k + 127
    nan_block = has_nan or (has_inf and policy == INF_NAN)
    if nan_block:
        code = ref.E8M0_NAN
    div = sp[S_DIV]
    if div == DIV_F32_MIN:
        k = max(k, -126)
    elif div == DIV_ONE and code == 0:
        k = 0
    return code, k, nan_block


@njit(cache=True, inline="always")
def _block_stats_bits(x, start, stop) -> tuple[float, bool, bool]:
    """(finite absolute maximum, has NaN, has Inf) of a block, on float32 bit patterns."""
    amax_bits = 0
    big = 0
    for i in range(start, stop):
        a = f32_bits_of(x, i) & 0x7FFFFFFF
        amax_bits = max(amax_bits, a if a < 0x7F800000 else 0)
        big = max(big, a)
    return np.float64(bits_f32(np.int32(amax_bits))), big > 0x7F800000, big == 0x7F800000


def block_stats(x, start, stop):
    """(finite absolute maximum, has NaN, has Inf) of a block; jitted through the overload."""


@overload(block_stats, inline="always")
def _block_stats_overload(x, start, stop):
    if x.dtype == types.float64:
        return lambda x, start, stop: _block_stats(x, start, stop)
    return lambda x, start, stop: _block_stats_bits(x, start, stop)


@njit(cache=True, inline="always")
def _block_stats(x, start, stop) -> tuple[float, bool, bool]:
    """(finite absolute maximum, has NaN, has Inf) of a block of any input dtype."""
    amax = 0.0
    n_nan = 0
    n_inf = 0
    for i in range(start, stop):
        a = abs(load(x, i))
        amax = max(amax, a if a < np.inf else 0.0)
        n_nan += a != a
        n_inf += a == np.inf
    return amax, n_nan > 0, n_inf > 0


@njit(cache=True, inline="always")
def _block_bounds(blk: int, nb: int, length: int, bs: int) -> tuple[int, int]:
    """Flat [start, stop) of block ``blk`` of a ``(rows, length)`` array cut into ``nb`` blocks."""
    row = blk // nb
    start = row * length + (blk - row * nb) * bs
    return start, min(start + bs, (row + 1) * length)


# The float32 kernel indexes with unsigned integers: Numba then emits no negative-index
# wraparound, whose per-element select kept LLVM from contiguous vector loads and stores.


@njit(cache=True, inline="always")
def _finish_block(x, xs: int, codes, cs: int, n: int, nan_block, zcode) -> None:
    """Codes ``codes[cs:cs + n]`` of ``x[xs:xs + n]``: NaN blocks get code 0; ``zcode >= 0``
    encodes every +-0 input as -0 (``zero_sign``)."""
    for j in range(n):
        u = np.uint64(cs + j)
        c = 0 if nan_block else codes[u]
        codes[u] = zcode if (zcode >= 0 and load(x, np.uint64(xs + j)) == 0) else c


@njit(cache=True, inline="always")
def _amax_bits(x, start: int, stop: int) -> tuple[np.int32, np.int32]:
    """(finite |x| maximum, |x| maximum) of ``x[start:stop]`` as float32 bit patterns."""
    amax_bits = np.int32(0)
    big = np.int32(0)
    for i in range(start, stop):
        a = i32_and(f32_bits_of(x, np.uint64(i)), 0x7FFFFFFF)
        amax_bits = i32_max(amax_bits, a if a < np.int32(0x7F800000) else np.int32(0))
        big = i32_max(big, a)
    return amax_bits, big


@njit(cache=True, inline="always")
def _scale32(amax_bits: np.int32, big: np.int32, sp) -> tuple[int, int, bool]:
    """``block_scale`` from ``_amax_bits``; the FLOOR rule of a normal float32 amax of a
    finite block, the common case, straight from the exponent field."""
    if sp[S_RULE] == FLOOR and big < 0x7F800000 and amax_bits >= 0x00800000:
        k = min(max((amax_bits >> 23) - 127 - sp[S_EMAX], -127), 127)
        if sp[S_DIV] == DIV_F32_MIN:
            return k + 127, max(k, -126), False
        return k + 127, (0 if sp[S_DIV] == DIV_ONE and k == -127 else k), False
    amax = np.float64(bits_f32(np.int32(amax_bits)))
    return block_scale(amax, big > 0x7F800000, big == 0x7F800000, sp)


@njit(cache=True, inline="always")
def _block32(x, start: int, stop: int, sp, scales, blk: int) -> tuple[np.float32, bool]:
    """Scale of the block ``x[start:stop]``: its E8M0 code stored at ``scales[blk]``; returns
    (the element factor ``2**-k`` in float32, NaN block)."""
    amax_bits, big = _amax_bits(x, start, stop)
    code, k, nan_block = _scale32(amax_bits, big, sp)
    scales[np.uint64(blk)] = code
    return np.float32(pow2(-k)), nan_block


@njit(cache=True, inline="always")
def _encode_block32(x, xs: int, codes, cs: int, n: int, sc, flags, fp) -> None:
    """``codes[cs:cs + n]`` = codes of ``x[xs:xs + n] * sc`` (``core.encode_sat32``)."""
    for j in range(n):
        codes[np.uint64(cs + j)] = encode_sat32(load32(x, np.uint64(xs + j)), sc, flags, fp)


@njit(cache=True, inline="always")
def _encode_packed32(x, xs: int, out, at: int, sc, flags, fp) -> None:
    """``_encode_block32`` of 32 4-bit codes packed as ``_pack_block32`` packs them."""
    for j in range(16):
        lo = encode_sat32(load32(x, np.uint64(xs + 2 * j)), sc, flags, fp)
        hi = encode_sat32(load32(x, np.uint64(xs + 2 * j + 1)), sc, flags, fp)
        out[np.uint64(at + j)] = i32_or(lo, hi << 4)


@njit(cache=True, inline="always")
def _pack_block32(buf, out, at: int) -> None:
    """The 32 4-bit codes of ``buf`` as 16 bytes at ``out[at:]``, first code in the low nibble
    (``numerics.packing``'s order)."""
    for j in range(16):
        out[np.uint64(at + j)] = buf[2 * j] | (buf[2 * j + 1] << 4)


@njit(parallel=True, cache=True)
def _quantize_fast32(x, length, bs, flags, fp, sp, codes, scales, pack4):
    """Deterministic rounding of float32/bfloat16/float16 input in float32 arithmetic.

    One pass per block: its amax and then its codes while it is in cache. Each case is its own
    loop over the task's blocks (nothing in a block loop tests the case): rows made of whole
    32-element blocks (``length % 32 == 0``) take constant-trip-count loops on flat block
    offsets (fully vectorized), in the default mode with its flags constant-folded; other
    shapes the generic bounds. ``pack4`` (4-bit elements, whole blocks only): ``codes``
    receives the packed bytes, two codes per byte. Elements go through ``encode_sat32``
    (saturating parameters; a NaN element makes a NaN block, whose codes ``_finish_block``
    overwrites).
    """
    nb = -(-length // bs)
    total = scales.size
    rne = flags[2] == 1
    flat32 = bs == 32 and length % 32 == 0
    zcode = sp[S_ZERO_CODE]
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        b0 = task * BLOCKS_PER_TASK
        b1 = min(total, b0 + BLOCKS_PER_TASK)
        if pack4:  # flat32 holds; ``buf`` holds the codes of a block that needs finishing
            buf = np.empty(32, dtype=np.uint8)
            for blk in range(b0, b1):
                s = blk * 32
                sc, nan_block = _block32(x, s, s + 32, sp, scales, blk)
                if nan_block or zcode >= 0:
                    _encode_block32(x, s, buf, 0, 32, sc, flags, fp)
                    _finish_block(x, s, buf, 0, 32, nan_block, zcode)
                    _pack_block32(buf, codes, blk * 16)
                elif rne:
                    _encode_packed32(x, s, codes, blk * 16, sc, RNE_FLAGS, fp)
                else:
                    _encode_packed32(x, s, codes, blk * 16, sc, flags, fp)
        elif flat32 and rne:  # the default mode, constant-folded
            for blk in range(b0, b1):
                s = blk * 32
                sc, nan_block = _block32(x, s, s + 32, sp, scales, blk)
                _encode_block32(x, s, codes, s, 32, sc, RNE_FLAGS, fp)
                if nan_block or zcode >= 0:
                    _finish_block(x, s, codes, s, 32, nan_block, zcode)
        elif flat32:
            for blk in range(b0, b1):
                s = blk * 32
                sc, nan_block = _block32(x, s, s + 32, sp, scales, blk)
                _encode_block32(x, s, codes, s, 32, sc, flags, fp)
                if nan_block or zcode >= 0:
                    _finish_block(x, s, codes, s, 32, nan_block, zcode)
        else:
            for blk in range(b0, b1):
                start, stop = _block_bounds(blk, nb, length, bs)
                sc, nan_block = _block32(x, start, stop, sp, scales, blk)
                _encode_block32(x, start, codes, start, stop - start, sc, flags, fp)
                if nan_block or zcode >= 0:
                    _finish_block(x, start, codes, start, stop - start, nan_block, zcode)


@njit(parallel=True, cache=True)
def _quantize_fast(x, length, bs, alpha, flags, fp, sp, codes, scales):
    nb = -(-length // bs)
    total = scales.size
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            start, stop = _block_bounds(blk, nb, length, bs)
            amax, has_nan, has_inf = block_stats(x, start, stop)
            code, k, nan_block = block_scale(amax, has_nan, has_inf, sp)
            scales[blk] = code
            for i in range(start, stop):
                codes[i] = encode_fast(load(x, i) * alpha, k, flags, fp)
            if nan_block or sp[S_ZERO_CODE] >= 0:
                _finish_block(x, start, codes, start, stop - start, nan_block, sp[S_ZERO_CODE])


@njit(parallel=True, cache=True)
def _quantize_generic(x, length, bs, alpha, rb, rstride, nbits, flags, tab, prm, sp,
                      codes, scales):
    nb = -(-length // bs)
    total = scales.size
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            start, stop = _block_bounds(blk, nb, length, bs)
            amax, has_nan, has_inf = _block_stats(x, start, stop)
            code, k, nan_block = block_scale(amax, has_nan, has_inf, sp)
            scales[blk] = code
            for i in range(start, stop):
                y = 0.0 if nan_block else load(x, i) * alpha
                codes[i] = encode_one(y, k, flags, rb[i * rstride], nbits, tab, prm)
            _finish_block(x, start, codes, start, stop - start, nan_block, sp[S_ZERO_CODE])


def quantize_rows(x2, fmt: BlockFormat, opts: ref.MXOptions, alpha, rb, rstride, nbits,
                  pack4: bool = False):
    """(codes ``(rows, length)`` uint8, E8M0 scales ``(rows, n_blocks)`` uint8) of a 2-D array.

    ``pack4``: the codes packed two per byte, ``(rows, length // 2)``; raises ``Unsupported``
    unless the fused kernel applies (4-bit elements, float32/bfloat16/float16 input,
    deterministic rounding, no pre-scale, whole 32-element blocks).
    """
    elem = fmt.element
    if opts.symmetric_int and elem.encoding == "int":
        elem = elem.replace(symmetric=True)
    flags = mode_flags(opts.rounding)
    fp = fast_params(elem, True)
    sp = scale_params(elem, opts)
    rows, length = x2.shape
    bs = fmt.block_size
    fast32 = use_fast(fp, flags) and alpha is None and x2.dtype != np.float64
    if pack4 and not (fast32 and elem.bits == 4 and bs == 32 and length % 32 == 0):
        raise Unsupported("fused packed MX quantize of this case")
    codes = np.empty((rows, length // 2 if pack4 else length), dtype=np.uint8)
    scales = np.empty((rows, -(-length // bs)), dtype=np.uint8)
    flat, c1, s1 = x2.reshape(-1), codes.reshape(-1), scales.reshape(-1)
    scale = 1.0 if alpha is None else alpha
    if fast32:
        _quantize_fast32(flat, length, bs, flags, fp, sp, c1, s1, pack4)
    elif use_fast(fp, flags):
        _quantize_fast(flat, length, bs, scale, flags, fp, sp, c1, s1)
    else:
        tab, prm = element_table(elem, True)
        _quantize_generic(flat, length, bs, scale, rb, rstride,
                          nbits, flags, tab, prm, sp, c1, s1)
    return codes, scales


@njit(parallel=True, cache=True)
def _dequantize(codes, scales, length, bs, lut, alpha, out):
    nb = -(-length // bs)
    total = scales.size
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            sc = np.int64(scales[blk])
            s = np.nan if sc == ref.E8M0_NAN else pow2(sc - 127)
            start, stop = _block_bounds(blk, nb, length, bs)
            if alpha == 1.0:
                for i in range(start, stop):
                    out[i] = lut[codes[i]] * s
            else:
                for i in range(start, stop):
                    out[i] = lut[codes[i]] * s / alpha


@njit(parallel=True, cache=True)
def _dequantize32(codes, scales, length, bs, lut32, out):
    """float32 output without pre-scale: ``fl32(lut * 2**k)`` is one float32 product of exact
    operands (``2**-127`` is a float32 subnormal), so IEEE rounds it once, as the reference's
    cast of the exact float64 value does (overflow and subnormal results included)."""
    nb = -(-length // bs)
    total = scales.size
    flat32 = bs == 32 and length % 32 == 0
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            sc = np.int64(scales[blk])
            s = np.float32(np.nan) if sc == ref.E8M0_NAN else np.float32(pow2(sc - 127))
            if flat32:
                for i in range(blk * 32, blk * 32 + 32):
                    out[i] = lut32[codes[i]] * s
            else:
                start, stop = _block_bounds(blk, nb, length, bs)
                for i in range(start, stop):
                    out[i] = lut32[codes[i]] * s


def dequantize_rows(codes2, scales2, fmt: BlockFormat, alpha, out_dtype) -> np.ndarray:
    """float32 or float64 values of 2-D MX codes (exact in float64, one rounding to float32)."""
    out = np.empty(codes2.shape, dtype=out_dtype)
    args = (codes2.reshape(-1), scales2.reshape(-1), codes2.shape[1], fmt.block_size)
    if alpha is None and out_dtype == np.float32:
        _dequantize32(*args, _lut32(fmt.element), out.reshape(-1))
    else:
        _dequantize(*args, fmt.element.values, 1.0 if alpha is None else alpha, out.reshape(-1))
    return out


@cache
def _lut32(elem: ElementFormat) -> np.ndarray:
    """The element values in float32 (exact: every element format fits float32)."""
    lut = elem.values.astype(np.float32)
    assert np.array_equal(lut, elem.values, equal_nan=True), elem.name
    lut.setflags(write=False)
    return lut


def quantize(x: np.ndarray, spec: BlockFormat, axis: int, scale_rule, rounding, prescale, rbits,
             preset, options: dict, pack4: bool = False):
    """``numerics.quantize`` for an MX format (same arguments, same result).

    ``pack4``: return ``(packed codes (rows, length // 2), scales (rows, n_blocks), blocking,
    options, pre-scale)`` from the fused kernel instead (``quantize_rows``; ``Unsupported`` when
    it does not apply).
    """
    opts = ref.mx_options(preset, scale_rule=scale_rule, rounding=rounding, **options)
    alpha = DEFAULT_PRESCALE if prescale is True else (
        None if prescale in (None, False) else float(prescale))
    if alpha is not None:  # alpha * x is exact unless alpha has > 29 bits or x is float64
        ref.check_prescale_exact(x if _check_needs_data(x, alpha) else np.zeros(0), alpha)
    b = make_blocking(x.shape, axis, spec.block_size)
    rb = check_rbits(rbits, opts.rounding)
    rb2, rstride = rows_rbits(rb, b)
    codes, scales = quantize_rows(to_rows(kernel_input(x), b), spec, opts, alpha, rb2, rstride,
                                  rbits_width(rb), pack4)
    if pack4:
        return codes, scales, b, opts, alpha
    return QuantizedTensor(
        fmt=spec.name, codes=from_rows(codes, b), scales=from_rows(scales, b), axis=b.axis,
        block_size=b.block_size, pad=b.pad, prescale=alpha, options=dict(vars(opts)),
    )


def _check_needs_data(x: np.ndarray, alpha: float) -> bool:
    return x.dtype == np.float64 or int(ref._significant_bits(np.array([alpha]))[0]) > 29


def dequantize(q: QuantizedTensor, dtype) -> np.ndarray:
    """``numerics.dequantize`` of an MX ``QuantizedTensor``."""
    spec = block_format(q.fmt)
    b = make_blocking(q.codes.shape, q.axis, q.block_size)
    out_dtype = np.dtype(dtype) if np.dtype(dtype) in (np.float32, np.float64) else np.float64
    out = dequantize_rows(to_rows(q.codes, b), to_rows(q.scales, b, b.n_blocks), spec,
                          q.prescale, out_dtype)
    return from_rows(out, b).astype(dtype, copy=False)
