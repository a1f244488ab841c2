import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.tts.latency import AcceptanceTable, CostModel, DraftCost, Timing, tau
from lowbit.tts.simulate import Memory, Setup, budget_tokens, simulate


def _grid(model, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for b in (1, 2, 4, 8, 16, 32):
        for s in (1, 2, 4, 8):
            for c in (64, 512, 2048):
                t = model.forward_s(b, s, c) * (1 + noise * rng.standard_normal())
                out.append(Timing(b, s, c, float(t)))
    return out


def test_nnls_recovers_parameters():
    true = CostModel(a0=0.02, a1=1e-4, a2=2e-7, a3=3e-3, knee=32)
    fit = CostModel.fit(_grid(true))
    assert fit.knee == 32
    np.testing.assert_allclose([fit.a0, fit.a1, fit.a2, fit.a3],
                               [true.a0, true.a1, true.a2, true.a3], rtol=1e-6, atol=1e-12)
    assert fit.rel_residual < 1e-9


def test_nnls_noisy_fit_is_nonnegative_and_close():
    true = CostModel(a0=0.02, a1=0.0, a2=1e-7, a3=2e-3, knee=16)
    fit = CostModel.fit(_grid(true, noise=0.05, seed=1))
    assert min(fit.a0, fit.a1, fit.a2, fit.a3) >= 0
    assert fit.rel_residual < 0.1
    assert fit.forward_s(64, 8, 100) == pytest.approx(true.forward_s(64, 8, 100), rel=0.2)


def test_cost_model_monotone_and_round_trip(tmp_path):
    m = CostModel(a0=0.01, a1=1e-4, a2=1e-7, a3=1e-3, knee=64, timings=(Timing(1, 1, 1, 0.1),))
    t = m.forward_s(np.arange(1, 50)[:, None], np.arange(1, 9)[None, :], 100)
    assert (np.diff(t, axis=0) >= 0).all() and (np.diff(t, axis=1) >= 0).all()
    assert m.forward_s(4, 1, 1000) > m.forward_s(4, 1, 10)
    assert m.forward_s(0, 1, 10) == 0.0
    m.save(tmp_path / "c.json")
    assert CostModel.load(tmp_path / "c.json") == m


def test_roofline_is_flat_then_linear():
    m = CostModel.roofline(overhead_s=1e-3, param_bytes=6e9, kv_bytes_per_token=0.0,
                           flops_per_token=6e9, bandwidth=4.8e12, flops=8e14)
    flat = m.forward_s(np.array([1, 8, 32]), 1, 0)
    assert np.ptp(flat) == 0.0
    assert m.forward_s(4096, 1, 0) > 5 * m.forward_s(1, 1, 0)


def test_tau_properties():
    assert tau(0, 0.7) == 1.0
    assert tau(3, 0.0) == 1.0
    assert tau(4, 1.0) == 5.0
    assert tau(200, 0.75) == pytest.approx(1 / 0.25)
    g = [tau(k, 0.6) for k in range(10)]
    assert all(a < b for a, b in zip(g, g[1:], strict=False))
    assert tau(3, 0.5) < tau(3, 0.8)


def test_acceptance_table_from_counts():
    rng = np.random.default_rng(0)
    alpha, steps = 0.7, []
    for _ in range(20000):
        g = int(rng.integers(1, 7))
        a = 0
        while a < g and rng.random() < alpha:
            a += 1
        steps.append((g, a))
    table = AcceptanceTable.from_counts(steps)
    ref = AcceptanceTable.from_alpha(alpha, 6)
    for g in range(7):
        assert table.tau(g) == pytest.approx(ref.tau(g), rel=0.03)
        assert table.tau(g) == pytest.approx(tau(g, alpha), rel=0.03)
    assert table.tau(20) == table.tau(6)  # beyond the data: no extra acceptance
    assert AcceptanceTable.from_dict(table.to_dict()) == table
    with pytest.raises(ValueError):
        AcceptanceTable.from_counts([(2, 3)])


def test_draft_costs():
    d = DraftCost("model", model=CostModel(a0=0.001, a1=0.0, a2=0.0))
    assert d.iteration_s(4, 3, 100) == pytest.approx(0.003)
    assert d.iteration_s(4, 0, 100) == 0.0
    assert DraftCost("lookup", per_token_s=1e-5).iteration_s(4, 3, 0) == pytest.approx(1.2e-4)


SETUP = Setup(CostModel(a0=0.01, a1=1e-3, a2=1e-6), AcceptanceTable.from_alpha(0.7), prompt=50)


def test_simulate_monotone_and_shrinking_batch():
    lat = [simulate(SETUP, 2, [n] * 4).latency_s for n in (1, 10, 50, 100, 200)]
    assert all(a < b for a, b in zip(lat, lat[1:], strict=False))
    mixed = simulate(SETUP, 2, [10, 100, 100, 100])
    assert simulate(SETUP, 2, [10] * 4).latency_s < mixed.latency_s
    assert mixed.latency_s < simulate(SETUP, 2, [100] * 4).latency_s
    assert mixed.finish_s[0] < mixed.finish_s[1] == mixed.latency_s


def test_simulate_early_stop():
    full = simulate(SETUP, 0, [10, 20, 200, 300])
    early = simulate(SETUP, 0, [10, 20, 200, 300], answers=["7", "7", "7", "1"])
    assert not full.early_stopped and early.early_stopped
    assert early.latency_s < full.latency_s


@given(st.integers(1, 64), st.integers(0, 8), st.floats(0.05, 20.0))
def test_budget_tokens_is_tight(rows, gamma, budget):
    n = budget_tokens(SETUP, rows, gamma, budget)
    if n == 0:
        assert simulate(SETUP, gamma, [1] * rows).latency_s > budget
        return
    assert simulate(SETUP, gamma, [n] * rows).latency_s <= budget
    if n < SETUP.max_tokens:
        assert simulate(SETUP, gamma, [n + 1] * rows).latency_s > budget


def test_memory_cap():
    mem = Memory(capacity_bytes=1e9, weight_bytes=0.5e9, kv_bytes_per_token=1e5)
    setup = Setup(SETUP.cost, SETUP.acceptance, prompt=50, memory=mem)
    step = SETUP.acceptance.tau(4)
    for rows in (1, 4, 16, 64):
        n = budget_tokens(setup, rows, 4, 1e6)
        slots = 50 + int(np.ceil((n - 1) / step)) * 5  # prompt + 5 slots per iteration
        assert n > 0 and 0.5e9 + rows * slots * 1e5 <= 1e9
        n_flat = budget_tokens(Setup(SETUP.cost, SETUP.acceptance, prompt=50, memory=mem,
                                     holes=False), rows, 4, 1e6)
        assert n_flat == min(setup.max_tokens, mem.max_tokens(rows, 50, 4))
        assert 0.5e9 + rows * (50 + n_flat + 4) * 1e5 <= 1e9
    assert budget_tokens(setup, 128, 4, 1e6) == 0


def test_decode_fit_recovers_a_concave_cpu_curve():
    """Small products cost more per token than a prefill's: slope a1 + a5 below the knee."""
    true = CostModel(a0=0.09, a1=0.005, a2=5e-5, knee=4, a4=0.0, a5=0.025)
    pts = [Timing(b, s, c, true.forward_s(b, s, c))
           for b in (1, 2, 4) for s in (1, 2, 4, 64) for c in (0, 80, 160)]
    fit = CostModel.fit(pts, per_row=True)
    assert fit.knee == 4 and fit.rel_residual < 1e-9
    np.testing.assert_allclose([fit.a0, fit.a1, fit.a2, fit.a5], [0.09, 0.005, 5e-5, 0.025],
                               rtol=1e-6)
    assert CostModel.fit(pts).rel_residual > 0.05  # the convex-only surrogate cannot fit it
    assert CostModel.from_dict(fit.to_dict()) == fit
