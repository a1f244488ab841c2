"""NVFP4: golden vectors and peer deviations, an exact rational reference of the TE algorithm,
properties, a bit-for-bit torchao cross-check (ModelOpt too where installed), input handling."""

from __future__ import annotations

from bisect import bisect_right
from fractions import Fraction
from math import copysign

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from vectors import load

import lowbit.numerics as ln
from lowbit.numerics import nvfp4

VECTORS = load("nvfp4.json")
ALGORITHMS = nvfp4.ALGORITHMS
# the peers named in nvfp4.json and the algorithm that reproduces each one
PEER_ALGORITHM = {
    "torchao nvfp4_quantize": "torchao",
    "modelopt NVFP4QTensor.quantize": "modelopt",
    "TE reference formula (re-implemented, FP32 torch ops)": "transformer_engine",
}
F32 = np.float32
UE4M3 = ln.element_format("ue4m3")


def f32_from_hex(hexes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint32).view(np.float32)


def hexes(a) -> list[int]:
    return [int(h, 16) for h in a]


def f32_bits(v) -> int:
    return int(np.asarray(v, dtype=np.float32).view(np.uint32))


def quantize_vector(vec: dict, algorithm: str) -> ln.QuantizedTensor:
    ga = None if vec["global_amax"] is None else float(vec["global_amax"])
    return ln.quantize(f32_from_hex(vec["input_f32_hex"]), "nvfp4", algorithm=algorithm,
                       global_amax=ga)


# -- golden vectors -----------------------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["id"])
def test_vector_expected_is_the_default_algorithm(vec):
    x = f32_from_hex(vec["input_f32_hex"])
    np.testing.assert_array_equal(x, [float(v) for v in vec["input_f32"]])
    exp = vec["expected"]
    q = quantize_vector(vec, "transformer_engine")
    assert q.codes.shape == (32,) and q.scales.shape == (2,) and q.block_size == 16
    assert q.scales.tolist() == hexes(exp["block_scales_e4m3"])
    assert q.codes.tolist() == hexes(exp["element_nibbles"])
    packed = q.codes[0::2] | (q.codes[1::2] << 4)  # element 2i in the low nibble
    assert packed.tolist() == hexes(exp["packed_bytes"])
    # N4: TE's fp32(1/S_enc) is 1 ulp above fl32(amax/2688); pinned by its peer deviation
    te = [d for d in vec["peer_deviations"] if PEER_ALGORITHM[d["peer"]] == "transformer_engine"]
    want_ts = (te[0] if te else exp)["s_global_dec_f32_hex"]
    assert f32_bits(q.tensor_scale) == int(want_ts, 16)


def _peer_cases() -> list:
    cases = []
    for vec in VECTORS["vectors"]:
        deviating = {PEER_ALGORITHM[d["peer"]]: d for d in vec["peer_deviations"]}
        for alg in ALGORITHMS:
            cases.append(pytest.param(vec, alg, deviating.get(alg), id=f"{vec['id']}-{alg}"))
    return cases


@pytest.mark.parametrize("vec,algorithm,deviation", _peer_cases())
def test_every_algorithm_gives_expected_or_its_listed_deviation(vec, algorithm, deviation):
    """The peers' rows: expected where a peer agrees, each listed deviation field otherwise."""
    want = dict(vec["expected"], **(deviation or {}))
    q = quantize_vector(vec, algorithm)
    assert q.scales.tolist() == hexes(want["block_scales_e4m3"])
    assert q.codes.tolist() == hexes(want["element_nibbles"])
    assert f32_bits(q.tensor_scale) == int(want["s_global_dec_f32_hex"], 16)


def test_n4_tensor_scale_convention_pinned():
    """TE reports fp32(1/fp32(2688/amax)); torchao and ModelOpt fl32(amax/2688)."""
    vec = next(v for v in VECTORS["vectors"] if v["id"] == "N4")
    assert f32_bits(quantize_vector(vec, "transformer_engine").tensor_scale) == 0x3B73CF3E
    for alg in ("torchao", "modelopt"):
        assert f32_bits(quantize_vector(vec, alg).tensor_scale) == 0x3B73CF3D
    assert f32_bits(F32(10) / F32(2688)) == 0x3B73CF3D
    assert f32_bits(F32(1) / (F32(2688) / F32(10))) == 0x3B73CF3E


# -- exact rational reference of the TE algorithm's intent --------------------------------

E2M1_GRID = [Fraction(v) for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)]  # index = magnitude code
UE4M3_GRID = [
    Fraction(c & 7, 8) * Fraction(2) ** -6 if c >> 3 == 0
    else (1 + Fraction(c & 7, 8)) * Fraction(2) ** ((c >> 3) - 7)
    for c in range(127)
]  # index = UE4M3 code; 0x7F (NaN) excluded
NEAR = Fraction(1, 2**20)  # "near a tie": within this relative distance of a rounding midpoint


def rne(v: Fraction, grid: list[Fraction]) -> tuple[int, bool]:
    """(index of the RNE neighbour of v >= 0 in grid, saturating; whether v is near a midpoint)."""
    if v >= grid[-1]:
        return len(grid) - 1, False
    i = bisect_right(grid, v) - 1
    mid = (grid[i] + grid[i + 1]) / 2
    near = abs(v - mid) <= NEAR * mid
    if v != mid:
        return (i if v < mid else i + 1), near
    return (i if i % 2 == 0 else i + 1), near


def exact_te_intent(x: np.ndarray, global_amax: float | None = None):
    """Per 16-block of a 1-D float32 array: exact s = g/2688, scale = RNE(amax / (6 s)),
    element = RNE(x / (scale * s)). Returns scale codes, codes and the near-tie flags."""
    g = Fraction(float(np.max(np.abs(x)) if global_amax is None else F32(global_amax)))
    s = g / 2688 if g else Fraction(1)
    scales, s_near, codes, e_near = [], [], [], []
    for block in x.reshape(-1, 16):
        vals = [Fraction(float(v)) for v in block]
        amax = max(abs(v) for v in vals)
        sc, near = rne(amax / (6 * s), UE4M3_GRID) if amax else (0, False)
        assert UE4M3_GRID[sc] > 0 or amax == 0, "test data must avoid scales that round to 0"
        scales.append(sc)
        s_near.append(near)
        for v, f in zip(vals, block, strict=True):
            mag, near = rne(abs(v) / (UE4M3_GRID[sc] * s), E2M1_GRID) if amax else (0, False)
            codes.append(mag | (8 if copysign(1.0, float(f)) < 0 else 0))
            e_near.append(near)
    return np.array(scales), np.array(s_near), np.array(codes), np.array(e_near)


def _random_tensors(seed: int):
    """Normal data with block magnitudes over 5 decades (E4M3 subnormal scales included),
    heavy tails, zero blocks and exact E2M1 midpoints."""
    rng = np.random.default_rng(seed)
    grid = np.array([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6])
    for i in range(40):
        n = 16 * int(rng.integers(1, 5))
        kind = i % 4
        if kind == 0:
            x = rng.standard_normal(n) * 10.0 ** rng.uniform(-5, 0, n // 16).repeat(16)
        elif kind == 1:
            x = rng.standard_t(3, n) * 10.0 ** rng.uniform(-20, 20)
        elif kind == 2:
            x = rng.standard_normal(n)
            x[:16] = 0
        else:
            x = rng.choice(grid, n) * rng.choice([-1, 1], n) * 2.0 ** int(rng.integers(-30, 30))
            x[::16] = 6 * 2.0 ** int(rng.integers(-30, 30))
        yield x.astype(np.float32), kind


def test_te_formula_matches_exact_intent_except_near_ties():
    """TE's float32 formula equals exact rounding of exact quotients, except where the exact
    quotient is within 2**-20 of a rounding midpoint (a few float32 ulps decide it there)."""
    n_diff = {0: 0, 1: 0, 2: 0, 3: 0}
    for x, kind in _random_tensors(0):
        q = ln.quantize(x, "nvfp4")
        scales, s_near, codes, e_near = exact_te_intent(x)
        s_diff = q.scales != scales
        assert not (s_diff & ~s_near).any()
        e_diff = (q.codes != codes) & ~np.repeat(s_diff, 16)
        assert not (e_diff & ~e_near).any()
        n_diff[kind] += int(s_diff.sum() + e_diff.sum())
    assert n_diff[0] == n_diff[1] == n_diff[2] == 0  # random data never lands on a tie
    assert n_diff[3] > 0  # exact midpoints do get decided by the float32 ulps


def test_te_formula_differs_from_exact_intent_where_pinned():
    """(1) Element tie: g = 10, block scale 14 (0x56): 0.0390625 / (14 * 10/2688) is exactly
    0.75 -> 1.0 (code 2) by RNE, but TE's S_dec is 1 ulp high (N4), so x * enc lands below 0.75
    -> 0.5 (code 1); ModelOpt's divide hits the tie, torchao rounds it down too.
    (2) Scale tie: g = 729.92578125, amax / (6 s) exactly 0.328125, midway between 0x2A and
    0x2B: TE's float32 product lands above the midpoint -> 0x2B, exact RNE 0x2A.
    (3) Global amax below 2688 / FP32_MAX (~7.9e-36): S_enc saturates at FP32_MAX, S_dec is a
    float32 subnormal and enc saturates too: 1e-38 -> 3.0 * 0.5625 * S_dec ~ 5e-39."""
    x = np.zeros(32, np.float32)
    x[0], x[16], x[17] = 10, 0.3125, 0.0390625
    q = ln.quantize(x, "nvfp4")
    scales, _, codes, near = exact_te_intent(x)
    assert q.scales[1] == scales[1] == 0x56 and near[17]
    assert (int(q.codes[17]), int(codes[17])) == (1, 2)
    assert ln.quantize(x, "nvfp4", algorithm="modelopt").codes[17] == 2
    assert ln.quantize(x, "nvfp4", algorithm="torchao").codes[17] == 1

    x = np.zeros(32, np.float32)
    x[0], x[16] = 729.92578125, 0.5346136093139648
    scales, s_near, _, _ = exact_te_intent(x)
    assert s_near[1] and (int(ln.quantize(x, "nvfp4").scales[1]), int(scales[1])) == (0x2B, 0x2A)

    x = np.zeros(16, np.float32)
    x[0] = 1e-38
    q = ln.quantize(x, "nvfp4")
    scales, _, codes, _ = exact_te_intent(x)
    assert (int(q.scales[0]), int(q.codes[0])) == (0x31, 5) and (scales[0], codes[0]) == (0x7E, 7)
    assert q.tensor_scale == np.float32(1) / np.finfo(np.float32).max


def test_exact_reference_with_calibrated_global_amax():
    rng = np.random.default_rng(4)
    for factor in (1.0, 1.5, 0.7):  # 0.7: data beyond the calibrated amax saturates
        x = rng.standard_normal(64).astype(np.float32)
        ga = float(np.max(np.abs(x))) * factor
        q = ln.quantize(x, "nvfp4", global_amax=ga)
        scales, _, codes, _ = exact_te_intent(x, ga)
        np.testing.assert_array_equal(q.scales, scales)
        np.testing.assert_array_equal(q.codes, codes)


# -- properties ---------------------------------------------------------------------------

values = st.one_of(
    st.floats(min_value=-(2.0**100), max_value=2.0**100, width=32),
    st.sampled_from([0.0, -0.0, 0.25, 0.75, -1.75, 2.5, -3.5, 5.0, 6.0, 1e-3]),
)
tensors = hnp.arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(1, 40)), elements=values)
global_amaxes = st.one_of(st.none(), st.floats(min_value=1e-3, max_value=1e4))
TINY = 2.0**-100  # torchao's float32 arithmetic turns NaN for a global amax below ~7.9e-36


def _usable(x: np.ndarray) -> bool:
    """A global amax of 0 or >= TINY (the undefined peer range is tested apart)."""
    amax = float(np.max(np.abs(x)))
    return amax == 0 or amax >= TINY


def _halfstep(v: np.ndarray) -> np.ndarray:
    """Half the E2M1 spacing around magnitude v (0.25 below 2, 0.5 below 4, 1 above)."""
    return np.where(v < 2, 0.25, np.where(v < 4, 0.5, 1.0))


@settings(max_examples=100)  # x3 algorithms each: keeps the file near 20 s
@given(tensors, global_amaxes)
def test_roundtrip_error_is_half_a_step_or_saturated(x, ga):
    assume(_usable(x))
    for algorithm in ALGORITHMS:
        q = ln.quantize(x, "nvfp4", algorithm=algorithm, global_amax=ga)
        assert q.codes.max() <= 0xF and q.scales.max() < 0x7F  # never the NaN scale
        y = ln.dequantize(q, dtype=np.float64)
        ts = float(q.tensor_scale)
        s = np.repeat(UE4M3.values[q.scales] * ts, 16, axis=-1)[:, : x.shape[1]]
        a, err = np.abs(x.astype(np.float64)), np.abs(y - x)
        pos = s > 0
        inside = pos & (a <= 6 * s)
        bound = _halfstep(a / np.where(pos, s, 1)) * s + a * 2.0**-20
        assert (err <= bound)[inside].all()
        assert ((q.codes & 7) == 7)[pos & ~inside].all()  # saturated at +-6 * scale
        # block scale 0 (TE only): the block amax is below 6 * 2**-10 (half the least scale)
        assert (y[~pos] == 0).all() and (a[~pos] <= 6 * 2.0**-10 * ts * (1 + 2.0**-20)).all()


@settings(max_examples=100)  # x3 algorithms each: keeps the file near 20 s
@given(tensors, global_amaxes)
def test_sign_symmetry(x, ga):
    assume(_usable(x))
    for algorithm in ALGORITHMS:
        q = ln.quantize(x, "nvfp4", algorithm=algorithm, global_amax=ga)
        qn = ln.quantize(-x, "nvfp4", algorithm=algorithm, global_amax=ga)
        np.testing.assert_array_equal(qn.scales, q.scales)
        assert qn.tensor_scale == q.tensor_scale
        np.testing.assert_array_equal(ln.dequantize(qn), -ln.dequantize(q))
        if algorithm != "modelopt":  # ModelOpt encodes every zero result as +0 (0x0)
            np.testing.assert_array_equal(qn.codes, q.codes ^ 0x8)


@settings(max_examples=100)  # x3 algorithms each: keeps the file near 20 s
@given(tensors, st.floats(min_value=0.01, max_value=100.0))
def test_global_amax_option(x, factor):
    assume(_usable(x))
    amax = float(np.max(np.abs(x)))
    g = F32(amax * factor)
    for algorithm in ALGORITHMS:
        q = ln.quantize(x, "nvfp4", algorithm=algorithm)
        same = ln.quantize(x, "nvfp4", algorithm=algorithm, global_amax=amax)
        np.testing.assert_array_equal(same.codes, q.codes)
        np.testing.assert_array_equal(same.scales, q.scales)
        assert same.tensor_scale == q.tensor_scale
        cal = ln.quantize(x, "nvfp4", algorithm=algorithm, global_amax=amax * factor)
        if g == 0:  # all-zero tensor: the guard S_enc = 1 for every algorithm
            assert cal.tensor_scale == 1
        elif algorithm == "transformer_engine":
            assert cal.tensor_scale == F32(1) / np.minimum(F32(2688) / g, np.finfo(F32).max)
        else:
            assert cal.tensor_scale == g / F32(2688)


def test_dequantize_is_the_exact_product():
    vec = VECTORS["vectors"][0]
    q = quantize_vector(vec, "transformer_engine")
    y = ln.dequantize(q, dtype=np.float64)
    e2m1 = ln.element_format("e2m1")
    for i in range(32):
        want = (Fraction(float(e2m1.values[q.codes[i]]))
                * Fraction(float(UE4M3.values[q.scales[i // 16]]))
                * Fraction(float(q.tensor_scale)))
        assert Fraction(float(y[i])) == want
    codes, scales = q.codes.reshape(2, 16), q.scales.copy()
    scales[1] = 0x7F  # the UE4M3 NaN code decodes to NaN
    out = nvfp4.dequantize_blocks(codes, scales, q.tensor_scale, ln.block_format("nvfp4"))
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()


# -- peers ----------------------------------------------------------------------------------


def _peer_tensors(seed: int):
    """2-D float32 tensors for the peer cross-checks (with a calibrated amax now and then)."""
    rng = np.random.default_rng(seed)
    grid = np.array([0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6])
    for i in range(24):
        shape = (int(rng.integers(1, 5)), 16 * int(rng.integers(1, 5)))
        mags = 10.0 ** rng.uniform(-6, 0, (shape[0], shape[1] // 16, 1))
        x = (rng.standard_normal((shape[0], shape[1] // 16, 16)) * mags).reshape(shape)
        if i % 4 == 1:
            x = rng.choice(grid, shape) * rng.choice([-1, 1], shape) * 2.0 ** rng.integers(-9, 9)
        if i % 4 == 2:
            x[0, :16] = 0
        ga = float(np.max(np.abs(x))) * rng.choice([0.5, 1.3]) if i % 3 == 0 else None
        yield x.astype(np.float32), ga


def test_torchao_bit_for_bit():
    torch = pytest.importorskip("torch")
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    for bf16 in (False, True):
        for x, ga in _peer_tensors(1):
            xt = torch.from_numpy(x)
            if bf16:
                xt = xt.to(torch.bfloat16)
                x = xt.float().numpy().astype(ml_dtypes.bfloat16)
            amax = xt.abs().max() if ga is None else torch.tensor(ga)
            pts = nv.per_tensor_amax_to_scale(amax)
            scales, packed = nv.nvfp4_quantize(xt, 16, pts)
            q = ln.quantize(x, "nvfp4", preset="torchao", global_amax=ga)
            np.testing.assert_array_equal(q.scales, scales.view(torch.uint8).numpy())
            np.testing.assert_array_equal(q.codes, kernels.unpack_uint4(packed).numpy())
            assert f32_bits(q.tensor_scale) == f32_bits(pts.numpy())


def test_modelopt_bit_for_bit():
    mo = pytest.importorskip("modelopt.torch.quantization.qtensor.nvfp4_tensor")
    torch = pytest.importorskip("torch")
    for x, ga in _peer_tensors(2):
        xt = torch.from_numpy(x)
        s2 = None if ga is None else torch.tensor(ga, dtype=torch.float32) / (6.0 * 448.0)
        qt, scales, s2 = mo.NVFP4QTensor.quantize(xt, 16, weights_scaling_factor_2=s2)
        packed = qt._quantized_data.numpy()
        codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(x.shape)
        q = ln.quantize(x, "nvfp4", preset="modelopt", global_amax=ga)
        np.testing.assert_array_equal(q.scales, scales.view(torch.uint8).numpy())
        np.testing.assert_array_equal(q.codes, codes)
        assert f32_bits(q.tensor_scale) == f32_bits(s2.numpy())


# -- special values and options -------------------------------------------------------------


def test_zero_and_empty_tensors():
    x = np.zeros((2, 32), np.float32)
    x[1, 3] = -0.0
    for alg, zero_scale in (("transformer_engine", 0x00), ("torchao", 0x08), ("modelopt", 0x38)):
        q = ln.quantize(x, "nvfp4", algorithm=alg)
        assert (q.scales == zero_scale).all() and q.tensor_scale == 1.0
        assert int(q.codes[1, 3]) == (0 if alg == "modelopt" else 0x8)
        assert (ln.dequantize(q) == 0).all()
    q = ln.quantize(np.zeros((0, 32), np.float32), "nvfp4")
    assert q.codes.shape == (0, 32) and q.scales.shape == (0, 2) and q.tensor_scale == 1.0
    assert ln.dequantize(q).shape == (0, 32)
    q = ln.quantize(np.zeros((3, 0), np.float32), "nvfp4")
    assert q.codes.shape == (3, 0) and q.scales.shape == (3, 0)


def test_non_finite_input_and_bad_global_amax_raise():
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(32, np.float32)
        x[5] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            ln.quantize(x, "nvfp4")
    with pytest.raises(ValueError, match="float32 range"):
        ln.quantize(np.array([1e39] + [0.0] * 15), "nvfp4")
    for ga in (-1.0, np.nan, np.inf, 1e39):
        with pytest.raises(ValueError, match="global_amax"):
            ln.quantize(np.ones(16, np.float32), "nvfp4", global_amax=ga)


def test_peer_arithmetic_that_would_make_nan_raises():
    """torchao at global amax 1e-38: fl(1 / fl(amax/2688)) is Inf and 0 * Inf is NaN there."""
    x = np.zeros(16, np.float32)
    x[0] = 1e-38
    with pytest.raises(ValueError, match="undefined"):
        ln.quantize(x, "nvfp4", algorithm="torchao")
    assert ln.quantize(x, "nvfp4", algorithm="modelopt").codes[0] == 7  # its divide stays defined


def test_stochastic_rounding_uses_the_given_bits():
    x = np.zeros(16, np.float32)
    x[0], x[1] = 6.0, 0.375  # global amax 6: block scale 448 and x * enc == x exactly
    ups = [
        ln.quantize(x, "nvfp4", rounding="stochastic", rbits=np.full(16, r, np.uint8)).codes[1]
        for r in range(256)
    ]
    assert ups == [0] * 64 + [1] * 192  # 0.375 is 3/4 of the way from 0 to 0.5
    with pytest.raises(ValueError, match="rbits"):
        ln.quantize(x, "nvfp4", rounding="stochastic")


def test_options_presets_and_errors():
    assert nvfp4.nvfp4_options() == nvfp4.NVFP4Options()
    assert nvfp4.nvfp4_options("torchao", rounding=None).algorithm == "torchao"
    assert nvfp4.nvfp4_options("modelopt", algorithm="transformer_engine").algorithm == (
        "transformer_engine")
    assert set(nvfp4.NVFP4_PRESETS) == set(ALGORITHMS)
    q = ln.quantize(np.ones(16), "nvfp4", preset="modelopt", rounding="nearest_away")
    assert q.options == {"algorithm": "modelopt", "rounding": "nearest_away"}
    with pytest.raises(TypeError, match="options: \\['algorithm', 'rounding'\\]"):
        nvfp4.nvfp4_options(scale_rule="floor")
    with pytest.raises(TypeError, match="does not take"):
        ln.quantize(np.ones(16), "nvfp4", group_size=4)
    with pytest.raises(TypeError, match="scale_rule"):
        ln.quantize(np.ones(16), "nvfp4", scale_rule="floor")
    with pytest.raises(ValueError, match="preset"):
        ln.quantize(np.ones(16), "nvfp4", preset="cutlass")
    with pytest.raises(ValueError, match="algorithm"):
        ln.quantize(np.ones(16), "nvfp4", algorithm="trtllm")
    with pytest.raises(ValueError, match="rounding"):
        ln.quantize(np.ones(16), "nvfp4", rounding="up")


# -- shapes and dtypes ----------------------------------------------------------------------


def test_padding_axis_and_higher_rank():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 45)).astype(np.float32)
    q = ln.quantize(x, "nvfp4")
    assert q.codes.shape == x.shape and q.scales.shape == (3, 4, 3) and q.pad == 3
    padded = np.concatenate([x, np.zeros((3, 4, 3), np.float32)], axis=-1)
    qp = ln.quantize(padded, "nvfp4")
    np.testing.assert_array_equal(q.codes, qp.codes[..., :45])
    np.testing.assert_array_equal(q.scales, qp.scales)
    assert q.tensor_scale == qp.tensor_scale
    np.testing.assert_array_equal(ln.dequantize(q), ln.dequantize(qp)[..., :45])
    q1 = ln.quantize(x, "nvfp4", axis=1)  # 4 elements along axis 1: one padded block
    qt = ln.quantize(np.ascontiguousarray(np.moveaxis(x, 1, -1)), "nvfp4")
    assert q1.scales.shape == (3, 1, 45) and q1.pad == 12
    np.testing.assert_array_equal(q1.codes, np.moveaxis(qt.codes, -1, 1))
    np.testing.assert_array_equal(q1.scales, np.moveaxis(qt.scales, -1, 1))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_input_dtypes(dtype):
    """Half-precision inputs are exact in float32; float64 is rounded to float32 first."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((4, 48)) * 3).astype(dtype)
    for alg in ALGORITHMS:
        q = ln.quantize(x, "nvfp4", algorithm=alg)
        ref = ln.quantize(x.astype(np.float32), "nvfp4", algorithm=alg)
        np.testing.assert_array_equal(q.codes, ref.codes)
        np.testing.assert_array_equal(q.scales, ref.scales)
        assert q.tensor_scale == ref.tensor_scale
