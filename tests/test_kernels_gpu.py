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


NEAREST_FORMATS = ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1", "e1m2")


def _emulate_nearest(y: np.ndarray, prm: dict) -> np.ndarray:
    """``NEAREST_TEMPLATE`` with ``nearest_params`` step by step in NumPy float32 (IEEE, with
    subnormals)."""
    b = y.astype(np.float32).view(np.uint32).astype(np.int64)
    a = b & 0x7FFFFFFF
    eb = np.maximum(a >> 23, prm["emin_b"])
    if prm["eclamp_b"] is not None:
        eb = np.minimum(eb, prm["eclamp_b"])
    mbits = (eb + prm["moff"]) << 23
    f = lambda u: u.astype(np.uint32).view(np.float32)  # noqa: E731
    with np.errstate(over="ignore", invalid="ignore"):
        total = f(a) + f(mbits)
        n = total.view(np.uint32).astype(np.int64) - mbits
        if prm["away"]:
            n += (f(a) - (total - f(mbits))) == f((eb - prm["mb"] - 1) << 23)
    code = np.minimum(n + ((eb - prm["emin_b"]) << prm["mb"]), prm["maxc"])
    if prm["sign_shift"] is not None:
        code = code | ((b >> 31) << prm["sign_shift"])
    return code if prm["nan"] is None else np.where(a > 0x7F800000, prm["nan"], code)


def _nearest_inputs(spec, rng) -> np.ndarray:
    """Every midpoint and value of ``spec`` and its float32 neighbours, zeros, float32
    subnormals, Inf/NaN, and random values over the whole float32 range."""
    v = spec.values[np.isfinite(spec.values)].astype(np.float64)
    pos = np.unique(np.abs(v))
    top = np.append(pos, 2 * pos[-1])
    mids = (top[1:] + top[:-1]) / 2
    pts = np.concatenate([pos, mids, [spec.max + (top[-1] - pos[-1]) / 2]]).astype(np.float32)
    u = pts.view(np.uint32).astype(np.int64)
    near = np.concatenate([u + d for d in range(-3, 4)])
    near = near[(near >= 0) & (near < 0x7F800000)].astype(np.uint32).view(np.float32)
    rand = rng.integers(0, 0x7F800000, 200_000, dtype=np.uint32).view(np.float32)
    special = np.array([0, 1e-45, 1e-40, 1.17e-38, np.inf, np.nan, 3e38], np.float32)
    x = np.concatenate([near, rand, special])
    return np.concatenate([x, -x])


@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away"])
@pytest.mark.parametrize("name", NEAREST_FORMATS)
def test_nearest_encoder_emulated_equals_reference(name, rounding):
    """The generated round-to-nearest-even encoder (emulated with the constants of its source)
    equals the reference codec on every midpoint, its neighbours and random float32 inputs."""
    spec = ln.element_format(name)
    assert cc.nearest_source("EL", spec, True, rounding) is not None
    x = _nearest_inputs(spec, np.random.default_rng(0))
    if spec.nan_code is None:  # the reference refuses NaN for formats without a NaN code
        x = x[~np.isnan(x)]
    ref = ln.encode(x.astype(np.float64), spec, rounding=rounding, saturate=True,
                    backend="reference")
    got = _emulate_nearest(x, cc.nearest_params(spec, True, rounding))
    bad = np.flatnonzero(got.astype(np.uint8) != ref)
    assert bad.size == 0, (x[bad[:5]], got[bad[:5]], ref[bad[:5]])


@pytest.mark.parametrize("rule", ["floor", "ceil", "rceil", "rceil_exact", "even"])
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp4"])
def test_nearest_mx_path_emulated_equals_reference(fmt, rule):
    """The MX fast path (y = x * 2**-k in float32, then the RNE encoder) equals the reference,
    on blocks of every dynamic range including float32 subnormals."""
    from lowbit.numerics import mx

    spec = ln.block_format(fmt)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((512, 32)) * np.exp2(rng.integers(-140, 120, (512, 1)))
         * np.exp2(rng.integers(-20, 1, (512, 32)))).astype(np.float32)
    q = ln.quantize(x, fmt, scale_rule=rule, backend="reference")
    k = q.scales.astype(np.int64) - 127
    p2 = np.where(k <= 126, (127 - k) << 23, 0x00400000).astype(np.uint32).view(np.float32)
    with np.errstate(under="ignore"):
        y = x * p2
    prm = cc.nearest_params(spec.element, True, mx.mx_options().rounding, bounded=True)
    assert np.abs(y).max() < 2.0 ** (spec.element.emax + 2)
    got = _emulate_nearest(y, prm).astype(np.uint8)
    assert np.array_equal(got, q.codes)


def test_nearest_unsigned_scale_emulated_equals_reference():
    """NVFP4's UE4M3 block scale through the nonnegative form of the RNE encoder."""
    spec = ln.element_format("ue4m3")
    x = np.abs(_nearest_inputs(spec, np.random.default_rng(2)))
    x = x[np.isfinite(x) & (x <= 448)]
    ref = ln.encode(x.astype(np.float64), spec, saturate=True, backend="reference")
    got = _emulate_nearest(x, cc.nearest_params(spec, True, "nearest_even", nonnegative=True))
    assert np.array_equal(got.astype(np.uint8), ref)


def _emulate_tfast(y: np.ndarray, prm: dict) -> np.ndarray:
    """``TABLE_FAST_TEMPLATE`` with ``table_fast_params`` step by step in NumPy float32."""
    b = y.astype(np.float32).view(np.uint32).astype(np.int64)
    a = b & 0x7FFFFFFF
    neg = (b >> 31) == 1
    t = np.clip((a >> 23) - 127 - prm["e_lo"] + 1, 0, prm["t_last"])
    w = np.asarray(prm["packed"], np.int64)[t]
    qe = (w & 0xFF) - 128
    mbits = (qe + 150) << 23
    f = lambda u: u.astype(np.uint32).view(np.float32)  # noqa: E731
    with np.errstate(over="ignore", invalid="ignore"):
        total = f(a) + f(mbits)
        n = total.view(np.uint32).astype(np.int64) - mbits
        if prm["away"]:
            n += (f(a) - (total - f(mbits))) == f((qe + 126) << 23)
    lead = (w >> 16) & 0xFF
    ttop = np.where(neg, prm["ttop_n"], prm["ttop_p"])
    nmax = np.where(neg, prm["nmax_n"], prm["nmax_p"])
    over = (t > ttop) | ((t == ttop) & (n > nmax))
    carry = (t < prm["t_last"]) & (n >= np.where(lead > 0, 2 * lead, 1))
    mag = np.where(over, np.where(neg, prm["over_n"], prm["over_p"]),
                   np.where(carry, w >> 24, ((w >> 8) & 0xFF) + n - lead))
    code = mag
    if prm["sign_mode"] == 0:
        code = np.where(neg, np.where(mag == 0, prm["negzero"], mag | prm["sign_bit"]), mag)
    elif prm["sign_mode"] == 1:
        code = np.where(neg, (-mag) & prm["mask"], mag)
    undefined = a > 0x7F800000
    if prm["unsigned_"]:
        undefined |= neg & (a != 0)
    if prm["no_zero"]:
        undefined |= a == 0
    return np.where(undefined, prm["nan_code"], code)


@pytest.mark.parametrize("name,rounding,saturate", [
    ("hif8", "nearest_away", False), ("hif8", "nearest_away", True),
    ("hif8", "nearest_even", False), ("ue4m3", "nearest_even", True)])
def test_table_fast_encoder_emulated_equals_reference(name, rounding, saturate):
    """The packed-table encoder (emulated with its parameters) equals the reference codec on
    every midpoint, its float32 neighbours, specials and random float32 inputs."""
    spec = ln.element_format(name)
    prm = cc.table_fast_params(spec, saturate, rounding)
    assert prm is not None and cc.table_fast_source("EL", spec, saturate, rounding) is not None
    x = _nearest_inputs(spec, np.random.default_rng(3))
    if not spec.signed:
        x = np.abs(x)
    ref = ln.encode(x.astype(np.float64), spec, rounding=rounding, saturate=saturate,
                    backend="reference")
    got = _emulate_tfast(x, prm).astype(np.uint8)
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, (x[bad[:5]], got[bad[:5]], ref[bad[:5]])


def test_nearest_encoder_not_used_where_it_does_not_apply():
    for name, rounding, sat in [("e4m3", "toward_zero", True), ("e4m3", "nearest_even", False),
                                ("hif8", "nearest_even", True), ("int8", "nearest_even", True),
                                ("ue4m3", "nearest_even", True)]:
        assert cc.nearest_source("EL", ln.element_format(name), sat, rounding) is None


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


@pytest.mark.parametrize("name", ["hif8", "e8m0", "e6m2", "ue4m3"])
def test_split_table_cast_emulated_equals_reference(name):
    """The GPU cast's split-table path (``FASTENC 3``), emulated in NumPy on random, boundary and
    special float32 inputs, every deterministic mode: the lookup the kernel makes."""
    from lowbit.kernels import cupy_elementwise as ce
    from lowbit.kernels.split_table import DETERMINISTIC, split_table

    spec = ln.element_format(name)
    rng = np.random.default_rng(3)
    v = spec.values[np.isfinite(spec.values)]
    pts = np.unique(np.concatenate([v, -v]))
    x = np.concatenate([pts, (pts[1:] + pts[:-1]) / 2, _data(rng, 4000, np.float64),
                        [np.inf, -np.inf, np.nan, 0.0, -0.0]]).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)),
                        np.nextafter(x, np.float32(-np.inf))])
    if spec.nan_code is None:
        x = x[~np.isnan(x)]
    for kind in (0, 1, 2):  # float32, bfloat16, float16 input
        assert ce.uses_split(spec, kind, "nearest_even", spec.saturate)
        assert "#define FASTENC 3" in ce.encode_source(spec, kind, 64, "nearest_even",
                                                       spec.saturate)
    assert not ce.uses_split(spec, 3, "nearest_even", spec.saturate)  # float64 input
    assert not ce.uses_split(spec, 0, "stochastic", spec.saturate)
    b = x.view(np.uint32)
    for mode in DETERMINISTIC:
        tab = split_table(spec, mode, spec.saturate)
        got = tab[(b >> 16) | ((b & 0xFFFF) != 0).astype(np.uint32) << 16]
        ref = ln.encode(x, name, rounding=mode, backend="reference")
        np.testing.assert_array_equal(got, ref.astype(np.int16), err_msg=mode)


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
