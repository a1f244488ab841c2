"""HiF4 numba kernel against the reference on inputs spanning several parallel tasks."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import check_quantize


@pytest.mark.parametrize("rounding", ["nearest_away", "nearest_even", "toward_zero"])
def test_many_tasks(rounding):
    """Several parallel tasks (128 blocks each, the last one partial) with NaN/Inf/zero blocks
    among them, on whole-block rows (the default mode's own loop) and on ragged rows."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((21, 64 * 14)) * np.exp2(rng.integers(-40, 40, (21, 1)))
    x = x.astype(np.float32)
    flat = x.reshape(-1)
    for v in (np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45):
        flat[rng.integers(0, flat.size, 4)] = v
    x[2, 128:192] = 0.0
    for kw in ({}, {"negative_zero": False, "scale_rounding": "nearest_away"}):
        check_quantize(x, "hif4", rounding=rounding, dequantize=False, **kw)
        check_quantize(x[:, :-9], "hif4", rounding=rounding, dequantize=False, **kw)
