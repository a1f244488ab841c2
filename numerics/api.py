"""``quantize`` and ``dequantize``: one entry point for every block format.

The work is split by scaling scheme (``mx``, ``nvfp4``, ``hif4``, ``absmax``); this module only
normalises the input, cuts it into blocks along ``axis`` (zero-padding the last block, which
changes no result: zeros never raise a block maximum), dispatches, and reassembles.
"""

from __future__ import annotations

import numpy as np

from . import absmax, hif4, mx, nvfp4
from .blocks import (
    block_axis_to_tensor,
    from_blocks,
    make_blocking,
    tensor_to_block_axis,
    to_blocks,
)
from .codec import as_float64
from .formats import BlockFormat, block_format
from .tensor import QuantizedTensor

DEFAULT_PRESCALE = 0.75


def quantize(
    x,
    fmt: str | BlockFormat,
    *,
    axis: int = -1,
    scale_rule: str | None = None,
    rounding: str | None = None,
    prescale: float | bool | None = None,
    rbits=None,
    preset: str | None = None,
    backend: str | None = None,
    **options,
) -> QuantizedTensor:
    """Quantize ``x`` to block format ``fmt`` along ``axis``.

    Args:
        x: array of float16, bfloat16 (ml_dtypes), float32 or float64 (integers are converted
            exactly). Any shape with at least one dimension, contiguous or not; empty is fine.
        fmt: block format name (``formats("block")``) or ``BlockFormat``.
        axis: the axis cut into blocks (the reduction axis of a matmul). Its length need not
            be a multiple of the block size: the last block is zero-padded (``q.pad`` says by
            how much) and the codes keep ``x``'s shape.
        scale_rule: MX only: "floor" (default, OCP v1.0), "ceil", "rceil", "even".
        rounding: element rounding ("nearest_even", "nearest_away", "nearest_zero",
            "toward_zero", "stochastic"); default per format (HiF8/HiF4: "nearest_away").
        prescale: MX only: the pre-scale alpha (True means 0.75): the scale exponent comes from
            the unscaled block maximum, elements are rounded from ``alpha * x``, and dequantize
            divides by alpha (kept in ``q.prescale``).
        rbits: unsigned random integers of x's shape for ``rounding="stochastic"`` (the dtype
            width is the number of random bits).
        preset: a peer preset that sets several options together (``mx.MX_PRESETS``,
            ``nvfp4.NVFP4_PRESETS``).
        **options: scheme options: MX ``inf_policy``, ``code0_divisor``, ``symmetric_int``,
            ``zero_sign``; NVFP4 ``global_amax``, ``algorithm``; INT/HiF8 ``granularity``,
            ``group_size``, ``target``, ``saturate``.
        backend: "reference" (this module), "numba" or "cupy" (``lowbit.kernels``, bit-identical);
            None: the fastest available for ``x``'s array type.
    """
    if backend != "reference":
        from ..kernels import dispatch

        return dispatch.quantize(x, fmt, backend=backend, axis=axis, scale_rule=scale_rule,
                                 rounding=rounding, prescale=prescale, rbits=rbits,
                                 preset=preset, **options)
    spec = block_format(fmt)
    x64 = as_float64(x)
    rb = None if rbits is None else np.broadcast_to(np.asarray(rbits), x64.shape)
    if spec.scheme == "mx":
        return _quantize_mx(x64, spec, axis, scale_rule, rounding, prescale, rb, preset, options)
    _reject(spec, scale_rule=scale_rule, prescale=prescale)
    if spec.scheme == "nvfp4":
        opts = nvfp4.nvfp4_options(preset, rounding=rounding, **_take(options, nvfp4.OPTION_NAMES))
        global_amax = options.pop("global_amax", None)
        _no_leftovers(spec, options)
        b = make_blocking(x64.shape, axis, spec.block_size)
        codes, scales, ts = nvfp4.quantize_blocks(
            to_blocks(x64, b), spec, opts, global_amax, _blocks_or_none(rb, b)
        )
        return _assemble(spec, b, codes, scales, opts, tensor_scale=ts)
    if spec.scheme == "hif4":
        _reject(spec, preset=preset)
        opts = hif4.hif4_options(rounding=rounding, **_take(options, hif4.OPTION_NAMES))
        _no_leftovers(spec, options)
        b = make_blocking(x64.shape, axis, spec.block_size)
        codes, scales, micro = hif4.quantize_blocks(
            to_blocks(x64, b), spec, opts, _blocks_or_none(rb, b)
        )
        return _assemble(spec, b, codes, scales, opts, micro=micro)
    _reject(spec, preset=preset)
    opts = absmax.absmax_options(spec, rounding=rounding, **_take(options, _ABSMAX_NAMES))
    _no_leftovers(spec, options)
    b = make_blocking(x64.shape, axis, absmax.group_size(opts))
    codes, scales = absmax.quantize_blocks(to_blocks(x64, b), spec, opts, _blocks_or_none(rb, b))
    if scales is not None and opts.granularity == "tensor":
        scales = scales.reshape(-1)[:1].reshape(()) if scales.size else np.float32(0)
        return _assemble(spec, b, codes, None, opts, tensor_scale=np.float32(scales))
    return _assemble(spec, b, codes, scales, opts)


_ABSMAX_NAMES = ("granularity", "group_size", "target", "saturate")


def _quantize_mx(x64, spec, axis, scale_rule, rounding, prescale, rb, preset, options):
    opts = mx.mx_options(preset, scale_rule=scale_rule, rounding=rounding, **options)
    alpha = DEFAULT_PRESCALE if prescale is True else (None if prescale in (None, False) else
                                                       float(prescale))
    if alpha is not None:
        mx.check_prescale_exact(x64, alpha)
    b = make_blocking(x64.shape, axis, spec.block_size)
    codes, scales = mx.quantize_blocks(to_blocks(x64, b), spec, opts, _blocks_or_none(rb, b), alpha)
    return _assemble(spec, b, codes, scales, opts, prescale=alpha)


def _blocks_or_none(rb, b):
    return None if rb is None else to_blocks(rb, b)


def _take(options: dict, names) -> dict:
    return {k: options.pop(k) for k in list(options) if k in names}


def _no_leftovers(spec: BlockFormat, options: dict) -> None:
    if options:
        raise TypeError(f"{spec.name} does not take option(s) {sorted(options)}")


def _reject(spec: BlockFormat, **given) -> None:
    for name, val in given.items():
        if val not in (None, False):
            raise TypeError(
                f"{name}= applies to MX formats (and presets to MX/NVFP4), not {spec.name}"
            )


def _assemble(spec, b, codes, scales, opts, *, tensor_scale=None, micro=None, prescale=None):
    return QuantizedTensor(
        fmt=spec.name,
        codes=from_blocks(codes.astype(np.uint8), b),
        scales=None if scales is None else block_axis_to_tensor(scales, b),
        axis=b.axis,
        block_size=b.block_size,
        tensor_scale=None if tensor_scale is None else np.float32(tensor_scale),
        micro=None if micro is None else block_axis_to_tensor(micro, b),
        pad=b.pad,
        prescale=prescale,
        options=dict(vars(opts)) if hasattr(opts, "__dict__") else {},
    )


def dequantize(q: QuantizedTensor, *, dtype=np.float32, backend: str | None = None) -> np.ndarray:
    """Decode a ``QuantizedTensor`` to ``dtype`` (default float32) in the input's shape.

    MX, NVFP4 and HiF4 values are computed exactly in float64 and rounded once to ``dtype``
    (float32 holds every value except MX blocks whose scale exceeds float32's range, which
    become +-Inf there; pass ``dtype=np.float64`` to keep them). NaN scales give NaN.
    ``backend`` as in ``quantize``.
    """
    if backend != "reference":
        from ..kernels import dispatch

        return dispatch.dequantize(q, dtype=dtype, backend=backend)
    spec = block_format(q.fmt)
    b = make_blocking(q.codes.shape, q.axis, q.block_size)
    codes = to_blocks(q.codes, b)
    scales = None if q.scales is None else tensor_to_block_axis(q.scales, b)
    if spec.scheme == "mx":
        out = mx.dequantize_blocks(codes, scales, spec, q.prescale)
    elif spec.scheme == "nvfp4":
        out = nvfp4.dequantize_blocks(codes, scales, q.tensor_scale, spec)
    elif spec.scheme == "hif4":
        micro = tensor_to_block_axis(q.micro, b, trailing=1)
        out = hif4.dequantize_blocks(codes, scales, micro, spec)
    else:
        if scales is None and q.tensor_scale is not None:
            scales = np.full(codes.shape[:-1], q.tensor_scale, dtype=np.float32)
        out = absmax.dequantize_blocks(codes, scales, spec)
    return from_blocks(out, b).astype(dtype)
