"""Batched speculative decoding on a Hugging Face causal LM: B rows (branches), each verifying its
own drafts in one shared target forward per iteration.

The recipe of tts.md section 7.1: left-padded prompts with a 2-D attention mask over the whole
cache and explicit position ids; per iteration each row feeds ``[pending] + drafts`` (right
padded to a common width), one target forward, the longest agreeing prefix is accepted per row,
and rejected or padding slots are masked out of the cache rather than cropped. Finished rows
leave the batch (the cache drops them). Greedy output equals plain greedy decoding token for
token; with ``temperature > 0`` verification is speculative sampling (accept draft d with
probability min(1, p(d) / q(d)), else sample from the normalised ``max(0, p - q)``), so the
output distribution is the target's whatever the drafter. ``q`` is one-hot for deterministic
drafters (prompt lookup), which reduces to "accept with probability p(d)".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Integral

import torch

from .answers import early_stop


@dataclass
class Drafts:
    """Proposed tokens per row and, for sampled drafts, their draft distributions ``q``
    (``(len(tokens[r]), vocab)`` probabilities; ``None``: deterministic proposal)."""

    tokens: list[list[int]]
    probs: list[torch.Tensor | None] = field(default_factory=list)


class PromptLookupDrafter:
    """n-gram drafting from a row's own history (prompt and generated text): find the latest
    earlier occurrence of the last ``n`` tokens (``n`` from ``max_ngram`` down to
    ``min_ngram``) and propose what followed it. Deterministic, no model."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, histories: Sequence[Sequence[int]], gammas: Sequence[int],
                temperature: float = 0.0, generator=None) -> Drafts:
        return Drafts([self._one(list(h), g) for h, g in zip(histories, gammas, strict=True)])

    def _one(self, h: list[int], gamma: int) -> list[int]:
        if gamma <= 0:
            return []
        for n in range(min(self.max_ngram, len(h) - 1), self.min_ngram - 1, -1):
            tail = h[-n:]
            for i in range(len(h) - n - 1, -1, -1):
                if h[i:i + n] == tail:
                    return h[i + n:i + n + gamma]
        return []


def _sample_drafts(logits: torch.Tensor, gammas: Sequence[int], temperature: float, generator,
                   advance: Callable[[torch.Tensor], torch.Tensor]) -> Drafts:
    """``max(gammas)`` draft tokens per row from the drafter's next-token ``logits``: greedy at
    temperature 0, else sampled (keeping ``q``); ``advance(tokens)`` feeds one token per row and
    returns the next logits. Row ``r`` keeps its first ``gammas[r]`` tokens."""
    g_max = max(gammas)
    toks, qs = [], []
    for step in range(g_max):
        if temperature > 0:
            q = torch.softmax(logits.double() / temperature, -1)
            t = torch.multinomial(q, 1, generator=generator)[:, 0]
            qs.append(q)
        else:
            t = logits.argmax(-1)
        toks.append(t)
        if step + 1 < g_max:
            logits = advance(t)
    tok = torch.stack(toks, 1).tolist()
    q_all = torch.stack(qs, 1) if qs else None
    return Drafts([tok[r][:g] for r, g in enumerate(gammas)],
                  [None if q_all is None else q_all[r, :g] for r, g in enumerate(gammas)])


class ModelDrafter:
    """Drafts from a separate causal LM with the same vocabulary: ``gamma`` autoregressive steps
    per iteration over the rows' full histories (re-encoded each call: simple, and exact whatever
    was rejected). Greedy drafts at temperature 0, sampled drafts (with ``q``) otherwise."""

    def __init__(self, model, pad_token_id: int = 0) -> None:
        self.model, self.pad = model, pad_token_id

    @torch.no_grad()
    def propose(self, histories: Sequence[Sequence[int]], gammas: Sequence[int],
                temperature: float = 0.0, generator=None) -> Drafts:
        from transformers import DynamicCache

        g_max = max(gammas, default=0)
        if g_max == 0:
            return Drafts([[] for _ in histories], [None] * len(histories))
        device = next(self.model.parameters()).device
        ids, mask = (x.to(device) for x in left_pad(histories, self.pad))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = forward(self.model, ids, mask, pos, cache)[:, -1]

        def advance(t: torch.Tensor) -> torch.Tensor:
            nonlocal mask, pos
            mask = torch.cat([mask, mask.new_ones(len(ids), 1)], 1)
            pos = pos[:, -1:] + 1
            return forward(self.model, t[:, None], mask, pos, cache)[:, -1]

        return _sample_drafts(logits, gammas, temperature, generator, advance)


class CachedModelDrafter:
    """Drafts from a causal LM with the target's vocabulary, keeping its KV cache between
    iterations: a call feeds each row only what it gained since the previous call (masking the
    cache slots of rejected drafts, as ``generate`` does), then ``gamma - 1``
    one-token steps; greedy at temperature 0, else sampled with ``q``. Use one instance per
    ``generate`` call: rows are matched to the previous call's in order (rows only leave).
    ``ModelDrafter`` re-encodes every history each iteration instead, which for a
    0.5B drafter on a CPU costs more than the target's step."""

    def __init__(self, model, pad_token_id: int = 0) -> None:
        self.model, self.pad = model, pad_token_id
        self.device = next(model.parameters()).device
        self.cache = None
        self.mask = None
        self.fed: list[list[int]] = []  # tokens in the cache per row (position = index)
        self.slots: list[list[int]] = []  # their cache slots
        self.seen: list[list[int]] = []  # the histories of the previous call

    def _keep(self, histories) -> list[int]:
        keep, j = [], 0
        for h in histories:
            while j < len(self.seen) and list(h[:len(self.seen[j])]) != self.seen[j]:
                j += 1
            if j == len(self.seen):
                raise ValueError("a history does not extend one of the previous call's")
            keep.append(j)
            j += 1
        return keep

    def _feed(self, histories):
        """One forward of every row's new tokens; the logits after each row's last token."""
        if self.cache is None:
            from transformers import DynamicCache

            ids, self.mask = (x.to(self.device) for x in left_pad(histories, self.pad))
            pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
            self.cache = DynamicCache()
            start = ids.shape[1] - torch.as_tensor([len(h) for h in histories])
            self.fed = [list(h) for h in histories]
            self.slots = [list(range(int(s), ids.shape[1])) for s in start]
            return forward(self.model, ids, self.mask, pos, self.cache)[:, -1]
        keep = self._keep(histories)
        if len(keep) < len(self.seen):
            idx = torch.as_tensor(keep, device=self.device)
            self.cache.batch_select_indices(idx)
            self.mask = self.mask[idx]
            self.fed = [self.fed[j] for j in keep]
            self.slots = [self.slots[j] for j in keep]
        new = []
        for i, h in enumerate(histories):
            n = 0
            while n < min(len(h) - 1, len(self.fed[i])) and self.fed[i][n] == h[n]:
                n += 1
            self.mask[i, self.slots[i][n:]] = 0
            self.fed[i], self.slots[i] = self.fed[i][:n], self.slots[i][:n]
            new.append(list(h[n:]))
        return self._step(new)

    def _step(self, new: list[list[int]]):
        width, base = max(len(x) for x in new), self.mask.shape[1]
        ids = torch.full((len(new), width), self.pad, dtype=torch.long)
        add = torch.zeros((len(new), width), dtype=torch.long)
        pos = torch.zeros((len(new), width), dtype=torch.long)
        for i, x in enumerate(new):
            ids[i, :len(x)] = torch.as_tensor(x)
            add[i, :len(x)] = 1
            pos[i] = len(self.fed[i]) + torch.arange(width)
            self.fed[i] += x
            self.slots[i] += range(base, base + len(x))
        self.mask = torch.cat([self.mask, add.to(self.device)], 1)
        logits = forward(self.model, ids.to(self.device), self.mask, pos.to(self.device),
                         self.cache)
        return logits[torch.arange(len(new)), [len(x) - 1 for x in new]]

    def propose(self, histories, gammas, temperature: float = 0.0, generator=None):
        g_max = max(gammas, default=0)
        if g_max == 0:
            return Drafts([[] for _ in histories], [None] * len(histories))
        with torch.no_grad():
            logits = self._feed(histories)
            self.seen = [list(h) for h in histories]
            return _sample_drafts(logits, gammas, temperature, generator,
                                  lambda t: self._step([[int(x)] for x in t]))


def forward(model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache):
    """Logits of one cached forward; the cache keyword is ``cache`` in transformers >= 5.24 and
    ``past_key_values`` before."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                 **{name: cache}).logits


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of int64 tensors ``(rows, max_len)``, sequences right-aligned."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            ids[r, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask


@dataclass(frozen=True)
class StepTime:
    """One target forward of ``generate``: ``rows`` x ``width`` new tokens over ``context`` cache
    slots per row (holes and padding included); ``draft_s`` drafting before it, ``target_s`` the
    rest of the iteration (forward, verification, bookkeeping). The prefill has context 0."""

    rows: int
    width: int
    context: int
    draft_s: float
    target_s: float


@dataclass
class Generation:
    """Result of ``generate``: per row the generated ``tokens`` (EOS included when produced),
    ``logprob`` (sum of the target's log-probabilities of those tokens at temperature 1),
    ``finish_s`` (seconds from the start) and ``stop`` reason (``"eos"``, ``"length"``,
    ``"deadline"``, ``"vote"``, ``"forwards"``); ``steps`` = ``(requested, proposed, accepted)``
    draft tokens per row and verify step; ``forwards`` = target forwards (prefill included);
    ``seconds`` = wall clock; ``timeline`` = one ``StepTime`` per target forward."""

    tokens: list[list[int]]
    logprob: list[float]
    finish_s: list[float]
    stop: list[str]
    steps: list[tuple[int, int, int]]
    forwards: int
    seconds: float
    timeline: list[StepTime] = field(default_factory=list)


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.double() / max(temperature, 1e-6), -1)


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int],
             gamma: int = 0, drafter=None, temperature: float = 0.0,
             eos_token_id: int | None = None, pad_token_id: int = 0, seed: int = 0,
             deadline_s: float | None = None,
             answer_of: Callable[[list[int]], str | None] | None = None,
             clock: Callable[[], float] = time.perf_counter,
             max_forwards: int | None = None) -> Generation:
    """Decode every prompt (one row each; repeat a prompt B times for B branches) with up to
    ``gamma`` drafted tokens per row and iteration (``gamma=0`` or no drafter: plain decoding).

    Stops a row at ``eos_token_id`` or ``max_new_tokens`` (one for all rows, or one per row);
    all rows at ``deadline_s`` seconds; with ``answer_of`` (tokens -> answer), all rows once the
    majority-vote early-stop rule holds among finished rows; all rows after ``max_forwards``
    target forwards (the prefill included: timing runs). Greedy at ``temperature=0``, else
    sampling with ``seed``. ``clock`` times everything (wall clock by default;
    ``time.process_time`` gives the CPU time of the process, which on a shared host excludes the
    time other processes held the cores; on an accelerator, a clock that synchronises the device
    first). Inputs go to the model's device, and the sampling generator lives there too.
    """
    from transformers import DynamicCache

    t_start = clock()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = len(prompts)
    limit = [int(max_new_tokens)] * rows if isinstance(max_new_tokens, Integral) else [
        int(n) for n in max_new_tokens]
    if len(limit) != rows:
        raise ValueError(f"max_new_tokens: {len(limit)} limits for {rows} prompts")
    ids, mask = (x.to(device) for x in left_pad(prompts, pad_token_id))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = forward(model, ids, mask, pos, cache)[:, -1]
    forwards = 1
    timeline = [StepTime(rows, ids.shape[1], 0, 0.0, clock() - t_start)]
    p = _probs(logits, temperature)
    first = p.argmax(-1) if temperature <= 0 else torch.multinomial(p, 1, generator=gen)[:, 0]
    out = [[t] for t in first.tolist()]
    lp = torch.log_softmax(logits.double(), -1)
    logprob = lp.gather(1, first[:, None])[:, 0].tolist()
    finish = [float("inf")] * rows
    stop = [""] * rows
    steps: list[tuple[int, int, int]] = []
    next_pos = mask.sum(-1)
    active = list(range(rows))

    def finished(r: int) -> bool:
        if eos_token_id is not None and out[r][-1] == eos_token_id:
            stop[r] = "eos"
        elif len(out[r]) >= limit[r]:
            stop[r] = "length"
        return bool(stop[r])

    while True:
        now = clock() - t_start
        keep = []
        for i, r in enumerate(active):
            if finished(r):
                finish[r] = now
            else:
                keep.append(i)
        if answer_of is not None and keep:
            done = [answer_of(out[r]) for r in range(rows) if stop[r]]
            if early_stop(done, len(keep)):
                for i in keep:
                    stop[active[i]], finish[active[i]] = "vote", now
                keep = []
        if deadline_s is not None and now > deadline_s:
            for i in keep:
                stop[active[i]], finish[active[i]] = "deadline", now
            keep = []
        if max_forwards is not None and forwards >= max_forwards:
            for i in keep:
                stop[active[i]], finish[active[i]] = "forwards", now
            keep = []
        if not keep:
            break
        if len(keep) < len(active):
            idx = torch.as_tensor(keep, device=device)
            cache.batch_select_indices(idx)
            mask, next_pos = mask[idx], next_pos[idx]
            active = [active[i] for i in keep]

        t_iter = clock()
        room = [limit[r] - len(out[r]) - 1 for r in active]
        gammas = [min(gamma, x) for x in room]
        if drafter is not None and max(gammas) > 0:
            drafts = drafter.propose([list(prompts[r]) + out[r] for r in active], gammas,
                                     temperature, gen)
        else:
            drafts = Drafts([[] for _ in active])
        t_draft = clock()
        context = mask.shape[1]
        width = 1 + max(len(d) for d in drafts.tokens)
        inp = torch.full((len(active), width), pad_token_id, dtype=torch.long)
        new_mask = torch.zeros((len(active), width), dtype=torch.long)
        for i, r in enumerate(active):
            seq = [out[r][-1]] + drafts.tokens[i]
            inp[i, :len(seq)] = torch.as_tensor(seq)
            new_mask[i, :len(seq)] = 1
        mask = torch.cat([mask, new_mask.to(device)], 1)
        pos = next_pos[:, None] + torch.arange(width, device=device)[None, :]
        logits = forward(model, inp.to(device), mask, pos, cache)
        forwards += 1
        p_all = _probs(logits, temperature)
        lp_all = torch.log_softmax(logits.double(), -1)
        if width == 1:  # no drafts: one batched draw, no per-row device work
            new = (p_all[:, 0].argmax(-1) if temperature <= 0 else
                   torch.multinomial(p_all[:, 0], 1, generator=gen)[:, 0])
            lps = lp_all[:, 0].gather(1, new[:, None])[:, 0].tolist()
            for i, (r, t) in enumerate(zip(active, new.tolist(), strict=True)):
                steps.append((gammas[i], 0, 0))
                out[r].append(t)
                logprob[r] += lps[i]
            next_pos += 1
        else:
            for i, r in enumerate(active):
                d = drafts.tokens[i]
                q = drafts.probs[i] if i < len(drafts.probs) else None
                acc, new = _verify(p_all[i], d, q, temperature, gen)
                steps.append((gammas[i], len(d), acc))
                emitted = d[:acc] + [new]
                for j, t in enumerate(emitted):
                    out[r].append(t)
                    logprob[r] += float(lp_all[i, j, t])
                    if eos_token_id is not None and t == eos_token_id:
                        break
                mask[i, mask.shape[1] - width + 1 + acc:] = 0
                next_pos[i] += 1 + acc
        t_end = clock()
        timeline.append(StepTime(len(active), width, context, t_draft - t_iter, t_end - t_draft))
    return Generation(out, logprob, finish, stop, steps, forwards, clock() - t_start,
                      timeline)


def _verify(p: torch.Tensor, draft: list[int], q: torch.Tensor | None, temperature: float,
            gen: torch.Generator) -> tuple[int, int]:
    """Accepted draft count and the next token, from target probabilities ``p`` (``(width,
    vocab)``: row j is the distribution after the pending token and ``j`` drafts)."""
    if temperature <= 0:
        target = p[:len(draft) + 1].argmax(-1).tolist()
        acc = 0
        while acc < len(draft) and draft[acc] == target[acc]:
            acc += 1
        return acc, target[acc]
    for j, d in enumerate(draft):
        qd = 1.0 if q is None else float(q[j, d])
        u = float(torch.rand((), generator=gen, dtype=torch.float64, device=gen.device))
        if u * qd < float(p[j, d]):
            continue
        residual = p[j].clone()
        if q is None:
            residual[d] = 0.0
        else:
            residual = (residual - q[j]).clamp(min=0.0)
        return j, int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
    return len(draft), int(torch.multinomial(p[len(draft)], 1, generator=gen))
