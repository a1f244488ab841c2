import numpy as np
import pytest

from lowbit.tts.latency import AcceptanceTable, CostModel, DraftCost
from lowbit.tts.simulate import Memory, Setup, simulate, simulate_stochastic

COST = CostModel(a0=0.01, a1=1e-3, a2=1e-6, a4=2e-3)


def _lookup_steps(n, gamma, p_match, alpha, seed=0):
    """(requested, proposed, accepted): a lookup drafter finds a match with ``p_match`` (then
    proposes all ``gamma``), each drafted token accepted with ``alpha`` in turn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prop = gamma if rng.random() < p_match else 0
        acc = 0
        while acc < prop and rng.random() < alpha:
            acc += 1
        out.append((gamma, prop, acc))
    return out


def test_lookup_failures_count_as_rejections():
    steps = _lookup_steps(20000, 4, 0.5, 0.8)
    table = AcceptanceTable.from_counts(steps)
    for g in range(5):  # E[accepted] = p_match * sum_j alpha^j
        assert table.tau(g) == pytest.approx(1 + 0.5 * sum(0.8 ** j for j in range(1, g + 1)),
                                             rel=0.02)
    np.testing.assert_allclose(table.proposal, [0.5, 0.5, 0.5, 0.5], atol=0.01)
    # the old (proposed, accepted) reading ignores the empty proposals and overestimates tau
    pairs = AcceptanceTable.from_counts([(p, a) for _, p, a in steps])
    assert pairs.tau(4) > table.tau(4) + 0.5
    assert AcceptanceTable.from_dict(table.to_dict()) == table
    with pytest.raises(ValueError):
        AcceptanceTable.from_counts([(2, 3, 1)])


def test_expected_width_is_the_mean_max_proposal():
    table = AcceptanceTable.from_counts(_lookup_steps(20000, 3, 0.3, 0.5, seed=1))
    rng = np.random.default_rng(2)
    for rows in (1, 4, 16):
        prop = np.array([table.draw(3, rows, rng)[0].max() for _ in range(1000)])
        assert table.width(3, rows) == pytest.approx(1 + prop.mean(), rel=0.05)
    assert AcceptanceTable.from_alpha(0.5).width(3, 8) == 4.0  # a model drafter: full width
    assert table.width(0, 8) == 1.0


@pytest.mark.parametrize("table", [AcceptanceTable.from_alpha(0.6),
                                   AcceptanceTable.from_counts(_lookup_steps(5000, 6, 0.6, 0.7))])
def test_draws_match_the_table(table):
    rng = np.random.default_rng(0)
    for g in (1, 3, 6):
        prop, acc = table.draw(g, 20000, rng)
        assert (acc <= prop).all() and (prop <= g).all()
        assert 1 + acc.mean() == pytest.approx(table.tau(g), rel=0.02)
    a = table.draw(4, 10, np.random.default_rng(7))
    b = table.draw(4, 10, np.random.default_rng(7))
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


def test_stochastic_equals_expected_without_randomness():
    setup = Setup(COST, AcceptanceTable.from_alpha(1.0, 8), prompt=40)
    for gamma, lengths in ((0, [3, 17, 40, 41]), (3, [1 + 4 * k for k in (2, 5, 9, 9)])):
        e = simulate(setup, gamma, lengths)
        s = simulate_stochastic(setup, gamma, lengths, seed=3)
        assert s.latency_s == pytest.approx(e.latency_s, rel=1e-12)
        assert s.iterations == e.iterations and s.tokens == tuple(lengths)
        np.testing.assert_allclose(s.finish_s, e.finish_s, rtol=1e-12)


def test_stochastic_is_seeded_and_rows_finish_apart():
    table = AcceptanceTable.from_counts(_lookup_steps(4000, 4, 0.7, 0.7))
    setup = Setup(COST, table, DraftCost("lookup", 1e-5, per_ctx_s=1e-7), prompt=40)
    a = simulate_stochastic(setup, 4, [60] * 8, seed=11)
    assert a == simulate_stochastic(setup, 4, [60] * 8, seed=11)
    assert a != simulate_stochastic(setup, 4, [60] * 8, seed=12)
    assert len(set(a.finish_s)) > 1  # same length, different acceptance: different finish
    assert a.tokens == (60,) * 8 and a.latency_s == max(a.finish_s)
    runs = [simulate_stochastic(setup, 4, [60] * 8, seed=s).latency_s for s in range(100)]
    expected = simulate(setup, 4, [60] * 8).latency_s
    assert np.mean(runs) == pytest.approx(expected, rel=0.1)
    # the batch waits for its slowest row: the mean run is slower than the expectation
    assert np.mean(runs) > expected


def test_stochastic_memory_cap():
    table = AcceptanceTable.from_alpha(0.5, 8)
    mem = Memory(capacity_bytes=1e9, weight_bytes=0.5e9, kv_bytes_per_token=1e5)
    setup = Setup(COST, table, prompt=50, memory=mem)
    capped = simulate_stochastic(setup, 4, [400] * 8, seed=0)
    assert capped.memory_stopped and max(capped.tokens) < 400
    free = simulate_stochastic(Setup(COST, table, prompt=50), 4, [400] * 8, seed=0)
    assert not free.memory_stopped and free.latency_s > capped.latency_s
    # the cache never overflowed: 8 rows of prompt + 5 slots per finished iteration
    assert 0.5e9 + 8 * (50 + 5 * capped.iterations) * 1e5 <= 1e9
    assert 0.5e9 + 8 * (50 + 5 * (capped.iterations + 1)) * 1e5 > 1e9
    with pytest.raises(ValueError):
        simulate_stochastic(Setup(COST, table, prompt=50, memory=mem), 4, [10] * 200)
    with pytest.raises(ValueError):
        simulate_stochastic(setup, 4, [])
