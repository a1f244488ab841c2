"""Numba NVFP4 quantize per-task loops (``kernels.nvfp4._task_*``) against the reference."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from kernel_helpers import cast, check_quantize

from lowbit import numerics as ln
from lowbit.kernels.nvfp4 import BLOCKS_PER_TASK
from lowbit.numerics import nvfp4


def _input(rng: np.random.Generator, rows: int, length: int) -> np.ndarray:
    """Several parallel tasks of blocks: normal data, a zero block, a wide-range block, exact
    E2M1 midpoints and tiny values (subnormal in float32)."""
    x = rng.standard_normal((rows, length)).astype(np.float32)
    x[0, :16] = 0
    x[1, :16] = np.float32(2.0) ** rng.integers(-30, 30, 16)
    x[2, :16] = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2, np.float32)
    x[3, :16] = np.float32(1e-45) * np.arange(16)
    x[4, :16] *= -1
    x[5, 1] = np.float32(-0.0)
    return x


@pytest.mark.parametrize("length", [64, 37, 16 * 3 + 15])
@pytest.mark.parametrize("rounding", ln.ROUNDING_MODES)
@pytest.mark.parametrize("algorithm", nvfp4.ALGORITHMS)
def test_tasks(algorithm, rounding, length):
    rng = np.random.default_rng(length)
    rows = 3 * BLOCKS_PER_TASK * 16 // length + 5  # spans > 3 tasks
    x = _input(rng, rows, length)
    rb = rng.integers(0, 2**32, x.shape, dtype=np.uint64).astype(np.uint32)
    rbits = rb if rounding == "stochastic" else None
    for dtype in ("float32", "bfloat16"):
        check_quantize(cast(x, dtype), "nvfp4", algorithm=algorithm, rounding=rounding,
                       rbits=rbits)
    check_quantize(x, "nvfp4", algorithm=algorithm, rounding=rounding, rbits=rbits,
                   global_amax=1e-2, dequantize=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(bad):
    x = _input(np.random.default_rng(0), 2 * BLOCKS_PER_TASK, 32)
    x[BLOCKS_PER_TASK + 3, 17] = bad
    check_quantize(x, "nvfp4")  # ValueError in both


def test_undefined_nan_across_tasks():
    x = _input(np.random.default_rng(1), 2 * BLOCKS_PER_TASK, 32) * np.float32(1e-37)
    for preset in ("torchao", "modelopt"):
        check_quantize(x, "nvfp4", preset=preset)  # ValueError or same result in both


def test_threads():
    x = _input(np.random.default_rng(3), 4 * BLOCKS_PER_TASK, 48)
    old = numba.get_num_threads()
    try:
        for t in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(t)
            check_quantize(x, "nvfp4")
            check_quantize(x[:, :45], "nvfp4", preset="modelopt")
    finally:
        numba.set_num_threads(old)
