"""Simulator of B branches decoded together with speculative iterations, under a latency budget.

Each iteration every active row verifies ``gamma`` drafted tokens in one target forward of
``gamma + 1`` tokens per row and advances by the expected tokens per verify step ``tau(gamma)``
(fractional: an expectation, not a draw). Rows stop at their own length (or the per-branch budget
``n_max``), so the batch shrinks; the prompt is prefilled once for all rows and yields each row's
first token. Times in seconds, lengths in generated tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .answers import early_stop
from .latency import AcceptanceTable, CostModel, DraftCost
from .pool import SamplePool


@dataclass(frozen=True)
class Memory:
    """KV-cache memory cap: ``weight_bytes + rows * (prompt + n + gamma) * kv_bytes_per_token
    <= capacity_bytes`` (the draft slots of one iteration are cached before rejection)."""

    capacity_bytes: float
    weight_bytes: float
    kv_bytes_per_token: float

    def max_tokens(self, rows: int, prompt: int, gamma: int) -> int:
        """Largest per-row generation length that fits (negative: not even the prompt fits)."""
        free = self.capacity_bytes - self.weight_bytes
        return int(np.floor(free / (rows * self.kv_bytes_per_token))) - prompt - gamma


@dataclass(frozen=True)
class Setup:
    """What the simulator needs: target ``cost``, ``draft`` cost, ``acceptance`` table, prompt
    length in tokens, an optional ``memory`` cap and a hard ``max_tokens`` per branch."""

    cost: CostModel
    acceptance: AcceptanceTable
    draft: DraftCost = DraftCost()
    prompt: int = 128
    memory: Memory | None = None
    max_tokens: int = 4096
    holes: bool = True
    """Rejected and padding draft slots stay in the cache (masked, as in ``speculative``), so
    each iteration grows every row's context by gamma + 1 slots, not by the accepted tokens."""

    def context(self, done, iteration, gamma: int):
        """Cached slots per row before an iteration, given tokens ``done`` and the iteration
        index (0 after prefill)."""
        if self.holes:
            return self.prompt + np.asarray(iteration) * (gamma + 1)
        return self.prompt + np.asarray(done) - 1

    def iteration_s(self, rows: int, gamma: int, context_sum):
        """One verify step for ``rows`` rows whose contexts sum to ``context_sum`` tokens
        (broadcasts over an array of context sums)."""
        if rows == 0:
            return 0.0
        ctx = np.asarray(context_sum) / rows
        return (self.cost.forward_s(rows, gamma + 1, ctx)
                + self.draft.iteration_s(rows, gamma, ctx))

    def prefill_s(self, rows: int, gamma: int) -> float:
        return self.cost.prefill_s(rows, self.prompt) + (
            self.draft.prefill_s(rows, self.prompt) if gamma > 0 else 0.0)


def budget_tokens(setup: Setup, rows: int, gamma: int, budget_s: float) -> int:
    """Per-branch token budget ``n_max``: the most tokens every one of ``rows`` rows can generate
    (none finishing early: the worst case) with simulated latency <= ``budget_s``; 0 when even the
    first token does not fit. Capped by ``setup.max_tokens`` and the memory cap."""
    cap = setup.max_tokens
    step = setup.acceptance.tau(gamma)
    if setup.memory is not None:
        room = setup.memory.max_tokens(rows, setup.prompt, gamma)
        if setup.holes:  # every iteration takes gamma + 1 slots for tau tokens
            room = int(np.floor((room + gamma) // (gamma + 1) * step)) if room + gamma > 0 else 0
        cap = min(cap, room)
    t0 = setup.prefill_s(rows, gamma)
    if cap < 1 or t0 > budget_s:
        return 0
    done = 1.0 + step * np.arange(int(np.ceil((cap - 1) / step)))  # before each iteration
    cost = setup.iteration_s(rows, gamma,
                             rows * setup.context(done, np.arange(len(done)), gamma))
    fits = int(np.searchsorted(t0 + np.cumsum(cost), budget_s, side="right"))
    return int(min(np.floor(1.0 + fits * step + 1e-9), cap))


@dataclass(frozen=True)
class SimResult:
    """Simulated ``latency_s``, verify ``iterations``, per-row ``finish_s`` (inf: stopped by the
    vote before finishing) and whether the majority ``early_stopped``."""

    latency_s: float
    iterations: int
    finish_s: tuple[float, ...]
    early_stopped: bool = False


def simulate(setup: Setup, gamma: int, lengths: Sequence[int], n_max: int | None = None,
             answers: Sequence[str | None] | None = None) -> SimResult:
    """Decode ``len(lengths)`` rows of the given lengths (truncated at ``n_max``) with draft
    length ``gamma``. With ``answers`` (one per row), stop as soon as the majority-vote early-stop
    rule of ``answers.early_stop`` holds among the finished rows.

    All active rows advance by the same ``tau`` per iteration, so the batch only changes when a
    row finishes; the iterations between two finishes are costed in one vectorised step."""
    target = np.asarray(lengths, dtype=np.float64)
    if n_max is not None:
        target = np.minimum(target, n_max)
    rows, eps = len(target), 1e-9
    step = setup.acceptance.tau(gamma)
    finish = np.full(rows, np.inf)
    t, done, it = setup.prefill_s(rows, gamma), 1.0, 0
    while True:
        active = target > done + eps
        finish[~active & np.isinf(finish)] = t
        n_active = int(active.sum())
        if answers is not None and n_active:
            fin = [a for a, f in zip(answers, ~active, strict=True) if f]
            if early_stop(fin, n_active):
                return SimResult(t, it, tuple(finish), True)
        if not n_active:
            return SimResult(t, it, tuple(finish))
        k = max(1, int(np.ceil((target[active].min() - done) / step - eps)))
        ctx = setup.context(done + step * np.arange(k), it + np.arange(k), gamma)
        t += float(np.sum(setup.iteration_s(n_active, gamma, n_active * ctx)))
        done += k * step
        it += k


def expected_latency(setup: Setup, pool: SamplePool, rows: int, gamma: int, n_max: int, *,
                     early: bool = False, draws: int = 64, seed: int = 0) -> float:
    """Mean simulated latency over ``draws`` seeded draws of a random problem of ``pool`` and
    ``rows`` of its samples (lengths, and answers for the early stop)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        p = pool.problems[rng.integers(len(pool.problems))]
        pick = rng.permutation(len(p.samples))[:rows]
        ss = [p.samples[i] for i in pick]
        out.append(simulate(setup, gamma, [s.n_tokens for s in ss], n_max,
                            [s.answer if s.n_tokens <= n_max else None for s in ss]
                            if early else None).latency_s)
    return float(np.mean(out))
