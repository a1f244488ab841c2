"""Latency model: target forward time, drafting cost, and tokens per speculative iteration.

Units: seconds, tokens. ``rows`` = batch rows (branches) in the forward, ``tokens`` = new tokens
per row in it (1 when decoding, gamma + 1 when verifying, the prompt length for prefill),
``context`` = tokens already in the KV cache per row. The surrogate (tts.md section 5) is

    T(rows, tokens, context) = a0 + a1 * M + a2 * rows * context + a3 * max(0, M - knee)
                               + a4 * rows + a5 * min(M, knee),      M = rows * tokens

with a0..a5 >= 0 fitted by non-negative least squares, the knee chosen from a candidate grid by
the smallest residual. On an accelerator: flat in ``M`` while memory-bound (a1 small), steeper
beyond the knee once compute-bound (a3). On a CPU the shape is the reverse, concave: a small model
is compute-bound from M = 1 and small matrix products cost more per token than the large ones of
a prefill (a5: extra slope below the knee). ``a4`` is per-row host work of a decode loop
(sampling, verification, bookkeeping); it is 0 for pure forward timings. On a CPU host, fit the
model on the decode loop's own step times, prefill included (``calibrate.time_decode``):
forward-only timings miss the per-step host work, and decode-only timings the prefill.

Speculative acceptance (``AcceptanceTable``): with per-position survival
``s_j = P(draft position j accepted | at least j drafts requested)`` the expected tokens per
verify step are ``tau(gamma) = 1 + sum_{j<=gamma} s_j`` (Leviathan et al.:
``(1 - alpha^(gamma+1)) / (1 - alpha)`` for i.i.d. acceptance ``alpha``). A drafter may propose
fewer tokens than requested (prompt lookup without a match): with ``p_j = P(position j proposed |
requested)``, a batch of ``B`` rows verifies ``1 + max_r proposed_r`` tokens per row, of expected
value ``1 + sum_{j<=gamma} (1 - (1 - p_j)^B)`` (rows independent).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
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
                                        np.maximum(0.0, bs - knee), rows,
                                        np.minimum(bs, knee)), axis=-1)


@dataclass(frozen=True)
class CostModel:
    """Fitted forward-time surrogate (see the module docstring). ``rel_residual`` is the median
    relative error of the fit on its timings; ``timings`` keeps the raw table for refits."""

    a0: float
    a1: float
    a2: float
    a3: float = 0.0
    knee: float = 0.0
    a4: float = 0.0
    a5: float = 0.0
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
                         + self.a3 * max(0.0, bs - self.knee) + self.a4 * rows
                         + self.a5 * min(bs, self.knee))
        t = _features(rows, tokens, context, self.knee) @ np.array(
            [self.a0, self.a1, self.a2, self.a3, self.a4, self.a5])
        t = np.where(np.asarray(rows) > 0, t, 0.0)
        return float(t) if np.ndim(t) == 0 else t

    def prefill_s(self, rows: int, prompt: int) -> float:
        """Seconds to prefill ``rows`` copies of a ``prompt``-token prompt."""
        return self.forward_s(rows, prompt, 0)

    @classmethod
    def fit(cls, timings: Sequence[Timing], knees: Sequence[float] | None = None,
            meta: dict | None = None, per_row: bool = False) -> CostModel:
        """NNLS fit on ``timings`` (relative-error weighted); ``knees`` defaults to every
        distinct ``rows * tokens`` in the table plus "no knee" (infinity); ``per_row`` also fits
        the per-row term ``a4`` and the concave term ``a5`` (CPU decode-loop timings)."""
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
                x[:, 3] = x[:, 5] = 0.0
            if not per_row:
                x[:, 4] = x[:, 5] = 0.0
            coef, _ = nnls(x * w[:, None], y * w)
            rel = np.abs(x @ coef - y) / y
            if best is None or rel.mean() < best[0] - 1e-12:
                best = (rel.mean(), float(np.median(rel)), coef, knee)
        _, med, coef, knee = best
        if not np.isfinite(knee):
            knee, coef[3], coef[5] = 0.0, 0.0, 0.0
        a0, a1, a2, a3, a4, a5 = map(float, coef)
        return cls(a0, a1, a2, a3, knee=float(knee), a4=a4, a5=a5, rel_residual=med,
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
    """Cost of drafting ``gamma`` tokens for ``rows`` rows in one speculative iteration over
    ``context`` tokens of history per row.

    ``kind="lookup"`` (prompt lookup, on the host): ``rows * (per_token_s * gamma + per_ctx_s *
    context)`` (the n-gram search scans the history).
    ``kind="model"`` (``speculative.ModelDrafter``, cost model ``model``): the drafter re-encodes
    each row's history (one forward of ``context`` tokens) and then takes ``gamma - 1`` one-token
    steps: ``model(rows, context, 0) + (gamma - 1) * model(rows, 1, context)``.
    """

    kind: str = "lookup"
    per_token_s: float = 0.0
    model: CostModel | None = None
    per_ctx_s: float = 0.0

    def iteration_s(self, rows: int, gamma: int, context: float) -> float:
        if gamma == 0 or rows == 0:
            return 0.0
        if self.kind == "lookup":
            return rows * (self.per_token_s * gamma + self.per_ctx_s * context)
        if self.kind == "model" and self.model is not None:
            return (self.model.forward_s(rows, np.maximum(context, 1), 0)
                    + (gamma - 1) * self.model.forward_s(rows, 1, context))
        raise ValueError(f"unknown draft cost kind {self.kind!r} (or no draft model cost)")

    def prefill_s(self, rows: int, prompt: int) -> float:
        """0: the drafters keep no cache, their first iteration encodes the prompt."""
        return 0.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "per_token_s": self.per_token_s, "per_ctx_s": self.per_ctx_s,
                "model": None if self.model is None else self.model.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> DraftCost:
        model = CostModel.from_dict(d["model"]) if d.get("model") else None
        return cls(d["kind"], d.get("per_token_s", 0.0), model, d.get("per_ctx_s", 0.0))


def tau(gamma: int, alpha: float) -> float:
    """Expected tokens per verify step with i.i.d. per-token acceptance ``alpha`` (Leviathan et
    al.): accepted drafts plus the target's own token, ``(1 - alpha^(g+1)) / (1 - alpha)``."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return float((1.0 - alpha ** (gamma + 1)) / (1.0 - alpha))


@dataclass(frozen=True)
class AcceptanceTable:
    """Empirical acceptance of a drafter (module docstring).

    ``survival[j-1]`` = P(draft position j accepted | >= j requested); ``proposal[j-1]`` =
    P(position j proposed | >= j requested) (empty: always proposed); ``samples`` = logged
    ``(proposed, accepted)`` of steps that requested ``len(survival)`` or more drafts, for
    stochastic simulation. Positions past the table count as never proposed or accepted.
    """

    survival: tuple[float, ...]
    proposal: tuple[float, ...] = ()
    samples: tuple[tuple[int, int], ...] = field(default=(), repr=False)

    @cached_property
    def _samples(self) -> np.ndarray:
        return np.asarray(self.samples, dtype=np.int64).reshape(-1, 2)

    def tau(self, gamma: int) -> float:
        """Expected tokens per verify step at draft length ``gamma``."""
        return 1.0 + float(sum(self.survival[:gamma]))

    def _proposal(self, gamma: int) -> np.ndarray:
        p = np.asarray(self.proposal if self.proposal else [1.0] * len(self.survival))
        return np.concatenate([p, np.zeros(max(0, gamma - len(p)))])[:gamma]

    def width(self, gamma: int, rows: int = 1) -> float:
        """Expected tokens per row of a verify forward of ``rows`` rows: 1 + E[max proposed].
        Where the table is shorter than ``gamma`` the drafts of a model drafter still occupy
        the forward (``proposal`` empty: ``gamma + 1``)."""
        if gamma <= 0:
            return 1.0
        if not self.proposal:
            return float(gamma + 1)
        return 1.0 + float(np.sum(1.0 - (1.0 - self._proposal(gamma)) ** max(rows, 1)))

    def draw(self, gamma: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                            np.ndarray]:
        """``size`` random ``(proposed, accepted)`` per-row outcomes of a verify step at draft
        length ``gamma``: resampled from ``samples`` (truncated to ``gamma``: a drafter asked for
        fewer tokens proposes a prefix) or, without samples, by inverse CDF from ``survival``
        and ``proposal`` (independent uniforms; accepted <= proposed)."""
        if gamma <= 0:
            z = np.zeros(size, dtype=np.int64)
            return z, z.copy()
        if self.samples:
            pick = self._samples[rng.integers(len(self.samples), size=size)]
            return np.minimum(pick[:, 0], gamma), np.minimum(pick[:, 1], gamma)
        surv = np.concatenate([self.survival, np.zeros(gamma)])[:gamma]
        acc = (surv[None, :] > rng.random(size)[:, None]).sum(1)
        if not self.proposal:
            return np.full(size, gamma, dtype=np.int64), acc
        prop = (self._proposal(gamma)[None, :] > rng.random(size)[:, None]).sum(1)
        return np.maximum(prop, acc), acc

    @classmethod
    def from_alpha(cls, alpha: float, max_gamma: int = 16) -> AcceptanceTable:
        return cls(tuple(alpha ** j for j in range(1, max_gamma + 1)))

    @classmethod
    def from_counts(cls, steps: Sequence[Sequence[int]]) -> AcceptanceTable:
        """``steps``: ``(requested, proposed, accepted)`` per row and verify step (as logged by
        ``speculative.generate``), or ``(proposed, accepted)`` (requested = proposed)."""
        arr = np.array([tuple(x) if len(x) == 3 else (x[0], *x) for x in steps],
                       dtype=np.int64).reshape(-1, 3)
        req, prop, acc = arr.T
        if (acc > prop).any() or (prop > req).any() or (arr < 0).any():
            raise ValueError("need 0 <= accepted <= proposed <= requested in every step")
        g_max = int(req.max()) if len(arr) else 0
        surv, props, s, q = [], [], 1.0, 1.0
        for j in range(1, g_max + 1):
            reached = (req >= j) & (acc >= j - 1)
            if not reached.any():
                break
            s *= float((acc[reached] >= j).mean())
            surv.append(s)
            offered = (req >= j) & (prop >= j - 1)
            q *= float((prop[offered] >= j).mean())
            props.append(q)
        proposal = () if all(x == 1.0 for x in props) else tuple(props)
        full = (req >= len(surv)) if surv else np.zeros(len(arr), bool)
        return cls(tuple(surv), proposal, tuple(zip(prop[full].tolist(), acc[full].tolist(),
                                                    strict=True)))

    def to_dict(self) -> dict:
        return {"survival": list(self.survival), "proposal": list(self.proposal),
                "samples": [list(x) for x in self.samples]}

    @classmethod
    def from_dict(cls, d: dict) -> AcceptanceTable:
        return cls(tuple(d["survival"]), tuple(d.get("proposal", ())),
                   tuple(tuple(x) for x in d.get("samples", ())))


@dataclass(frozen=True)
class CachedDraftCost:
    """Drafting cost of ``speculative.CachedModelDrafter`` (the ``DraftCost`` interface of the
    simulator): the prompt prefill on the draft ``model``, then per iteration a forward of the 1
    or 2 tokens a row gained (2 when all ``gamma`` drafts of some row were accepted: probability
    ``1 - (1 - s_gamma)^rows`` from the acceptance table) and ``gamma - 1`` one-token steps."""

    model: CostModel
    all_accepted: float = 0.0

    def iteration_s(self, rows: int, gamma: int, context):
        if gamma <= 0:
            return 0.0
        fed = 2.0 - (1.0 - self.all_accepted) ** max(rows, 1)
        return (self.model.forward_s(rows, fed, context)
                + (gamma - 1) * self.model.forward_s(rows, 1, context))

    def prefill_s(self, rows: int, prompt: int) -> float:
        return self.model.prefill_s(rows, prompt + 1)
