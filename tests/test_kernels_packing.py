"""Numba pack / unpack against ``numerics.packing``, and the dispatcher's backend choice."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from kernel_helpers import assert_same, assert_same_q, outcome

from lowbit import numerics as ln
from lowbit.kernels import dispatch
from lowbit.numerics import packing

FORMATS = ["mxfp4", "mxfp6_e3m2", "mxfp8_e5m2", "mxint8", "nvfp4", "hif4", "int4", "int8",
           "hif8"]


def _assert_same_packed(a, b):
    for f in ("fmt", "shape", "axis", "block_size", "pad", "scale_layout", "prescale",
              "options"):
        assert getattr(a, f) == getattr(b, f), f
    for f in ("data", "scales", "meta", "tensor_scale"):
        assert_same(getattr(a, f), getattr(b, f), f)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape,axis", [((6, 100), -1), ((7, 3, 5), 0), ((2, 65), 1)])
def test_pack_unpack(fmt, shape, axis):
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    kw = {"group_size": 4} if fmt == "int4" else {}
    q = ln.quantize(x, fmt, axis=axis, backend="reference", **kw)
    for layout in packing.SCALE_LAYOUTS:
        r = outcome(packing.pack, q, scale_layout=layout)
        k = outcome(dispatch.pack, q, scale_layout=layout, backend="numba")
        if isinstance(r, Exception) or isinstance(k, Exception):
            assert type(r) is type(k) and str(r) == str(k), (r, k)
            continue
        _assert_same_packed(r, k)
        assert_same_q(packing.unpack(r), dispatch.unpack(k, backend="numba"))


def test_pack_errors():
    q = ln.quantize(np.ones((2, 32), np.float32), "mxfp4", backend="reference")
    for kw in ({"scale_layout": "bogus"},):
        with pytest.raises(ValueError, match="scale_layout"):
            dispatch.pack(q, backend="numba", **kw)
    p = packing.pack(q)
    bad = packing.PackedTensor(**{**vars(p), "data": p.data[:, :3]})
    with pytest.raises(ValueError):
        dispatch.unpack(bad, backend="numba")


def test_backend_selection(monkeypatch):
    x = np.linspace(-3, 3, 64, dtype=np.float32).reshape(2, 32)
    with pytest.raises(ValueError, match="unknown backend"):
        ln.quantize(x, "mxfp4", backend="bogus")
    monkeypatch.delenv("LOWBIT_BACKEND", raising=False)
    assert dispatch.resolve(None, x) == "numba"
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")
    assert dispatch.resolve(None, x) == "reference"
    assert_same_q(ln.quantize(x, "mxfp4", backend="numba"), ln.quantize(x, "mxfp4"))


def test_quantize_peak_memory():
    """Peak of quantize: the output plus at most one input-sized temporary."""
    x = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)
    for fmt, axis in (("mxfp4", -1), ("mxfp8_e4m3", -1), ("nvfp4", -1), ("hif4", -1),
                      ("mxfp4", 0)):
        ln.quantize(x[:2], fmt, axis=axis, backend="numba")  # compile outside the trace
        tracemalloc.start()
        q = ln.quantize(x, fmt, axis=axis, backend="numba")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out = sum(a.nbytes for a in (q.codes, q.scales, q.micro) if a is not None)
        assert peak <= out + x.nbytes + (1 << 16), (fmt, axis, peak, out)
        if axis == -1:  # no copy of the input: only per-block scratch (<= 1/16 of the input)
            assert peak <= out + x.nbytes // 16 + (1 << 16), (fmt, axis, peak, out)
