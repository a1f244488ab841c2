"""HiFloat8: golden vectors, decode table, exhaustive round trips, en_dtypes cross-check over
more than a million float32 values, an independent TA encoder (hifloat.md 1.5), saturation,
the nearest-even mode's ties, and HiF8 as an (optionally float32-scaled) block format."""

from __future__ import annotations

import en_dtypes
import ml_dtypes
import numpy as np
import pytest
from vectors import load

import lowbit.numerics as ln
from lowbit.numerics.specs import HIF8

VECTORS = load("hif8.json")
HF8 = en_dtypes.hifloat8
ALL_CODES = np.arange(256, dtype=np.uint8)
VALUES = ln.decode(ALL_CODES, "hif8", dtype=np.float64)


def f32(hexes) -> np.ndarray:
    return np.array([int(h, 16) for h in np.atleast_1d(hexes)], dtype=np.uint32).view(np.float32)


def en_encode(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(HF8).view(np.uint8)


SPECIAL = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


def parse_value(s: str) -> float:
    return SPECIAL[s] if s in SPECIAL else float(s)


def f32_or_special(s: str) -> np.float32:
    """A float32 from a bit-pattern string or "nan" / "+inf" / "-inf"."""
    return np.float32(SPECIAL[s]) if s in SPECIAL else f32(s)[0]


def assert_same_f32(got: np.ndarray, want: np.ndarray) -> None:
    """Bit-identical float32 arrays, any NaN matching any NaN."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def grid_midpoints() -> np.ndarray:
    """Every midpoint between adjacent positive HiF8 values, including 0 / 2**-22 (2**-23) and
    max / the virtual Inf point 1.5 * 2**15 (40960); all exact in float32."""
    pos = np.unique(VALUES[np.isfinite(VALUES) & (VALUES >= 0)])
    grid = np.append(pos, 1.5 * 2**15)
    mids = (grid[:-1] + grid[1:]) / 2
    assert np.all(mids.astype(np.float32) == mids)
    return mids.astype(np.float32)


# -- an independent TA encoder written from hifloat.md 1.5 --------------------------------


def ta_encode(x: np.ndarray) -> np.ndarray:
    """HiF8 TA codes of float32 ``x`` by the section 1.5 recipe (log2 via frexp, no tables)."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    a = np.abs(np.where(np.isfinite(x), x, 0.0))
    _, fe = np.frexp(np.where(a > 0, a, 1.0))
    e = fe.astype(np.int64) - 1
    mw = np.select([np.abs(e) <= 3, np.abs(e) <= 7, e >= -15], [3, 2, 1], 0)
    q = np.floor(np.ldexp(a, mw - e) + 0.5).astype(np.int64)
    carry = q == 2 ** (mw + 1)
    e = e + carry
    mw = np.select([np.abs(e) <= 3, np.abs(e) <= 7, e >= -15], [3, 2, 1], 0)
    m = np.where(carry, 0, q - 2**mw)
    ae = np.abs(e)
    d = np.select([ae == 0, ae == 1, ae <= 3, ae <= 7], [0, 1, 2, 3], 4)
    dot, dot_len = np.array([1, 1, 1, 2, 3])[d], np.array([4, 3, 2, 2, 2])[d]
    field = np.where(d > 0, ((e < 0) << np.maximum(d - 1, 0)) | (ae - (1 << np.maximum(d - 1, 0))),
                     0)
    code = (dot << (7 - dot_len)) | (field << mw) | m
    code = np.where(mw == 0, e + 23, code)  # denormal: the 3-bit field is the exponent
    code = np.where(a < 2.0**-23, 0, np.where(e == -23, 1, code))  # [2**-23, 2**-22) -> 2**-22
    code = np.where(a >= 40960, 0x6F, code)
    code = np.where(np.isinf(x), 0x6F, code)
    code = np.where((x < 0) & (code != 0), code | 0x80, code)
    return np.where(np.isnan(x), 0x80, code).astype(np.uint8)


# -- vectors and decode table -------------------------------------------------------------


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: f"{v['n']}-{v['case']}")
def test_vector(vec):
    x = f32(vec["input_f32_hex"])
    if vec["input_f32"] != "nan":
        assert x[0] == np.float32(parse_value(vec["input_f32"]))
    code = ln.encode(x, "hif8")
    assert code.dtype == np.uint8 and int(code[0]) == int(vec["expected_code"], 16)
    assert int(ln.encode(x.astype(np.float64), "hif8")[0]) == int(vec["expected_code"], 16)
    assert int(en_encode(x)[0]) == int(code[0]) == int(ta_encode(x)[0])
    want = f32_or_special(vec["expected_decoded_f32_hex"])
    assert_same_f32(ln.decode(code, "hif8"), np.atleast_1d(want))
    assert_same_f32(np.float32(parse_value(vec["expected_decoded"])), want)


def test_vectors_batch_and_count():
    vecs = VECTORS["vectors"]
    assert len(vecs) == 52 and [v["n"] for v in vecs] == list(range(1, 53))
    x = f32([v["input_f32_hex"] for v in vecs])
    want = [int(v["expected_code"], 16) for v in vecs]
    assert ln.encode(x, "hif8").tolist() == want
    b = x.astype(ml_dtypes.bfloat16)
    same = (b.astype(np.float32) == x) | np.isnan(x)  # the vectors that are bf16 values
    assert same.sum() > 30
    assert ln.encode(b[same], "hif8").tolist() == np.array(want)[same].tolist()


def test_decode_table():
    table = VECTORS["decode_table"]
    assert [int(t["code"], 16) for t in table] == list(range(256))
    want = np.array([f32_or_special(t["value_f32_hex"]) for t in table], dtype=np.float32)
    got = ln.decode(ALL_CODES, "hif8")
    assert_same_f32(got, want)
    assert_same_f32(ALL_CODES.view(HF8).astype(np.float32), want)
    np.testing.assert_array_equal(VALUES.astype(np.float32)[~np.isnan(want)], want[~np.isnan(want)])


def test_decode_structure():
    v = VALUES
    assert np.isnan(v[0x80]) and np.isnan(v).sum() == 1
    assert v[0x00] == 0 and (v == 0).sum() == 1  # no -0
    assert v[0x6F] == np.inf and v[0xEF] == -np.inf and np.isinf(v).sum() == 2
    assert v[0x6E] == 2.0**15 == HIF8.max and v[0x7E] == 2.0**-15 and v[0x01] == 2.0**-22
    pos = ALL_CODES[1:0x80]
    np.testing.assert_array_equal(v[pos | 0x80], -v[pos])
    finite = v[np.isfinite(v)]
    assert finite.size == 253 and np.unique(finite).size == 253
    # precision tapers: 3 mantissa bits for |E| <= 3, 2 to |E| <= 7, 1 to |E| <= 15, 0 below
    for lo, hi, per in ((1, 2, 8), (8, 16, 8), (16, 32, 4), (256, 512, 2), (2.0**-15, 2.0**-14, 2),
                        (2.0**-20, 2.0**-19, 1)):
        assert ((finite >= lo) & (finite < hi)).sum() == per


def test_every_code_reencodes_to_itself():
    ok = ALL_CODES != 0x80
    for x in (VALUES, VALUES.astype(np.float32)):
        np.testing.assert_array_equal(ln.encode(x[ok], "hif8"), ALL_CODES[ok])
    for mode in ("nearest_even", "nearest_zero", "toward_zero"):
        np.testing.assert_array_equal(ln.encode(VALUES[ok], "hif8", rounding=mode), ALL_CODES[ok])
    rb = np.random.default_rng(0).integers(0, 256, ok.sum(), dtype=np.uint8)
    np.testing.assert_array_equal(
        ln.encode(VALUES[ok], "hif8", rounding="stochastic", rbits=rb), ALL_CODES[ok])
    assert ln.encode(np.array([np.nan]), "hif8")[0] == 0x80
    np.testing.assert_array_equal(en_encode(VALUES[ok]), ALL_CODES[ok])


# -- cross-check against en_dtypes and the section 1.5 encoder ----------------------------


def cross_check_inputs() -> np.ndarray:
    """>= 10**6 seeded float32: random bit patterns (every binade, subnormals, Inf, NaN),
    log-uniform values over HiF8's range, and every midpoint with its float32 neighbours."""
    rng = np.random.default_rng(20240926)
    patterns = rng.integers(0, 2**32, 700_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    in_range = (rng.choice([-1.0, 1.0], 500_000) * 2.0 ** rng.uniform(-25, 17, 500_000))
    mids = grid_midpoints()
    near = np.concatenate([mids, np.nextafter(mids, np.float32(0)),
                           np.nextafter(mids, np.float32(np.inf))])
    grid = VALUES[np.isfinite(VALUES)].astype(np.float32)
    around = np.concatenate([grid, np.nextafter(grid, np.float32(-np.inf)),
                             np.nextafter(grid, np.float32(np.inf))])
    return np.concatenate([patterns, in_range.astype(np.float32), near, -near, around])


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # signalling NaNs
def test_cross_check_en_dtypes_and_section_1_5():
    x = cross_check_inputs()
    assert x.size >= 10**6
    ours = ln.encode(x, "hif8")
    for name, other in (("en_dtypes", en_encode(x)), ("section 1.5", ta_encode(x))):
        bad = np.flatnonzero(ours != other)
        assert bad.size == 0, f"{name}: {x[bad[:5]].tolist()} {ours[bad[:5]]} {other[bad[:5]]}"


def test_midpoints_round_away():
    mids = grid_midpoints()
    up = ln.decode(ln.encode(mids, "hif8"), "hif8", dtype=np.float64)
    hi = np.append(np.unique(VALUES[np.isfinite(VALUES) & (VALUES >= 0)])[1:], np.inf)
    np.testing.assert_array_equal(up, hi)  # TA: every tie goes to the larger magnitude (or Inf)
    np.testing.assert_array_equal(ln.encode(-mids, "hif8"), ln.encode(mids, "hif8") | 0x80)
    below = ln.decode(ln.encode(np.nextafter(mids, np.float32(0)), "hif8"), "hif8",
                      dtype=np.float64)
    np.testing.assert_array_equal(below, np.unique(VALUES[np.isfinite(VALUES) & (VALUES >= 0)]))


# -- saturation and nearest-even ---------------------------------------------------------


def test_saturate():
    x = np.array([40959.996, 40960, 49152, 1e6, np.inf, -40960, -1e6, -np.inf, 32768, 2.0**-23],
                 dtype=np.float32)
    assert ln.encode(x, "hif8").tolist() == [0x6E, 0x6F, 0x6F, 0x6F, 0x6F, 0xEF, 0xEF, 0xEF, 0x6E,
                                             0x01]
    assert ln.encode(x, "hif8", saturate=True).tolist() == [0x6E, 0x6E, 0x6E, 0x6E, 0x6E, 0xEE,
                                                            0xEE, 0xEE, 0x6E, 0x01]
    # NaN keeps the NaN code (library convention; CANN's saturating golden maps NaN to 0x00)
    assert ln.encode(np.array([np.nan]), "hif8", saturate=True).tolist() == [0x80]
    # every vector not beyond max is unchanged by saturation
    v = f32([t["input_f32_hex"] for t in VECTORS["vectors"]])
    small = np.abs(v) < 40960
    np.testing.assert_array_equal(ln.encode(v[small], "hif8", saturate=True),
                                  ln.encode(v[small], "hif8"))
    q = ln.quantize(x, "hif8", saturate=True)
    np.testing.assert_array_equal(q.codes, ln.encode(x, "hif8", saturate=True))
    assert ln.dequantize(q).tolist()[:8] == [32768] * 5 + [-32768] * 3


NEAREST_EVEN_TIES = [
    # (input, code, why): a tie goes to the neighbour whose significand LSB is 0
    (1.0625, 0x08, "1.0 (m=000) vs 1.125 (m=001): TA gives 0x09"),
    (1.1875, 0x0A, "1.125 (m=001) vs 1.25 (m=010): same as TA"),
    (1.9375, 0x10, "1.875 (m=111) vs 2.0 (m=000, next dot region)"),
    (0.96875, 0x08, "0.9375 (m=111) vs 1.0 (m=000)"),
    (15.5, 0x40, "15 (m=111) vs 16 (m=00)"),
    (18.0, 0x40, "16 (m=00) vs 20 (m=01): TA gives 0x41"),
    (320.0, 0x60, "256 (m=0) vs 384 (m=1): TA gives 0x61"),
    (1.5 * 2.0**-16, 0x7E, "2**-16 (denormal, implicit 1) vs 2**-15 (m=0)"),
    (1.5 * 2.0**-22, 0x02, "2**-22 vs 2**-21: both denormal (odd), larger magnitude wins"),
    (2.0**-23, 0x00, "0 vs 2**-22 (odd): 0, where TA gives 2**-22"),
    (40960.0, 0x6E, "32768 (m=0) vs virtual 1.5*2**15 (m=1, the Inf code): no overflow"),
]


@pytest.mark.parametrize("x,code,why", NEAREST_EVEN_TIES, ids=[str(t[0]) for t in
                                                               NEAREST_EVEN_TIES])
def test_nearest_even_ties(x, code, why):
    assert int(ln.encode(np.float32(x), "hif8", rounding="nearest_even")) == code, why
    assert int(ln.encode(np.float32(-x), "hif8", rounding="nearest_even")) == (code | 0x80
                                                                               if code else 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_nearest_even_rule_on_every_midpoint():
    """Off ties it equals TA; on every tie it picks the even-LSB neighbour (larger if both odd)."""
    x = cross_check_inputs()
    x = x[np.isfinite(x)]
    mids = grid_midpoints().astype(np.float64)
    tie = np.isin(np.abs(x).astype(np.float64), mids)
    rne = ln.encode(x, "hif8", rounding="nearest_even")
    np.testing.assert_array_equal(rne[~tie], ln.encode(x[~tie], "hif8"))
    pos = np.unique(VALUES[np.isfinite(VALUES) & (VALUES >= 0)])
    lo, hi = pos, np.append(pos[1:], 1.5 * 2**15)
    lo_code, hi_code = ln.encode(lo, "hif8"), ln.encode(hi, "hif8")  # hi[-1]: the Inf code

    def odd(code, v):  # last significand bit: mantissa LSB, the implicit 1 of a denormal
        return np.where((v > 0) & (v < 2.0**-15), True, (code & 1) == 1)

    lo_odd, hi_odd = odd(lo_code, lo), odd(hi_code, hi)
    assert np.all(lo_odd | hi_odd)  # neighbours never both even
    assert (lo_odd & hi_odd).sum() == 6  # the denormal pairs 2**-22 .. 2**-16
    want = np.where(lo_odd, hi_code, lo_code)
    np.testing.assert_array_equal(ln.encode(mids, "hif8", rounding="nearest_even"), want)


# -- HiF8 as a block format ----------------------------------------------------------------


def test_quantize_default_is_plain_encode():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((7, 33)) * 2.0 ** rng.integers(-20, 14, (7, 33))).astype(np.float32)
    for arr in (x, x.astype(ml_dtypes.bfloat16), x.astype(np.float16)):
        q = ln.quantize(arr, "hif8")
        assert q.scales is None and q.tensor_scale is None and q.codes.shape == x.shape
        np.testing.assert_array_equal(q.codes, ln.encode(arr, "hif8"))
        assert_same_f32(ln.dequantize(q), ln.decode(q.codes, "hif8"))
    q = ln.quantize(x, "hif8", rounding="nearest_even")
    np.testing.assert_array_equal(q.codes, ln.encode(x, "hif8", rounding="nearest_even"))


def test_unscaled_quantize_is_the_exact_cast_of_float64_input():
    """Unscaled HiF8 does not round float64 input to float32 first (absmax.py): near a tie
    quantize(x64) == encode(x64) != encode(fl32(x64)): 1.0625 - 2**-30 -> 1.0 (fl32 ties up)."""
    x = np.array([1.0625 - 2.0**-30, 18.0 - 2.0**-25, 3.0])
    q = ln.quantize(x, "hif8")
    assert q.codes.tolist() == ln.encode(x, "hif8").tolist() == [0x08, 0x40, 0x14]
    assert ln.encode(x.astype(np.float32), "hif8").tolist() == [0x09, 0x41, 0x14]


def direct_scaled(x32: np.ndarray, axis: int | None, target: float = 2.0**15):
    """float32 arithmetic of absmax.py with en_dtypes as the element cast: (codes, s, values)."""
    amax = np.max(np.abs(x32), axis=axis, keepdims=axis is not None)
    s = (np.float32(amax) / np.float32(target)).astype(np.float32)
    y = (x32 / np.where(s == 0, np.float32(1), s)).astype(np.float32)
    codes = en_encode(np.where(s == 0, np.float32(0), y))
    return codes, s, (codes.view(HF8).astype(np.float32) * s).astype(np.float32)


@pytest.mark.parametrize("granularity,axis", [("channel", -1), ("channel", 0), ("tensor", -1),
                                              ("tensor", 0)])
def test_scaled_quantize_matches_direct_float32(granularity, axis):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((6, 45)) * 10.0 ** rng.uniform(-6, 6, (6, 1))).astype(np.float32)
    x[2, 3] = 0.0
    q = ln.quantize(x, "hif8", granularity=granularity, axis=axis)
    codes, s, vals = direct_scaled(x, axis if granularity == "channel" else None)
    np.testing.assert_array_equal(q.codes, codes)
    if granularity == "channel":
        assert q.scales.dtype == np.float32 and q.tensor_scale is None
        np.testing.assert_array_equal(q.scales, s)
    else:
        assert q.scales is None and q.tensor_scale == s
    assert_same_f32(ln.dequantize(q), vals)
    assert np.max(np.abs(ln.dequantize(q))) == np.max(np.abs(x))  # amax maps to 2**15 exactly


def test_scaled_quantize_target_group_rounding():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    q = ln.quantize(x, "hif8", granularity="group", group_size=16, target=15.0)
    assert q.scales.shape == (4, 4) and q.block_size == 16
    codes, s, vals = direct_scaled(x.reshape(4, 4, 16), -1, target=15.0)
    np.testing.assert_array_equal(q.codes, codes.reshape(4, 64))
    np.testing.assert_array_equal(q.scales, s[..., 0])
    assert_same_f32(ln.dequantize(q), vals.reshape(4, 64))
    q_rne = ln.quantize(x, "hif8", granularity="channel", rounding="nearest_even")
    y = (x / q_rne.scales).astype(np.float32)
    np.testing.assert_array_equal(q_rne.codes, ln.encode(y, "hif8", rounding="nearest_even"))


def test_scaled_zero_and_non_finite_channels():
    x = np.ones((4, 8), dtype=np.float32)
    x[0] = 0
    x[1, 2] = np.nan
    x[2, 5] = -np.inf
    q = ln.quantize(x, "hif8", granularity="channel")
    assert q.scales[0, 0] == 0 and np.isnan(q.scales[1:3]).all() and q.scales[3, 0] == 2.0**-15
    assert not q.codes[:3].any()
    y = ln.dequantize(q)
    assert np.all(y[0] == 0) and np.isnan(y[1:3]).all() and np.all(y[3] == 1)
    qt = ln.quantize(x, "hif8", granularity="tensor")
    assert np.isnan(qt.tensor_scale) and np.isnan(ln.dequantize(qt)).all()


def test_scaled_tiny_channel_stays_finite():
    """A subnormal float32 scale loses precision; the quotient is clipped to +-target."""
    x = np.array([[45875 * 2.0**-149, 2.0**-149]], dtype=np.float32)  # subnormal, amax 1.4*2**-134
    q = ln.quantize(x, "hif8", granularity="channel")
    assert np.isfinite(ln.dequantize(q)).all()
