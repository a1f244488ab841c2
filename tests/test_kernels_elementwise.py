"""Numba element casts (``encode(..., backend="numba")``) against the reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_helpers import boundary_values, cast, check_encode, random_values

from lowbit import numerics as ln

FORMATS = sorted(ln.ELEMENT_FORMATS)
RBITS = (np.uint8, np.uint16, np.uint32)


def _inputs(name: str, seed: int) -> np.ndarray:
    spec = ln.element_format(name)
    x = np.concatenate([boundary_values(spec), random_values(np.random.default_rng(seed), 3000)])
    return x if spec.nan_code is not None else x[~np.isnan(x)]


@pytest.mark.parametrize("rounding", ln.ROUNDING_MODES)
@pytest.mark.parametrize("name", FORMATS)
def test_encode_every_format_and_mode(name, rounding):
    spec = ln.element_format(name)
    x = _inputs(name, FORMATS.index(name))
    rng = np.random.default_rng(7)
    for saturate in (True, False) if spec.overflow_code is not None else (True,):
        rb = None
        if rounding == "stochastic":
            dt = RBITS[FORMATS.index(name) % 3]
            rb = rng.integers(0, np.iinfo(dt).max, x.shape, dtype=dt, endpoint=True)
        check_encode(x, name, rounding=rounding, saturate=saturate, rbits=rb)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e2m1", "e8m0", "hif8", "int8_1.6"])
def test_encode_input_dtypes(name, dtype):
    x = cast(_inputs(name, 3), dtype)
    check_encode(x, name)
    check_encode(x, name, rounding="toward_zero")
    rb = np.random.default_rng(1).integers(0, 2**16, x.shape).astype(np.uint16)
    check_encode(x, name, rounding="stochastic", rbits=rb)


def test_encode_errors_and_shapes():
    x = np.array([1.0, np.nan], dtype=np.float32)
    check_encode(x, "e2m1")  # no NaN code: ValueError
    check_encode(x, "int8")
    check_encode(x, "e4m3", saturate=False)
    check_encode(x, "e2m1", saturate=False)  # no overflow code
    check_encode(np.ones(3, np.float32), "e4m3", rounding="stochastic")  # no rbits
    check_encode(np.ones(3, np.float32), "e4m3", rounding="bogus")
    check_encode(np.ones(3, np.float32), "e4m3", rounding="stochastic", rbits=np.ones(3))
    for shape in [(), (0,), (3, 0, 2), (5, 7, 3)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        check_encode(x, "e5m2")
        check_encode(x.T if x.ndim > 1 else x, "hif8")
    big = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    check_encode(big, "e4m3", rounding="stochastic", rbits=np.uint8(200))  # broadcast rbits
    check_encode(big, "e4m3", rounding="stochastic",
                 rbits=np.arange(6, dtype=np.uint64))  # 64-bit: the same TypeError
    check_encode(np.arange(-300, 300), "int8")  # integer input: reference fallback


@given(
    name=st.sampled_from(FORMATS),
    rounding=st.sampled_from(ln.ROUNDING_MODES),
    x=hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32)),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_hypothesis(name, rounding, x, seed):
    if ln.element_format(name).nan_code is None:
        x = np.nan_to_num(x)
    rb = np.random.default_rng(seed).integers(0, 2**32, x.shape, dtype=np.uint64)
    check_encode(x, name, rounding=rounding, rbits=rb.astype(np.uint32))


def _upper_half_grid(lowers=(0, 1, 0x7FFF, 0x8000, 0xFFFF)) -> np.ndarray:
    """Every float32 upper half with the given lower halves (NaN patterns included)."""
    hi = np.arange(1 << 16, dtype=np.uint32) << 16
    return np.concatenate([hi | np.uint32(lo) for lo in lowers]).view(np.float32)


TABLE_MODES = ("nearest_even", "nearest_away", "nearest_zero", "toward_zero")


@pytest.mark.parametrize("name", ["hif8", "e8m0", "e6m2", "ue4m3"])
def test_split_table_exhaustive(name):
    """The split-table encoder (formats without the fast rounder) over every float32 upper half
    and both ends of each lower-half interval, every deterministic mode, float32 and bfloat16."""
    from lowbit.kernels import elementwise

    spec = ln.element_format(name)
    x = _upper_half_grid()
    if spec.nan_code is None:
        x = x[~np.isnan(x)]
    for rounding in TABLE_MODES:
        for saturate in (True, False) if spec.overflow_code is not None else (True,):
            assert elementwise.split_table(spec, rounding, saturate) is not None
            check_encode(x, name, rounding=rounding, saturate=saturate)
            check_encode(cast(x, "bfloat16"), name, rounding=rounding, saturate=saturate)


def test_split_table_refused_where_inexact():
    """A format with 7 mantissa bits has boundaries inside the lower half: no table, and the
    generic encoder still matches the reference."""
    from lowbit.kernels import elementwise
    from lowbit.numerics.specs import ElementFormat

    wide = ElementFormat(name="e5m7", bits=13, encoding="float", exp_bits=5, man_bits=7,
                         bias=15, specials="none")
    assert elementwise.split_table(wide, "nearest_even", True) is None
    assert elementwise.split_table(ln.element_format("hif8"), "nearest_away", False) is not None
    x = _upper_half_grid((0, 0x8000, 0x8001))
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(ln.encode(x, wide, backend="numba"),
                                  ln.encode(x, wide, backend="reference"))
