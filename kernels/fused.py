"""Fused quantize-to-packed on the CPU: ``pack(quantize(x, fmt, ...))`` in one kernel pass.

The MX kernel writes 4-bit element codes straight into packed bytes (two per byte, first code
in the low nibble, ``numerics.packing``'s order) while each block is in cache, so the unpacked
codes never exist. Cases the fused kernel does not cover (other formats, stochastic rounding,
a pre-scale, float64 input, rows that are not whole blocks) run ``quantize`` then ``pack``;
both ways give the reference's ``PackedTensor`` bit for bit.
"""

from __future__ import annotations

import numpy as np

from lowbit.numerics import packing as ref
from lowbit.numerics.formats import block_format

from . import dispatch
from .core import SUPPORTED_DTYPES, Unsupported


def quantize_packed(x, fmt: str, *, scale_layout: str = "linear", backend: str | None = None,
                    **kwargs) -> ref.PackedTensor:
    """``pack(quantize(x, fmt, **kwargs), scale_layout=scale_layout)`` (same result)."""
    if scale_layout not in ref.SCALE_LAYOUTS:
        raise ValueError(f"unknown scale_layout {scale_layout!r}; "
                         f"expected one of {ref.SCALE_LAYOUTS}")
    spec = block_format(fmt)
    fused = (spec.scheme == "mx" and isinstance(x, np.ndarray)
             and x.dtype.name in SUPPORTED_DTYPES and dispatch.resolve(backend, x) == "numba")
    if fused:
        try:
            return _mx_packed(x, spec, scale_layout, **kwargs)
        except Unsupported:
            pass
    q = dispatch.quantize(x, fmt, backend=backend, **kwargs)
    return dispatch.pack(q, scale_layout=scale_layout, backend=backend)


def _mx_packed(x, spec, scale_layout: str, *, axis: int = -1, scale_rule=None, rounding=None,
               prescale=None, rbits=None, preset=None, **options) -> ref.PackedTensor:
    from . import mx

    data, scales, b, opts, alpha = mx.quantize(x, spec, axis, scale_rule, rounding, prescale,
                                               rbits, preset, options, pack4=True)
    if scale_layout == "swizzled":
        scales = ref.swizzle_scales(scales)
    return ref.PackedTensor(
        fmt=spec.name, shape=tuple(x.shape), axis=b.axis, block_size=b.block_size, pad=b.pad,
        data=data, scales=np.ascontiguousarray(scales), meta=None, scale_layout=scale_layout,
        tensor_scale=None, prescale=alpha, options=dict(vars(opts)),
    )
