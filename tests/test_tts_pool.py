import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.tts.pool import AccuracyTable, Problem, Sample, SamplePool, accuracy, problem_accuracy


def _problem(spec, pid="p"):
    """spec: list of (answer, correct, length)."""
    return Problem(pid, "r", tuple(Sample(a, c, n, logprob=-0.1 * i, rm_score=float(i % 3))
                                   for i, (a, c, n) in enumerate(spec)))


def test_jsonl_round_trip(tmp_path):
    pool = SamplePool((_problem([("1", True, 10), (None, False, 20)]),
                       _problem([("2", False, 5)], "q")), {"model": "m"})
    pool.save_jsonl(tmp_path / "p.jsonl")
    back = SamplePool.load_jsonl(tmp_path / "p.jsonl")
    assert back == pool and back.meta == {"model": "m"}


def test_b1_is_pass_at_1_and_truncation_abstains():
    p = _problem([("1", True, 10), ("2", False, 10), ("1", True, 50), (None, False, 5)])
    assert problem_accuracy(p, "majority", 1, 100) == pytest.approx(0.5)
    assert problem_accuracy(p, "majority", 1, 20) == pytest.approx(0.25)
    assert problem_accuracy(p, "majority", 1, 4) == 0.0


def test_tie_credit_is_half():
    p = _problem([("1", True, 1), ("2", False, 1)])
    assert problem_accuracy(p, "majority", 2, 10) == pytest.approx(0.5)


def test_exact_equals_monte_carlo():
    rng = np.random.default_rng(3)
    spec = [(str(rng.integers(3)), False, int(rng.integers(1, 100))) for _ in range(14)]
    spec = [(a, a == "0", n) for a, _, n in spec]
    p = _problem(spec)
    for method in ("majority", "weighted", "rm_argmax", "rm_weighted"):
        exact = problem_accuracy(p, method, 5, 60)
        mc = problem_accuracy(p, method, 5, 60, exact_limit=0, draws=20000, seed=1)
        assert mc == pytest.approx(exact, abs=0.02), method


def test_majority_grows_with_b_when_p_above_half():
    spec = [("1", True, 10)] * 6 + [("2", False, 10)] * 4
    p = _problem(spec)
    accs = [problem_accuracy(p, "majority", b, 100) for b in (1, 3, 5, 7, 9)]
    assert all(a < b for a, b in zip(accs, accs[1:], strict=False))


@given(st.lists(st.tuples(st.sampled_from(["1", "2", "3", None]), st.integers(1, 50)),
                min_size=3, max_size=8), st.integers(1, 3))
def test_monotone_in_budget(spec, b):
    p = _problem([(a, a == "1", n) for a, n in spec])
    accs = [problem_accuracy(p, "majority", b, n) for n in (0, 10, 20, 30, 40, 50)]
    # more budget only turns abstentions into votes; with B = 1 that is monotone
    if b == 1:
        assert all(x <= y + 1e-12 for x, y in zip(accs, accs[1:], strict=False))
    assert all(0.0 <= a <= 1.0 for a in accs)


def test_accuracy_table_snaps_and_caches():
    pool = SamplePool((_problem([("1", True, 10), ("2", False, 30)]),))
    table = AccuracyTable(pool)
    assert table("majority", 1, 9) == 0.0
    assert table("majority", 1, 30) == pytest.approx(0.5)
    assert table("majority", 1, 1000) == pytest.approx(accuracy(pool, "majority", 1, 1000))
    assert table("majority", 3, 1000) == 0.0  # more branches than samples
    assert table.best("majority", 1, 1000) == (10, 0.5)  # the wrong, longer sample is cut


def test_accuracy_table_quantile_grid_is_conservative():
    rng = np.random.default_rng(0)
    pool = SamplePool((_problem([(str(rng.integers(2)), True, int(n))
                                 for n in rng.integers(1, 500, 12)]),))
    table = AccuracyTable(pool, grid=4)
    assert len(table.lengths) <= 4
    for n in (50, 200, 499):
        assert table.lengths[np.searchsorted(table.lengths, n, side="right") - 1] <= n
