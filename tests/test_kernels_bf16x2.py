"""The paired-bfloat16 element path of the CuPy MX quantizer (``kernels.cupy_bf16x2``),
emulated step by step in NumPy with the constants of its generated source, against the
reference: every bfloat16 input at many scales, and whole blocks (amax, scale, codes, byte and
nibble stores). Runs without a GPU; ``tests/test_kernels_gpu.py`` and ``bench/gpu_check.py`` run
the CUDA code itself.
"""

from __future__ import annotations

from unittest import mock

import ml_dtypes
import numpy as np
import pytest

from lowbit import numerics as ln
from lowbit.kernels import cupy_bf16x2 as bx
from lowbit.kernels import cupy_core as cc
from lowbit.kernels import cupy_mx
from lowbit.numerics import mx
from lowbit.numerics.packing import pack_codes

ELEMENTS = ("e2m1", "e2m3", "e3m2")


def _halves(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return w & 0xFFFF, w >> 16


def _pair(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo | (hi << 16)


def _bf16_value(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _bf16_rne(v: np.ndarray) -> np.ndarray:
    """Bits of the bfloat16 nearest (ties to even, subnormals kept) to finite ``v >= 0``."""
    _, e = np.frexp(v)
    q = np.exp2(np.maximum(e.astype(np.float64) - 8, -133))
    r = np.rint(v / q) * q
    return r.astype(np.float32).view(np.uint32).astype(np.int64) >> 16


def _u16x2(op, a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    b = np.broadcast_to(np.asarray(b, np.int64), a.shape)
    (a0, a1), (b0, b1) = _halves(a), _halves(b)
    return _pair(op(a0, b0), op(a1, b1))


def _bf16x2(op, a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    b = np.broadcast_to(np.asarray(b, np.int64), a.shape)
    (a0, a1), (b0, b1) = _halves(a), _halves(b)
    return _pair(*(_bf16_rne(op(_bf16_value(x), _bf16_value(y))) for x, y in ((a0, b0), (a1, b1))))


def _near2(w: np.ndarray, p2: np.ndarray | int | None, prm: dict,
           sw: np.ndarray | None = None) -> np.ndarray:
    """``NEAR2_TEMPLATE`` with ``near2_params`` on uint32 words (held in int64), op by op;
    32-bit integer adds and shifts act on the whole word, as in the kernel. ``p2`` None: the
    unscaled form, signs from ``sw``."""
    m32 = 0xFFFFFFFF
    y = w if p2 is None else _bf16x2(np.multiply, w & 0x7FFF7FFF, p2)
    eb = _u16x2(np.maximum, y & 0x7F807F80, prm["emin2"])
    if prm["eclamp2"] is not None:
        eb = _u16x2(np.minimum, eb, prm["eclamp2"])
    mbits = (eb + prm["moff2"]) & m32
    n = (_bf16x2(np.add, y, mbits) - mbits) & m32
    code = _u16x2(np.minimum, (n + (((eb - prm["emin2"]) & m32) >> prm["shift"])) & m32,
                  prm["maxc2"])
    return code | (((w if sw is None else sw) >> prm["sign_down"]) & prm["sign2"])


def _byte_perm(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * i)) & 7] << (8 * i) for i in range(4))


def _odd(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``bf16x2_odd`` on float32 bit patterns (int64), op by op."""
    t = _byte_perm(lo, hi, 0x7632)
    r = _byte_perm(lo, hi, 0x5410)
    return (t | _u16x2(np.minimum, r, 0x00010001)) & 0x7FFF7FFF


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).view(np.uint16).astype(np.int64)


@pytest.mark.parametrize("name", ELEMENTS)
def test_near2_every_bfloat16_equals_reference(name):
    """Every finite bfloat16 input, at scales 2**-k across the whole range, both halves of a
    word (random partners, so a half never leaks into the other), against the reference RNE."""
    spec = ln.element_format(name)
    prm = bx.near2_params(spec)
    h = np.arange(1 << 16, dtype=np.int64)
    h = h[(h & 0x7F80) != 0x7F80]
    rng = np.random.default_rng(0)
    for k in (-127, -120, -40, -3, -1, 0, 1, 2, 7, 64, 120, 125, 126):
        x = _bf16_value(h)
        keep = np.abs(x) * 2.0**-k < 2.0 ** (spec.emax + 2)  # the path's bound (MX elements)
        hk = h[keep]
        partner = rng.permutation(hk)
        p2 = (127 - k) << 7
        got = _near2(_pair(hk, partner), p2 | (p2 << 16), prm)
        ref = ln.encode(_bf16_value(hk) * 2.0**-k, spec, rounding="nearest_even", saturate=True,
                        backend="reference").astype(np.int64)
        ref_p = ln.encode(_bf16_value(partner) * 2.0**-k, spec, rounding="nearest_even",
                          saturate=True, backend="reference").astype(np.int64)
        assert np.array_equal(got & 0xFFFF, ref), k
        assert np.array_equal(got >> 16, ref_p), k


def _words_amax(w: np.ndarray) -> np.ndarray:
    """``words_amax`` per lane (rows of words): the finite amax's bfloat16 bits."""
    m = np.zeros(w.shape[0], np.int64)
    for j in range(w.shape[1]):
        m = _u16x2(np.maximum, m, w[:, j] & 0x7FFF7FFF)
    b = np.maximum(m >> 16, m & 0xFFFF)
    halves = np.concatenate(_halves(w), axis=1)
    finite = np.where(halves < 0x7F80, halves, 0).max(axis=1)
    return np.where(b >= 0x7F80, finite, b)


@pytest.mark.parametrize("rule", ["floor", "ceil", "rceil", "even"])
@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6_e2m3", "mxfp6_e3m2"])
def test_bf16x2_mx_blocks_emulated_equal_reference(fmt, rule):
    """Blocks of every dynamic range, with zeros, Inf and NaN: the lane amax, the scale, the
    masked codes and the byte / nibble stores of the paired path equal the reference."""
    spec = ln.block_format(fmt)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((512, 32)) * np.exp2(rng.integers(-130, 120, (512, 1)))
         * np.exp2(rng.integers(-20, 1, (512, 32))))
    x[5] = 0
    x[7, 3], x[9, 30], x[11, 0] = np.inf, np.nan, -np.inf
    x[13, :16] = -0.0
    xb = x.astype(ml_dtypes.bfloat16)
    bits = _bf16_bits(xb.astype(np.float64))
    q = ln.quantize(xb.astype(np.float64), fmt, scale_rule=rule, backend="reference")
    words = _pair(bits[:, 0::2], bits[:, 1::2])          # (blocks, 16 words)
    amax = np.maximum(_words_amax(words[:, :8]), _words_amax(words[:, 8:]))  # two lanes
    ref_amax = _bf16_bits(np.where(np.isfinite(x), np.abs(xb.astype(np.float64)), 0).max(1))
    assert np.array_equal(amax, ref_amax)
    k = q.scales.reshape(-1).astype(np.int64) - 127
    nanblk = q.scales.reshape(-1) == 0xFF
    assert np.all(k[~nanblk] <= 126)
    p2 = np.where(nanblk, 127, 127 - k) << 7
    keep = np.where(nanblk, 0, 0xFFFFFFFF)[:, None]
    cw = _near2(words, (p2 | (p2 << 16))[:, None], bx.near2_params(spec.element)) & keep
    codes = np.stack([cw & 0xFFFF, cw >> 16], axis=2).reshape(x.shape)
    assert np.array_equal(codes, q.codes)
    out = np.stack([_byte_perm(cw[:, 2 * h], cw[:, 2 * h + 1], 0x6420) for h in range(8)], 1)
    assert np.array_equal(out.astype("<u4").view(np.uint8).reshape(x.shape), q.codes)
    if spec.element.bits == 4:
        t = cw | (cw >> 12)
        w4 = [_byte_perm(_byte_perm(t[:, 4 * h], t[:, 4 * h + 1], 0x0040),
                         _byte_perm(t[:, 4 * h + 2], t[:, 4 * h + 3], 0x0040), 0x5410)
              for h in range(4)]
        packed = np.stack(w4, 1).astype("<u4").view(np.uint8)
        assert np.array_equal(packed, pack_codes(q.codes, 4))


def test_bf16x2_path_chosen_where_it_applies():
    def src(fmt, in_kind=1, length=64, pack=0, **opts):
        spec = ln.block_format(fmt)
        return cupy_mx.quant_source(spec, mx.mx_options(**opts), in_kind, length, None,
                                    cc.pack_bits(pack, spec.element.bits), False)

    cupy_mx.quant_source.cache_clear()
    with mock.patch.object(cc, "compute_capability", lambda: 90):
        for fmt in ("mxfp4", "mxfp6_e2m3", "mxfp6_e3m2"):
            assert "#define BF16X2 1" in src(fmt)
        assert "#define BF16X2 1" in src("mxfp4", pack=True)
        for case in (dict(fmt="mxfp4", in_kind=0), dict(fmt="mxfp4", length=48),
                     dict(fmt="mxfp6_e2m3", pack=True), dict(fmt="mxfp8_e4m3"),
                     dict(fmt="mxfp4", rounding="nearest_away"),
                     dict(fmt="mxfp4", inf_policy="max_scale")):
            assert "#define BF16X2 0" in src(**case), case
    cupy_mx.quant_source.cache_clear()
    with mock.patch.object(cc, "compute_capability", lambda: 80):
        assert "#define BF16X2 0" in src("mxfp4")
    cupy_mx.quant_source.cache_clear()


def _f32_bits(y: np.ndarray) -> np.ndarray:
    return y.astype(np.float32).view(np.uint32).astype(np.int64)


def test_odd_pair_then_near2_equals_float32_rounding():
    """Rounding float32 values to odd bfloat16 pairs, then the unscaled, clamped pair encoder,
    equals E2M1 round-to-nearest-even of the float32 values: every E2M1 midpoint and value with
    its float32 neighbours, subnormals, huge values and Inf (saturate), random values."""
    spec = ln.element_format("e2m1")
    prm = bx.near2_params(spec, bounded=False)
    pos = np.unique(np.abs(spec.values))
    top = np.append(pos, 2 * pos[-1])
    pts = np.concatenate([pos, (top[1:] + top[:-1]) / 2, [6.5, 7.0, 8.0, 12.0, 16.0]])
    u = _f32_bits(pts)
    near = np.concatenate([u + d for d in (-3, -2, -1, 0, 1, 2, 3, 0x10000, -0x10000, 0x8000)])
    rng = np.random.default_rng(3)
    rand = rng.integers(0, 0x7F800000, 100_000)
    y = np.concatenate([near[near >= 0], rand, _f32_bits(np.array([0, 1e-45, 1e-39, 3e38,
                                                                   np.inf]))])
    y = np.concatenate([y, y | 0x80000000])
    y = y[: y.size // 2 * 2]
    lo, hi = y[0::2], y[1::2]
    got = _near2(_odd(lo, hi), None, prm, sw=_byte_perm(lo, hi, 0x7632))
    vals = y.astype(np.uint32).view(np.float32).astype(np.float64)
    ref = ln.encode(vals, spec, rounding="nearest_even", saturate=True,
                    backend="reference").astype(np.int64)
    assert np.array_equal(got & 0xFFFF, ref[0::2])
    assert np.array_equal(got >> 16, ref[1::2])


@pytest.mark.parametrize("algorithm", ["transformer_engine", "torchao"])
def test_bf16x2_nvfp4_blocks_emulated_equal_reference(algorithm):
    """NVFP4 blocks of bfloat16 input: the float32 products x * factor (factor from the
    reference's scale codes, in the kernel's op order), rounded to odd pairs and encoded two at a
    time, equal the reference codes; a global amax below the data's saturates."""
    spec = ln.block_format("nvfp4")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((256, 64)) * np.exp2(rng.integers(-30, 30, (256, 1)))
         * np.exp2(rng.integers(-12, 1, (256, 64))))
    x[3] = 0
    xb = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    f32 = np.float32
    for g_div in (1.0, 3.0):
        g = f32(np.abs(xb).max() / g_div)
        q = ln.quantize(xb, "nvfp4", algorithm=algorithm, global_amax=float(g),
                        backend="reference")
        sv = spec.scale.values[q.scales.astype(np.int64)].astype(f32)
        with np.errstate(all="ignore"):
            if algorithm == "transformer_engine":
                s_dec = f32(1) / np.minimum(f32(2688) / g, f32(np.finfo(f32).max))
                fac = np.minimum(f32(1) / (sv * s_dec), f32(np.finfo(f32).max))
            else:
                fac = (f32(1) / (g / f32(2688))) / sv
            y = (xb.astype(f32).reshape(256, 4, 16) * fac[:, :, None]).reshape(256, 64)
        yb = _f32_bits(y)
        xw = _pair(_bf16_bits(xb[:, 0::2]), _bf16_bits(xb[:, 1::2]))
        cw = _near2(_odd(yb[:, 0::2], yb[:, 1::2]), None, bx.near2_params(spec.element, False),
                    sw=xw)
        codes = np.stack([cw & 0xFFFF, cw >> 16], axis=2).reshape(x.shape)
        assert np.array_equal(codes, q.codes), g_div


def test_bf16x2_nvfp4_path_chosen_where_it_applies():
    from lowbit.kernels import cupy_nvfp4
    from lowbit.numerics import nvfp4

    spec = ln.block_format("nvfp4")

    def src(in_kind=1, length=64, pack=0, **opts):
        return cupy_nvfp4.quant_source(spec, nvfp4.nvfp4_options(**opts), in_kind, length, pack)

    cupy_nvfp4.quant_source.cache_clear()
    with mock.patch.object(cc, "compute_capability", lambda: 90):
        for case in (dict(), dict(pack=4), dict(algorithm="torchao")):
            assert "#define BF16X2 1" in src(**case), case
        for case in (dict(in_kind=0), dict(length=40), dict(algorithm="modelopt"),
                     dict(rounding="nearest_away")):
            assert "#define BF16X2 0" in src(**case), case
    cupy_nvfp4.quant_source.cache_clear()
