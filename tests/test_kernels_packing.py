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


FUSED_CASES = [
    ((40, 64), {}), ((40, 64), {"axis": 0}), ((40, 64), {"rounding": "toward_zero"}),
    ((40, 64), {"preset": "torchao"}), ((40, 64), {"scale_rule": "ceil"}),
    ((40, 50), {}), ((40, 64), {"prescale": True}), ((3, 2, 96), {"axis": 1}),
]


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_e4m3", "nvfp4"])
@pytest.mark.parametrize("shape,kw", FUSED_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_quantize_packed(fmt, shape, kw, dtype):
    """Fused quantize-to-packed equals ``pack(quantize(...))`` of the reference, and unpacking
    it dequantizes to the reference's values (fused kernel: mxfp4; the rest fall back)."""
    from kernel_helpers import cast, random_values

    from lowbit.kernels.fused import quantize_packed

    n = int(np.prod(shape))
    x = random_values(np.random.default_rng(n), n, spread=12)[:n].reshape(shape)
    if fmt == "nvfp4":
        x = np.nan_to_num(x, nan=0.5, posinf=3.0, neginf=-3.0)
    else:
        x.reshape(-1)[:: 97] = np.nan
    x = cast(x, dtype)
    if fmt == "nvfp4" and kw and "axis" not in kw:
        return  # MX-only options
    for layout in packing.SCALE_LAYOUTS:
        q = ln.quantize(x, fmt, backend="reference", **kw)
        r = packing.pack(q, scale_layout=layout)
        k = quantize_packed(x, fmt, scale_layout=layout, backend="numba", **kw)
        _assert_same_packed(r, k)
        assert_same(ln.dequantize(q, backend="reference"),
                    ln.dequantize(dispatch.unpack(k, backend="numba"), backend="numba"))


def test_quantize_packed_is_fused():
    """mxfp4 runs the fused kernel: the unpacked codes (twice the packed size) never exist."""
    from lowbit.kernels.fused import quantize_packed

    x = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)
    quantize_packed(x, "mxfp4", backend="numba")  # compile (or load) outside the trace
    tracemalloc.start()
    p = quantize_packed(x, "mxfp4", backend="numba")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < p.data.nbytes + p.scales.nbytes + (1 << 16) < x.size, peak
    with pytest.raises(ValueError, match="scale_layout"):
        quantize_packed(x, "mxfp4", scale_layout="bogus")
