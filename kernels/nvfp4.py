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
    encode_sat32,
    f32_bits,
    fast_params,
    i32_add,
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


# Arrays are indexed with unsigned integers (``np.uint64``): Numba then emits no negative-index
# wraparound, whose per-element select kept LLVM from contiguous 8-lane vector loads and stores
# (it stored the codes one byte at a time). Each case is its own loop over a task's blocks, with
# the algorithm, the whole-block trip count and (by default) the rounding flags constant-folded.


@njit(cache=True, inline="always")
def _amax16(x, s: int, n: int) -> np.int32:
    """max of the |x| bit patterns of ``x[s:s + n]`` (a NaN is the largest)."""
    m = np.int32(0)
    for j in range(n):
        m = i32_max(m, i32_and(f32_bits(x[np.uint64(s + j)]), 0x7FFFFFFF))
    return m


@njit(parallel=True, cache=True)
def _block_amax(x, length, amax) -> int:
    """float32 max |x| per block into ``amax`` (on the bit patterns, so a NaN is the largest);
    returns the count of blocks holding a non-finite value."""
    nb = -(-length // 16)
    total = amax.size
    flat = length % 16 == 0
    bad = 0
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        b0 = task * BLOCKS_PER_TASK
        b1 = min(total, b0 + BLOCKS_PER_TASK)
        nbad = np.int32(0)
        if flat:
            for blk in range(b0, b1):
                m = _amax16(x, blk * 16, 16)
                nbad = i32_add(nbad, np.int32(m >= 0x7F800000))
                amax[np.uint64(blk)] = bits_f32(min(m, np.int32(0x7F7FFFFF)))
        else:
            for blk in range(b0, b1):
                start, stop = _bounds(blk, nb, length)
                m = _amax16(x, start, stop - start)
                nbad = i32_add(nbad, np.int32(m >= 0x7F800000))
                amax[np.uint64(blk)] = bits_f32(min(m, np.int32(0x7F7FFFFF)))
        bad += nbad
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
def _scale_block(blk: int, algo, amax, tscale, s_enc, sfp, svals,
                 scales) -> tuple[np.float32, bool]:
    """Stores block ``blk``'s UE4M3 scale code; returns (factor, divide) of ``_block_scale``."""
    ub = np.uint64(blk)
    code, f, divide = _block_scale(algo, amax[ub], tscale, s_enc, sfp, svals)
    scales[ub] = code
    return f, divide


@njit(cache=True, inline="always")
def _elements(x, s: int, n: int, f, divide, zero_fix, flags, fp, codes) -> np.int32:
    """``codes[s:s + n]`` = codes of ``x[s:s + n] * f`` (or ``/ f``) by ``encode_sat32`` (E2M1's
    saturating parameters); ``zero_fix``: a scaled zero gets code 0 (modelopt). Returns the count
    of NaN scaled values (their codes are unspecified: the caller raises)."""
    n_nan = np.int32(0)
    for j in range(n):
        u = np.uint64(s + j)
        y = x[u] / f if divide else x[u] * f
        n_nan = i32_add(n_nan, np.int32(y != y))
        c = encode_sat32(y, np.float32(1), flags, fp)
        codes[u] = np.int32(0) if (zero_fix and y == 0) else c
    return n_nan


@njit(cache=True, inline="always")
def _whole_blocks(x, b0: int, b1: int, algo, amax, tscale, s_enc, sfp, svals, flags, fp,
                  codes, scales) -> int:
    """Blocks ``b0:b1`` of rows of whole blocks, for one (constant) ``algo``; NaN count."""
    n_nan = 0
    for blk in range(b0, b1):
        f, divide = _scale_block(blk, algo, amax, tscale, s_enc, sfp, svals, scales)
        n_nan += _elements(x, blk * 16, 16, f, divide, algo == MODELOPT, flags, fp, codes)
    return n_nan


# The per-task loops are plain (not inlined) functions: inlined into the parallel loop, their
# copies made Numba's parfor passes take minutes to compile it. ``error_model="numpy"``: IEEE
# division (x / 0 is +-Inf or NaN, as in the parallel loop), not Python's ZeroDivisionError.


@njit(cache=True, error_model="numpy")
def _task_rne(x, b0, b1, algo, amax, tscale, s_enc, sfp, svals, fp, codes, scales) -> int:
    """Whole blocks in the default mode: one loop per algorithm (its scale arithmetic, multiply
    or divide, the modelopt zero rule and the mode's flags constant-folded)."""
    if algo == TE:
        return _whole_blocks(x, b0, b1, TE, amax, tscale, s_enc, sfp, svals, RNE_FLAGS, fp,
                             codes, scales)
    if algo == TORCHAO:
        return _whole_blocks(x, b0, b1, TORCHAO, amax, tscale, s_enc, sfp, svals, RNE_FLAGS,
                             fp, codes, scales)
    return _whole_blocks(x, b0, b1, MODELOPT, amax, tscale, s_enc, sfp, svals, RNE_FLAGS, fp,
                         codes, scales)


@njit(cache=True, error_model="numpy")
def _task_fast(x, b0, b1, nb, length, algo, amax, tscale, s_enc, sfp, svals, flags, fp, codes,
               scales) -> int:
    """Any deterministic mode, any row length (``encode_sat32``)."""
    n_nan = 0
    for blk in range(b0, b1):
        f, divide = _scale_block(blk, algo, amax, tscale, s_enc, sfp, svals, scales)
        start, stop = _bounds(blk, nb, length)
        n_nan += _elements(x, start, stop - start, f, divide, algo == MODELOPT, flags, fp,
                           codes)
    return n_nan


@njit(cache=True, error_model="numpy")
def _task_generic(x, b0, b1, nb, length, algo, amax, tscale, s_enc, sfp, svals, flags, rb,
                  rstride, nbits, tab, prm, codes, scales) -> int:
    """Stochastic rounding (``encode_one``)."""
    n_nan = 0
    for blk in range(b0, b1):
        f, divide = _scale_block(blk, algo, amax, tscale, s_enc, sfp, svals, scales)
        start, stop = _bounds(blk, nb, length)
        for i in range(start, stop):
            u = np.uint64(i)
            y = x[u] / f if divide else x[u] * f
            n_nan += y != y
            c = encode_one(np.float64(y), 0, flags, rb[u * np.uint64(rstride)], nbits, tab, prm)
            codes[u] = 0 if (algo == MODELOPT and y == 0) else c
    return n_nan


@njit(parallel=True, cache=True)
def _quantize(x, length, amax, tscale, s_enc, algo, sfp, svals, flags, fast, fp, rb,
              rstride, nbits, tab, prm, codes, scales) -> int:
    """Element codes and scale codes; returns the count of NaN scaled values (undefined).
    Rows of whole blocks in the default mode: ``_task_rne``; the other deterministic modes and
    ragged rows: ``_task_fast``; stochastic rounding: ``_task_generic``."""
    nb = -(-length // 16)
    total = scales.size
    n_nan = 0
    rne_flat = fast and length % 16 == 0 and flags[2] == 1
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        b0 = task * BLOCKS_PER_TASK
        b1 = min(total, b0 + BLOCKS_PER_TASK)
        if rne_flat:
            n_nan += _task_rne(x, b0, b1, algo, amax, tscale, s_enc, sfp, svals, fp, codes,
                               scales)
        elif fast:
            n_nan += _task_fast(x, b0, b1, nb, length, algo, amax, tscale, s_enc, sfp, svals,
                                flags, fp, codes, scales)
        else:
            n_nan += _task_generic(x, b0, b1, nb, length, algo, amax, tscale, s_enc, sfp,
                                   svals, flags, rb, rstride, nbits, tab, prm, codes, scales)
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
        b0 = task * BLOCKS_PER_TASK
        b1 = min(total, b0 + BLOCKS_PER_TASK)
        if flat:
            for blk in range(b0, b1):
                s = slut[scales[np.uint64(blk)]] * ts
                for j in range(16):
                    u = np.uint64(blk * 16 + j)
                    out[u] = elut[codes[u]] * s
        else:
            for blk in range(b0, b1):
                s = slut[scales[np.uint64(blk)]] * ts
                start, stop = _bounds(blk, nb, length)
                for i in range(start, stop):
                    u = np.uint64(i)
                    out[u] = elut[codes[u]] * s


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
