"""Block dot products: exact and fp32 accumulation against independent slow references."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit import numerics as ln
from lowbit.numerics import blockdot as lnd
from lowbit.numerics.tensor import QuantizedTensor

MODES = ("fp32_sequential", "fp32_pairwise")

# -- independent references (per element, from the code tables; 2-D tensors quantized on axis 1) --


def as_rows(q: QuantizedTensor) -> QuantizedTensor:
    """The same tensor as 2-D (rows, K) quantized along axis 1 (the other axes flattened)."""
    def rows(a, trailing=0):
        if a is None:
            return None
        a = np.moveaxis(a, q.axis, a.ndim - 1 - trailing)
        return a.reshape(-1, *a.shape[a.ndim - 1 - trailing:])

    return QuantizedTensor(q.fmt, rows(q.codes), rows(q.scales), 1, q.block_size,
                           q.tensor_scale, rows(q.micro, 1), q.pad, q.prescale)


def element_parts(q: QuantizedTensor):
    """Per element of a 2-D tensor: (element value P as float64, block scale X, micro factor)."""
    spec = ln.block_format(q.fmt)
    rows, k = q.shape
    p = ln.decode(q.codes, spec.element, dtype=np.float64)
    j = np.arange(k) // q.block_size
    if q.scales is None:
        x = np.ones((rows, k))
    elif spec.scale is None:
        x = q.scales[:, j].astype(np.float64)
    else:
        x = ln.decode(q.scales[:, j], spec.scale, dtype=np.float64)
    micro = np.ones((rows, k))
    if q.micro is not None:
        for r in range(rows):
            for i in range(k):
                g = q.micro[r, i // 64]
                micro[r, i] = 2.0 ** (int(g[(i % 64) // 8]) + int(g[8 + (i % 64) // 4]))
    return p, x, micro


def tensor_factor(q: QuantizedTensor) -> Fraction:
    t = Fraction(1) if q.tensor_scale is None else Fraction(float(q.tensor_scale))
    return t if q.prescale is None else t / Fraction(q.prescale)


def exact_reference(qa: QuantizedTensor, qb: QuantizedTensor) -> list[Fraction]:
    """sum_i value_i^A value_i^B per row, every value an exact Fraction."""
    (pa, xa, ma), (pb, xb, mb) = element_parts(qa), element_parts(qb)
    t = tensor_factor(qa) * tensor_factor(qb)
    return [
        t * sum((Fraction(pa[r, i]) * Fraction(xa[r, i]) * Fraction(ma[r, i])
                 * Fraction(pb[r, i]) * Fraction(xb[r, i]) * Fraction(mb[r, i])
                 for i in range(qa.shape[1])), Fraction(0))
        for r in range(qa.shape[0])
    ]


def fp32_sum(terms: list[np.float32], pairwise: bool) -> np.float32:
    if pairwise:
        while len(terms) > 1:
            tail = [terms[-1]] if len(terms) % 2 else []
            terms = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)] + tail
        return terms[0]
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


def fp32_reference(qa: QuantizedTensor, qb: QuantizedTensor, pairwise: bool) -> np.ndarray:
    """Scalar float32 loops: products, block sums, times fl32(X^A X^B), block total, epilogue."""
    (pa, xa, ma), (pb, xb, mb) = element_parts(qa), element_parts(qb)
    # T_A T_B: float32 tensor scales multiply exactly in float64; the pre-scale factors used
    # here do not hit a float32 midpoint, so the float64 detour rounds correctly
    g = np.float32(float(tensor_factor(qa) * tensor_factor(qb)))
    bs, k = qa.block_size, qa.shape[1]
    out = []
    with np.errstate(over="ignore", invalid="ignore"):
        for r in range(qa.shape[0]):
            blocks = []
            for j0 in range(0, k, bs):
                idx = range(j0, min(j0 + bs, k))
                prods = [np.float32(pa[r, i] * ma[r, i]) * np.float32(pb[r, i] * mb[r, i])
                         for i in idx]
                scale = np.float32(xa[r, j0]) * np.float32(xb[r, j0])
                blocks.append(fp32_sum(prods, pairwise) * scale)
            out.append(fp32_sum(blocks, pairwise) * g)
    return np.array(out, dtype=np.float32)


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values with NaN == NaN (the sign of zero is not compared)."""
    np.testing.assert_array_equal(got, want, strict=True)


def wide_range(rng, shape, spread: int) -> np.ndarray:
    """Gaussian float32 data times 2**e, e uniform in [-spread, spread] per 32-element run."""
    x = rng.standard_normal(shape)
    e = rng.integers(-spread, spread + 1, size=shape[:-1] + (-(-shape[-1] // 32),))
    return np.ldexp(x, np.repeat(e, 32, axis=-1)[..., : shape[-1]]).astype(np.float32)


CASES = {
    # name: (format, data spread in binades, quantize options)
    "mxfp8_e4m3": ("mxfp8_e4m3", 20, {}),
    "mxfp8_e5m2": ("mxfp8_e5m2", 110, {}),
    "mxfp4": ("mxfp4", 20, {}),
    "mxint8": ("mxint8", 20, {}),
    "mxfp6_e3m2": ("mxfp6_e3m2", 5, {}),
    "int8_channel": ("int8", 3, {}),
    "int8_group": ("int8", 3, {"group_size": 32}),
    "int4_tensor": ("int4", 3, {"granularity": "tensor"}),
    "hif8": ("hif8", 3, {}),
    "hif8_channel": ("hif8", 3, {"granularity": "channel"}),
}


def quantized_pair(name: str, shape=(3, 4, 100), axis=-1, seed=0):
    fmt, spread, opts = CASES[name]
    rng = np.random.default_rng(seed)
    x, y = wide_range(rng, shape, spread), wide_range(rng, shape, spread)
    return ln.quantize(x, fmt, axis=axis, **opts), ln.quantize(y, fmt, axis=axis, **opts)


# -- exact --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_matches_fraction_reference(name):
    qa, qb = quantized_pair(name)
    want = exact_reference(as_rows(qa), as_rows(qb))
    got = lnd.dot_fraction(qa, qb)
    assert got.shape == (3, 4)
    assert list(got.ravel()) == want
    assert_bits_equal(lnd.dot(qa, qb), np.array([float(f) for f in want]).reshape(3, 4))


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp4", "mxint8", "hif8"])
def test_exact_reference_agrees_with_dequantized_values(name):
    """For these formats dequantize(float64) is exact, so the reference can be built from it."""
    qa, qb = quantized_pair(name, shape=(5, 70))
    da, db = ln.dequantize(qa, dtype=np.float64), ln.dequantize(qb, dtype=np.float64)
    want = [sum((Fraction(u) * Fraction(v) for u, v in zip(ra, rb, strict=True)), Fraction(0))
            for ra, rb in zip(da, db, strict=True)]
    assert list(lnd.dot_fraction(qa, qb)) == want


def test_exact_on_another_axis():
    qa, qb = quantized_pair("mxfp8_e4m3", shape=(4, 70, 3), axis=1)
    want = exact_reference(as_rows(qa), as_rows(qb))
    assert list(lnd.dot_fraction(qa, qb).ravel()) == want
    assert lnd.dot(qa, qb).shape == (4, 3)


def test_e5m2_wide_range_is_exact_where_fp32_overflows():
    """Block scales of 2**85 each: the fp32 scale product overflows, the exact sum does not."""
    x = np.full((2, 64), 2.0**100, dtype=np.float32)
    x[1, 32:] = 2.0**-100  # second row: one huge and one tiny block
    q = ln.quantize(x, "mxfp8_e5m2")
    exact = lnd.dot(q, q)
    assert exact[0] == 64 * 2.0**200
    assert exact[1] == 32 * 2.0**200 + 32 * 2.0**-200 == 32 * 2.0**200
    assert lnd.dot_fraction(q, q)[1] == 32 * Fraction(2) ** 200 + 32 * Fraction(2) ** -200
    for mode in MODES:
        assert np.isposinf(lnd.dot(q, q, accumulation=mode)).all()


def test_mixed_mx_element_formats():
    rng = np.random.default_rng(1)
    x, y = wide_range(rng, (3, 96), 10), wide_range(rng, (3, 96), 10)
    qa, qb = ln.quantize(x, "mxfp8_e4m3"), ln.quantize(y, "mxfp4")
    assert list(lnd.dot_fraction(qa, qb)) == exact_reference(qa, qb)
    for mode in MODES:
        assert_bits_equal(lnd.dot(qa, qb, accumulation=mode),
                          fp32_reference(qa, qb, mode == "fp32_pairwise"))


def test_prescaled_mx_tensors():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 4, 64)).astype(np.float32)
    qa = ln.quantize(x, "mxfp4", prescale=0.75)
    qb = ln.quantize(y, "mxfp4", prescale=0.625)
    want = exact_reference(qa, qb)
    assert list(lnd.dot_fraction(qa, qb)) == want
    assert want[0].denominator % 3 == 0  # 1 / (0.75 * 0.625) is no dyadic factor
    for mode in MODES:
        assert_bits_equal(lnd.dot(qa, qb, accumulation=mode),
                          fp32_reference(qa, qb, mode == "fp32_pairwise"))


def test_one_dimensional_and_empty():
    x = (np.arange(40) % 8 - 3).astype(np.float32)  # exact in E4M3 with either block scale
    q = ln.quantize(x, "mxfp8_e4m3")
    assert lnd.dot(q, q).shape == ()
    assert lnd.dot(q, q) == float((x.astype(np.float64) ** 2).sum())
    e = ln.quantize(np.zeros((3, 0), np.float32), "mxfp4")
    for mode in ("exact", *MODES):
        assert_bits_equal(lnd.dot(e, e, accumulation=mode),
                          np.zeros(3, np.float64 if mode == "exact" else np.float32))


# -- fp32 accumulation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mode", MODES)
def test_fp32_modes_match_scalar_loops(name, mode):
    qa, qb = quantized_pair(name, shape=(6, 100), seed=3)
    got = lnd.dot(qa, qb, accumulation=mode)
    assert got.dtype == np.float32
    assert_bits_equal(got, fp32_reference(qa, qb, mode == "fp32_pairwise"))


def test_three_accumulations_give_three_answers():
    """One E4M3 block: 448 * 448 followed by 31 products 2**-8 (scale 1)."""
    x = np.full(32, 2.0**-4, dtype=np.float32)
    x[0] = 448
    q = ln.quantize(x, "mxfp8_e4m3")
    assert q.scales.tolist() == [127]
    exact = lnd.dot(q, q)
    seq = lnd.dot(q, q, accumulation="fp32_sequential")
    pair = lnd.dot(q, q, accumulation="fp32_pairwise")
    # exact 200704 + 31 / 256; sequential loses every 2**-8 (below half an ulp, 2**-7);
    # pairwise: 200704 + 2**-8 -> 200704, then adds 2**-7 (tie, to even), 2**-6, 2**-5, 2**-4
    assert exact == 200704 + 31 / 256
    assert hex(exact.view(np.uint64)) == "0x41088000f8000000"
    assert hex(seq.view(np.uint32)) == "0x48440000"  # 200704.0
    assert hex(pair.view(np.uint32)) == "0x48440007"  # 200704.109375
    assert float(pair) == 200704.109375


# -- special values ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,opts", [("mxfp4", {}), ("mxfp8_e5m2", {}), ("int8", {}),
                                      ("int8", {"group_size": 32})])
def test_nan_scale_propagates(fmt, opts):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((3, 64)), rng.standard_normal((3, 64))
    x[1, 40] = np.nan
    qa, qb = ln.quantize(x, fmt, **opts), ln.quantize(y, fmt, **opts)
    assert np.isnan(ln.dequantize(qa)[1]).any()
    for mode in ("exact", *MODES):
        got = lnd.dot(qa, qb, accumulation=mode)
        assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()
    assert np.isnan(lnd.dot_fraction(qa, qb)[1])


def test_infinite_elements_follow_ieee():
    """Unscaled HiF8 saturates to Inf: Inf * 0 is NaN, Inf - Inf is NaN, Inf * x is Inf."""
    x = np.zeros((4, 8), np.float32)
    y = np.ones((4, 8), np.float32)
    x[0, 0] = 1e6  # Inf * 1
    x[1, 0], y[1, 0] = 1e6, 0  # Inf * 0
    x[2, :2] = 1e6, -1e6  # Inf - Inf
    qa, qb = ln.quantize(x, "hif8"), ln.quantize(y, "hif8")
    assert np.isinf(ln.dequantize(qa)[0, 0])
    for mode in ("exact", *MODES):
        got = lnd.dot(qa, qb, accumulation=mode)
        assert np.isposinf(got[0]) and np.isnan(got[1]) and np.isnan(got[2]) and got[3] == 0


# -- hand-built NVFP4 and HiF4 tensors ----------------------------------------------------------


def nvfp4_tensor(rng, rows: int, k: int, nan_block=None) -> QuantizedTensor:
    nb = -(-k // 16)
    scales = rng.integers(0, 0x7F, size=(rows, nb), dtype=np.uint8)  # finite UE4M3 codes
    if nan_block is not None:
        scales[nan_block] = 0x7F
    return QuantizedTensor(
        "nvfp4", rng.integers(0, 16, size=(rows, k), dtype=np.uint8), scales, 1, 16,
        tensor_scale=np.float32(rng.uniform(1e-4, 1e-2)), pad=nb * 16 - k,
    )


def hif4_tensor(rng, rows: int, k: int, nan_block=None) -> QuantizedTensor:
    nb = -(-k // 64)
    scales = rng.integers(0, 0xFF, size=(rows, nb), dtype=np.uint8)  # finite E6M2 codes
    if nan_block is not None:
        scales[nan_block] = 0xFF
    micro = rng.integers(0, 2, size=(rows, nb, 24), dtype=np.uint8)
    return QuantizedTensor(
        "hif4", rng.integers(0, 16, size=(rows, k), dtype=np.uint8), scales, 1, 64,
        micro=micro, pad=nb * 64 - k,
    )


BUILDERS = {"nvfp4": nvfp4_tensor, "hif4": hif4_tensor}


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_hand_built_exact(fmt):
    rng = np.random.default_rng(5)
    qa, qb = BUILDERS[fmt](rng, 4, 150), BUILDERS[fmt](rng, 4, 150)
    want = exact_reference(qa, qb)
    assert list(lnd.dot_fraction(qa, qb)) == want
    assert_bits_equal(lnd.dot(qa, qb), np.array([float(f) for f in want]))


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
@pytest.mark.parametrize("mode", MODES)
def test_hand_built_fp32(fmt, mode):
    rng = np.random.default_rng(6)
    qa, qb = BUILDERS[fmt](rng, 5, 200), BUILDERS[fmt](rng, 5, 200)
    assert_bits_equal(lnd.dot(qa, qb, accumulation=mode),
                      fp32_reference(qa, qb, mode == "fp32_pairwise"))


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_hand_built_nan_scale(fmt):
    rng = np.random.default_rng(7)
    qa, qb = BUILDERS[fmt](rng, 3, 128, nan_block=(2, 1)), BUILDERS[fmt](rng, 3, 128)
    for mode in ("exact", *MODES):
        got = lnd.dot(qa, qb, accumulation=mode)
        assert np.isnan(got[2]) and np.isfinite(got[:2]).all()


def test_hif4_micro_exponents_fold_into_elements():
    """Element 8 (E1_8 group 1, E1_16 group 2) doubled twice; element 0 untouched."""
    codes = np.zeros((1, 64), np.uint8)
    codes[0, 0], codes[0, 8] = 0x4, 0x7  # 1.0 and 1.75
    micro = np.zeros((1, 1, 24), np.uint8)
    micro[0, 0, 1], micro[0, 0, 8 + 2] = 1, 1
    one = np.array([[0xC0]], np.uint8)  # E6M2 2**(48 - 48)
    q = QuantizedTensor("hif4", codes, one, 1, 64, micro=micro)
    ones = QuantizedTensor("hif4", np.full((1, 64), 0x4, np.uint8), one, 1, 64,
                           micro=np.zeros((1, 1, 24), np.uint8))
    assert lnd.dot(q, ones).tolist() == [1.0 + 1.75 * 4]


# -- matmul -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e5m2", "int8_group", "hif8"])
@pytest.mark.parametrize("mode", ["exact", *MODES])
def test_matmul_equals_dot_of_row_pairs(name, mode):
    fmt, spread, opts = CASES[name]
    rng = np.random.default_rng(8)
    a, b = wide_range(rng, (5, 80), spread), wide_range(rng, (3, 80), spread)
    qa, qb = ln.quantize(a, fmt, **opts), ln.quantize(b, fmt, **opts)
    got = lnd.matmul(qa, qb, accumulation=mode)
    assert got.shape == (5, 3)
    # row-wise quantization: repeating rows repeats their codes and scales
    ra = ln.quantize(np.repeat(a, 3, axis=0), fmt, **opts)
    rb = ln.quantize(np.tile(b, (5, 1)), fmt, **opts)
    assert_bits_equal(got, lnd.dot(ra, rb, accumulation=mode).reshape(5, 3))


def test_matmul_fraction_and_chunks(monkeypatch):
    rng = np.random.default_rng(9)
    qa = nvfp4_tensor(rng, 7, 48)
    qb = nvfp4_tensor(rng, 4, 48)
    whole = {m: lnd.matmul(qa, qb, accumulation=m) for m in ("exact", *MODES)}
    fractions = lnd.matmul_fraction(qa, qb)
    monkeypatch.setattr(lnd, "_CHUNK_ELEMENTS", 100)  # one row of A per chunk
    for m, want in whole.items():
        assert_bits_equal(lnd.matmul(qa, qb, accumulation=m), want)
    assert (lnd.matmul_fraction(qa, qb) == fractions).all()
    for n in range(4):
        assert fractions[2, n] == exact_reference(row(qa, 2), row(qb, n))[0]
    empty = dataclasses.replace(qb, codes=qb.codes[:0], scales=qb.scales[:0])
    assert lnd.matmul(qa, empty).shape == (7, 0)


def row(q: QuantizedTensor, i: int) -> QuantizedTensor:
    """Row ``i`` of a 2-D NVFP4 tensor as a (1, K) tensor."""
    return dataclasses.replace(q, codes=q.codes[[i]], scales=q.scales[[i]])


# -- errors -------------------------------------------------------------------------------------


def test_errors():
    x = np.ones((2, 64), np.float32)
    mx4 = ln.quantize(x, "mxfp4")
    with pytest.raises(ValueError, match="one scheme"):
        lnd.dot(mx4, ln.quantize(x, "int8"))
    with pytest.raises(ValueError, match="block sizes differ"):
        lnd.dot(ln.quantize(x, "int8"), ln.quantize(x, "int8", group_size=32))
    with pytest.raises(ValueError, match="equal shapes"):
        lnd.dot(mx4, ln.quantize(np.ones((3, 64)), "mxfp4"))
    with pytest.raises(ValueError, match="same quantized axis"):
        lnd.dot(ln.quantize(np.ones((64, 64)), "mxfp4", axis=0), ln.quantize(np.ones((64, 64)),
                                                                              "mxfp4"))
    with pytest.raises(ValueError, match="unknown accumulation"):
        lnd.dot(mx4, mx4, accumulation="fp16")
    with pytest.raises(ValueError, match="2-D"):
        lnd.matmul(ln.quantize(np.ones((2, 2, 64)), "mxfp4"), mx4)
    with pytest.raises(ValueError, match="axis 1"):
        lnd.matmul(ln.quantize(np.ones((64, 64)), "mxfp4", axis=0), ln.quantize(np.ones((64, 64)),
                                                                                 "mxfp4"))
    with pytest.raises(ValueError, match="K differs"):
        lnd.matmul(mx4, ln.quantize(np.ones((2, 96)), "mxfp4"))
    bad = QuantizedTensor("hif4", np.zeros((1, 64), np.uint8), np.zeros((1, 1), np.uint8), 1, 64)
    with pytest.raises(ValueError, match="micro-exponent bits"):
        lnd.dot(bad, bad)
    bad = QuantizedTensor("mxfp4", np.zeros((1, 64), np.uint8), np.zeros((1, 3), np.uint8), 1, 32)
    with pytest.raises(ValueError, match="scales have shape"):
        lnd.dot(bad, bad)
    bad = QuantizedTensor("mxfp4", np.zeros((1, 64), np.uint8), None, 1, 32)
    with pytest.raises(ValueError, match="no block scales"):
        lnd.dot(bad, bad)


# -- exactness facts the fp32 modes rely on -----------------------------------------------------


def test_element_products_exact_in_fp32_for_every_format_pair():
    names = ln.formats("block")
    assert all(lnd.fp32_products_exact(a, b) for a in names for b in names)


def nearest_float32(f: Fraction) -> np.float32:
    """Independent: the nearest of the float32 neighbours of float(f), ties to an even code."""
    c = np.float32(float(f))
    cands = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - f), int(v.view(np.uint32)) & 1))


@settings(max_examples=60)
@given(st.integers(1, 2**80), st.integers(-200, 140), st.integers(0, 2**40), st.booleans())
def test_round_to_float32(n, e, odd_den, negative):
    f = Fraction(n, 2 * odd_den + 1) * Fraction(2) ** e * (-1 if negative else 1)
    if abs(f) >= 2**127:
        return
    assert lnd._round_to_float32(f) == nearest_float32(f)


def test_round_to_float32_ties_and_range():
    r = lnd._round_to_float32
    assert r(Fraction(1) + Fraction(1, 2**24)) == 1.0  # tie, to even
    assert r(Fraction(1) + Fraction(3, 2**24)) == 1 + 2.0**-22
    assert r(Fraction(1, 2**150)) == 0.0  # tie between 0 and the smallest subnormal
    assert r(Fraction(3, 2**151)) == np.float32(2.0**-149)
    assert r(Fraction(-16, 9)) == np.float32(-16 / 9)
    top = Fraction(2) ** 128 - Fraction(2) ** 103  # float32 max + half an ulp: tie, to 2**128
    assert np.isposinf(r(top)) and r(top - 1) == np.finfo(np.float32).max


# -- a randomized sweep over hand-built MX tensors ----------------------------------------------


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["mxfp8_e4m3", "mxfp6_e2m3", "mxint8"]),
       st.integers(1, 100), st.sampled_from(MODES))
def test_random_mx_codes(seed, fmt, k, mode):
    rng = np.random.default_rng(seed)
    bits = ln.block_format(fmt).element.bits
    nb = -(-k // 32)

    def build():
        codes = rng.integers(0, 2**bits, size=(2, k), dtype=np.uint8)
        if fmt == "mxfp8_e4m3":
            codes[(codes & 0x7F) == 0x7F] = 0  # no NaN elements
        return QuantizedTensor(fmt, codes, rng.integers(90, 165, size=(2, nb), dtype=np.uint8),
                               1, 32, pad=nb * 32 - k)

    qa, qb = build(), build()
    assert list(lnd.dot_fraction(qa, qb)) == exact_reference(qa, qb)
    assert_bits_equal(lnd.dot(qa, qb, accumulation=mode),
                      fp32_reference(qa, qb, mode == "fp32_pairwise"))


@settings(max_examples=60)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3000), st.integers(1, 40), st.integers(1, 40))
def test_block_sums_are_exact(seed, n, bits_a, bits_b):
    rng = np.random.default_rng(seed)
    ma = rng.integers(-(2**bits_a), 2**bits_a, size=(2, n), endpoint=True)
    mb = rng.integers(-(2**bits_b), 2**bits_b, size=(2, n), endpoint=True)
    want = [sum(int(u) * int(v) for u, v in zip(ra, rb, strict=True)) for ra, rb in zip(ma, mb,
                                                                                         strict=True)]
    assert list(lnd._block_sums(ma, mb)) == want
