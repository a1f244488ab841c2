"""NVFP4 (``numerics.nvfp4``): E2M1 elements, a UE4M3 scale per 16 elements, a float32 tensor scale.

The input is taken in float32, as the reference does (float16/bfloat16 exactly, float64 rounded
once). Two parallel passes: block maxima (on the bit patterns) and the non-finite check, then
per block the algorithm's float32 scale arithmetic (IEEE binary32 in Numba, the reference's op
order), the UE4M3 scale rounding and the E2M1 element rounding (exact, ``core``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.numerics import nvfp4 as ref
from lowbit.numerics.api import _no_leftovers, _take
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.specs import element_format
from lowbit.numerics.tensor import QuantizedTensor

from .core import (
    NO_FAST,
    RNE_FLAGS,
    as_float32,
    bits_f32,
    check_rbits,
    element_table,
    encode_fast32,
    encode_one,
    f32_bits,
    fast_params,
    i32_and,
    i32_max,
    mode_flags,
    rbits_width,
)
from .elementwise import use_fast
from .layout import from_rows, n_rows, rows_rbits, to_rows

BLOCKS_PER_TASK = 512
ALGORITHM = {name: i for i, name in enumerate(ref.ALGORITHMS)}
TE, TORCHAO, MODELOPT = (ALGORITHM[a] for a in ("transformer_engine", "torchao", "modelopt"))
F32_MAX = np.float32(np.finfo(np.float32).max)


@njit(cache=True, inline="always")
def _bounds(blk: int, nb: int, length: int) -> tuple[int, int]:
    row = blk // nb
    start = row * length + (blk - row * nb) * 16
    return start, min(start + 16, (row + 1) * length)


@njit(parallel=True, cache=True)
def _block_amax(x, length, amax) -> int:
    """float32 max |x| per block into ``amax`` (on the bit patterns, so a NaN is the largest);
    returns the count of blocks holding a non-finite value."""
    nb = -(-length // 16)
    total = amax.size
    flat = length % 16 == 0
    bad = 0
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            if flat:
                start, stop = blk * 16, blk * 16 + 16
            else:
                start, stop = _bounds(blk, nb, length)
            m = np.int32(0)
            for i in range(start, stop):
                m = i32_max(m, i32_and(f32_bits(x[i]), 0x7FFFFFFF))
            bad += m >= 0x7F800000
            amax[blk] = bits_f32(np.int32(min(m, 0x7F7FFFFF)))
    return bad


@njit(cache=True, inline="always")
def _ue4m3(s: np.float32, sfp, svals) -> tuple[int, np.float32]:
    """UE4M3 code (RNE, saturating) of a float32 block scale ``0 <= s <= 448`` and its float32
    value: UE4M3 codes are E4M3's non-negative ones, so E4M3's fast rounder gives them."""
    code = encode_fast32(s, np.float32(1), RNE_FLAGS, sfp)
    return code, np.float32(svals[code])


@njit(cache=True, inline="always")
def _block_scale(algo, amax, tscale, s_enc, sfp, svals) -> tuple[int, np.float32, bool]:
    """(UE4M3 code, float32 factor, divide) of one block: scaled = x * factor (or x / factor)."""
    one = np.float32(1)
    e_max = np.float32(6)
    s_max = np.float32(448)
    if algo == TE:
        sb = min(amax * (s_enc * (one / e_max)), F32_MAX)
        code, sv = _ue4m3(min(sb, s_max), sfp, svals)
        return code, min(one / (sv * tscale), F32_MAX), False
    if algo == TORCHAO:
        t = (amax / e_max) / tscale
        code, sv = _ue4m3(min(max(t, np.float32(2.0**-6)), s_max), sfp, svals)
        return code, (one / tscale) / sv, False
    t = amax / (e_max * tscale)
    t = one if t == 0 else t
    code, sv = _ue4m3(min(max(t, np.float32(2.0**-9)), s_max), sfp, svals)
    return code, sv * tscale, True


@njit(cache=True, inline="always")
def _encode_fast_block(x, start, stop, f, divide, zero_fix, flags, fp, codes) -> int:
    """Codes of ``x[start:stop] * f`` (or ``/ f``) by ``encode_fast32``; ``zero_fix``: a scaled
    zero gets code 0 (modelopt). Returns the count of NaN scaled values."""
    n_nan = 0
    for i in range(start, stop):
        y = x[i] / f if divide else x[i] * f
        n_nan += y != y
        c = encode_fast32(y, np.float32(1), flags, fp)
        codes[i] = 0 if (zero_fix and y == 0) else c
    return n_nan


@njit(parallel=True, cache=True)
def _quantize(x, length, amax, tscale, s_enc, algo, sfp, svals, flags, fast, fp, rb,
              rstride, nbits, tab, prm, codes, scales) -> int:
    """Element codes and scale codes; returns the count of NaN scaled values (undefined)."""
    nb = -(-length // 16)
    total = scales.size
    n_nan = 0
    flat = length % 16 == 0
    rne_fast = fast and flags[2] == 1
    zero_fix = algo == MODELOPT
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            if flat:
                start, stop = blk * 16, blk * 16 + 16
            else:
                start, stop = _bounds(blk, nb, length)
            code, f, divide = _block_scale(algo, amax[blk], tscale, s_enc, sfp, svals)
            scales[blk] = code
            if rne_fast and flat and not divide:  # the default, constant-folded
                n_nan += _encode_fast_block(x, start, start + 16, f, False, zero_fix,
                                            RNE_FLAGS, fp, codes)
            elif fast:
                n_nan += _encode_fast_block(x, start, stop, f, divide, zero_fix, flags, fp,
                                            codes)
            else:
                for i in range(start, stop):
                    y = x[i] / f if divide else x[i] * f
                    n_nan += y != y
                    c = encode_one(np.float64(y), 0, flags, rb[i * rstride], nbits, tab, prm)
                    codes[i] = 0 if (zero_fix and y == 0) else c
    return n_nan


def _tensor_scales(algo: int, g: np.float32) -> tuple[np.float32, np.float32]:
    """(decode tensor scale, TE encode scale) in the reference's float32 arithmetic."""
    one, e_max, s_max = np.float32(1), np.float32(6), np.float32(448)
    with np.errstate(all="ignore"):
        if algo == TE:
            s_enc = one if g == 0 else min(s_max * e_max / g, F32_MAX)
            return one / s_enc, np.float32(s_enc)
        s = g / (s_max * e_max) if algo == TORCHAO else g / (e_max * s_max)
        return (one if s == 0 else np.float32(s)), one


def quantize(x: np.ndarray, spec: BlockFormat, axis: int, rounding, rbits, preset,
             options: dict) -> QuantizedTensor:
    """``numerics.quantize`` for NVFP4 (same arguments, same result)."""
    opts = ref.nvfp4_options(preset, rounding=rounding, **_take(options, ref.OPTION_NAMES))
    global_amax = options.pop("global_amax", None)
    _no_leftovers(spec, options)
    b = make_blocking(x.shape, axis, spec.block_size)
    x2 = to_rows(as_float32(x), b).reshape(-1)  # float64 beyond float32: Inf, caught below
    rows = n_rows(b)
    amax = np.empty(rows * b.n_blocks, dtype=np.float32)
    if _block_amax(x2, b.length, amax):
        _bad_input(x)
    g = ref._global_amax(amax, global_amax)
    algo = ALGORITHM[opts.algorithm]
    tscale, s_enc = _tensor_scales(algo, g)
    flags = mode_flags(opts.rounding)
    fp = fast_params(spec.element, True)
    tab, prm = element_table(spec.element, True)
    sfp = fast_params(element_format("e4m3"), True)
    rb = check_rbits(rbits, opts.rounding)
    rb2, rstride = rows_rbits(rb, b)
    codes = np.empty(x2.size, dtype=np.uint8)
    scales = np.empty(amax.size, dtype=np.uint8)
    n_nan = _quantize(x2, b.length, amax, tscale, s_enc, algo, sfp, spec.scale.values, flags,
                      use_fast(fp, flags), fp or NO_FAST, rb2, rstride, rbits_width(rb), tab, prm,
                      codes, scales)
    if n_nan:
        raise ValueError(
            f"algorithm={opts.algorithm!r} is undefined for global amax {float(g)!r}: its float32 "
            "arithmetic multiplies or divides a zero by an overflowed scale (NaN); "
            'use algorithm="transformer_engine"'
        )
    return QuantizedTensor(
        fmt=spec.name, codes=from_rows(codes.reshape(rows, b.length), b),
        scales=from_rows(scales.reshape(rows, b.n_blocks), b), axis=b.axis,
        block_size=b.block_size, tensor_scale=np.float32(tscale), pad=b.pad,
        options=dict(vars(opts)),
    )


def _bad_input(x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise ValueError("NVFP4 input contains NaN or Inf; E2M1 cannot represent them")
    raise ValueError("NVFP4 input has float64 values beyond the float32 range")


@njit(parallel=True, cache=True)
def _dequantize(codes, length, scales, elut, slut, ts, out) -> None:
    nb = -(-length // 16)
    total = scales.size
    flat = length % 16 == 0
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            s = slut[scales[blk]] * ts
            if flat:
                for i in range(blk * 16, blk * 16 + 16):
                    out[i] = elut[codes[i]] * s
            else:
                start, stop = _bounds(blk, nb, length)
                for i in range(start, stop):
                    out[i] = elut[codes[i]] * s


def dequantize(q: QuantizedTensor, dtype) -> np.ndarray:
    """``numerics.dequantize`` of NVFP4: exact ``e2m1 * ue4m3 * tensor_scale``, rounded once."""
    spec = block_format(q.fmt)
    b = make_blocking(q.codes.shape, q.axis, q.block_size)
    codes = to_rows(q.codes, b)
    out_dtype = np.dtype(dtype) if np.dtype(dtype) in (np.float32, np.float64) else np.float64
    out = np.empty(codes.shape, dtype=out_dtype)
    _dequantize(codes.reshape(-1), b.length, to_rows(q.scales, b, b.n_blocks).reshape(-1),
                spec.element.values, spec.scale.values, np.float64(q.tensor_scale),
                out.reshape(-1))
    return from_rows(out, b).astype(dtype, copy=False)
