"""HiFloat4 (``numerics.hif4``): E6M2 scale, E1_8 / E1_16 micro-exponents, S1P2 elements per 64.

One 64-element block per loop iteration, in parallel. For float16/bfloat16/float32 input every
product ``|x| * REC`` (<= 24 + 8 significant bits) is exact in float64, so the threshold tests
and the element rounding (``core``) are the reference's exact decisions. 16-bit inputs are read
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
    NO_FAST,
    Unsupported,
    as_float32,
    bits_f64,
    check_rbits,
    element_table,
    encode_fast,
    encode_one,
    f64_bits,
    fast_params,
    load,
    mode_flags,
    pow2,
    rbits_width,
)
from .elementwise import use_fast
from .layout import from_rows, n_rows, rows_rbits, to_rows

BS = ref.BLOCK_SIZE
RNA_FLAGS = (1, 1, 0, 0)
"""``mode_flags("nearest_away")`` as a global constant (see ``core.RNE_FLAGS``)."""
BLOCKS_PER_TASK = 128


@njit(cache=True, inline="always")
def _bf16_rne(v: float) -> float:
    """Non-negative float64 rounded to 8 significant bits, ties to even (as the reference)."""
    b = f64_bits(v)
    lsb = (b >> 45) & 1
    return bits_f64((b + (np.int64(1) << 44) - 1 + lsb) & ~((np.int64(1) << 45) - 1))


@njit(parallel=True, cache=True)
def _quantize(x, length, sflags, stab, sprm, rec, flags, fast, fp, rb, rstride, nbits, tab,
              prm, elut, negzero, codes, scales, micro) -> None:
    nb = -(-length // BS)
    total = scales.size
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        v16 = np.empty(16)
        shift4 = np.empty(16, dtype=np.int64)
        mult4 = np.empty(16)
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
                mult4[j] = r * pow2(-shift4[j])  # exact: REC times a power of two
            if fast and flags[1] == 1:  # nearest_away, HiF4's default: constant-folded
                for i in range(start, stop):
                    v = load(x, i)
                    y = abs(v) * mult4[(i - start) >> 2]
                    codes[i] = encode_fast(-y if v < 0 else y, 0, RNA_FLAGS, fp)
            elif fast:
                for i in range(start, stop):
                    v = load(x, i)
                    y = abs(v) * mult4[(i - start) >> 2]
                    codes[i] = encode_fast(-y if v < 0 else y, 0, flags, fp)
            else:
                for i in range(start, stop):
                    v = load(x, i)
                    y = abs(v) * r
                    codes[i] = encode_one(-y if v < 0 else y, shift4[(i - start) >> 2], flags,
                                          rb[i * rstride], nbits, tab, prm)
            if not negzero:
                for i in range(start, stop):
                    codes[i] = 0 if elut[codes[i]] == 0 else codes[i]


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
    fp = fast_params(spec.element, True)
    tab, prm = element_table(spec.element, True)
    stab, sprm = element_table(spec.scale, True)
    rb = check_rbits(rbits, opts.rounding)
    rb2, rstride = rows_rbits(rb, b)
    codes = np.empty((rows, b.length), dtype=np.uint8)
    scales = np.empty((rows, b.n_blocks), dtype=np.uint8)
    micro = np.empty((rows * b.n_blocks, 24), dtype=np.uint8)
    _quantize(to_rows(as_float32(x), b).reshape(-1), b.length, mode_flags(opts.scale_rounding),
              stab, sprm, ref.reciprocals(spec.scale), flags, use_fast(fp, flags), fp or NO_FAST,
              rb2, rstride, rbits_width(rb), tab, prm, spec.element.values, opts.negative_zero,
              codes.reshape(-1), scales.reshape(-1), micro)
    return QuantizedTensor(
        fmt=spec.name, codes=from_rows(codes, b), scales=from_rows(scales, b), axis=b.axis,
        block_size=b.block_size, micro=from_rows(micro.reshape(rows, b.n_blocks, 24), b),
        pad=b.pad, options=dict(vars(opts)),
    )


@njit(parallel=True, cache=True)
def _dequantize(codes, length, scales, micro, elut, slut, out) -> None:
    nb = -(-length // BS)
    total = scales.size
    for task in prange((total + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        for blk in range(task * BLOCKS_PER_TASK, min(total, (task + 1) * BLOCKS_PER_TASK)):
            row = blk // nb
            start = row * length + (blk - row * nb) * BS
            s = slut[scales[blk]]
            for i in range(start, min(start + BS, (row + 1) * length)):
                k = micro[blk, (i - start) >> 3] + micro[blk, 8 + ((i - start) >> 2)]
                out[i] = elut[codes[i]] * s * pow2(k)


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
                micro.astype(np.int64), spec.element.values, spec.scale.values, out.reshape(-1))
    return from_rows(out, b).astype(dtype, copy=False)
