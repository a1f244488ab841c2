"""Timing harnesses for ``CostModel.fit`` on a Hugging Face causal LM.

* ``time_forwards``: one cached forward on a (rows, tokens, context) grid; medians of repeats
  after warm-up; the cache is prefilled to the context once per (rows, context) and cropped back
  after every timed forward. Right for accelerators, where the forward is the whole step.
* ``time_decode``: the step times of the decode loop itself (``speculative.generate``), forward
  plus sampling, verification and bookkeeping, and the prompt-lookup search; minimum (or
  another statistic) over interleaved repeats. On a CPU host the per-step host work is a large
  share of a small model's step, and a forward-only fit misses it (the 27-66 % prediction
  errors of the first study). On a GPU a small model's loop is bound by such per-step
  overheads too, and the same step can take 3 times longer in some stretches than in others.
* ``time_model_drafter``: ``speculative.ModelDrafter.propose`` on a (rows, context) grid, in the
  form of ``DraftCost("model")`` (re-encoding the history, then one-token steps).
* ``time_cached_drafter``: ``speculative.CachedModelDrafter.propose`` iterations, in the form of
  ``latency.CachedDraftCost``: the drafter as executed (its cache bookkeeping, rollback of
  rejected drafts and sampling included), not the draft model's plain decode loop.
* ``synced_clock``: a wall clock that waits for the device's queued work (CUDA) before reading.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from .latency import CostModel, DraftCost, Timing
from .speculative import forward, generate


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def synced_clock(device) -> Callable[[], float]:
    """``time.perf_counter`` read after ``device``'s queued work has finished (CUDA kernels
    run asynchronously); on a CPU the plain ``perf_counter``."""
    if not str(device).startswith("cuda"):
        return time.perf_counter

    def clock() -> float:
        _sync(device)
        return time.perf_counter()

    return clock


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


class _FullWidthLookup:
    """Prompt lookup (its search is the timed drafting work) with every proposal filled up to
    the requested length with random tokens, so each verify forward has full width."""

    def __init__(self, vocab: int, seed: int) -> None:
        import torch

        from .speculative import PromptLookupDrafter

        self.lookup, self.vocab = PromptLookupDrafter(), vocab
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, histories, gammas, temperature: float = 0.0, generator=None):
        import torch

        from .speculative import Drafts

        found = self.lookup.propose(histories, gammas).tokens
        return Drafts([t + torch.randint(self.vocab, (g - len(t),), generator=self.gen).tolist()
                       for t, g in zip(found, gammas, strict=True)])


@dataclass(frozen=True)
class DecodeCalibration:
    """Step times of the real decode loop (``speculative.generate``): ``target`` timings
    (forward plus verification and bookkeeping, prefill included; fit with ``per_row=True``) and
    the prompt-lookup drafting ``lookup`` points ``(rows, gamma, context, seconds)``."""

    target: tuple[Timing, ...]
    lookup: tuple[tuple[int, int, int, float], ...]

    def fit(self, meta: dict | None = None) -> tuple[CostModel, DraftCost]:
        """Target cost model (NNLS, per-row term) and lookup draft cost
        ``rows * (per_token_s * gamma + per_ctx_s * context)`` (NNLS)."""
        from scipy.optimize import nnls

        cost = CostModel.fit(self.target, meta=meta, per_row=True)
        pts = np.array([p for p in self.lookup if p[1] > 0], dtype=float).reshape(-1, 4)
        if not len(pts):
            return cost, DraftCost("lookup")
        w = 1.0 / np.maximum(pts[:, 3], 1e-9)
        x = np.stack([pts[:, 0] * pts[:, 1], pts[:, 0] * pts[:, 2]], 1)
        (per_tok, per_ctx), _ = nnls(x * w[:, None], pts[:, 3] * w)
        return cost, DraftCost("lookup", float(per_tok), per_ctx_s=float(per_ctx))


def time_decode(model, rows: Sequence[int], gammas: Sequence[int], *,
                prompt: int | Sequence[int] = 64,
                new_tokens: int = 16, repeats: int = 2, temperature: float = 0.7,
                seed: int = 0, progress: bool = True, clock=time.perf_counter,
                reduce: Callable[[Sequence[float]], float] = min) -> DecodeCalibration:
    """Run ``speculative.generate`` for every (prompt length, rows, gamma): a random
    ``prompt``-token prompt (one length or several: long prompts put the context term of the
    cost model into the fit) repeated on every row (as for branches), ``new_tokens`` verify
    iterations of full width ``gamma + 1`` (random drafts, so almost nothing is accepted) at
    ``temperature``. Each step
    keeps ``reduce`` over ``repeats`` identical runs (default the minimum: contention only adds
    time). The repeats are interleaved (the whole grid once per repeat), so a slow spell of the
    host hits one repeat of a point, not all of them. ``clock`` as in ``generate``
    (``time.process_time``: CPU time; ``synced_clock`` on an accelerator)."""
    import torch
    from tqdm import tqdm

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    lengths = [int(prompt)] if isinstance(prompt, Integral) else [int(n) for n in prompt]
    grid = [(b, g, torch.randint(3, vocab, (n,), generator=gen).tolist())
            for n in lengths for b in rows for g in gammas]
    runs: list[list[list]] = [[] for _ in grid]
    for k in tqdm(range(repeats * len(grid)), desc="decode calibration", disable=not progress):
        b, g, p = grid[k % len(grid)]
        # room for gamma drafts in each of the first new_tokens iterations, even if up to
        # new_tokens drafts get accepted along the way; no decoding past the timed iterations
        room = 2 * new_tokens + g if g else new_tokens
        res = generate(model, [p] * b, max_new_tokens=room + 1, gamma=g,
                       drafter=_FullWidthLookup(vocab, seed) if g else None,
                       temperature=temperature, seed=seed, eos_token_id=None, clock=clock,
                       max_forwards=new_tokens + 1)
        runs[k % len(grid)].append(res.timeline[:new_tokens + 1])
    target: list[Timing] = []
    lookup: list[tuple[int, int, int, float]] = []
    for (_, g, _), point in zip(grid, runs, strict=True):
        for k in range(min(len(r) for r in point)):
            steps = [r[k] for r in point]
            s0 = steps[0]
            target.append(Timing(s0.rows, s0.width, s0.context,
                                 reduce([s.target_s for s in steps])))
            if k:
                lookup.append((s0.rows, g, s0.context, reduce([s.draft_s for s in steps])))
    return DecodeCalibration(tuple(target), tuple(lookup))


def time_model_drafter(model, rows: Sequence[int], contexts: Sequence[int], *, gamma: int = 4,
                       repeats: int = 3, warmup: int = 1, temperature: float = 0.7,
                       seed: int = 0, clock=time.perf_counter,
                       reduce: Callable[[Sequence[float]], float] = min) -> list[Timing]:
    """Timings of ``speculative.ModelDrafter(model).propose`` in the form of
    ``DraftCost("model")``, for ``CostModel.fit(..., per_row=True)``: for every (rows, context),
    proposing one token per row from a random ``context``-token history (the re-encoding,
    ``Timing(rows, context, 0, t_1)``) and ``gamma`` tokens (the ``gamma - 1`` one-token steps
    after it, ``Timing(rows, 1, context, (t_gamma - t_1) / (gamma - 1))``); ``reduce`` over
    ``repeats`` after ``warmup`` calls, interleaved over the grid as in ``time_decode``;
    ``clock`` as there."""
    import torch

    from .speculative import ModelDrafter

    if gamma < 2:
        raise ValueError("gamma >= 2: the one-token steps are timed against gamma = 1")
    drafter = ModelDrafter(model)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.Generator().manual_seed(seed)
    grid = [(b, c, torch.randint(3, model.config.vocab_size, (c,), generator=ids).tolist())
            for b in rows for c in contexts]
    times: dict[tuple[int, int, int], list[float]] = {}
    for k in range(warmup + repeats):
        for b, c, hist in grid:
            for g in (1, gamma):
                t0 = clock()
                drafter.propose([hist] * b, [g] * b, temperature, gen)
                if k >= warmup:
                    times.setdefault((b, c, g), []).append(clock() - t0)
    out: list[Timing] = []
    for b, c, _ in grid:
        t1, tg = reduce(times[b, c, 1]), reduce(times[b, c, gamma])
        out += [Timing(b, c, 0, t1), Timing(b, 1, c, (tg - t1) / (gamma - 1))]
    return out


def time_cached_drafter(model, rows: Sequence[int], contexts: Sequence[int], *, gamma: int = 4,
                        iterations: int = 8, repeats: int = 3, temperature: float = 0.7,
                        seed: int = 0, pad_token_id: int = 0, clock=time.perf_counter,
                        reduce: Callable[[Sequence[float]], float] = min) -> list[Timing]:
    """Timings of ``speculative.CachedModelDrafter(model).propose`` for
    ``CostModel.fit(..., per_row=True)`` in the form of ``latency.CachedDraftCost``: for every
    (rows, context), a drafter is prefilled with a random ``context``-token history per row
    (identical rows, as for branches; untimed), then ``iterations`` calls each after one new
    random token per row (its drafts rejected: the drafter rolls them back and feeds one
    token), once proposing 1 token per row (the feed, ``Timing(rows, 1, c, t_1)``) and once
    ``gamma`` (``Timing(rows, 1, c, (t_gamma - t_1) / (gamma - 1))`` for each one-token step),
    ``c`` the history length at that call. ``reduce`` over ``repeats`` interleaved passes over
    the grid; ``clock`` as in ``time_decode``."""
    import torch

    from .speculative import CachedModelDrafter

    if gamma < 2:
        raise ValueError("gamma >= 2: the one-token steps are timed against gamma = 1")
    if iterations < 1:
        raise ValueError("iterations >= 1")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    grid = [(b, c, torch.randint(3, vocab, (c + iterations,), generator=ids).tolist())
            for b in rows for c in contexts]
    times: dict[tuple[int, int, int, int], list[float]] = {}
    for _ in range(repeats):
        for b, c, hist in grid:
            for g in (1, gamma):
                drafter = CachedModelDrafter(model, pad_token_id)
                drafter.propose([hist[:c]] * b, [g] * b, temperature, gen)
                for k in range(1, iterations + 1):
                    t0 = clock()
                    drafter.propose([hist[:c + k]] * b, [g] * b, temperature, gen)
                    times.setdefault((b, c, k, g), []).append(clock() - t0)
    out: list[Timing] = []
    for b, c, _ in grid:
        for k in range(1, iterations + 1):
            t1, tg = reduce(times[b, c, k, 1]), reduce(times[b, c, k, gamma])
            out += [Timing(b, 1, c + k, t1), Timing(b, 1, c + k, max(tg - t1, 0.0) / (gamma - 1))]
    return out

