"""Numba NVFP4, HiF4 and INT8 / INT4 / HiF8 (absmax) against the reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_helpers import assert_same, boundary_values, cast, check_quantize, random_values

from lowbit import numerics as ln
from lowbit.numerics import hif4, nvfp4


def _blocks(fmt: str, seed: int, finite: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    elem = ln.block_format(fmt).element
    bv = boundary_values(elem)
    bv = bv[np.isfinite(bv)]
    x = np.concatenate([
        random_values(rng, 64 * 40, spread=12)[: 64 * 40],
        rng.choice(bv, 64 * 8) * np.float32(2.0 ** rng.integers(-20, 20)),
        np.zeros(64, np.float32),
        np.float32(1e-45) * np.arange(64, dtype=np.float32),  # subnormal block
    ]).astype(np.float32)
    x = x.reshape(-1, 64)
    return np.nan_to_num(x, nan=0.0, posinf=1e30, neginf=-1e30) if finite else x


@pytest.mark.parametrize("rounding", ln.ROUNDING_MODES)
@pytest.mark.parametrize("algorithm", nvfp4.ALGORITHMS)
def test_nvfp4(algorithm, rounding):
    x = _blocks("nvfp4", 1, finite=True)
    rb = np.random.default_rng(2).integers(0, 2**32, x.shape, dtype=np.uint64).astype(np.uint32)
    for g in (None, 1e3, 1e30, 0.0):
        check_quantize(x, "nvfp4", algorithm=algorithm, rounding=rounding, rbits=rb,
                       global_amax=g, dequantize=g is None)


def test_nvfp4_specials_and_dtypes():
    x = _blocks("nvfp4", 3, finite=True)
    for dtype in ("bfloat16", "float16", "float64"):
        check_quantize(cast(x, dtype), "nvfp4")
        check_quantize(cast(x, dtype), "nvfp4", preset="torchao")
    check_quantize(np.zeros((3, 16), np.float32), "nvfp4")
    check_quantize(np.zeros((3, 16), np.float32), "nvfp4", preset="modelopt")
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[1, 1] = bad
        check_quantize(y, "nvfp4")  # same ValueError
    check_quantize(np.array([[1e300, 1.0]]), "nvfp4")  # float64 beyond float32: ValueError
    check_quantize(x * np.float32(1e-37), "nvfp4", preset="torchao")  # undefined: ValueError
    check_quantize(x, "nvfp4", global_amax=-1.0)
    check_quantize(x[:, :37], "nvfp4", axis=-1)
    check_quantize(x[:7].T, "nvfp4", axis=0)


@pytest.mark.parametrize("rounding", ln.ROUNDING_MODES)
def test_hif4(rounding):
    x = _blocks("hif4", 4, finite=False)
    x[3, 10] = np.nan
    x[4, 0] = -np.inf
    rb = np.random.default_rng(5).integers(0, 2**16, x.shape).astype(np.uint16)
    for sr in hif4.SCALE_ROUNDINGS:
        for nz in (True, False):
            check_quantize(x, "hif4", rounding=rounding, rbits=rb, scale_rounding=sr,
                           negative_zero=nz, dequantize=nz)


def test_hif4_dtypes_and_shapes():
    x = _blocks("hif4", 6, finite=False)
    for dtype in ("bfloat16", "float16", "float64"):  # float64: reference fallback
        check_quantize(cast(x, dtype), "hif4")
    check_quantize(x[:, :50], "hif4")
    check_quantize(x[:9].T, "hif4", axis=0)
    check_quantize(x, "hif4", preset="torchao")  # TypeError as the reference


@pytest.mark.parametrize("rounding", ln.ROUNDING_MODES)
@pytest.mark.parametrize("fmt", ["int8", "int4", "hif8"])
def test_absmax(fmt, rounding):
    x = _blocks(fmt, 7, finite=False)
    x[5, 3] = np.nan
    x[6, 9] = np.inf
    rb = np.random.default_rng(8).integers(0, 2**8, x.shape).astype(np.uint8)
    grans = ["channel", "group", "tensor"] + (["none"] if fmt == "hif8" else [])
    for gran in grans:
        gs = 32 if gran == "group" else None
        for target in (None, 3.3, 1e-30):
            check_quantize(x, fmt, granularity=gran, group_size=gs, rounding=rounding,
                           rbits=rb, target=target, dequantize=target is None)
    if fmt == "hif8":
        check_quantize(x, fmt, saturate=True, granularity="channel")
        check_quantize(x, fmt, saturate=False, granularity="none", rounding=rounding, rbits=rb)


def test_absmax_dtypes_and_shapes():
    x = _blocks("int8", 9, finite=True)
    for dtype in ("bfloat16", "float16", "float64"):
        check_quantize(cast(x, dtype), "int8")
        check_quantize(cast(x, dtype), "hif8")
        check_quantize(cast(x, dtype), "int4", group_size=16)
    check_quantize(x[:, :45], "int4", group_size=16)
    check_quantize(x[:5].T, "int8", axis=0, granularity="tensor")
    check_quantize(np.zeros((0, 5), np.float32), "int8", granularity="tensor")
    check_quantize(x, "int8", granularity="none")  # ValueError as the reference
    check_quantize(x, "int8", scale_rule="floor")  # TypeError as the reference


@given(
    fmt=st.sampled_from(["nvfp4", "hif4", "int8", "int4", "hif8"]),
    rounding=st.sampled_from(ln.ROUNDING_MODES),
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 130)),
                 elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
)
def test_blocks_hypothesis(fmt, rounding, x):
    rb = np.random.default_rng(x.size).integers(0, 2**16, x.shape).astype(np.uint16)
    check_quantize(x, fmt, rounding=rounding, rbits=rb, dequantize=False)


@pytest.mark.parametrize("rounding", hif4.SCALE_ROUNDINGS)
def test_hif4_e6m2_bit_rounder(rounding):
    """The E6M2 scale rounding on the float64 pattern equals the reference's encoder on every
    bf16 value of ``[SF_MIN, SF_MAX]`` (SF is bf16-rounded and clamped before it)."""
    from numba import njit

    from lowbit.kernels.hif4 import _e6m2

    bf = np.arange(0, 1 << 15, dtype=np.uint32) << 16
    sf = bf.view(np.float32).astype(np.float64)
    sf = sf[(sf >= hif4.SF_MIN) & (sf <= hif4.SF_MAX)]
    @njit
    def run(v, away):
        out = np.empty(v.size, np.uint8)
        for i in range(v.size):
            out[i] = _e6m2(v[i], away)
        return out

    got = run(sf, rounding == "nearest_away")
    assert_same(ln.encode(sf, "e6m2", rounding=rounding, backend="reference"), got)
