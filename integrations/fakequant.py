"""Fake quantization for torch: ``x -> dequantize(quantize(x))`` through ``lowbit.numerics``.

A format is given by a ``QuantSpec`` (a block format name plus ``ln.quantize`` options); strings
parse as ``"mxfp4"``, ``"mxfp4:scale_rule=rceil,prescale=0.75"``, ``"int4:group_size=32"``.
``None``, ``"none"``, ``"fp32"``, ``"bf16"`` and ``"fp16"`` mean no quantization.

Blocks always run along the last dimension (the matmul reduction dimension for activations
``(..., K)``, for weights ``(N, K)`` and for K/V states ``(..., head_dim)``).

The forward value is computed by ``ln.quantize`` / ``ln.dequantize`` on the default backend
(the Numba kernels); if the kernels raise for a format (they are being completed), that format
falls back to ``backend="reference"`` for the rest of the process, with identical results.
Arrays under ``SINGLE_THREAD_BELOW`` elements (activations, K/V states, weight blocks) run the
kernels on one Numba thread: waking a parallel pool next to torch's own OpenMP pool costs more
than the work (about 20 ms per call on a busy 2-core machine, against 0.2-2 ms single-threaded).
The gradient is the straight-through estimator (identity), so QAT-style experiments can use it.

Device hooks: CUDA tensors use lowbit's CuPy kernel (``kernels.cupy_api.torch_fake_quant``) when
CuPy imports; ``register_kernel(device_type, fn)`` installs another ``fn(x: Tensor, spec) ->
Tensor``. Without one, tensors on any device take the CPU round trip (copy to host, NumPy, copy
back), which is exact but slow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .keyvalue import parse_key_values

SINGLE_THREAD_BELOW = 1 << 20
NO_QUANT = (None, "", "none", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")
WEIGHT_ONLY_KEYS = ("prescale_search",)


@dataclass(frozen=True)
class QuantSpec:
    """A block format name and its ``ln.quantize`` options (scale_rule, rounding, prescale,
    preset, granularity, group_size, target, saturate, global_amax, ...).

    ``prescale_search=True`` (weights only) picks the MX pre-scale per tensor with
    ``ln.search_prescale`` instead of a fixed ``prescale``.
    """

    fmt: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        from lowbit.numerics import block_format

        block_format(self.fmt)  # validates the name
        g = self.options.get("group_size")
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g <= 0):
            raise ValueError(f"group_size must be a positive integer, got {g!r} (in {self})")
        if self.options.get("granularity") == "group" and g is None:
            raise ValueError(f"granularity='group' needs a positive group_size (in {self})")

    @property
    def block_size(self) -> int | None:
        """Elements per scale block along the last axis (None: the whole axis)."""
        from lowbit.numerics import block_format

        spec = block_format(self.fmt)
        if spec.block_size is not None:
            return spec.block_size
        if self.options.get("granularity", "group" if self.options.get("group_size") else None) \
                == "group":
            return int(self.options["group_size"])
        return None

    @property
    def quantize_options(self) -> dict:
        return {k: v for k, v in self.options.items() if k not in WEIGHT_ONLY_KEYS}

    def to_dict(self) -> dict:
        return {"format": self.fmt, **self.options}

    def __str__(self) -> str:
        if not self.options:
            return self.fmt
        return self.fmt + ":" + ",".join(f"{k}={_fmt_value(v)}" for k, v in self.options.items())


def _fmt_value(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def parse_spec(spec) -> QuantSpec | None:
    """``QuantSpec`` from a spec, a dict ``{"format": name, **options}``, or a string
    ``"name[:key=value,key=value]"`` (values read as JSON where they parse); None for none."""
    if isinstance(spec, QuantSpec):
        return spec
    if isinstance(spec, dict):
        d = dict(spec)
        name = d.pop("format", None) or d.pop("fmt", None)
        return None if name in NO_QUANT else QuantSpec(name, d)
    if isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        if name.lower() in NO_QUANT:
            return None
        items = filter(None, (s.strip() for s in rest.split(",")))
        return QuantSpec(name, parse_key_values(items, f"spec {spec!r}"))
    if spec is None:
        return None
    raise TypeError(f"cannot read a quantization spec from {spec!r}")


def check_spec(spec: QuantSpec | None, what: str = "spec") -> None:
    """Raise ``ValueError`` now if ``spec``'s options are not accepted by ``ln.quantize``
    (instead of at the first forward pass)."""
    if spec is None:
        return
    x = np.linspace(-1.0, 1.0, 2 * (spec.block_size or 32), dtype=np.float32)[None]
    try:
        quantize_array(x, spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid {what} {str(spec)!r}: {e}") from e


# -- NumPy level ---------------------------------------------------------------------------------

_REFERENCE_ONLY: set[str] = set()


@contextlib.contextmanager
def _threads_for(size: int):
    """One Numba thread for small arrays (module docstring); the default otherwise."""
    if size >= SINGLE_THREAD_BELOW or importlib.util.find_spec("numba") is None:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def quantize_array(x: np.ndarray, spec: QuantSpec, **extra):
    """``ln.quantize(x, spec.fmt, axis=-1, **options)``: kernels first, reference on failure."""
    from lowbit import numerics as ln

    opts = {**spec.quantize_options, **extra}
    if spec.fmt not in _REFERENCE_ONLY:
        try:
            with _threads_for(x.size):
                return ln.quantize(x, spec.fmt, axis=-1, **opts)
        except (ImportError, NotImplementedError, AttributeError, ModuleNotFoundError):
            _REFERENCE_ONLY.add(spec.fmt)
        except Exception:
            # a kernel bug; the reference decides whether the arguments are valid
            _REFERENCE_ONLY.add(spec.fmt)
    return ln.quantize(x, spec.fmt, axis=-1, backend="reference", **opts)


def dequantize_array(q, dtype=np.float32) -> np.ndarray:
    from lowbit import numerics as ln

    if q.fmt not in _REFERENCE_ONLY:
        try:
            with _threads_for(q.codes.size):
                return ln.dequantize(q, dtype=dtype)
        except Exception:
            _REFERENCE_ONLY.add(q.fmt)
    return ln.dequantize(q, dtype=dtype, backend="reference")


def fake_quant_array(x: np.ndarray, spec: QuantSpec | None) -> np.ndarray:
    if spec is None or x.size == 0:
        return x
    return dequantize_array(quantize_array(x, spec), np.float32)


# -- torch level ---------------------------------------------------------------------------------

_KERNELS: dict[str, Callable] = {}


def register_kernel(device_type: str, fn: Callable | None) -> None:
    """Install (or remove, with None) a fake-quant kernel ``fn(x, spec) -> Tensor`` for tensors
    on ``device_type`` ("cuda", ...). It must return ``x``'s shape and dtype and match the
    reference bit for bit (test it with ``fake_quant(x.cpu(), spec)``)."""
    if fn is None:
        _KERNELS.pop(device_type, None)
    else:
        _KERNELS[device_type] = fn


def _builtin_kernel(device_type: str) -> Callable | None:
    """lowbit's own CUDA kernel (``kernels.cupy_api``) when CuPy and a GPU are there."""
    if device_type != "cuda" or importlib.util.find_spec("cupy") is None:
        return None
    from lowbit.kernels.cupy_api import torch_fake_quant

    return torch_fake_quant


def _fake_quant_value(x, spec: QuantSpec):
    import torch

    kernel = _KERNELS.get(x.device.type) or _builtin_kernel(x.device.type)
    if kernel is not None:
        return kernel(x, spec)
    a = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    y = fake_quant_array(a, spec)
    return torch.from_numpy(np.ascontiguousarray(y)).to(device=x.device, dtype=x.dtype)


def _ste_class():
    import torch

    class _FakeQuantSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, spec):  # noqa: D401
            return _fake_quant_value(x, spec)

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    return _FakeQuantSTE


_STE = None


def fake_quant(x, spec) -> torch.Tensor:  # noqa: F821
    """Quantize-dequantize torch tensor ``x`` along its last dim (straight-through gradient)."""
    global _STE
    spec = parse_spec(spec)
    if spec is None or x.numel() == 0:
        return x
    if x.requires_grad:
        if _STE is None:
            _STE = _ste_class()
        return _STE.apply(x, spec)
    return _fake_quant_value(x, spec)
