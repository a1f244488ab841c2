"""pytest-benchmark suite of the numba backend: ``pytest bench/ --benchmark-only``.

Not collected by the normal ``pytest`` run (``testpaths = ["tests"]``). 2**22 float32 elements
(1024 x 4096) per case; the numpy copy of the same array is the bandwidth yardstick.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowbit import numerics as ln

FORMATS = ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxint8", "nvfp4", "hif4",
           "int8", "int4", "hif8"]


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)


def test_numpy_copy(benchmark, x):
    benchmark(x.copy)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize(benchmark, x, fmt):
    ln.quantize(x, fmt, backend="numba")  # compile / load the cache outside the timing
    benchmark(ln.quantize, x, fmt, backend="numba")


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize(benchmark, x, fmt):
    q = ln.quantize(x, fmt, backend="numba")
    ln.dequantize(q, backend="numba")
    benchmark(ln.dequantize, q, backend="numba")


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e2m1", "hif8"])
def test_encode(benchmark, x, fmt):
    ln.encode(x, fmt, backend="numba")
    benchmark(ln.encode, x, fmt, backend="numba")


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6_e3m2", "nvfp4", "hif4"])
def test_pack(benchmark, x, fmt):
    from lowbit.kernels import dispatch

    q = ln.quantize(x, fmt, backend="numba")
    dispatch.pack(q, backend="numba")
    benchmark(dispatch.pack, q, backend="numba")
