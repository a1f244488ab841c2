"""Element casts: ``encode`` (any element format, every rounding mode) and code-to-value lookup.

Three encoders, picked per call: ``encode_fast32``/``encode_fast`` (IEEE-like formats with
subnormals and integers, deterministic modes), the split table (``split_table``: every other
format on float32/float16/bfloat16 input, deterministic modes: HiF8, E8M0, ...) and
``encode_one`` (the rest: stochastic rounding, float64 input).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.numerics.codec import _check_saturate
from lowbit.numerics.specs import ElementFormat

from .core import (
    RNE_FLAGS,
    element_table,
    encode_fast,
    encode_fast32,
    encode_one,
    f32_bits_of,
    fast_params,
    kernel_input,
    load,
    load32,
    mode_flags,
    rbits_width,
)
from .split_table import split_table

CHUNK = 1 << 14
"""Elements per parallel work item of the flat kernels."""


@njit(parallel=True, cache=True)
def _encode_flat(x, rb, rstride, nbits, flags, tab, prm, out) -> int:
    n = x.size
    bad = 0
    for c in prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            code = encode_one(load(x, i), 0, flags, rb[i * rstride], nbits, tab, prm)
            bad += code < 0
            out[i] = code
    return bad


@njit(parallel=True, cache=True)
def _encode_flat_fast(x, flags, fp, out) -> int:
    n = x.size
    bad = 0
    for c in prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            code = encode_fast(load(x, i), 0, flags, fp)
            bad += code < 0
            out[i] = code
    return bad


@njit(parallel=True, cache=True)
def _encode_flat_fast32(x, flags, fp, out) -> int:
    n = x.size
    bad = 0
    one = np.float32(1)
    for c in prange((n + CHUNK - 1) // CHUNK):
        stop = min(n, (c + 1) * CHUNK)
        if flags[2] == 1:  # the default mode, constant-folded
            for i in range(c * CHUNK, stop):
                code = encode_fast32(load32(x, i), one, RNE_FLAGS, fp)
                bad += code < 0
                out[i] = code
        else:
            for i in range(c * CHUNK, stop):
                code = encode_fast32(load32(x, i), one, flags, fp)
                bad += code < 0
                out[i] = code
    return bad


@njit(parallel=True, cache=True)
def _encode_flat_split(x, tab, out) -> int:
    n = x.size
    bad = 0
    for c in prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            b = f32_bits_of(x, i)
            code = tab[(b >> 16) | (np.int64((b & 0xFFFF) != 0) << 16)]
            bad += code < 0
            out[i] = code
    return bad


def flat_rbits(rbits, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """(flat C-ordered rbits of ``shape``, stride 1), or a dummy read with stride 0."""
    if rbits is None:
        return np.zeros(1, dtype=np.uint32), 0
    return np.broadcast_to(rbits, shape).reshape(-1).astype(np.uint32), 1


def use_fast(fp, flags) -> bool:
    """Whether ``encode_fast`` applies: a format it covers and a deterministic rounding."""
    return fp is not None and not flags[3]


def encode(x: np.ndarray, spec: ElementFormat, rounding: str, saturate: bool, rbits=None):
    """``codec.encode`` of a float16/bfloat16/float32/float64 array; rbits of <= 32 bits."""
    _check_saturate(spec, saturate)
    flags = mode_flags(rounding)
    arr = kernel_input(np.ascontiguousarray(x))
    flat = arr.reshape(-1)
    out = np.empty(x.shape, dtype=np.uint8)
    fp = fast_params(spec, saturate)
    table = None
    if not (use_fast(fp, flags) or flags[3] or x.dtype == np.float64):
        table = split_table(spec, rounding, saturate)
    if use_fast(fp, flags) and x.dtype != np.float64:
        bad = _encode_flat_fast32(flat, flags, fp, out.reshape(-1))
    elif use_fast(fp, flags):
        bad = _encode_flat_fast(flat, flags, fp, out.reshape(-1))
    elif table is not None:
        bad = _encode_flat_split(flat, table, out.reshape(-1))
    else:
        tab, prm = element_table(spec, saturate)
        rb, stride = flat_rbits(rbits, x.shape)
        bad = _encode_flat(flat, rb, stride, rbits_width(rbits), flags, tab, prm,
                           out.reshape(-1))
    if bad:
        raise ValueError(f"{spec.name} has no NaN code but the input contains NaN")
    return out


@njit(parallel=True, cache=True)
def _lookup_flat(codes, lut, out) -> None:
    n = codes.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            out[i] = lut[codes[i]]


def lookup(codes: np.ndarray, lut: np.ndarray, dtype) -> np.ndarray:
    """``lut[codes].astype(dtype)`` for integer codes (the lut holds one value per code)."""
    c = np.ascontiguousarray(codes)
    out = np.empty(c.shape, dtype=dtype)
    _lookup_flat(c.reshape(-1), lut, out.reshape(-1))
    return out
