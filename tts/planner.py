"""Planner: choose (method, B, gamma) maximising predicted accuracy within a latency budget.

For every candidate the simulator gives the per-branch token budget ``n_max`` (worst case: all B
rows run to ``n_max``, so the plan's latency never exceeds the budget), the pool gives the
accuracy at that budget, and the predicted latency is the simulated one with rows finishing at
pool lengths. Ranking: higher accuracy, then lower predicted latency, then smaller B, then smaller
gamma. Plans may truncate shorter than their token budget where that is more accurate on the
pool (majority voting is not monotone in the truncation length); that choice is fitted on the
pool, so report accuracy on held-out problems. ``plan_exhaustive`` searches the whole grid;
``plan_greedy`` is the paper-style search (Algorithm 1 in spirit): from (B=1, gamma=0) take
whichever of "double B" and "gamma + 1" gains more accuracy (or, at equal accuracy, saves more
latency), until neither helps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .pool import SamplePool
from .simulate import Setup, budget_tokens, expected_latency, simulate

DEFAULT_B: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_GAMMA: tuple[int, ...] = tuple(range(9))


@dataclass(frozen=True)
class Plan:
    """A configuration and its predictions: ``n_max`` tokens per branch, ``predicted_latency_s``
    (mean simulated), ``worst_latency_s`` (every branch runs to ``n_max``; <= the budget) and
    ``predicted_acc`` (0 when no branch can produce a token)."""

    method: str
    b: int
    gamma: int
    n_max: int
    predicted_latency_s: float
    worst_latency_s: float
    predicted_acc: float

    def key(self) -> tuple:
        """Sort key, best plan first; latency only ranks plans with some accuracy (among plans
        predicted to fail, the smallest configuration)."""
        lat = self.predicted_latency_s if self.predicted_acc > 0 else 0.0
        return (-self.predicted_acc, lat, self.b, self.gamma)

    def to_dict(self) -> dict:
        return asdict(self)


class Planner:
    """Evaluates configurations with memoisation.

    Args:
        setup: the simulator setup (cost model, drafter cost, acceptance, prompt, memory).
        acc: ``acc(method, B, n_max) -> accuracy`` (e.g. ``pool.AccuracyTable``); when it has
            ``best(method, B, n_max) -> (n, accuracy)``, plans truncate at that ``n`` (the most
            accurate, then shortest, truncation within the token budget).
        pool: optional, for the mean predicted latency with rows finishing at pool lengths;
            without it the predicted latency is the worst case.
        early_stop: whether executions stop majority votes early (latency only).
    """

    def __init__(self, setup: Setup, acc: Callable[[str, int, float], float],
                 pool: SamplePool | None = None, *, early_stop: bool = False,
                 draws: int = 64) -> None:
        self.setup, self.acc, self.pool = setup, acc, pool
        self.early_stop, self.draws = early_stop, draws
        self._memo: dict[tuple, Plan] = {}

    def evaluate(self, method: str, b: int, gamma: int, budget_s: float) -> Plan:
        key = (method, b, gamma, budget_s)
        if key not in self._memo:
            n = budget_tokens(self.setup, b, gamma, budget_s)
            best = getattr(self.acc, "best", None)
            if n and best is not None:
                n_best, acc = best(method, b, n)
                n = n_best if acc > 0 else n
            else:
                acc = self.acc(method, b, n) if n else 0.0
            worst = self._worst(b, gamma, n)
            if n == 0:
                plan = Plan(method, b, gamma, 0, worst, worst, 0.0)
            else:
                mean = worst if self.pool is None else expected_latency(
                    self.setup, self.pool, b, gamma, n,
                    early=self.early_stop and method == "majority", draws=self.draws)
                plan = Plan(method, b, gamma, n, mean, worst, acc)
            self._memo[key] = plan
        return self._memo[key]

    def _worst(self, b: int, gamma: int, n: int) -> float:
        return simulate(self.setup, gamma, [max(n, 1)] * b).latency_s

    def plan_exhaustive(self, budget_s: float, methods: Sequence[str] = ("majority",),
                        b_grid: Sequence[int] = DEFAULT_B,
                        gamma_grid: Sequence[int] = DEFAULT_GAMMA) -> Plan:
        """Best feasible plan over the whole grid (an infeasible B=1, gamma=0 plan with accuracy 0
        when nothing fits)."""
        plans = [self.evaluate(m, b, g, budget_s)
                 for m in methods for b in b_grid for g in gamma_grid]
        feasible = [p for p in plans if p.n_max > 0] or plans
        return min(feasible, key=Plan.key)

    def plan_greedy(self, budget_s: float, methods: Sequence[str] = ("majority",),
                    b_grid: Sequence[int] = DEFAULT_B,
                    gamma_grid: Sequence[int] = DEFAULT_GAMMA) -> Plan:
        """Greedy search per method from (smallest B, smallest gamma); the best over methods."""
        bs, gs = sorted(b_grid), sorted(gamma_grid)
        best = []
        for m in methods:
            i, j = 0, 0
            cur = self.evaluate(m, bs[i], gs[j], budget_s)
            while True:
                moves = []
                if i + 1 < len(bs):
                    moves.append((i + 1, j))
                if j + 1 < len(gs):
                    moves.append((i, j + 1))
                cands = [(self.evaluate(m, bs[a], gs[c], budget_s), a, c) for a, c in moves]
                cands = [x for x in cands if x[0].n_max > 0 and x[0].key() < cur.key()]
                if not cands:
                    break
                cur, i, j = min(cands, key=lambda x: x[0].key())
            best.append(cur)
        return min(best, key=Plan.key)
