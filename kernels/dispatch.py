"""Backend selection for ``quantize`` / ``dequantize`` / ``encode``.

Backends: ``"reference"`` (``lowbit.numerics``, exact), ``"numba"`` (the CPU kernels,
bit-identical to the reference) and ``"cupy"`` (the GPU kernels ``cupy_*.py``, entry points in
``cupy_api``; results stay on the device). ``backend=None`` picks ``cupy`` for CuPy arrays and
CUDA torch tensors; otherwise the environment variable ``LOWBIT_BACKEND`` if set (e.g.
"reference" to force the exact reference everywhere), else numba when Numba imports, else the
reference.

The numba backend hands the reference the cases it does not cover, with identical results:
inputs that are not float16/bfloat16/float32/float64 arrays (integers, lists, ...) and HiF4 on
float64 input (its products need the reference's rounding to odd).
Float64 input is otherwise handled exactly (MX, element casts; NVFP4 and INT/HiF8 round it to
float32 first, as the reference does).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

BACKENDS = ("reference", "numba", "cupy")


def numba_available() -> bool:
    """Whether the numba backend can run (Numba importable)."""
    return importlib.util.find_spec("numba") is not None


def _on_gpu(x) -> bool:
    from .cupy_core import is_device_array

    return x is not None and is_device_array(x)


def resolve(backend: str | None, x=None) -> str:
    """The backend to use for array ``x``: ``backend`` checked, or the default for ``x``'s type."""
    if backend == "cupy" or (backend is None and _on_gpu(x)):
        from .cupy_core import cupy_available

        if not cupy_available():
            raise ImportError("backend='cupy' needs CuPy and a CUDA device")
        return "cupy"
    if backend is None:
        backend = os.environ.get("LOWBIT_BACKEND") or None
    if backend is None:
        return "numba" if numba_available() else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "numba" and not numba_available():
        raise ImportError("backend='numba' needs the numba package")
    return backend


def _kernel_ready(x) -> bool:
    from .core import SUPPORTED_DTYPES

    return isinstance(x, np.ndarray) and x.dtype.name in SUPPORTED_DTYPES


def quantize(x, fmt, *, backend: str | None = None, axis: int = -1, scale_rule=None,
             rounding=None, prescale=None, rbits=None, preset=None, **options):
    """``numerics.quantize`` on the chosen backend (same arguments and result)."""
    from lowbit.numerics import api
    from lowbit.numerics.formats import block_format

    args = dict(axis=axis, scale_rule=scale_rule, rounding=rounding, prescale=prescale,
                rbits=rbits, preset=preset)
    chosen = resolve(backend, x)
    if chosen == "cupy":
        from . import cupy_api

        return cupy_api.quantize(x, fmt, **args, **options)
    if chosen == "reference" or not _kernel_ready(x):
        return api.quantize(x, fmt, backend="reference", **args, **options)
    from .core import Unsupported

    spec = block_format(fmt)
    try:
        return _quantize_numba(x, spec, dict(options), **args)
    except Unsupported:
        return api.quantize(x, fmt, backend="reference", **args, **options)


def _quantize_numba(x, spec, options, *, axis, scale_rule, rounding, prescale, rbits, preset):
    from lowbit.numerics.api import _reject

    if spec.scheme == "mx":
        from . import mx

        return mx.quantize(x, spec, axis, scale_rule, rounding, prescale, rbits, preset, options)
    _reject(spec, scale_rule=scale_rule, prescale=prescale)
    if spec.scheme == "nvfp4":
        from . import nvfp4

        return nvfp4.quantize(x, spec, axis, rounding, rbits, preset, options)
    if spec.scheme == "hif4":
        from . import hif4

        return hif4.quantize(x, spec, axis, rounding, rbits, preset, options)
    from . import absmax

    return absmax.quantize(x, spec, axis, rounding, rbits, preset, options)


def dequantize(q, *, dtype=np.float32, backend: str | None = None) -> np.ndarray:
    """``numerics.dequantize`` on the chosen backend (same result)."""
    from lowbit.numerics import api
    from lowbit.numerics.formats import block_format

    chosen = resolve(backend, q.codes)
    if chosen == "cupy":
        from . import cupy_api

        return cupy_api.dequantize(q, dtype=dtype)
    if chosen == "reference" or not isinstance(q.codes, np.ndarray):
        return api.dequantize(q, dtype=dtype, backend="reference")
    scheme = block_format(q.fmt).scheme
    if scheme == "mx":
        from .mx import dequantize as run
    elif scheme == "nvfp4":
        from .nvfp4 import dequantize as run
    elif scheme == "hif4":
        from .hif4 import dequantize as run
    else:
        from .absmax import dequantize as run
    return run(q, dtype)


def encode(x, fmt, *, rounding=None, saturate=None, rbits=None, backend: str | None = None):
    """``numerics.encode`` (element cast) on the chosen backend (same arguments and result)."""
    from lowbit.numerics import codec
    from lowbit.numerics.specs import element_format

    args = dict(rounding=rounding, saturate=saturate, rbits=rbits)
    chosen = resolve(backend, x)
    if chosen == "cupy":
        from . import cupy_api

        return cupy_api.encode(x, fmt, **args)
    if chosen == "reference" or not _kernel_ready(x):
        return codec.encode(x, fmt, backend="reference", **args)
    from . import elementwise
    from .core import check_rbits

    spec = element_format(fmt)
    rounding = spec.rounding if rounding is None else rounding
    saturate = spec.saturate if saturate is None else bool(saturate)
    return elementwise.encode(x, spec, rounding, saturate, check_rbits(rbits, rounding))


def pack(q, *, scale_layout: str = "linear", backend: str | None = None):
    """``numerics.packing.pack`` on the chosen backend (same result)."""
    from lowbit.numerics import packing

    chosen = resolve(backend, q.codes)
    if chosen == "cupy":
        from . import cupy_api

        return cupy_api.pack(q, scale_layout=scale_layout)
    if chosen == "reference" or not isinstance(q.codes, np.ndarray):
        return packing.pack(q, scale_layout=scale_layout)
    from . import packing as kpacking

    return kpacking.pack(q, scale_layout)


def unpack(p, *, backend: str | None = None):
    """``numerics.packing.unpack`` on the chosen backend (same result)."""
    from lowbit.numerics import packing

    if resolve(backend, p.data) == "reference" or not isinstance(p.data, np.ndarray):
        return packing.unpack(p)
    from . import packing as kpacking

    return kpacking.unpack(p)
