"""Timing harness: target forward time on a (rows, tokens, context) grid for a Hugging Face
causal LM, for ``CostModel.fit``. Medians of repeats after warm-up; the cache is prefilled to the
context once per (rows, context) and cropped back after every timed forward."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from .latency import Timing
from .speculative import forward


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _random_cache(model, rows: int, context: int, device):
    """A cache holding ``context`` random K/V entries per row and layer (no prefill forward)."""
    import torch
    from transformers import DynamicCache

    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    cache = DynamicCache()
    for layer in range(cfg.num_hidden_layers):
        k, v = (torch.randn((rows, heads, context, dim), device=device, dtype=dtype)
                for _ in range(2))
        cache.update(k, v, layer)
    return cache


def time_forwards(model, rows: Sequence[int], tokens: Sequence[int], contexts: Sequence[int], *,
                  repeats: int = 5, warmup: int = 1, seed: int = 0,
                  max_seconds: float | None = None, prefill: bool = True,
                  max_cache_bytes: float | None = None) -> list[Timing]:
    """Median seconds of one cached forward of ``tokens`` new tokens per row for every
    (rows, tokens, context) combination (random token ids; contexts >= 1). The context is either
    prefilled with a forward (``prefill``) or filled with random K/V (timing only; much faster at
    large sizes). Combinations whose K/V would exceed ``max_cache_bytes`` are skipped. Stops
    early, returning what it has, after ``max_seconds``."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    out: list[Timing] = []
    t_start = time.perf_counter()
    with torch.no_grad():
        for b in rows:
            for c in contexts:
                if max_cache_bytes is not None and kv_bytes_per_token(model) * b * (
                        c + max(tokens)) > max_cache_bytes:
                    continue
                if prefill:
                    ids = torch.randint(vocab, (b, c), generator=gen).to(device)
                    pos = torch.arange(c, device=device).expand(b, c)
                    cache = DynamicCache()
                    forward(model, ids, torch.ones_like(ids), pos, cache)
                else:
                    cache = _random_cache(model, b, c, device)
                for s in tokens:
                    new = torch.randint(vocab, (b, s), generator=gen).to(device)
                    full = torch.ones((b, c + s), dtype=torch.long, device=device)
                    p = torch.arange(c, c + s, device=device).expand(b, s)
                    times = []
                    for k in range(warmup + repeats):
                        _sync(device)
                        t0 = time.perf_counter()
                        forward(model, new, full, p, cache)
                        _sync(device)
                        if k >= warmup:
                            times.append(time.perf_counter() - t0)
                        cache.crop(-s)  # drop the timed tokens again
                    out.append(Timing(b, s, c, statistics.median(times)))
                    if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                        return out
                del cache
    return out


def kv_bytes_per_token(model) -> float:
    """K/V cache bytes per token and row: 2 * layers * kv heads * head dim * element size."""
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2.0 * cfg.num_hidden_layers * heads * dim * next(model.parameters()).element_size()
