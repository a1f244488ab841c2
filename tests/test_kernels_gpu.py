"""CuPy GPU kernels (``lowbit.kernels.cupy_*``) against the reference, bit for bit.

Skipped where CuPy or a CUDA device is missing (CI). The full sweep over every format and
option is ``bench/gpu_check.py`` on the device machine; this file keeps a representative
subset, plus CPU-side checks of the generated CUDA sources that run everywhere.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lowbit import numerics as ln
from lowbit.kernels import cupy_core as cc

GPU = cc.cupy_available()
gpu = pytest.mark.skipif(not GPU, reason="needs CuPy and a CUDA device")

FORMATS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
           "hif4", "hif8", "int8", "int4")


def _data(rng, shape, dtype):
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-8, 8, shape))
    return x.astype(dtype)


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))
    return a.shape == b.shape and bool(np.all(a == b))


# -- everywhere: the generated sources are well formed --------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_sources_generate(fmt):
    """Every scheme's kernel source builds from the specs (no GPU needed)."""
    from lowbit.kernels import cupy_absmax, cupy_elementwise, cupy_hif4, cupy_mx, cupy_nvfp4
    from lowbit.numerics import hif4, mx, nvfp4

    spec = ln.block_format(fmt)
    for kind in (0, 1, 3):
        if spec.scheme == "mx":
            src = cupy_mx.quant_source(spec, mx.mx_options(), kind, 64, None)
            assert "mx_quant" in src
        elif spec.scheme == "nvfp4":
            assert "nv_quant" in cupy_nvfp4.quant_source(spec, nvfp4.nvfp4_options(), kind, 64)
        elif spec.scheme == "hif4":
            assert "hif4_quant" in cupy_hif4.quant_source(spec, hif4.hif4_options(), kind, 128)
        else:
            assert "am_quant" in cupy_absmax._source(spec, spec.element, True, "nearest_even",
                                                      kind)
            assert "ew_encode" in cupy_elementwise.encode_source(spec.element, kind, 64,
                                                                 "nearest_even", True)


def test_encoder_table_and_fast_forms():
    """The table encoder is chosen exactly for the formats the fast one does not cover."""
    for name in ("hif8", "ue4m3", "e6m2", "e8m0"):
        assert cc.uses_table(ln.element_format(name), True)
    for name in ("e4m3", "e5m2", "e2m1", "e1m2", "int8", "int8_1.6"):
        assert not cc.uses_table(ln.element_format(name), True)


def test_resolve_without_gpu_arrays():
    """NumPy input never selects the cupy backend by default."""
    from lowbit.kernels import dispatch

    assert dispatch.resolve(None, np.zeros(3)) != "cupy"


# -- on a GPU -------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.float64])
def test_quantize_dequantize_bit_exact(fmt, dtype):
    import cupy as cp
    import torch

    from lowbit.kernels import cupy_api as ca

    rng = np.random.default_rng(3)
    for shape in ((8, 128), (3, 100)):
        x = _data(rng, shape, dtype)
        qr = ln.quantize(x, fmt, backend="reference")
        if dtype == ml_dtypes.bfloat16:
            xd = torch.from_numpy(x.view(np.int16)).cuda().view(torch.bfloat16)
        else:
            xd = cp.asarray(x)
        qg = ca.quantize(xd, fmt)

        def host(a):
            if a is None:
                return None
            if cc.is_torch(a):
                return a.cpu().numpy()
            return cp.asnumpy(a)

        assert _same(qr.codes, host(qg.codes))
        if qr.scales is not None:
            assert _same(qr.scales, host(qg.scales))
        if qr.micro is not None:
            assert _same(qr.micro, host(qg.micro))
        if qr.tensor_scale is not None:
            assert np.float32(qr.tensor_scale).tobytes() == np.float32(qg.tensor_scale).tobytes()
        yr = ln.dequantize(qr, backend="reference")
        yg = ca.dequantize(qg, dtype=np.float32)
        assert _same(yr, host(yg))


@gpu
@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6_e2m3", "nvfp4", "hif4"])
def test_fused_pack_matches_reference_pack(fmt):
    import cupy as cp

    from lowbit.kernels import cupy_api as ca

    x = _data(np.random.default_rng(4), (130, 96), np.float32)
    pr = ln.pack(ln.quantize(x, fmt, backend="reference"))
    pg = ca.quantize_packed(cp.asarray(x), fmt)
    assert _same(pr.data, cp.asnumpy(pg.data))
    if pr.scales is not None:
        assert _same(pr.scales, cp.asnumpy(pg.scales))
    if pr.meta is not None:
        assert _same(pr.meta, cp.asnumpy(pg.meta))


@gpu
@pytest.mark.parametrize("name", sorted(ln.ELEMENT_FORMATS))
def test_encode_every_element_format(name):
    import cupy as cp

    from lowbit.kernels import cupy_api as ca

    spec = ln.element_format(name)
    v = spec.values[np.isfinite(spec.values)]
    pts = np.unique(np.concatenate([v, -v]))
    x = np.concatenate([pts, (pts[1:] + pts[:-1]) / 2]).astype(np.float32)
    if not spec.signed:
        x = np.abs(x)
    for mode in ln.ROUNDING_MODES:
        rb = np.random.default_rng(5).integers(0, 256, x.shape, dtype=np.uint8)
        r = ln.encode(x, name, rounding=mode, rbits=rb, backend="reference")
        g = ca.encode(cp.asarray(x), name, rounding=mode, rbits=rb)
        assert _same(r, cp.asnumpy(g)), mode


@gpu
def test_torch_cuda_default_backend_and_fake_quant():
    import torch

    from lowbit.kernels import cupy_api as ca
    from lowbit.kernels import dispatch

    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    assert dispatch.resolve(None, x) == "cupy"
    y = ca.fake_quantize(x, "mxfp4")
    assert y.is_cuda and y.dtype == x.dtype and y.shape == x.shape
    xr = x.float().cpu().numpy()
    yr = ln.dequantize(ln.quantize(xr, "mxfp4", backend="reference"))
    assert _same(yr, y.float().cpu().numpy())
