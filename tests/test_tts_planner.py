import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.tts.latency import AcceptanceTable, CostModel, DraftCost
from lowbit.tts.planner import Planner
from lowbit.tts.pool import AccuracyTable, Problem, Sample, SamplePool, accuracy
from lowbit.tts.simulate import Setup, simulate

B_GRID = (1, 2, 4, 8)
G_GRID = tuple(range(7))


def _pool(n_problems=12, k=8, seed=0, lengths=(40, 300)):
    rng = np.random.default_rng(seed)
    probs = []
    for i in range(n_problems):
        p = rng.uniform(0.3, 0.8)
        samples = []
        for _ in range(k):
            ok = rng.random() < p
            ans = "0" if ok else str(rng.integers(1, 4))
            samples.append(Sample(ans, ok, int(rng.integers(*lengths)), -float(rng.random())))
        probs.append(Problem(str(i), "0", tuple(samples)))
    return SamplePool(tuple(probs))


POOL = _pool()
ACC = AccuracyTable(POOL)
MEMORY_BOUND = CostModel(a0=0.02, a1=1e-6, a2=0.0)
COMPUTE_BOUND = CostModel(a0=0.01, a1=0.01, a2=0.0)
GOOD = AcceptanceTable.from_alpha(0.8)


NO_DRAFT_COST = DraftCost()


def _planner(cost, acceptance=GOOD, draft=NO_DRAFT_COST, pool=POOL, acc=ACC, prompt=32):
    return Planner(Setup(cost, acceptance, draft, prompt=prompt), acc, pool, draws=16)


def test_memory_bound_uses_branches_and_drafts():
    plan = _planner(MEMORY_BOUND).plan_exhaustive(3.0, b_grid=B_GRID, gamma_grid=G_GRID)
    assert plan.b > 1 and plan.gamma > 0
    assert plan.worst_latency_s <= 3.0


def test_compute_bound_gamma_shrinks_with_b():
    pl = _planner(COMPUTE_BOUND)
    best_gamma = []
    for b in B_GRID:
        plans = [pl.evaluate("majority", b, g, 5.0) for g in G_GRID]
        best_gamma.append(max(plans, key=lambda p: (p.n_max, -p.gamma)).gamma)
    assert best_gamma[0] > 0 and best_gamma[-1] == 0
    assert all(a >= b for a, b in zip(best_gamma, best_gamma[1:], strict=False))


@pytest.mark.parametrize("budget", [0.5, 2.0, 8.0])
def test_no_acceptance_means_no_drafting(budget):
    for cost in (MEMORY_BOUND, COMPUTE_BOUND):
        pl = _planner(cost, AcceptanceTable.from_alpha(0.0), DraftCost(per_token_s=1e-4))
        assert pl.plan_exhaustive(budget, b_grid=B_GRID, gamma_grid=G_GRID).gamma == 0
        assert pl.plan_greedy(budget, b_grid=B_GRID, gamma_grid=G_GRID).gamma == 0


def test_tight_budget_prefers_one_branch_with_drafts():
    fixed = SamplePool(tuple(
        Problem(str(i), "0", tuple(Sample("0" if j < 5 else "1", j < 5, 100) for j in range(8)))
        for i in range(2)))
    cost = CostModel(a0=0.01, a1=0.005, a2=0.0)
    setup = Setup(cost, GOOD, prompt=32)

    def fastest(b):
        return min(simulate(setup, g, [100] * b).latency_s for g in G_GRID)

    seq = simulate(setup, 0, [100]).latency_s
    budget = 0.5 * (fastest(1) + min(seq, fastest(2)))
    plan = _planner(cost, pool=fixed, acc=AccuracyTable(fixed)).plan_exhaustive(
        budget, b_grid=B_GRID, gamma_grid=G_GRID)
    assert (plan.b, plan.n_max >= 100) == (1, True) and plan.gamma > 0
    assert plan.predicted_acc == pytest.approx(5 / 8)


def test_loose_budget_saturates_at_cheapest_config():
    pl = _planner(COMPUTE_BOUND)
    plan = pl.plan_exhaustive(1e4, b_grid=B_GRID, gamma_grid=G_GRID)
    best = max(ACC.best("majority", b, 10**6)[1] for b in B_GRID)
    assert plan.predicted_acc == pytest.approx(best)
    assert best >= max(accuracy(POOL, "majority", b, 10**6) for b in B_GRID)
    same = [pl.evaluate("majority", b, g, 1e4) for b in B_GRID for g in G_GRID]
    same = [p for p in same if p.predicted_acc == plan.predicted_acc]
    assert plan.predicted_latency_s == min(p.predicted_latency_s for p in same)


@settings(max_examples=15)
@given(st.floats(0.2, 20.0), st.floats(0.0, 0.95), st.floats(0.0, 0.02), st.floats(0.0, 64),
       st.sampled_from(["majority", "weighted"]))
def test_plans_within_budget_and_exhaustive_beats_greedy(budget, alpha, a1, knee, method):
    cost = CostModel(a0=0.01, a1=a1, a2=1e-6, a3=0.005, knee=knee)
    pl = _planner(cost, AcceptanceTable.from_alpha(alpha), DraftCost(per_token_s=2e-4))
    ex = pl.plan_exhaustive(budget, (method,), B_GRID, G_GRID)
    gr = pl.plan_greedy(budget, (method,), B_GRID, G_GRID)
    assert ex.predicted_acc >= gr.predicted_acc
    for plan in (ex, gr):
        if plan.n_max:
            assert plan.predicted_latency_s <= plan.worst_latency_s + 1e-12
            assert plan.worst_latency_s <= budget
            rng = np.random.default_rng(0)
            lengths = rng.integers(1, 400, plan.b)
            assert simulate(pl.setup, plan.gamma, lengths, plan.n_max).latency_s <= budget


def test_memory_cap_limits_branches():
    from lowbit.tts.simulate import Memory

    mem = Memory(capacity_bytes=1e6, weight_bytes=0.0, kv_bytes_per_token=1e3)
    setup = Setup(MEMORY_BOUND, GOOD, prompt=32, memory=mem)
    pl = Planner(setup, ACC, POOL, draws=8)
    plan = pl.plan_exhaustive(50.0, b_grid=B_GRID, gamma_grid=G_GRID)
    assert plan.b * (32 + plan.n_max + plan.gamma) * 1e3 <= 1e6
    assert pl.evaluate("majority", 8, 0, 50.0).n_max <= 1e6 / 8e3 - 32
