"""HiFloat4 (``numerics.hif4``): E6M2 scale, E1_8 / E1_16 micro-exponents, S1P2 elements per 64.

One 64-element block per loop iteration, in parallel. For float16/bfloat16/float32 input every
product ``|x| * REC`` (<= 24 + 8 significant bits) is exact in float64, so the threshold tests
and the element rounding are the reference's exact decisions. Deterministic modes: the block's
``V16`` maxima on the float32 bit patterns, ``SF`` rounded to E6M2 on its float64 pattern, then
``k = round(|x| * REC * 2**(2 - E1_8 - E1_16))`` saturated to 7 in 4-lane float64 (exact);
stochastic rounding uses the generic ``core.encode_one``. 16-bit inputs are read
as float32 (exact); float64 input is left to the reference (its products need rounding to odd).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.numerics import hif4 as ref
from lowbit.numerics.api import _no_leftovers, _reject, _take
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.tensor import QuantizedTensor

from .core import (
    NAN_CODE,
    Unsupported,
    as_float32,
    bits_f32,
    bits_f64,
    check_rbits,
    element_table,
    encode_one,
    f32_bits,
    f64_bits,
    i32_and,
    i32_max,
    i32_or,
    load,
    mode_flags,
    pow2,
    rbits_width,
)
from .layout import from_rows, n_rows, rows_rbits, to_rows

BS = ref.BLOCK_SIZE
RNA_FLAGS = (1, 1, 0, 0)
"""``mode_flags("nearest_away")`` as a global constant (see ``core.RNE_FLAGS``)."""
BLOCKS_PER_TASK = 128
NAN_SCALE = block_format("hif4").scale.nan_code


@njit(cache=True, inline="always")
def _bf16_rne(v: float) -> float:
    """Non-negative float64 rounded to 8 significant bits, ties to even (as the reference)."""
    b = f64_bits(v)
    lsb = (b >> 45) & 1
    return bits_f64((b + (np.int64(1) << 44) - 1 + lsb) & ~((np.int64(1) << 45) - 1))


@njit(cache=True, inline="always")
def _e6m2(sf: float, away: bool) -> int:
    """E6M2 code of ``sf`` in ``[SF_MIN, SF_MAX]`` (no subnormals there), ties to even or away:
    the float64 pattern rebased to exponent -48 and rounded to 2 mantissa bits (carries into
    the exponent as they should)."""
    b = f64_bits(sf) - ((1023 - 48) << 52)
    half = np.int64(1) << 49
    return (b + (half if away else half - 1 + ((b >> 50) & 1))) >> 50


@njit(cache=True, inline="always")
def _s1p2(w: float, flags) -> np.int32:
    """S1P2 magnitude ``k`` of ``w = 4|y|`` (quarter units, exact): ``w`` rounded to an
    integer by the deterministic mode of ``flags`` and saturated to 7."""
    near, tie_away, tie_even, _ = flags
    t = np.floor(w)
    frac = w - t
    up = (frac > 0.5) | ((frac == 0.5) & (tie_away == 1))
    n = np.rint(w) if tie_even == 1 else (t + up if near == 1 else t)
    return np.int32(min(n, 7.0))


@njit(cache=True, inline="always")
def _elements(x, start: int, stop: int, m64, flags, negzero: bool, codes) -> None:
    """Codes of ``x[start:stop]``: sign bit 8 for ``x < 0``, ``k = _s1p2(|x| * m64)``."""
    for i in range(start, stop):
        u = np.uint64(i)
        v = x[u]
        k = _s1p2(abs(np.float64(v)) * m64[i - start], flags)
        code = i32_or(k, np.int32(8) if v < 0 else np.int32(0))
        codes[u] = np.int32(0) if (not negzero and k == 0) else code


@njit(cache=True, inline="always")
def _block(x, blk, start, stop, full, scale_away, rec, flags, negzero, codes, scales, micro,
           v16, m64) -> None:
    """Scale, micro bits and codes of the block ``x[start:stop]`` (``full``: 64 elements)."""
    big = np.int32(0)
    for j in range(16):
        m = np.int32(0)
        lo = start + 4 * j
        for i in range(lo, lo + 4 if full else min(lo + 4, stop)):
            m = i32_max(m, i32_and(f32_bits(x[np.uint64(i)]), 0x7FFFFFFF))
        v16[j] = m
        big = i32_max(big, m)
    ub = np.uint64(blk)
    if big >= 0x7F800000:  # a NaN or Inf: NaN scale, zero codes and micro bits
        codes[start:stop] = 0
        scales[ub] = NAN_SCALE
        micro[ub, :] = 0
        return
    vmax = np.float64(bits_f32(big))
    sf = min(max(_bf16_rne(vmax * ref.ONE_SEVENTH_BF16), ref.SF_MIN), ref.SF_MAX)
    sc = _e6m2(sf, scale_away)
    scales[ub] = sc
    r = rec[sc]
    for g in range(8):
        a = np.float64(bits_f32(i32_max(v16[2 * g], v16[2 * g + 1])))
        micro[ub, g] = a * r >= 4
    for j in range(16):
        e8 = micro[ub, j >> 1]
        e16 = np.float64(bits_f32(v16[j])) * r >= pow2(1 + e8)
        micro[ub, 8 + j] = e16
        m4 = r * pow2(2 - e8 - e16)  # exact: REC times a power of two
        for u in range(4):
            m64[4 * j + u] = m4
    if full and flags[1] == 1:  # HiF4's default mode, constant-folded
        _elements(x, start, start + BS, m64, RNA_FLAGS, negzero, codes)
    else:
        _elements(x, start, stop, m64, flags, negzero, codes)


@njit(parallel=True, cache=True)
def _quantize_fast(x, length, scale_away, rec, flags, negzero, codes, scales, micro) -> None:
    """Deterministic rounding of float32 input, one block at a time (amax, scale, micro bits
    and codes while it is in cache); the element products ``|x| * REC * 2**(2 - shift)`` are
    exact in float64 (24 + 8 bits). Rows of whole blocks in the default mode take their own
    loop (block size and flags constant-folded); whole blocks of other rows round with the
    default mode's constant flags too. Arrays are indexed with unsigned integers:
    Numba then emits no negative-index wraparound, whose per-element select kept LLVM from
    contiguous vector loads and stores (2x the block rate)."""
    nb = -(-length // BS)
    total = scales.size
    flat = length % BS == 0
    rna = flags[1] == 1
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        v16 = np.empty(16, dtype=np.int32)
        m64 = np.empty(BS)
        b0 = task * BLOCKS_PER_TASK
        b1 = min(total, b0 + BLOCKS_PER_TASK)
        if flat and rna:  # HiF4's default mode on whole blocks
            for blk in range(b0, b1):
                _block(x, blk, blk * BS, blk * BS + BS, True, scale_away, rec, RNA_FLAGS,
                       negzero, codes, scales, micro, v16, m64)
        else:
            for blk in range(b0, b1):
                row = blk // nb
                start = row * length + (blk - row * nb) * BS
                stop = min(start + BS, (row + 1) * length)
                _block(x, blk, start, stop, stop - start == BS, scale_away, rec, flags,
                       negzero, codes, scales, micro, v16, m64)


@njit(parallel=True, cache=True)
def _quantize(x, length, sflags, stab, sprm, rec, flags, rb, rstride, nbits, tab, prm, elut,
              negzero, codes, scales, micro) -> None:
    """Stochastic rounding (any mode): the generic element rounder ``encode_one``."""
    nb = -(-length // BS)
    total = scales.size
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        v16 = np.empty(16)
        shift4 = np.empty(16, dtype=np.int64)
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            row = blk // nb
            start = row * length + (blk - row * nb) * BS
            stop = min(start + BS, (row + 1) * length)
            finite = True
            for j in range(16):
                m = 0.0
                for i in range(start + 4 * j, min(start + 4 * j + 4, stop)):
                    a = abs(load(x, i))
                    finite &= a < np.inf
                    m = max(m, a)
                v16[j] = m
            if not finite:
                for i in range(start, stop):
                    codes[i] = 0
                scales[blk] = sprm[NAN_CODE]
                micro[blk, :] = 0
                continue
            vmax = 0.0
            for j in range(16):
                vmax = max(vmax, v16[j])
            sf = min(max(_bf16_rne(vmax * ref.ONE_SEVENTH_BF16), ref.SF_MIN), ref.SF_MAX)
            sc = encode_one(sf, 0, sflags, 0, 0, stab, sprm)
            scales[blk] = sc
            r = rec[sc]
            for g in range(8):
                micro[blk, g] = max(v16[2 * g], v16[2 * g + 1]) * r >= 4
            for j in range(16):
                micro[blk, 8 + j] = v16[j] * r >= pow2(1 + micro[blk, j >> 1])
            for j in range(16):
                shift4[j] = micro[blk, j >> 1] + micro[blk, 8 + j]
            for i in range(start, stop):
                v = load(x, i)
                y = abs(v) * r
                codes[i] = encode_one(-y if v < 0 else y, shift4[(i - start) >> 2], flags,
                                      rb[i * rstride], nbits, tab, prm)
            if not negzero:
                for i in range(start, stop):
                    codes[i] = 0 if elut[codes[i]] == 0 else codes[i]


def _check_elements(elem) -> None:
    """``_quantize_fast`` hard-codes S1P2: codes ``(s << 3) | k``, magnitude ``k/4``."""
    k = np.arange(8)
    if not (np.array_equal(elem.values[k], k / 4) and np.array_equal(elem.values[8 + k], -k / 4)):
        raise AssertionError(f"{elem.name} is not S1P2")


def quantize(x: np.ndarray, spec: BlockFormat, axis: int, rounding, rbits, preset,
             options: dict) -> QuantizedTensor:
    """``numerics.quantize`` for HiF4 (same arguments, same result)."""
    _reject(spec, preset=preset)
    opts = ref.hif4_options(rounding=rounding, **_take(options, ref.OPTION_NAMES))
    _no_leftovers(spec, options)
    if x.dtype == np.float64:
        raise Unsupported("HiF4 of float64 input")
    b = make_blocking(x.shape, axis, spec.block_size)
    rows = n_rows(b)
    flags = mode_flags(opts.rounding)
    tab, prm = element_table(spec.element, True)
    stab, sprm = element_table(spec.scale, True)
    rb = check_rbits(rbits, opts.rounding)
    codes = np.empty((rows, b.length), dtype=np.uint8)
    scales = np.empty((rows, b.n_blocks), dtype=np.uint8)
    micro = np.empty((rows * b.n_blocks, 24), dtype=np.uint8)
    x2 = to_rows(as_float32(x), b).reshape(-1)
    rec = ref.reciprocals(spec.scale)
    if rb is None:
        _check_elements(spec.element)
        _quantize_fast(x2, b.length, opts.scale_rounding == "nearest_away", rec, flags,
                       opts.negative_zero, codes.reshape(-1), scales.reshape(-1), micro)
    else:
        rb2, rstride = rows_rbits(rb, b)
        _quantize(x2, b.length, mode_flags(opts.scale_rounding), stab, sprm, rec, flags, rb2,
                  rstride, rbits_width(rb), tab, prm, spec.element.values, opts.negative_zero,
                  codes.reshape(-1), scales.reshape(-1), micro)
    return QuantizedTensor(
        fmt=spec.name, codes=from_rows(codes, b), scales=from_rows(scales, b), axis=b.axis,
        block_size=b.block_size, micro=from_rows(micro.reshape(rows, b.n_blocks, 24), b),
        pad=b.pad, options=dict(vars(opts)),
    )


@njit(parallel=True, cache=True)
def _dequantize(codes, length, scales, micro, elut, slut, out) -> None:
    """Per block the 16 group factors ``E6M2 * 2**(E1_8 + E1_16)`` (exact in float64), then
    one float64 product per element (exact), rounded once by the store."""
    nb = -(-length // BS)
    total = scales.size
    flat = length % BS == 0
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        m64 = np.empty(BS)
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            row = blk // nb
            start = blk * BS if flat else row * length + (blk - row * nb) * BS
            stop = start + BS if flat else min(start + BS, (row + 1) * length)
            s = slut[scales[blk]]
            for j in range(16):
                m = s * pow2(np.int64(micro[blk, j >> 1]) + np.int64(micro[blk, 8 + j]))
                for u in range(4):
                    m64[4 * j + u] = m
            if stop - start == BS:
                for i in range(start, start + BS):
                    out[i] = elut[codes[i]] * m64[i - start]
            else:
                for i in range(start, stop):
                    out[i] = elut[codes[i]] * m64[i - start]


def dequantize(q: QuantizedTensor, dtype) -> np.ndarray:
    """``numerics.dequantize`` of HiF4: exact ``(-1)**s * E6M2 * 2**(E1_8 + E1_16) * k/4``."""
    spec = block_format(q.fmt)
    b = make_blocking(q.codes.shape, q.axis, q.block_size)
    micro = np.ascontiguousarray(np.moveaxis(q.micro, b.axis, -2)).reshape(-1, 24)
    if micro.size and micro.max() > 1:
        raise ValueError("HiF4 micro-exponents must be 0/1 bits")
    codes = to_rows(q.codes, b)
    out_dtype = np.dtype(dtype) if np.dtype(dtype) in (np.float32, np.float64) else np.float64
    out = np.empty(codes.shape, dtype=out_dtype)
    _dequantize(codes.reshape(-1), b.length, to_rows(q.scales, b, b.n_blocks).reshape(-1),
                micro, spec.element.values, spec.scale.values, out.reshape(-1))
    return from_rows(out, b).astype(dtype, copy=False)
