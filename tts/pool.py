"""Sample pool: per-problem pre-sampled solutions, and accuracy of (method, B, n_max) from it.

Speculative decoding is lossless, so the draft length changes speed only: accuracy depends on the
aggregation method, the number of branches B and the per-branch token budget ``n_max``. A branch
longer than ``n_max`` tokens is truncated and abstains; an empty vote counts as wrong. B branches
are B draws without replacement from a problem's K samples; ties are credited by their expected
value over the tie rule of ``answers`` (1 / number of tied answers), so the accuracy is exact for
exact enumeration and unbiased for Monte Carlo.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .answers import METHODS, confidence


@dataclass(frozen=True)
class Sample:
    """One pre-sampled solution: normalised ``answer`` (``None``: none found), ``correct``,
    length ``n_tokens`` (generated tokens, EOS included), ``logprob`` (mean per-token log-prob at
    the sampling temperature) and an optional reward-model ``rm_score``."""

    answer: str | None
    correct: bool
    n_tokens: int
    logprob: float = 0.0
    rm_score: float | None = None


@dataclass(frozen=True)
class Problem:
    """A problem's id, reference answer and samples (in sampling order)."""

    id: str
    reference: str
    samples: tuple[Sample, ...]
    question: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> Problem:
        """The inverse of ``dataclasses.asdict`` (samples as dicts)."""
        return cls(**{**d, "samples": tuple(Sample(**x) for x in d["samples"])})


@dataclass(frozen=True)
class SamplePool:
    """The problems of a pool, plus free-form ``meta`` (model, temperature, prompt)."""

    problems: tuple[Problem, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def k(self) -> int:
        """Samples per problem (the smallest count, when they differ)."""
        return min(len(p.samples) for p in self.problems)

    def lengths(self) -> np.ndarray:
        """All sample lengths in tokens (flat, int64)."""
        return np.array([s.n_tokens for p in self.problems for s in p.samples], dtype=np.int64)

    def save_jsonl(self, path: str | Path) -> None:
        """One JSON line of ``meta`` (key ``"meta"``), then one line per problem."""
        with open(path, "w") as fh:
            fh.write(json.dumps({"meta": self.meta}) + "\n")
            for p in self.problems:
                d = asdict(p)
                fh.write(json.dumps(d) + "\n")

    @classmethod
    def load_jsonl(cls, path: str | Path) -> SamplePool:
        meta, problems = {}, []
        with open(path) as fh:
            for line in fh:
                d = json.loads(line)
                if "meta" in d:
                    meta = d["meta"]
                    continue
                problems.append(Problem.from_dict(d))
        return cls(tuple(problems), meta)


def _weights(p: Problem, method: str) -> np.ndarray:
    kind = METHODS[method][0]
    if kind == "one":
        return np.ones(len(p.samples))
    if kind == "confidence":
        return np.array([confidence(s.logprob) for s in p.samples])
    if any(s.rm_score is None for s in p.samples):
        raise ValueError(f"method {method!r} needs rm_score on every sample of problem {p.id}")
    return np.array([s.rm_score for s in p.samples], dtype=np.float64)


def _subset_credit(idx: np.ndarray, cls: np.ndarray, w: np.ndarray, correct_cls: np.ndarray,
                   agg: str) -> np.ndarray:
    """Expected credit of each row of branch subsets ``idx`` (draws, B): class scores by sum or
    max of weights (class -1 abstains); credit = [correct in argmax set] / |argmax set|."""
    n_cls = int(cls.max()) + 1 if cls.size and cls.max() >= 0 else 0
    if n_cls == 0:
        return np.zeros(len(idx))
    c, wt = cls[idx], w[idx]
    score = np.full((len(idx), n_cls), -np.inf)
    rows = np.broadcast_to(np.arange(len(idx))[:, None], idx.shape)
    ok = c >= 0
    if agg == "sum":
        score[:] = 0.0
        np.add.at(score, (rows[ok], c[ok]), wt[ok])
        present = np.zeros_like(score, dtype=bool)
        present[rows[ok], c[ok]] = True
        score[~present] = -np.inf
    else:
        np.maximum.at(score, (rows[ok], c[ok]), wt[ok])
    best = score.max(axis=1, keepdims=True)
    top = (score == best) & np.isfinite(best)
    n_top = top.sum(axis=1)
    hit = (top & correct_cls[None, :]).sum(axis=1)
    return np.where(n_top > 0, hit / np.maximum(n_top, 1), 0.0)


def problem_accuracy(p: Problem, method: str, b: int, n_max: float, *, exact_limit: int = 20000,
                     draws: int = 2000, seed: int = 0) -> float:
    """Expected correctness of ``method`` over B of the problem's samples with budget ``n_max``:
    exact over all C(K, B) subsets when there are at most ``exact_limit``, else ``draws`` seeded
    Monte Carlo subsets."""
    k = len(p.samples)
    if not 1 <= b <= k:
        raise ValueError(f"B={b} outside 1..{k} (samples of problem {p.id})")
    keys: dict[str, int] = {}
    cls = np.array([keys.setdefault(s.answer, len(keys))
                    if s.answer is not None and s.n_tokens <= n_max else -1
                    for s in p.samples], dtype=np.int64)
    correct_cls = np.zeros(len(keys), dtype=bool)
    for s, c in zip(p.samples, cls, strict=True):
        if c >= 0:
            correct_cls[c] = s.correct
    if not correct_cls.any():
        return 0.0
    if math.comb(k, b) <= exact_limit:
        idx = _combinations(k, b)
    else:
        rng = np.random.default_rng(seed)
        idx = np.argsort(rng.random((draws, k)), axis=1)[:, :b]
    credit = _subset_credit(idx, cls, _weights(p, method), correct_cls, METHODS[method][1])
    return float(credit.mean())


@lru_cache(maxsize=64)
def _combinations(k: int, b: int) -> np.ndarray:
    from itertools import combinations

    return np.array(list(combinations(range(k), b)), dtype=np.int64).reshape(-1, b)


def accuracy(pool: SamplePool, method: str, b: int, n_max: float, **kw) -> float:
    """Mean over problems of ``problem_accuracy`` (same keyword options)."""
    return float(np.mean([problem_accuracy(p, method, b, n_max, **kw) for p in pool.problems]))


class AccuracyTable:
    """Memoised ``accuracy(pool, method, B, n)`` on a grid of truncation lengths.

    Accuracy only changes at sample lengths, so ``n`` snaps down to the nearest grid length: every
    distinct sample length (``grid=None``, exact) or at most ``grid`` length quantiles (cheaper,
    and conservative: never more tokens than ``n``). Majority voting is not monotone in the
    truncation length (a late wrong branch can flip a vote), so ``best`` lets a plan truncate
    shorter than its budget.
    """

    def __init__(self, pool: SamplePool, grid: int | None = None, **kw) -> None:
        self.pool, self.kw = pool, kw
        lengths = np.unique(pool.lengths())
        if grid is not None and len(lengths) > grid:
            lengths = np.unique(np.quantile(lengths, np.linspace(0, 1, grid),
                                            method="inverted_cdf"))
        self.lengths = lengths
        self._cache: dict[tuple, float] = {}

    def _index(self, n_max: float) -> int:
        return int(np.searchsorted(self.lengths, n_max, side="right")) - 1

    def _at(self, method: str, b: int, i: int) -> float:
        key = (method, b, i)
        if key not in self._cache:
            self._cache[key] = accuracy(self.pool, method, b, int(self.lengths[i]), **self.kw)
        return self._cache[key]

    def __call__(self, method: str, b: int, n_max: float) -> float:
        """Accuracy with every branch truncated at ``n_max`` tokens (snapped down)."""
        i = self._index(n_max)
        return 0.0 if i < 0 or b > self.pool.k else self._at(method, b, i)

    def best(self, method: str, b: int, n_max: float) -> tuple[int, float]:
        """``(n, accuracy)``: the truncation length ``n <= n_max`` with the highest accuracy, the
        shortest among equals; ``(0, 0.0)`` when no sample fits or B exceeds the pool's K."""
        i = self._index(n_max)
        if i < 0 or b > self.pool.k:
            return 0, 0.0
        accs = [self._at(method, b, j) for j in range(i + 1)]
        j = int(np.argmax(accs))
        return int(self.lengths[j]), accs[j]
