"""Shared inputs and bit-exact comparisons for the kernel tests (tests/test_kernels_*.py)."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np

from lowbit import numerics as ln
from lowbit.numerics.specs import ElementFormat

DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
    "float64": np.dtype(np.float64),
}
SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754942e-38,
                     3.4028235e38, -3.4028235e38], dtype=np.float32)


def boundary_values(spec: ElementFormat, scale: float = 1.0) -> np.ndarray:
    """float32 values on, between and one ulp either side of every grid point and midpoint of
    ``spec`` (both signs, times ``scale``), plus the float32 specials."""
    v = spec.values[np.isfinite(spec.values)]
    extra = [spec.max * 1.5, spec.max * 4, spec.smallest_positive / 4]
    v = np.unique(np.concatenate([v, -v, extra]))
    mids = (v[1:] + v[:-1]) / 2
    pts = np.concatenate([v, mids]) * scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p32 = pts.astype(np.float32)
    up = np.nextafter(p32, np.float32(np.inf))
    down = np.nextafter(p32, np.float32(-np.inf))
    return np.concatenate([p32, up, down, SPECIALS])


def random_values(rng: np.random.Generator, n: int, spread: int = 40) -> np.ndarray:
    """float32 mixing normal values over ``2**-spread .. 2**spread`` and random bit patterns."""
    a = rng.standard_normal(n) * np.exp2(rng.integers(-spread, spread, n))
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.concatenate([a.astype(np.float32), bits[: n // 4]])


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` in ``dtype`` (float64: with extra low bits so the kernels see real float64 data)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype == "float64":
            return x.astype(np.float64) * (1 + 2.0**-40)
        return x.astype(DTYPES[dtype])


def assert_same(a, b, what: str = "") -> None:
    """Bit-identical arrays (dtype, shape, bytes) or identical scalars/None."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if a.tobytes() != b.tobytes():
        bad = np.flatnonzero(a.reshape(-1).view(np.uint8) != b.reshape(-1).view(np.uint8))
        raise AssertionError(f"{what}: {bad.size} bytes differ, first at byte {bad[0]}")


def assert_same_q(r, k) -> None:
    """Two ``QuantizedTensor`` are bit-identical, metadata included."""
    for f in ("fmt", "axis", "block_size", "pad", "prescale", "options"):
        assert getattr(r, f) == getattr(k, f), f
    for f in ("codes", "scales", "micro", "tensor_scale"):
        assert_same(getattr(r, f), getattr(k, f), f)


def outcome(fn, *args, **kwargs):
    """``fn(...)`` or the exception it raised (to compare errors between backends)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - compared by type and message
        return e


def check_quantize(x, fmt: str, dequantize: bool = True, **kw) -> None:
    """numba and reference agree on ``quantize`` (result or error) and on ``dequantize``."""
    r = outcome(ln.quantize, x, fmt, backend="reference", **kw)
    k = outcome(ln.quantize, x, fmt, backend="numba", **kw)
    if isinstance(r, Exception) or isinstance(k, Exception):
        assert type(r) is type(k) and str(r) == str(k), (r, k)
        return
    assert_same_q(r, k)
    if dequantize:
        for dt in (np.float32, np.float64, ml_dtypes.bfloat16):
            assert_same(ln.dequantize(r, dtype=dt, backend="reference"),
                        ln.dequantize(r, dtype=dt, backend="numba"), f"dequantize {dt}")


def check_encode(x, fmt, **kw) -> None:
    """numba and reference agree on the element cast ``encode`` (codes or error)."""
    r = outcome(ln.encode, x, fmt, backend="reference", **kw)
    k = outcome(ln.encode, x, fmt, backend="numba", **kw)
    if isinstance(r, Exception) or isinstance(k, Exception):
        assert type(r) is type(k) and str(r) == str(k), (r, k)
        return
    assert_same(r, k, f"encode {fmt} {kw}")
