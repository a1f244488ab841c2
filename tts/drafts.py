"""Models for speculative drafting and tests: cheap copies of a target made with this library
(weights fake-quantized to a block format, or fewer layers) and tiny random Llamas. Loading real
checkpoints lives in ``lowbit.integrations.data`` (see ``executors.load``)."""

from __future__ import annotations


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
