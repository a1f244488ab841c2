"""Models and text for restructuring, taken from ``lowbit.integrations.data`` (one loader, one
documented Wikipedia split shared with the PTQ study: article to ``test`` if sha256(title) mod
10 is 0, ``validation`` if 1, else ``train``).

This module only adds what restructuring needs on top: a model *directory* (``resolve_model``)
for ``from_pretrained`` / ``save_pretrained`` round trips, a whole split tokenized once and cached
(``wiki_tokens``, no special tokens, as ``integrations.data.token_segments``), random windows for
calibration and fine-tuning, and consecutive windows for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import torch

from lowbit.integrations.data import SMOLLM2, SPLITS, cache_dir, model_path, wiki_text

__all__ = ["SMOLLM2", "SPLITS", "consecutive_windows", "load_tokenizer", "random_windows",
           "resolve_model", "wiki_tokens"]

_SPLIT_TAG = "sha256mod10"
"""Names the split rule in token-cache file names (caches of another rule are never reused)."""


def resolve_model(name_or_path: str) -> pathlib.Path:
    """The local HF directory of ``name_or_path`` (``integrations.data.model_path``: the
    ``smollm2-135m`` alias is converted from its GGUF once and cached)."""
    path = pathlib.Path(model_path(name_or_path))
    if not (path / "config.json").is_file():
        raise OSError(f"{name_or_path!r} is not a Hugging Face model directory")
    return path


def load_tokenizer(name_or_path: str):
    """The tokenizer saved with the model, or None if there is none."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(path)


def wiki_tokens(tokenizer, split: str = "train") -> torch.Tensor:
    """``integrations.data.wiki_text(split)`` tokenized once without special tokens, 1-D int64
    (cached per tokenizer vocabulary under ``cache_dir()/tokens``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    key = hashlib.md5(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:12]
    path = cache_dir() / "tokens" / f"wiki-{_SPLIT_TAG}-{split}-{key}.pt"
    if path.is_file():
        return torch.load(path)
    ids = tokenizer(wiki_text(split), add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(ids, tmp)
    tmp.replace(path)
    return ids


def random_windows(tokens: torch.Tensor, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at seeded random offsets of ``tokens``, (n, L)."""
    if tokens.numel() <= seq_len:
        raise ValueError(f"{tokens.numel()} tokens are too few for windows of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len, (n,), generator=g)
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])


def consecutive_windows(tokens: torch.Tensor, seq_len: int, limit: int | None = None):
    """Non-overlapping windows of ``seq_len`` tokens from the start, (n, L); the incomplete tail
    is dropped, ``limit`` caps n."""
    n = tokens.numel() // seq_len
    if limit is not None:
        n = min(n, limit)
    return tokens[: n * seq_len].view(n, seq_len)
