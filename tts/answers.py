"""Final-answer extraction, normalisation and voting (aggregation of B branches).

Conventions: an answer is a normalised string or ``None`` (no answer found: an abstention, never
a vote). Numbers normalise to an exact canonical form (``"1,000"``, ``"1000.0"`` and ``"$1000"``
are ``"1000"``; ``"0.5"``, ``"1/2"`` and ``"\\frac{1}{2}"`` are ``"1/2"``); anything else is
lower-cased with spaces and ``\\text{}``/``$``/trailing dots removed; one number with only
non-digit text around it (units, quotes, LaTeX brackets) is that number. Ties in every vote go to
the tied answer seen first (so over a random branch order, to each tied answer with equal
probability).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*([^\n]+)", re.IGNORECASE)


def extract_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; else ``None``."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
        j += 1
    return None


def extract_gsm(text: str) -> str | None:
    """The text after the last GSM8K ``####`` marker, up to the end of its line; else ``None``."""
    k = text.rfind("####")
    if k < 0:
        return None
    line = text[k + 4:].strip().split("\n", 1)[0].strip()
    return line or None


def extract_answer(text: str, *, last_number: bool = True) -> str | None:
    """Normalised final answer of a solution: ``\\boxed{}``, then ``####``, then "answer is X",
    then (``last_number``) the last number in the text; ``None`` when nothing matches."""
    for found in (extract_boxed(text), extract_gsm(text)):
        if found is not None:
            return normalize_answer(found)
    m = list(_ANSWER_IS.finditer(text))
    if m:
        num = _NUMBER.search(m[-1].group(1))
        return normalize_answer(num.group(0) if num else m[-1].group(1))
    if last_number:
        nums = _NUMBER.findall(text)
        if nums:
            return normalize_answer(nums[-1])
    return None


def _as_number(s: str) -> Fraction | None:
    s = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"(\1)/(\2)", s)
    s = s.replace(",", "").replace("(", "").replace(")", "")
    s = s.rstrip("%")
    try:
        if "/" in s:
            num, den = s.split("/")
            return Fraction(num) / Fraction(den)
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(s: str | None) -> str | None:
    """Canonical form of an extracted answer (see the module docstring); ``None`` stays ``None``."""
    if s is None:
        return None
    t = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    t = t.replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\left", "")
    t = t.replace("\\right", "").replace("\\%", "%").strip().rstrip(".").strip()
    t = re.sub(r"\s+", "", t)
    if not t:
        return None
    num = _as_number(t)
    if num is None:
        m = re.fullmatch(r"[^\d\-.]*(-?[\d,]*\.?\d+)[^\d]*", t.lower())
        num = _as_number(m.group(1)) if m else None
    if num is not None:
        return str(num.numerator) if num.denominator == 1 else f"{num.numerator}/{num.denominator}"
    return t.lower()


def answers_equal(a: str | None, b: str | None) -> bool:
    """True when both normalise to the same non-empty answer."""
    na, nb = normalize_answer(a), normalize_answer(b)
    return na is not None and na == nb


# -- voting --------------------------------------------------------------------------------------


def _scores(answers: Sequence[str | None], weights: Sequence[float], agg: str) -> dict:
    scores: dict[str, float] = {}
    for a, w in zip(answers, weights, strict=True):
        if a is None:
            continue
        scores[a] = max(scores.get(a, -np.inf), w) if agg == "max" else scores.get(a, 0.0) + w
    return scores


def _winner(scores: dict) -> str | None:
    """Highest score; ties to the first inserted (dicts keep first-appearance order)."""
    best, best_s = None, -np.inf
    for a, s in scores.items():
        if s > best_s:
            best, best_s = a, s
    return best


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Most frequent answer (abstentions ignored); ties to the tied answer seen first."""
    return _winner(_scores(answers, [1.0] * len(answers), "sum"))


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """Answer with the largest summed weight (confidence ``exp(mean log-prob)``, or a reward
    score: the search-and-learn ``weighted``); ties to the tied answer seen first."""
    return _winner(_scores(answers, weights, "sum"))


def rm_argmax(answers: Sequence[str | None], scores: Sequence[float]) -> str | None:
    """Best-of-N: the answer of the highest-scored branch with an answer; ties to the first."""
    return _winner(_scores(answers, scores, "max"))


def confidence(mean_logprob: float) -> float:
    """Branch confidence weight: ``exp(mean log-prob per token)``, in (0, 1]."""
    return float(np.exp(mean_logprob))


METHODS: dict[str, tuple[str, str]] = {
    "majority": ("one", "sum"),
    "weighted": ("confidence", "sum"),
    "rm_argmax": ("rm", "max"),
    "rm_weighted": ("rm", "sum"),
}
"""Aggregation method -> (branch weight: 1, confidence or reward score; per-answer sum or max)."""


def aggregate(method: str, answers: Sequence[str | None], *, logprobs=None, rm_scores=None):
    """Aggregate branch answers with ``method`` (a key of ``METHODS``)."""
    weight, agg = METHODS[method]
    if weight == "one":
        w = [1.0] * len(answers)
    elif weight == "confidence":
        w = [confidence(x) for x in logprobs]
    else:
        w = list(rm_scores)
    return _winner(_scores(answers, w, agg))


def early_stop(answers: Sequence[str | None], n_unfinished: int) -> bool:
    """Majority-vote early stop: True when the leader's count exceeds the runner-up's by more than
    ``n_unfinished`` (the remaining branches cannot change the winner, whatever the tie rule)."""
    counts = sorted(_scores(answers, [1.0] * len(answers), "sum").values(), reverse=True)
    if not counts:
        return n_unfinished == 0
    runner_up = counts[1] if len(counts) > 1 else 0.0
    return counts[0] - runner_up > n_unfinished
