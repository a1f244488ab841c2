"""HiF4: golden vectors, an independent exact scalar reference, properties and API plumbing."""

from __future__ import annotations

from fractions import Fraction
from math import floor

import en_dtypes
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from vectors import load

import lowbit.numerics as ln
from lowbit.numerics import hif4
from lowbit.numerics.formats import block_format
from lowbit.numerics.specs import E1M2, E6M2

HIF4 = block_format("hif4")
VECTORS = load("hif4.json")
BF16 = ml_dtypes.bfloat16


def bf16_from_hex(hexes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint16).view(BF16)


def quantize_rows(x: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scales, micro) of 64-wide rows through the public API."""
    q = ln.quantize(x, "hif4", **options)
    return q.codes, q.scales[..., 0], q.micro[..., 0, :]


def bits(s: str) -> list[int]:
    return [int(c) for c in s]


# -- golden vectors -----------------------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: v["id"])
def test_vectors(vec):
    x = bf16_from_hex(vec["input_bf16_hex"])
    np.testing.assert_array_equal(x.astype(np.float64), [float(v) for v in vec["input_value"]])
    exp = vec["expected"]
    q = ln.quantize(x, "hif4")
    assert q.codes.shape == (64,) and q.scales.shape == (1,) and q.micro.shape == (1, 24)
    assert q.pad == 0 and q.block_size == 64
    assert int(q.scales[0]) == int(exp["e6m2_code"], 16)
    assert E6M2.values[q.scales[0]] == float(exp["e6m2_value"])
    assert q.micro[0, :8].tolist() == bits(exp["e1_8_bits"])
    assert q.micro[0, 8:].tolist() == bits(exp["e1_16_bits"])
    assert "".join(f"{c:X}" for c in q.codes) == exp["nibbles"]
    y = ln.dequantize(q)
    want = np.array([int(h, 16) for h in exp["dequantized_f32_hex"]], dtype=np.uint32)
    np.testing.assert_array_equal(y.view(np.uint32), want)  # -0.0 included
    np.testing.assert_array_equal(y, [float(v) for v in exp["dequantized_value"]])


def test_vector_inputs_follow_their_descriptions():
    i = np.arange(64)
    formulas = {"B2": np.sin(i + 1) * 2.0 ** ((i % 9) - 4), "B3": 1e-3 * (i - 31.5)}
    for vec in VECTORS["vectors"][1:]:
        want = bf16_from_hex(vec["input_bf16_hex"])
        np.testing.assert_array_equal(formulas[vec["id"]].astype(BF16).view(np.uint16),
                                      want.view(np.uint16))


def test_vectors_all_dtypes_and_float64_dequantize():
    """Every BF16 vector is exact in float32/float64: the same fields from every dtype."""
    for vec in VECTORS["vectors"]:
        x = bf16_from_hex(vec["input_bf16_hex"])
        ref = ln.quantize(x, "hif4")
        for dt in (np.float32, np.float64):
            q = ln.quantize(x.astype(dt), "hif4")
            np.testing.assert_array_equal(q.codes, ref.codes)
            np.testing.assert_array_equal(q.scales, ref.scales)
            np.testing.assert_array_equal(q.micro, ref.micro)
        exact = ln.dequantize(ref, dtype=np.float64)
        np.testing.assert_array_equal(exact, ln.dequantize(ref).astype(np.float64))


def test_element_code_table():
    table = VECTORS["element_code_table"]["codes"]
    codes = np.array([int(c["code"], 16) for c in table], dtype=np.uint8)
    np.testing.assert_array_equal(codes, np.arange(16))
    want = np.array([int(c["value_f32_hex"], 16) for c in table], dtype=np.uint32)
    np.testing.assert_array_equal(ln.decode(codes, "e1m2").view(np.uint32), want)
    np.testing.assert_array_equal(ln.decode(codes, "s1p2").view(np.uint32), want)
    en = codes.view(en_dtypes.float4_e1m2).astype(np.float32)
    np.testing.assert_array_equal(en.view(np.uint32), want)


def test_float4_e1m2_cast_is_not_hif4_rounding():
    """en_dtypes' float4_e1m2 cast is RNE; HiF4 elements round half away (floor(4|x| + 0.5))."""
    ex = VECTORS["float4_e1m2_cast_is_not_hif4_rounding"]["examples"]
    vals = np.array([float(e["input"]) for e in ex], dtype=np.float32)
    en = vals.astype(en_dtypes.float4_e1m2).view(np.uint8)
    assert en.tolist() == [int(e["float4_e1m2_code"], 16) for e in ex]
    np.testing.assert_array_equal(ln.encode(vals, "e1m2"), en)  # our RNE agrees with it
    # in a block with E6M2 = 1 and zero micro-exponents in group 1, elements are k = floor(4x+.5)
    x = np.zeros(64, dtype=np.float32)
    x[0], x[8:8 + vals.size] = 7.0, vals
    codes, scale, micro = quantize_rows(x)
    assert scale == 0xC0 and micro[1] == 0 and micro[8 + 2] == 0
    hif = codes[8:8 + vals.size]
    assert hif.tolist() == [floor(4 * float(v) + 0.5) for v in vals] == [1, 2, 3]
    assert (hif != en).tolist() == [True, False, True]  # 0.125 and 0.625 differ
    np.testing.assert_array_equal(ln.encode(vals, "e1m2", rounding="nearest_away"), hif)


def test_constants_match_reference():
    assert hif4.ONE_SEVENTH_BF16 == 0.142578125
    rec = hif4.reciprocals(E6M2)
    mant = {0: 1.0, 1: 0.80078125, 2: 0.66796875, 3: 0.5703125}  # hifloat.md 2.2 step 3
    hw = {0: 0, 1: 77, 2: 43, 3: 18}  # R4 E6M2_REC hardware table: 2**E8 * (1 + M7/128)
    for code in range(255):
        e, m = (code >> 2) - 48, code & 3
        assert rec[code] == mant[m] * 2.0**-e
        assert rec[code] == (1 + hw[m] / 128) * 2.0 ** (-e - (m != 0))
    assert np.isnan(rec[0xFF])
    assert E6M2.values[0] == 2.0**-48 and E6M2.values[0xFE] == 49152 and np.isnan(E6M2.values[255])


# -- independent scalar reference (hifloat.md 2.2, exact rationals) ------------------------


def ref_bf16(q: Fraction) -> Fraction:
    """Round q >= 0 to 8 significant bits, ties to even, by loops on exact rationals."""
    if q == 0:
        return q
    e = 0
    while q >= Fraction(2) ** (e + 1):
        e += 1
    while q < Fraction(2) ** e:
        e -= 1
    unit = Fraction(2) ** (e - 7)
    n = q / unit
    k = floor(n)
    if n - k > Fraction(1, 2) or (n - k == Fraction(1, 2) and k % 2 == 1):
        k += 1
    return k * unit


def ref_e6m2(sf: Fraction) -> tuple[int, Fraction]:
    """E6M2 code and value of sf in [2**-48, 49152], ties to even (3 significant bits)."""
    e = -48
    while sf >= Fraction(2) ** (e + 1):
        e += 1
    n = sf / Fraction(2) ** (e - 2)  # in [4, 8)
    k = floor(n)
    if n - k > Fraction(1, 2) or (n - k == Fraction(1, 2) and k % 2 == 1):
        k += 1
    if k == 8:
        e, k = e + 1, 4
    return ((e + 48) << 2) | (k - 4), k * Fraction(2) ** (e - 2)


def ref_to_hifx(xs) -> tuple[int, list[int], list[int], list[int]]:
    """(E6M2 code, E1_8, E1_16, nibbles) of one 64-block, written from the reference text."""
    if not all(np.isfinite(xs)):
        return 0xFF, [0] * 8, [0] * 16, [0] * 64
    x = [Fraction(float(v)) for v in xs]
    a = [abs(v) for v in x]
    v16 = [max(a[4 * j:4 * j + 4]) for j in range(16)]
    v8 = [max(v16[2 * g], v16[2 * g + 1]) for g in range(8)]
    vmax = max(v8)
    sf = ref_bf16(vmax * ref_bf16(Fraction(1, 7)))
    sf = min(max(sf, Fraction(2) ** -48), Fraction(49152))
    code, e6m2 = ref_e6m2(sf)
    rec = ref_bf16(1 / e6m2)
    e1_8 = [int(v8[g] * rec >= 4) for g in range(8)]
    e1_16 = [int(v16[j] * rec / 2 ** e1_8[j // 2] >= 2) for j in range(16)]
    nib = []
    for i in range(64):
        k = min(7, floor(a[i] * rec / 2 ** (e1_8[i // 8] + e1_16[i // 4]) * 4 + Fraction(1, 2)))
        nib.append((8 if x[i] < 0 else 0) | k)
    return code, e1_8, e1_16, nib


def random_blocks(rng: np.random.Generator, n: int) -> np.ndarray:
    """n BF16 blocks (as float64) from varied distributions, including exact-tie-dense ones."""
    kinds = [
        lambda: rng.standard_normal(64) * 10.0 ** rng.uniform(-4, 4),
        lambda: rng.standard_t(1.2, 64),
        lambda: rng.choice([-1, 1], 64) * 2.0 ** rng.uniform(-60, 25, 64),
        lambda: rng.choice([-1, 1], 64) * 2.0 ** rng.uniform(-140, -40, 64),  # bf16 subnormals
        lambda: rng.standard_normal(64) * (rng.random(64) < 0.05),
        lambda: np.zeros(64),
        lambda: rng.choice([-1, 1], 64) * 2.0 ** rng.uniform(15, 40, 64),  # SF clamps high
        lambda: rng.integers(-64, 65, 64) / 8 * 2.0 ** rng.integers(-8, 9),  # ties everywhere
        lambda: rng.choice([-1, 1], 64) * rng.integers(1, 256, 64) / 128 * 2.0 ** rng.integers(
            -3, 4, 64),
    ]
    rows = [kinds[i % len(kinds)]() for i in range(n)]
    return np.array(rows, dtype=np.float64).astype(BF16).astype(np.float64)


def assert_matches_reference(x: np.ndarray) -> None:
    codes, scales, micro = hif4.quantize_blocks(x[:, None, :], HIF4, hif4.hif4_options(), None)
    for r in range(x.shape[0]):
        code, e1_8, e1_16, nib = ref_to_hifx(x[r])
        got = (int(scales[r, 0]), micro[r, 0, :8].tolist(), micro[r, 0, 8:].tolist(),
               codes[r, 0].tolist())
        assert got == (code, e1_8, e1_16, nib), f"block {r}: {x[r].tolist()}"


def test_matches_exact_reference_on_random_bf16_blocks():
    assert_matches_reference(random_blocks(np.random.default_rng(20260211), 360))


def near_decision_float64_blocks(rng: np.random.Generator, n: int) -> tuple[np.ndarray, int]:
    """float64 blocks whose elements sit within an ulp of thresholds and rounding midpoints.

    Element 0 holds Vmax (E6M2 mantissa 1.25, 1.5 or 1.75, so REC is not a power of two). Every
    third block tests the thresholds: ``|x| ~ 4/REC`` heading 8-groups 1, 3, 5, 7 and
    ``|x| ~ 2/REC`` heading 4-groups 4, 8, 12 (whose 8-group stays below 4). The others fill
    elements 8..63 with ``|x| ~ (2k+1)/8 / REC`` (micro-exponents 0 there: every value is
    below 2/REC). Returns the blocks and how many elements a plain float64 product gets wrong
    (``fl(|x| * REC)`` equals a decision point that the exact product is just below).
    """
    vmaxes = [8.75, 10.5, 12.25, 0.546875 * 2**-20, 1.5 * 2**12]
    rows, hard = [], 0
    for r in range(n):
        vmax = vmaxes[r % len(vmaxes)]
        code, _ = ref_e6m2(ref_bf16(Fraction(vmax) * ref_bf16(Fraction(1, 7))))
        rec = hif4.reciprocals(E6M2)[code]
        row = np.zeros(64)
        row[0] = vmax
        if r % 3 == 0:
            slots = [(8 * g, Fraction(4)) for g in (1, 3, 5, 7)]
            slots += [(4 * j, Fraction(2)) for j in (4, 8, 12)]
        else:
            slots = [(i, Fraction(2 * int(rng.integers(7)) + 1, 8)) for i in range(8, 64)]
        for i, d in slots:
            v = float(d / Fraction(rec))
            if rng.random() < 0.3:
                v = float(np.nextafter(v, rng.choice([-np.inf, np.inf])))
            hard += Fraction(v * rec) == d and Fraction(v) * Fraction(rec) < d
            row[i] = v * rng.choice([-1.0, 1.0])
        rows.append(row)
    return np.array(rows), hard


def test_float64_input_is_rounded_exactly():
    x, hard = near_decision_float64_blocks(np.random.default_rng(7), 60)
    assert hard > 100  # the cases where a plain float64 product misleads are really hit
    assert_matches_reference(x)
    full = np.random.default_rng(8).standard_normal((40, 64)) * 3.0  # 53-bit significands
    assert_matches_reference(full)


# -- special blocks and policies ----------------------------------------------------------


def test_zero_tiny_and_huge_blocks():
    x = np.zeros((3, 64))
    x[1, 5], x[1, 6] = -(2.0**-133), 2.0**-126  # bf16 subnormal / min normal
    x[2, :] = 2.0**30
    x[2, 1] = -3.0
    codes, scales, micro = quantize_rows(x)
    assert scales.tolist() == [0x00, 0x00, 0xFE]  # clamps at 2**-48 and 49152
    assert not micro[:2].any() and micro[2].all()
    assert not codes[0].any()
    assert codes[1, 5] == 0x8 and codes[1, 6] == 0x0 and not np.delete(codes[1], 5).any()
    assert codes[2, 0] == 7 and codes[2, 1] == 0x8  # saturated; -3 is 0 at this scale
    y = ln.dequantize(ln.quantize(x, "hif4"), dtype=np.float64)
    assert y[2, 0] == 49152 * 4 * 1.75 == 344064
    assert np.all(y[:2] == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_block_is_nan(bad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 64))
    x[1, 17] = bad
    q = ln.quantize(x, "hif4")
    assert q.scales[1, 0] == 0xFF and not q.micro[1].any() and not q.codes[1].any()
    clean = ln.quantize(x[[0, 2]], "hif4")
    np.testing.assert_array_equal(q.codes[[0, 2]], clean.codes)
    np.testing.assert_array_equal(q.scales[[0, 2]], clean.scales)
    y = ln.dequantize(q)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()


def test_negative_zero_option():
    x = bf16_from_hex(VECTORS["vectors"][1]["input_bf16_hex"])
    expected = VECTORS["vectors"][1]["expected"]["nibbles"]
    assert "8" in expected
    q = ln.quantize(x, "hif4", negative_zero=False)
    assert "".join(f"{c:X}" for c in q.codes) == expected.replace("8", "0")
    assert q.options["negative_zero"] is False
    # a -0.0 input gives 0x0 (R4 takes the sign from x < 0), a negative underflow 0x8
    z = np.zeros(64)
    z[0], z[1], z[2] = 7.0, -0.0, -0.01
    assert quantize_rows(z)[0][1:3].tolist() == [0x0, 0x8]


def test_scale_rounding_option():
    """Vmax = 7.875 gives SF = bf16(1.1228) = 1.125, an E6M2 tie between 1.0 and 1.25."""
    x = np.zeros(64)
    x[0] = 7.875
    assert quantize_rows(x)[1] == 0xC0
    assert quantize_rows(x, scale_rounding="nearest_away")[1] == 0xC1
    assert quantize_rows(x)[0][0] == 7  # 7.875 * 1 / 4 saturates to 1.75


def test_element_rounding_modes():
    rng = np.random.default_rng(3)
    x = random_blocks(rng, 27)
    ref = quantize_rows(x)
    for mode in ("nearest_even", "nearest_zero", "toward_zero"):
        codes, scales, micro = quantize_rows(x, rounding=mode)
        np.testing.assert_array_equal(scales, ref[1])  # only elements depend on the mode
        np.testing.assert_array_equal(micro, ref[2])
        np.testing.assert_array_equal(codes, hif4.quantize_blocks(
            x[:, None], HIF4, hif4.hif4_options(mode), None)[0][:, 0])
    low = quantize_rows(x, rounding="stochastic", rbits=np.zeros(x.shape, np.uint8))
    np.testing.assert_array_equal(low[0], quantize_rows(x, rounding="toward_zero")[0])
    high = quantize_rows(x, rounding="stochastic", rbits=np.full(x.shape, 255, np.uint8))
    trunc = E1M2.values[quantize_rows(x, rounding="toward_zero")[0]]
    assert np.all(np.abs(E1M2.values[high[0]]) >= np.abs(trunc))


def test_stochastic_rounding_follows_the_codec_rule():
    """0.3 lies at f = 0.2 from 0.25 to 0.5: it rounds up iff floor(0.2 * 2**16) + r >= 2**16."""
    x = np.zeros((4000, 64))
    x[:, 0] = 7.0  # E6M2 = 1, group 0 micro-exponents 1/1
    x[:, 8] = 0.3  # group 1 unscaled
    rb = np.random.default_rng(5).integers(0, 2**16, x.shape, dtype=np.uint16)
    codes = quantize_rows(x, rounding="stochastic", rbits=rb)[0][:, 8]
    np.testing.assert_array_equal(codes, 1 + (rb[:, 8].astype(int) + 13107 >= 2**16))
    assert abs(np.mean(E1M2.values[codes]) - 0.3) < 0.006


def test_option_errors():
    x = np.ones(64, dtype=np.float32)
    with pytest.raises(TypeError):
        ln.quantize(x, "hif4", granularity="tensor")
    with pytest.raises(TypeError):
        hif4.hif4_options(scale_rule="floor")
    with pytest.raises(TypeError):
        ln.quantize(x, "hif4", scale_rule="floor")
    with pytest.raises(TypeError):
        ln.quantize(x, "hif4", preset="ocp")
    with pytest.raises(ValueError):
        ln.quantize(x, "hif4", rounding="up")
    with pytest.raises(ValueError):
        ln.quantize(x, "hif4", scale_rounding="toward_zero")
    with pytest.raises(TypeError):
        ln.quantize(x, "hif4", negative_zero="no")
    with pytest.raises(ValueError):
        ln.quantize(x, "hif4", rounding="stochastic")  # needs rbits
    with pytest.raises(ValueError):
        hif4.quantize_blocks(np.zeros((1, 32)), HIF4, hif4.hif4_options(), None)
    with pytest.raises(ValueError):
        hif4.dequantize_blocks(np.zeros((1, 64), np.uint8), np.zeros(1, np.uint8),
                               np.full((1, 24), 2, np.uint8), HIF4)
    assert hif4.hif4_options() == hif4.HiF4Options("nearest_away", "nearest_even", True)
    assert hif4.hif4_options(None, scale_rounding=None) == hif4.HiF4Options()


# -- shapes, axes, padding, dtypes --------------------------------------------------------


def test_axis_and_padding_match_manual_blocks():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 70, 2)).astype(np.float32)
    q = ln.quantize(x, "hif4", axis=1)
    assert q.codes.shape == x.shape and q.axis == 1 and q.pad == 58
    assert q.scales.shape == (3, 2, 2) and q.micro.shape == (3, 2, 2, 24)
    padded = np.zeros((3, 2, 128))
    padded[..., :70] = np.moveaxis(x, 1, -1)
    codes, scales, micro = hif4.quantize_blocks(padded.reshape(3, 2, 2, 64), HIF4,
                                                hif4.hif4_options(), None)
    np.testing.assert_array_equal(q.codes, np.moveaxis(codes.reshape(3, 2, 128)[..., :70], -1, 1))
    np.testing.assert_array_equal(q.scales, np.moveaxis(scales, -1, 1))
    np.testing.assert_array_equal(q.micro, np.moveaxis(micro, -2, 1))
    y = ln.dequantize(q)
    assert y.shape == x.shape and y.dtype == np.float32
    exact = hif4.dequantize_blocks(codes, scales, micro, HIF4).reshape(3, 2, 128)[..., :70]
    np.testing.assert_array_equal(y, np.moveaxis(exact, -1, 1))
    q0 = ln.quantize(np.moveaxis(x, 1, 0), "hif4", axis=-3)
    np.testing.assert_array_equal(np.moveaxis(q0.codes, 0, 1), q.codes)


@pytest.mark.parametrize("shape,axis", [((0,), 0), ((0, 64), 0), ((0, 64), -1), ((4, 0), -1),
                                        ((2, 0, 3), 1), ((1,), 0), ((5, 1), 0)])
def test_odd_and_empty_shapes(shape, axis):
    x = np.random.default_rng(2).standard_normal(shape)
    q = ln.quantize(x, "hif4", axis=axis)
    assert q.codes.shape == shape
    nb = -(-shape[axis] // 64)
    scale_shape = list(shape)
    scale_shape[axis] = nb
    assert q.scales.shape == tuple(scale_shape)
    assert q.micro.shape == (*scale_shape, 24)
    y = ln.dequantize(q)
    assert y.shape == shape
    if x.size:  # a block's error is below a quarter of its largest magnitude
        assert np.all(np.abs(y - x) <= np.max(np.abs(x), axis=axis, keepdims=True) / 4)


def test_dtypes_give_identical_results():
    k = np.random.default_rng(4).integers(-255, 256, (4, 100))
    base = k / 16.0  # 8 significant bits: exact in float16, bfloat16, float32, float64, ints/16
    ref = ln.quantize(base, "hif4")
    for dt in (np.float16, BF16, np.float32):
        q = ln.quantize(base.astype(dt), "hif4")
        np.testing.assert_array_equal(q.codes, ref.codes)
        np.testing.assert_array_equal(q.scales, ref.scales)
        np.testing.assert_array_equal(q.micro, ref.micro)
    q = ln.quantize(k, "hif4")  # integers: the same blocks scaled by 16
    np.testing.assert_array_equal(q.codes, ref.codes)
    np.testing.assert_array_equal(ln.dequantize(q), ln.dequantize(ref) * 16)
    with pytest.raises(ValueError):
        ln.quantize(np.float32(1.0), "hif4")
    with pytest.raises(TypeError):
        ln.quantize(np.ones(64, dtype=complex), "hif4")


# -- properties ---------------------------------------------------------------------------

_finite_bf16 = st.integers(0, 0xFFFF).filter(lambda b: (b & 0x7F80) != 0x7F80)


def _bf16_block(patterns) -> np.ndarray:
    return np.asarray(patterns, dtype=np.uint16).view(BF16).astype(np.float64)


@st.composite
def bf16_blocks(draw, max_exp: int = 0x7F):
    """A 64-block of finite bf16 values (some zero) whose exponents span a random window."""
    lo = draw(st.integers(0, max_exp))
    hi = draw(st.integers(lo, min(lo + 40, max_exp)))
    raw = draw(hnp.arrays(np.uint32, 64)).astype(np.int64)
    exps = lo + (raw >> 16) % (hi - lo + 1)
    pats = (raw & 0x807F) | (exps << 7)
    return _bf16_block(np.where((raw >> 28) == 0, 0, pats))


@settings(max_examples=100, deadline=None)
@given(bf16_blocks(max_exp=0xFE))
def test_sign_symmetry(x):
    pos = quantize_rows(x)
    neg = quantize_rows(-x)
    np.testing.assert_array_equal(neg[1], pos[1])
    np.testing.assert_array_equal(neg[2], pos[2])
    np.testing.assert_array_equal(neg[0], pos[0] ^ np.where(x != 0, 8, 0))
    y = ln.dequantize(ln.quantize(x, "hif4"))
    np.testing.assert_array_equal(ln.dequantize(ln.quantize(-x, "hif4")), -y)


@settings(max_examples=100, deadline=None)
@given(bf16_blocks(max_exp=0x7F + 17))  # |x| < 2**18: SF never clamps at 49152
def test_dequantize_error_bound(x):
    """|x - q| <= step/4 * 2 where step = E6M2 * 2**(E1_8 + E1_16) / 4 is the element ulp:
    at most one ulp when the element saturates at 1.75, half an ulp (plus REC's relative error
    2**-9 on 1.75) otherwise."""
    codes, scale, micro = quantize_rows(x)
    e = np.repeat(micro[:8], 8) + np.repeat(micro[8:], 4)
    unit = E6M2.values[scale] * 2.0**e  # value of an element 1.0
    y = ln.dequantize(ln.quantize(x, "hif4"), dtype=np.float64)
    err = np.abs(x - y)
    assert np.all(err <= unit / 4)
    k = codes & 7
    assert np.all(err[k < 7] <= unit[k < 7] * (1 / 8 + 2.0**-8))
    assert np.all((y == 0) | (np.sign(y) == np.sign(x)))


@settings(max_examples=150, deadline=None)
@given(_finite_bf16, _finite_bf16, hnp.arrays(np.float64, 63, elements=st.floats(-1, 1)))
def test_scale_monotonic_in_amax_and_only_depends_on_it(pa, pb, fill):
    a, b = sorted(np.abs(_bf16_block([pa, pb])))
    xa, xb = np.zeros(64), np.zeros(64)
    xa[0], xb[0] = a, b
    sa, sb = quantize_rows(xa)[1], quantize_rows(xb)[1]
    assert sa <= sb and E6M2.values[sa] <= E6M2.values[sb]
    xb[1:] = (fill * b).astype(BF16).astype(np.float64).clip(-b, b)
    assert quantize_rows(xb)[1] == sb
