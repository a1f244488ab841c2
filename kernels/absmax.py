"""INT8 / INT4 / HiF8 (``numerics.absmax``): a float32 scale per channel, group or tensor.

The float32 steps are IEEE binary32 operations in Numba (no fastmath), in the reference's order:
``s = max(fl32(amax / fl32(target)), 2**-149)``, ``y = clip(fl32(x32 / s), +-fl32(target))``,
then the element rounding of ``y`` (exact, ``core``); unscaled HiF8 is the exact element cast.
Groups run in parallel; the per-tensor scale takes one reduction pass first.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.numerics import absmax as ref
from lowbit.numerics.api import _ABSMAX_NAMES, _no_leftovers, _reject, _take
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.tensor import QuantizedTensor

from .core import (
    NO_FAST,
    RNE_FLAGS,
    as_float32,
    check_rbits,
    element_table,
    encode_fast32,
    encode_one,
    fast_params,
    load,
    mode_flags,
    rbits_width,
)
from .elementwise import encode, use_fast
from .layout import from_rows, rows_rbits, to_rows

GROUPS_PER_TASK = 64


@njit(cache=True, inline="always")
def _group_amax(x, start, stop) -> np.float32:
    """float32 max |x| of a group, NaN when the group holds a NaN, Inf when an Inf."""
    amax = np.float32(0)
    n_nan = 0
    for i in range(start, stop):
        a = abs(np.float32(load(x, i)))
        amax = max(amax, a)
        n_nan += a != a
    return np.float32(np.nan) if n_nan else amax


@njit(parallel=True, cache=True)
def _group_scales(x, length, gs, target, scales) -> None:
    nb = -(-length // gs)
    total = scales.size
    for task in prange((total + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK):
        for g in range(task * GROUPS_PER_TASK, min(total, (task + 1) * GROUPS_PER_TASK)):
            row = g // nb
            start = row * length + (g - row * nb) * gs
            amax = _group_amax(x, start, min(start + gs, (row + 1) * length))
            s = amax / np.float32(target)
            if amax > 0:
                s = max(s, np.float32(2.0**-149))
            scales[g] = s if np.isfinite(amax) else np.float32(np.nan)


@njit(parallel=True, cache=True)
def _quantize_groups(x, length, gs, target, scales, flags, fast, fp, rb, rstride, nbits,
                     tab, prm, codes) -> None:
    nb = -(-length // gs)
    total = scales.size
    t32 = np.float32(target)
    one = np.float32(1)
    for task in prange((total + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK):
        for g in range(task * GROUPS_PER_TASK, min(total, (task + 1) * GROUPS_PER_TASK)):
            row = g // nb
            start = row * length + (g - row * nb) * gs
            s = scales[g]
            zero = not np.isfinite(s) or s == 0
            stop = min(start + gs, (row + 1) * length)
            if zero:  # +0 is code 0 in INT and HiF8
                for i in range(start, stop):
                    codes[i] = 0
            elif fast and flags[2] == 1:  # the default mode, constant-folded
                for i in range(start, stop):
                    y = min(max(np.float32(load(x, i)) / s, -t32), t32)
                    codes[i] = encode_fast32(y, one, RNE_FLAGS, fp)
            elif fast:
                for i in range(start, stop):
                    y = min(max(np.float32(load(x, i)) / s, -t32), t32)
                    codes[i] = encode_fast32(y, one, flags, fp)
            else:
                for i in range(start, stop):
                    y = min(max(np.float32(load(x, i)) / s, -t32), t32)
                    codes[i] = encode_one(np.float64(y), 0, flags, rb[i * rstride], nbits, tab,
                                          prm)


def quantize(x: np.ndarray, spec: BlockFormat, axis: int, rounding, rbits, preset,
             options: dict) -> QuantizedTensor:
    """``numerics.quantize`` for INT8 / INT4 / HiF8 (same arguments, same result)."""
    _reject(spec, preset=preset)
    opts = ref.absmax_options(spec, rounding=rounding, **_take(options, _ABSMAX_NAMES))
    _no_leftovers(spec, options)
    b = make_blocking(x.shape, axis, ref.group_size(opts))
    is_int = spec.element.encoding == "int"
    elem = spec.element.replace(symmetric=True) if is_int else spec.element
    saturate = True if is_int else opts.saturate
    flags = mode_flags(opts.rounding)
    fp = fast_params(elem, saturate)
    fast = use_fast(fp, flags)
    tab, prm = element_table(elem, saturate)
    fp = fp or NO_FAST
    rb = check_rbits(rbits, opts.rounding)
    rb2, rstride = rows_rbits(rb, b)
    if opts.granularity == "none":  # the exact element cast of the input
        codes = to_rows(encode(x, elem, opts.rounding, saturate, rb), b)
        return _result(spec, b, codes, None, opts)
    x2 = to_rows(as_float32(x), b)
    codes = np.empty(x2.shape, dtype=np.uint8)
    kernel_args = (flags, fast, fp, rb2, rstride, rbits_width(rb), tab, prm)
    gs = b.block_size
    scales = np.empty((x2.shape[0], b.n_blocks), dtype=np.float32)
    _group_scales(x2.reshape(-1), b.length, gs, opts.target, scales.reshape(-1))
    if opts.granularity == "tensor" and scales.size:
        amax = np.float32(np.nan) if np.isnan(scales).any() else np.max(scales)
        scales[...] = amax  # max of fl32(amax_g / t) = fl32(max amax_g / t): division is monotone
    _quantize_groups(x2.reshape(-1), b.length, gs, opts.target, scales.reshape(-1),
                     *kernel_args, codes.reshape(-1))
    if opts.granularity == "tensor":
        ts = scales.reshape(-1)[0] if scales.size else np.float32(0)
        return _result(spec, b, codes, None, opts, tensor_scale=np.float32(ts))
    return _result(spec, b, codes, scales, opts)


def _result(spec, b, codes, scales, opts, tensor_scale=None) -> QuantizedTensor:
    return QuantizedTensor(
        fmt=spec.name, codes=from_rows(codes, b),
        scales=None if scales is None else from_rows(scales, b), axis=b.axis,
        block_size=b.block_size, tensor_scale=tensor_scale, pad=b.pad,
        options=dict(vars(opts)),
    )


@njit(parallel=True, cache=True)
def _dequantize(codes, length, gs, lut, scales, sstride, out) -> None:
    nb = -(-length // gs)
    total = codes.size // length * nb if length else 0
    for task in prange((total + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK):
        for g in range(task * GROUPS_PER_TASK, min(total, (task + 1) * GROUPS_PER_TASK)):
            row = g // nb
            start = row * length + (g - row * nb) * gs
            s = scales[g * sstride]
            for i in range(start, min(start + gs, (row + 1) * length)):
                out[i] = lut[codes[i]] * s


def dequantize(q: QuantizedTensor, dtype) -> np.ndarray:
    """``numerics.dequantize`` of an INT8 / INT4 / HiF8 ``QuantizedTensor``: fl32(value * s)."""
    spec = block_format(q.fmt)
    b = make_blocking(q.codes.shape, q.axis, q.block_size)
    codes = to_rows(q.codes, b)
    if q.scales is not None:
        scales, stride = to_rows(q.scales, b, b.n_blocks).reshape(-1), 1
    else:
        one = np.float32(1) if q.tensor_scale is None else np.float32(q.tensor_scale)
        scales, stride = np.full(1, one, dtype=np.float32), 0
    out = np.empty(codes.shape, dtype=np.float32)
    lut = spec.element.values.astype(np.float32)
    _dequantize(codes.reshape(-1), b.length, b.block_size, lut, scales, stride, out.reshape(-1))
    return from_rows(out, b).astype(dtype, copy=False)
