"""Latency model: target forward time, drafting cost, and tokens per speculative iteration.

Units: seconds, tokens. ``rows`` = batch rows (branches) in the forward, ``tokens`` = new tokens
per row in it (1 when decoding, gamma + 1 when verifying, the prompt length for prefill),
``context`` = tokens already in the KV cache per row. The surrogate (tts.md section 5) is

    T(rows, tokens, context) = a0 + a1 * rows * tokens + a2 * rows * context
                               + a3 * max(0, rows * tokens - knee)

with a0..a3 >= 0 fitted by non-negative least squares, the knee chosen from a candidate grid by
the smallest residual. Flat in ``rows * tokens`` while memory-bound (a1 small), linear beyond the
knee once compute-bound.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Timing:
    """One measured forward: ``rows`` x ``tokens`` new tokens over ``context`` cached, in
    ``seconds`` (median of repeats)."""

    rows: int
    tokens: int
    context: int
    seconds: float


def _features(rows, tokens, context, knee: float) -> np.ndarray:
    rows, tokens, context = (np.asarray(x, dtype=np.float64) for x in (rows, tokens, context))
    bs = rows * tokens
    return np.stack(np.broadcast_arrays(np.ones_like(bs), bs, rows * context,
                                        np.maximum(0.0, bs - knee)), axis=-1)


@dataclass(frozen=True)
class CostModel:
    """Fitted forward-time surrogate (see the module docstring). ``rel_residual`` is the median
    relative error of the fit on its timings; ``timings`` keeps the raw table for refits."""

    a0: float
    a1: float
    a2: float
    a3: float = 0.0
    knee: float = 0.0
    rel_residual: float = 0.0
    timings: tuple[Timing, ...] = field(default=(), repr=False)
    meta: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def forward_s(self, rows, tokens, context):
        """Seconds of one forward (broadcasts over array arguments; 0 rows cost nothing)."""
        if all(np.ndim(x) == 0 for x in (rows, tokens, context)):
            if rows <= 0:
                return 0.0
            bs = rows * tokens
            return float(self.a0 + self.a1 * bs + self.a2 * rows * context
                         + self.a3 * max(0.0, bs - self.knee))
        t = _features(rows, tokens, context, self.knee) @ np.array(
            [self.a0, self.a1, self.a2, self.a3])
        t = np.where(np.asarray(rows) > 0, t, 0.0)
        return float(t) if np.ndim(t) == 0 else t

    def prefill_s(self, rows: int, prompt: int) -> float:
        """Seconds to prefill ``rows`` copies of a ``prompt``-token prompt."""
        return self.forward_s(rows, prompt, 0)

    @classmethod
    def fit(cls, timings: Sequence[Timing], knees: Sequence[float] | None = None,
            meta: dict | None = None) -> CostModel:
        """NNLS fit on ``timings`` (relative-error weighted); ``knees`` defaults to every
        distinct ``rows * tokens`` in the table plus "no knee" (infinity)."""
        from scipy.optimize import nnls

        t = np.array([[x.rows, x.tokens, x.context, x.seconds] for x in timings], dtype=float)
        if len(t) < 4:
            raise ValueError(f"need at least 4 timings to fit, got {len(t)}")
        y = t[:, 3]
        w = 1.0 / np.maximum(y, 1e-12)
        cands = sorted(set(np.unique(t[:, 0] * t[:, 1]).tolist()) | {np.inf}) \
            if knees is None else list(knees)
        best = None
        for knee in cands:
            x = _features(t[:, 0], t[:, 1], t[:, 2], knee)
            if not np.isfinite(knee):
                x[:, 3] = 0.0
            coef, _ = nnls(x * w[:, None], y * w)
            rel = np.abs(x @ coef - y) / y
            if best is None or rel.mean() < best[0] - 1e-12:
                best = (rel.mean(), float(np.median(rel)), coef, knee)
        _, med, coef, knee = best
        if not np.isfinite(knee):
            knee, coef[3] = 0.0, 0.0
        return cls(*map(float, coef), knee=float(knee), rel_residual=med,
                   timings=tuple(timings), meta=dict(meta or {}))

    @classmethod
    def roofline(cls, *, overhead_s: float, param_bytes: float, kv_bytes_per_token: float,
                 flops_per_token: float, bandwidth: float, flops: float) -> CostModel:
        """Surrogate of ``t0 + max(memory, compute)``: flat at ``param_bytes / bandwidth`` plus
        KV reads, linear in rows * tokens past the knee where compute time equals memory time."""
        mem = param_bytes / bandwidth
        per_tok = flops_per_token / flops
        return cls(a0=overhead_s + mem, a1=0.0, a2=kv_bytes_per_token / bandwidth,
                   a3=per_tok, knee=mem / per_tok)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timings"] = [asdict(x) for x in self.timings]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CostModel:
        d = dict(d)
        d["timings"] = tuple(Timing(**x) for x in d.get("timings", ()))
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class DraftCost:
    """Cost of drafting ``gamma`` tokens for ``rows`` rows in one speculative iteration.

    ``kind="lookup"`` (prompt lookup, on the host): ``per_token_s * rows * gamma``.
    ``kind="model"`` (a separate draft model with cost model ``model``): ``gamma`` draft forwards
    of 1 token per row over the current context (the catch-up of accepted tokens rides on the
    first of them, as it does in the executors).
    """

    kind: str = "lookup"
    per_token_s: float = 0.0
    model: CostModel | None = None

    def iteration_s(self, rows: int, gamma: int, context: float) -> float:
        if gamma == 0 or rows == 0:
            return 0.0
        if self.kind == "lookup":
            return self.per_token_s * rows * gamma
        if self.kind == "model" and self.model is not None:
            return gamma * self.model.forward_s(rows, 1, context)
        raise ValueError(f"unknown draft cost kind {self.kind!r} (or no draft model cost)")

    def prefill_s(self, rows: int, prompt: int) -> float:
        return self.model.prefill_s(rows, prompt) if self.kind == "model" and self.model else 0.0


def tau(gamma: int, alpha: float) -> float:
    """Expected tokens per verify step with i.i.d. per-token acceptance ``alpha`` (Leviathan et
    al.): accepted drafts plus the target's own token, ``(1 - alpha^(g+1)) / (1 - alpha)``."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return float((1.0 - alpha ** (gamma + 1)) / (1.0 - alpha))


@dataclass(frozen=True)
class AcceptanceTable:
    """Empirical acceptance: ``survival[j-1]`` = P(draft position j is accepted), j = 1..len.

    Estimated from logged ``(proposed, accepted)`` counts of verify steps by the product of
    per-position conditional acceptance rates (a step that proposed fewer than j tokens says
    nothing about position j). Expected tokens per verify step: ``1 + sum_{j<=gamma} survival``.
    """

    survival: tuple[float, ...]

    def tau(self, gamma: int) -> float:
        """Expected tokens per verify step at draft length ``gamma``; positions past the table
        count as never accepted (conservative)."""
        return 1.0 + float(sum(self.survival[:gamma]))

    @classmethod
    def from_alpha(cls, alpha: float, max_gamma: int = 16) -> AcceptanceTable:
        return cls(tuple(alpha ** j for j in range(1, max_gamma + 1)))

    @classmethod
    def from_counts(cls, steps: Sequence[tuple[int, int]]) -> AcceptanceTable:
        """``steps``: ``(proposed, accepted)`` per row and verify step, accepted <= proposed."""
        arr = np.array(list(steps), dtype=np.int64).reshape(-1, 2)
        if (arr[:, 1] > arr[:, 0]).any() or (arr < 0).any():
            raise ValueError("need 0 <= accepted <= proposed in every step")
        g_max = int(arr[:, 0].max()) if len(arr) else 0
        surv, s = [], 1.0
        for j in range(1, g_max + 1):
            reached = (arr[:, 0] >= j) & (arr[:, 1] >= j - 1)
            if not reached.any():
                break
            s *= float((arr[reached, 1] >= j).mean())
            surv.append(s)
        return cls(tuple(surv))

    def to_dict(self) -> dict:
        return {"survival": list(self.survival)}

    @classmethod
    def from_dict(cls, d: dict) -> AcceptanceTable:
        return cls(tuple(d["survival"]))
