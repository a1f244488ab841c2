"""The numba backend gives the same bits with every thread count (parallel over blocks)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from kernel_helpers import assert_same, assert_same_q, random_values

from lowbit import numerics as ln

CASES = [
    ("mxfp4", {}), ("mxfp8_e4m3", {"scale_rule": "rceil"}), ("mxint8", {"preset": "torchao"}),
    ("nvfp4", {}), ("hif4", {}), ("int8", {"group_size": 32}), ("hif8", {}),
    ("mxfp6_e2m3", {"rounding": "stochastic"}),
]


@pytest.fixture
def restore_threads():
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)


@pytest.mark.parametrize("threads", sorted({1, 2, numba.config.NUMBA_NUM_THREADS}))
def test_thread_counts(threads, restore_threads):
    rng = np.random.default_rng(11)
    x = random_values(rng, 256 * 130, spread=20)[: 256 * 130].reshape(256, 130)
    x = np.nan_to_num(x, nan=1.0, posinf=2.0, neginf=-2.0)
    rb = rng.integers(0, 2**16, x.shape).astype(np.uint16)
    numba.set_num_threads(threads)
    for fmt, kw in CASES:
        if kw.get("rounding") == "stochastic":
            kw = dict(kw, rbits=rb)
        r = ln.quantize(x, fmt, backend="reference", **kw)
        k = ln.quantize(x, fmt, backend="numba", **kw)
        assert_same_q(r, k)
        assert_same(ln.dequantize(r, backend="reference"), ln.dequantize(k, backend="numba"))
    assert_same(ln.encode(x, "e4m3", backend="reference"), ln.encode(x, "e4m3", backend="numba"))
