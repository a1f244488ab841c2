"""MX pre-scale search: error tables, criteria, tie-breaks and invalid candidates."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lowbit import numerics as ln
from lowbit.numerics.prescale import DEFAULT_CANDIDATES, PrescaleSearch, search_prescale


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((48, 256)).astype(np.float32)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    x[:, 7] *= 40  # an outlier channel, as in LLM activations
    return x


def weight_mse(w, alpha, **options) -> float:
    q = ln.quantize(w, "mxfp4", prescale=None if alpha == 1.0 else alpha, **options)
    return float(np.mean((ln.dequantize(q, dtype=np.float64) - w.astype(np.float64)) ** 2))


def output_mse(w, x, alpha) -> float:
    q = ln.quantize(w, "mxfp4", prescale=None if alpha == 1.0 else alpha)
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    return float(np.mean((x64 @ ln.dequantize(q, dtype=np.float64).T - x64 @ w64.T) ** 2))


def test_default_candidates_are_a_dyadic_grid():
    assert DEFAULT_CANDIDATES[0] == 0.5 and DEFAULT_CANDIDATES[-1] == 1.0
    assert 0.75 in DEFAULT_CANDIDATES and len(DEFAULT_CANDIDATES) == 17
    assert all(Fraction(a).denominator <= 32 for a in DEFAULT_CANDIDATES)
    assert np.allclose(np.diff(DEFAULT_CANDIDATES), 1 / 32)


def test_weight_mse_search(weight):
    r = search_prescale(weight)
    assert isinstance(r, PrescaleSearch) and r.criterion == "weight_mse"
    table = dict(r.table)
    assert list(table) == list(DEFAULT_CANDIDATES)
    assert r.error == table[r.alpha] == min(table.values())
    assert r.error <= table[1.0]
    for alpha in (1.0, 0.75, r.alpha):  # the table is the MSE of ordinary quantize calls
        assert table[alpha] == weight_mse(weight, alpha)
    assert r.alpha != 1.0  # Gaussian MXFP4 blocks clip; some alpha < 1 does better here


def test_output_mse_search(weight, inputs):
    r = search_prescale(weight, inputs=inputs)
    assert r.criterion == "output_mse"
    table = dict(r.table)
    assert r.error == table[r.alpha] == min(table.values()) <= table[1.0]
    for alpha in (1.0, 0.75, r.alpha):
        assert table[alpha] == pytest.approx(output_mse(weight, inputs, alpha), rel=1e-12)
    assert dict(search_prescale(weight).table) != table


def test_quantize_options_are_forwarded(weight):
    r = search_prescale(weight, candidates=[0.75, 1.0], scale_rule="rceil")
    assert dict(r.table) == {a: weight_mse(weight, a, scale_rule="rceil") for a in (0.75, 1.0)}
    assert dict(r.table) != dict(search_prescale(weight, candidates=[0.75, 1.0]).table)


def test_other_axis_and_mx_format(weight):
    r = search_prescale(weight.T, "mxfp8_e4m3", candidates=[0.875, 1.0], axis=0)
    q = ln.quantize(weight.T, "mxfp8_e4m3", axis=0, prescale=0.875)
    err = float(np.mean((ln.dequantize(q, dtype=np.float64) - weight.T.astype(np.float64)) ** 2))
    assert dict(r.table)[0.875] == err


def test_ties_are_deterministic():
    zero = np.zeros((4, 64), np.float32)
    assert search_prescale(zero).alpha == 1.0  # every error is 0: closest to 1
    assert search_prescale(zero, candidates=[0.5, 0.75]).alpha == 0.75
    assert search_prescale(zero, candidates=[1.125, 0.875]).alpha == 0.875  # equidistant: smaller
    a = search_prescale(zero, candidates=[1.0, 0.5, 0.75, 0.75])
    b = search_prescale(zero, candidates=[0.75, 1.0, 0.5])
    assert a == b and [alpha for alpha, _ in a.table] == [0.5, 0.75, 1.0]


def test_invalid_candidates(weight):
    with pytest.raises(ValueError, match=r"candidate alpha=0\.7 rejected: .*not exact in float64"):
        search_prescale(weight, candidates=[0.75, 0.7])
    with pytest.raises(ValueError, match=r"candidate alpha=-0\.5 rejected: .*positive finite"):
        search_prescale(weight, candidates=[-0.5])
    with pytest.raises(ValueError, match="candidates is empty"):
        search_prescale(weight, candidates=[])
    full = np.random.default_rng(2).standard_normal((4, 64))  # float64, 53-bit significands
    with pytest.raises(ValueError, match=r"candidate alpha=0\.5 rejected"):
        search_prescale(full, candidates=[0.5, 1.0])
    assert search_prescale(full, candidates=[1.0]).alpha == 1.0  # no pre-scale: no exactness rule


def test_invalid_arguments(weight, inputs):
    with pytest.raises(ValueError, match="MX formats"):
        search_prescale(weight, "int8")
    with pytest.raises(TypeError, match="chooses prescale"):
        search_prescale(weight, prescale=0.75)
    with pytest.raises(ValueError, match="finite"):
        search_prescale(np.full((2, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 256\)"):
        search_prescale(weight, inputs=inputs[:, :128])
    with pytest.raises(ValueError, match="quantized along K"):
        search_prescale(weight, inputs=inputs, axis=0)
    bad = inputs.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="inputs must be finite"):
        search_prescale(weight, inputs=bad)
