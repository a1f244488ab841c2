"""Numba MX quantize / dequantize against the reference: every format, scale rule and option."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_helpers import boundary_values, cast, check_quantize, random_values

from lowbit import numerics as ln
from lowbit.numerics import mx

MX = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"]


def mx_blocks(fmt: str, seed: int, n_blocks: int = 96) -> np.ndarray:
    """Blocks of 32: boundary values of the element grid times 2**k under a block maximum of
    ``max * 2**k`` (so the FLOOR scale is ``2**k``), random blocks, and special blocks."""
    rng = np.random.default_rng(seed)
    elem = ln.block_format(fmt).element
    bv = boundary_values(elem)
    bv = bv[np.isfinite(bv) & (np.abs(bv) <= elem.max)]
    rows = []
    for _ in range(n_blocks):
        k = int(rng.integers(-140, 110))
        row = rng.choice(bv, 32) * np.float32(2.0**k) if abs(k) < 120 else rng.choice(bv, 32)
        row[0] = elem.max * 2.0**k * rng.choice([1, 1.01, 0.99, 0.5, 2]) if abs(k) < 120 else 1
        rows.append(row.astype(np.float32))
    special = np.zeros((8, 32), np.float32)
    special[1, 3] = np.nan
    special[2, 5] = np.inf
    special[3, 7] = -np.inf
    special[4] = np.float32(1e-45) * np.arange(32)  # float32 subnormals
    special[5] = 3.4028235e38 * np.linspace(-1, 1, 32, dtype=np.float32)
    special[6] = np.ldexp(1.0, np.arange(-16, 16)).astype(np.float32)  # powers of two
    special[7, ::2] = -0.0
    rand = random_values(rng, 32 * 32, spread=20)[: 32 * 32].reshape(32, 32)
    return np.concatenate([np.stack(rows), special, rand]).astype(np.float32)


@pytest.mark.parametrize("rule", mx.SCALE_RULES)
@pytest.mark.parametrize("fmt", MX)
def test_scale_rules(fmt, rule):
    x = mx_blocks(fmt, MX.index(fmt))
    check_quantize(x, fmt, scale_rule=rule)


@pytest.mark.parametrize("rounding", ln.ROUNDING_MODES)
@pytest.mark.parametrize("fmt", MX)
def test_rounding_modes(fmt, rounding):
    x = mx_blocks(fmt, 10 + MX.index(fmt), n_blocks=32)
    rb = np.random.default_rng(3).integers(0, 2**8, x.shape).astype(np.uint8)
    check_quantize(x, fmt, rounding=rounding, rbits=rb, dequantize=False)


@pytest.mark.parametrize("preset", sorted(mx.MX_PRESETS))
@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_e4m3", "mxint8", "mxfp6_e2m3"])
def test_presets(fmt, preset):
    check_quantize(mx_blocks(fmt, 20, n_blocks=32), fmt, preset=preset)


@pytest.mark.parametrize("fmt", ["mxfp4", "mxint8"])
def test_options_grid(fmt):
    x = mx_blocks(fmt, 30, n_blocks=16)
    x[:, 9] = 0.0  # zero inputs for zero_sign
    for inf_policy in mx.INF_POLICIES:
        for div in mx.CODE0_DIVISORS:
            for zero_sign in mx.ZERO_SIGNS:
                check_quantize(x, fmt, inf_policy=inf_policy, code0_divisor=div,
                               zero_sign=zero_sign, symmetric_int=True, dequantize=False)
    check_quantize(x, fmt, bogus_option=1)  # same TypeError


@pytest.mark.parametrize("prescale", [True, 0.5625, 1.0, 2.0**-3, 0.1, -1.0])
def test_prescale(prescale):
    for fmt in ("mxfp4", "mxfp6_e3m2"):
        x = mx_blocks(fmt, 40, n_blocks=16)
        check_quantize(x, fmt, prescale=prescale)
        check_quantize(x.astype(np.float64) * (1 + 2.0**-30), fmt, prescale=prescale)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_input_dtypes(dtype):
    for fmt in ("mxfp4", "mxfp8_e5m2", "mxint8"):
        x = cast(mx_blocks(fmt, 50), dtype)
        check_quantize(x, fmt)
        check_quantize(x, fmt, scale_rule="rceil", rounding="nearest_away")


@pytest.mark.parametrize("shape,axis", [((3, 33), -1), ((5, 1), -1), ((0, 7), -1), ((7, 0), 1),
                                        ((2, 3, 65), 1), ((64, 5), 0), ((4, 2, 3), 0),
                                        ((70,), 0), ((3, 4), 2), ((), 0)])
def test_odd_shapes(shape, axis):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32) * 100
    check_quantize(x, "mxfp4", axis=axis)
    rb = np.random.default_rng(0).integers(0, 2**16, shape).astype(np.uint16)
    check_quantize(x, "mxfp8_e4m3", axis=axis, rounding="stochastic", rbits=rb)


def test_non_contiguous_and_fallbacks():
    x = mx_blocks("mxfp4", 60)
    check_quantize(x[::2, ::-1], "mxfp4")
    check_quantize(x.T, "mxfp8_e4m3", axis=0)
    rb = np.random.default_rng(0).integers(0, 2**63, x.shape, dtype=np.uint64)
    check_quantize(x, "mxfp4", rounding="stochastic", rbits=rb)  # 64-bit rbits: TypeError
    check_quantize(np.arange(64).reshape(2, 32), "mxfp4")  # integers: reference
    check_quantize(x, "mxfp4", rounding="stochastic")  # missing rbits: same error
    check_quantize(x, "mxfp4", scale_rule="bogus")


@given(
    fmt=st.sampled_from(MX),
    rule=st.sampled_from(mx.SCALE_RULES),
    rounding=st.sampled_from(ln.ROUNDING_MODES),
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 70)),
                 elements=st.floats(width=32)),
)
def test_mx_hypothesis(fmt, rule, rounding, x):
    rb = np.random.default_rng(x.size).integers(0, 2**32, x.shape, dtype=np.uint64)
    check_quantize(x, fmt, scale_rule=rule, rounding=rounding, rbits=rb.astype(np.uint32),
                   dequantize=False)


@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "toward_zero"])
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4", "mxint8"])
def test_many_tasks(fmt, rounding):
    """Several parallel tasks (256 blocks each, the last one partial) with NaN/Inf/zero blocks
    among them: every per-task loop of the float32 kernel, packed output included."""
    from lowbit.kernels.fused import quantize_packed
    from lowbit.numerics import packing

    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 32 * 30)) * np.exp2(rng.integers(-30, 30, (37, 1)))
    x = x.astype(np.float32)
    flat = x.reshape(-1)
    for v in (np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45):
        flat[rng.integers(0, flat.size, 5)] = v
    x[3, 64:96] = 0.0
    for kw in ({}, {"zero_sign": "zero_input_negative"}):
        check_quantize(x, fmt, rounding=rounding, dequantize=False, **kw)
        check_quantize(x[:, :-7], fmt, rounding=rounding, dequantize=False, **kw)
        if fmt == "mxfp4":
            r = packing.pack(ln.quantize(x, fmt, backend="reference", rounding=rounding, **kw))
            k = quantize_packed(x, fmt, backend="numba", rounding=rounding, **kw)
            assert np.array_equal(r.data, k.data) and np.array_equal(r.scales, k.scales)
