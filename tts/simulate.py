"""Simulator of B branches decoded together with speculative iterations, under a latency budget.

The prompt is prefilled once for all rows and yields each row's first token. Each iteration
every active row drafts up to ``gamma`` tokens, one target forward verifies ``w`` tokens per row
(``w = 1 + max_r proposed_r``) over ``c`` cached slots, and row r advances by ``1 + accepted_r``;
rejected and padding slots stay in the cache (masked), so ``c`` grows by ``w`` per iteration.
Rows stop at their own length (or the per-branch budget ``n_max``), so the batch shrinks. Times in
seconds, lengths in generated tokens.

* ``simulate``: the expected-value model. Every row advances by ``tau(gamma)`` (fractional) and
  ``w`` is its expectation ``AcceptanceTable.width(gamma, B_active)``.
* ``simulate_stochastic``: per-row outcomes ``(proposed, accepted)`` drawn each iteration from
  the empirical acceptance table (seeded), so rows finish at different iterations; with a
  ``Memory`` cap, decoding stops (all remaining rows truncated) before the cache would overflow:
  ``weights + B_active * (c + w) * kv_bytes_per_token <= capacity``.
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

    def width(self, gamma: int, rows: int) -> float:
        """Expected tokens per row of one verify forward (``AcceptanceTable.width``)."""
        return self.acceptance.width(gamma, rows)

    def context(self, done, iteration, gamma: int, rows: int = 1):
        """Cached slots per row before an iteration, given tokens ``done`` and the iteration
        index (0 after prefill), for ``rows`` rows all along."""
        if self.holes:
            return self.prompt + np.asarray(iteration) * self.width(gamma, rows)
        return self.prompt + np.asarray(done) - 1

    def iteration_s(self, rows: int, gamma: int, context, width: float | None = None):
        """One verify step for ``rows`` rows over ``context`` cached slots per row (broadcasts
        over an array of contexts), ``width`` tokens per row (default: the expected width)."""
        if rows == 0:
            return 0.0
        w = self.width(gamma, rows) if width is None else width
        return (self.cost.forward_s(rows, w, context)
                + self.draft.iteration_s(rows, gamma, context))

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
        if setup.holes:  # every iteration takes gamma + 1 slots for tau tokens (worst case)
            room = int(np.floor((room + gamma) // (gamma + 1) * step)) if room + gamma > 0 else 0
        cap = min(cap, room)
    t0 = setup.prefill_s(rows, gamma)
    if cap < 1 or t0 > budget_s:
        return 0
    done = 1.0 + step * np.arange(int(np.ceil((cap - 1) / step)))  # before each iteration
    cost = setup.iteration_s(rows, gamma, setup.context(done, np.arange(len(done)), gamma, rows))
    fits = int(np.searchsorted(t0 + np.cumsum(cost), budget_s, side="right"))
    return int(min(np.floor(1.0 + fits * step + 1e-9), cap))


@dataclass(frozen=True)
class SimResult:
    """Simulated ``latency_s``, verify ``iterations``, per-row ``finish_s`` (inf: stopped by the
    vote before finishing), whether the majority ``early_stopped``; stochastic runs also give
    per-row generated ``tokens`` and whether the memory cap stopped decoding."""

    latency_s: float
    iterations: int
    finish_s: tuple[float, ...]
    early_stopped: bool = False
    tokens: tuple[int, ...] = ()
    memory_stopped: bool = False


def _targets(lengths: Sequence[int], n_max: int | None) -> np.ndarray:
    target = np.asarray(lengths, dtype=np.float64)
    if target.ndim != 1 or len(target) == 0 or (target < 1).any():
        raise ValueError("lengths: a non-empty sequence of positive token counts")
    return target if n_max is None else np.minimum(target, n_max)


def _vote_stop(answers, finished: np.ndarray, n_active: int) -> bool:
    if answers is None or not n_active:
        return False
    return early_stop([a for a, f in zip(answers, finished, strict=True) if f], n_active)


def simulate(setup: Setup, gamma: int, lengths: Sequence[int], n_max: int | None = None,
             answers: Sequence[str | None] | None = None) -> SimResult:
    """Expected-value simulation: decode ``len(lengths)`` rows of the given lengths (truncated at
    ``n_max``) with draft length ``gamma``. With ``answers`` (one per row), stop as soon as the
    majority-vote early-stop rule of ``answers.early_stop`` holds among the finished rows.

    All active rows advance by the same ``tau`` per iteration, so the batch only changes when a
    row finishes; the iterations between two finishes are costed in one vectorised step."""
    target = _targets(lengths, n_max)
    rows, eps = len(target), 1e-9
    step = setup.acceptance.tau(gamma)
    finish = np.full(rows, np.inf)
    t, done, it, ctx = setup.prefill_s(rows, gamma), 1.0, 0, float(setup.prompt)
    while True:
        active = target > done + eps
        finish[~active & np.isinf(finish)] = t
        n_active = int(active.sum())
        if _vote_stop(answers, ~active, n_active):
            return SimResult(t, it, tuple(finish), True)
        if not n_active:
            return SimResult(t, it, tuple(finish))
        k = max(1, int(np.ceil((target[active].min() - done) / step - eps)))
        w = setup.width(gamma, n_active)
        grow = w if setup.holes else step
        c = ctx + grow * np.arange(k)
        t += float(np.sum(setup.iteration_s(n_active, gamma, c, w)))
        done, it, ctx = done + k * step, it + k, ctx + k * grow


def simulate_stochastic(setup: Setup, gamma: int, lengths: Sequence[int],
                        n_max: int | None = None, answers: Sequence[str | None] | None = None,
                        *, seed: int | np.random.Generator = 0) -> SimResult:
    """One seeded random run: per row and iteration ``(proposed, accepted)`` is drawn from
    ``setup.acceptance`` (``AcceptanceTable.draw``; proposals limited to the row's remaining
    tokens), the forward verifies ``1 + max proposed`` tokens per row, and rows leave the batch
    when they reach their length. ``setup.memory`` stops decoding before the cache overflows."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    target = _targets(lengths, n_max).astype(np.int64)
    rows = len(target)
    finish = np.full(rows, np.inf)
    done = np.ones(rows, dtype=np.int64)
    t, it, ctx = setup.prefill_s(rows, gamma), 0, setup.prompt
    mem = setup.memory
    if mem is not None and mem.max_tokens(rows, setup.prompt, 0) < 0:
        raise ValueError("the prompt alone does not fit the memory cap")
    while True:
        active = done < target
        finish[~active & np.isinf(finish)] = t
        idx = np.flatnonzero(active)
        if _vote_stop(answers, ~active, len(idx)):
            return SimResult(t, it, tuple(finish), True, tuple(done.tolist()))
        if not len(idx):
            return SimResult(t, it, tuple(finish), tokens=tuple(done.tolist()))
        room = target[idx] - done[idx] - 1
        prop, acc = setup.acceptance.draw(gamma, len(idx), rng)
        prop = np.minimum(prop, room)
        acc = np.minimum(acc, prop)
        width = 1 + int(prop.max())
        grow = width if setup.holes else 1 + int(acc.max())
        if mem is not None and mem.weight_bytes + len(idx) * (ctx + width) \
                * mem.kv_bytes_per_token > mem.capacity_bytes:
            finish[idx] = t
            return SimResult(t, it, tuple(finish), tokens=tuple(done.tolist()),
                             memory_stopped=True)
        t += float(setup.iteration_s(len(idx), gamma, ctx, width))
        done[idx] += 1 + acc
        it, ctx = it + 1, ctx + grow


def expected_latency(setup: Setup, pool: SamplePool, rows: int, gamma: int, n_max: int, *,
                     early: bool = False, draws: int = 64, seed: int = 0,
                     stochastic: bool = False) -> float:
    """Mean simulated latency over ``draws`` seeded draws of a random problem of ``pool`` and
    ``rows`` of its samples (lengths, and answers for the early stop); ``stochastic`` uses
    ``simulate_stochastic`` (also seeded) instead of the expected-value model."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        p = pool.problems[rng.integers(len(pool.problems))]
        pick = rng.permutation(len(p.samples))[:rows]
        ss = [p.samples[i] for i in pick]
        args = (setup, gamma, [s.n_tokens for s in ss], n_max,
                [s.answer if s.n_tokens <= n_max else None for s in ss] if early else None)
        res = simulate_stochastic(*args, seed=rng) if stochastic else simulate(*args)
        out.append(res.latency_s)
    return float(np.mean(out))
