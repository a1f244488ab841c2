"""The ``backend="cupy"`` entry points: quantize, dequantize, encode, pack and fake-quantize on
the GPU, for CuPy arrays and CUDA torch tensors (zero copy through DLPack; results stay on the
device, as the input's array type). Same arguments and bit-identical results as
``lowbit.numerics``; ``QuantizedTensor`` / ``PackedTensor`` fields hold device arrays (scalar
fields such as ``tensor_scale`` are host values).

For the torch integration (``integrations/fakequant.py``)::

    from lowbit.kernels.cupy_api import fake_quantize, torch_fake_quant
    y = fake_quantize(x, "mxfp4", axis=-1)        # x: CUDA tensor; y: same shape and dtype
    fakequant.register_kernel("cuda", torch_fake_quant)   # fn(x, spec) -> Tensor
"""

from __future__ import annotations

import numpy as np

from lowbit.numerics.formats import block_format
from lowbit.numerics.packing import PackedTensor
from lowbit.numerics.tensor import QuantizedTensor

from . import cupy_core as cc


def _check_input(x):
    if not cc.is_device_array(x):
        raise TypeError("backend='cupy' takes CuPy arrays or CUDA torch tensors; "
                        f"got {type(x).__module__}.{type(x).__name__}")


def quantize(x, fmt, *, axis=-1, scale_rule=None, rounding=None, prescale=None, rbits=None,
             preset=None, **options) -> QuantizedTensor:
    """``numerics.quantize`` on the GPU (same arguments, same bits; arrays stay on the device)."""
    from lowbit.numerics.api import _reject

    _check_input(x)
    spec = block_format(fmt)
    if spec.scheme == "mx":
        from . import cupy_mx

        return cupy_mx.quantize(x, spec, axis, scale_rule, rounding, prescale, rbits, preset,
                                **options)
    _reject(spec, scale_rule=scale_rule, prescale=prescale)
    if spec.scheme == "nvfp4":
        from . import cupy_nvfp4

        return cupy_nvfp4.quantize(x, spec, axis, rounding, rbits, preset, **options)
    if spec.scheme == "hif4":
        from . import cupy_hif4

        return cupy_hif4.quantize(x, spec, axis, rounding, rbits, preset, **options)
    from . import cupy_absmax

    return cupy_absmax.quantize(x, spec, axis, rounding, rbits, preset, **options)


def dequantize(q: QuantizedTensor, *, dtype=np.float32):
    """``numerics.dequantize`` on the GPU (``dtype`` float32/float64/float16/bfloat16, numpy,
    ml_dtypes or torch dtypes)."""
    scheme = block_format(q.fmt).scheme
    if scheme == "mx":
        from .cupy_mx import dequantize as run
    elif scheme == "nvfp4":
        from .cupy_nvfp4 import dequantize as run
    elif scheme == "hif4":
        from .cupy_hif4 import dequantize as run
    else:
        from .cupy_absmax import dequantize as run
    return run(q, dtype)


def encode(x, fmt, *, rounding=None, saturate=None, rbits=None):
    """``numerics.encode`` on the GPU."""
    from . import cupy_elementwise

    _check_input(x)
    return cupy_elementwise.encode(x, fmt, rounding, saturate, rbits)


def quantize_packed(x, fmt, *, axis=-1, scale_layout="linear", rounding=None, rbits=None,
                    preset=None, scale_rule=None, prescale=None, global_amax=None,
                    **options) -> PackedTensor:
    """Quantize and pack in one pass (MX, NVFP4, HiF4): ``numerics.pack(numerics.quantize(...))``
    with ``data`` / ``scales`` / ``meta`` on the device. No host synchronisation for MX and HiF4;
    NVFP4 reads its global amax (or takes ``global_amax``) and so has a tensor scale on the host.
    Other formats quantize then ``pack``.
    """
    from lowbit.numerics.packing import SCALE_LAYOUTS

    _check_input(x)
    if scale_layout not in SCALE_LAYOUTS:
        raise ValueError(f"unknown scale_layout {scale_layout!r}; expected one of {SCALE_LAYOUTS}")
    spec = block_format(fmt)
    swz = scale_layout == "swizzled"
    if spec.scheme == "mx":
        from . import cupy_mx

        spec, opts, alpha = cupy_mx.resolve(spec, scale_rule, rounding, prescale, preset,
                                            **options)
        if alpha is not None:
            cupy_mx._check_alpha(x, alpha)
        data, scales, b = cupy_mx.quantize_dev(x, spec, opts, axis, alpha, rbits, True, swz)
        return _packed(spec, b, data, scales, None, scale_layout, None, alpha, vars(opts))
    if spec.scheme == "nvfp4":
        from lowbit.numerics import nvfp4 as ref

        from . import cupy_nvfp4

        opts = ref.nvfp4_options(preset, rounding=rounding, **options)
        data, scales, b, gbits, err = cupy_nvfp4.quantize_dev(x, spec, opts, axis, global_amax,
                                                              rbits, True, swz)
        if int(err.get()[0]):
            raise ValueError("NVFP4 input contains NaN or Inf, or the algorithm's float32 "
                             "arithmetic produced NaN")
        ts = cupy_nvfp4.tensor_scale(opts.algorithm, np.float32(gbits.get().view(np.float32)[0]))
        return _packed(spec, b, data, scales, None, scale_layout, ts, None, vars(opts))
    if spec.scheme == "hif4":
        from lowbit.numerics import hif4 as ref

        from . import cupy_hif4

        if swz:
            raise ValueError("scale_layout='swizzled' is not defined for hif4: its E6M2 scale "
                             "lives in the 4-byte HiF4 metadata words; use 'linear'")
        opts = ref.hif4_options(rounding=rounding, **options)
        data, meta, _, b = cupy_hif4.quantize_dev(x, spec, opts, axis, rbits, True)
        return _packed(spec, b, data, None, meta, scale_layout, None, None, vars(opts))
    q = quantize(x, spec, axis=axis, rounding=rounding, rbits=rbits, preset=preset, **options)
    return pack(q, scale_layout=scale_layout)


def _packed(spec, b, data, scales, meta, layout, ts, alpha, opts) -> PackedTensor:
    return PackedTensor(fmt=spec.name, shape=tuple(b.shape), axis=b.axis,
                        block_size=b.block_size, pad=b.pad, data=data, scales=scales, meta=meta,
                        scale_layout=layout, tensor_scale=None if ts is None else np.float32(ts),
                        prescale=alpha, options=dict(opts))


def pack(q: QuantizedTensor, *, scale_layout: str = "linear") -> PackedTensor:
    """``numerics.pack`` of a ``QuantizedTensor`` whose arrays are on the device."""
    from . import cupy_pack

    return cupy_pack.pack(q, scale_layout=scale_layout)


def fake_quantize(x, fmt, *, axis=-1, dtype=None, **options):
    """Quantize then dequantize a CUDA tensor (or CuPy array) on the GPU: the forward of a
    straight-through fake-quant op. Same shape and dtype as ``x`` (float16/bfloat16/float32/
    float64); the values are ``dequantize(quantize(x, fmt, ...), dtype=x.dtype)`` bit for bit.
    Options are ``quantize``'s. The gradient (straight through) is the caller's.
    """
    _check_input(x)
    _, name = cc.as_cupy(x)
    q = quantize(x, fmt, axis=axis, **options)
    return dequantize(q, dtype=name if dtype is None else dtype)


def torch_fake_quant(x, spec):
    """The CUDA kernel for ``integrations.fakequant.register_kernel("cuda", torch_fake_quant)``:
    ``fn(x, spec) -> Tensor``, bit-identical to that module's CPU path (quantize ``x`` as float32
    along the last axis, dequantize to float32, cast to ``x.dtype``), all on the GPU."""
    import torch

    opts = dict(spec.quantize_options)
    xin = x.detach()
    if xin.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        xin = xin.float()
    y = fake_quantize(xin.contiguous(), spec.fmt, axis=-1, dtype="float32", **opts)
    return y.to(x.dtype)
