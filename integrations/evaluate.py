"""Perplexity, KL divergence and top-1 agreement of a (quantized) causal LM.

On token segments ``ids (n, L)`` (``data.token_segments``), each segment is one teacher-forced
forward pass (caching on, so a quantized KV cache takes effect as in prefill); position ``t``
predicts token ``t + 1``, so every segment scores ``L - 1`` tokens.

* perplexity: ``exp(mean NLL)`` over all scored tokens;
* KL: ``mean_t KL(p_ref(.|t) || p_q(.|t))`` in nats, the reference being the unquantized model's
  next-token distribution on the same tokens (``reference_logprobs``; stored as float16
  log-probabilities to bound memory, so KL below about 1e-5 is at the storage resolution);
* top-1 agreement: the fraction of positions where both models' argmax tokens agree;
* ``kl_se`` / ``top1_se``: standard errors of those means over the segments
  (``std(per-segment means) / sqrt(n_segments)``; tokens within a segment are correlated, so
  this is the honest resolution of a table row).

KL and top-1 agreement are far more sensitive than perplexity on small models.
"""

from __future__ import annotations

import math

import torch


def _batches(ids, batch_size):
    for i in range(0, ids.shape[0], batch_size):
        yield ids[i:i + batch_size]


@torch.no_grad()
def _logits(model, ids):
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device)).logits.float().cpu()


@torch.no_grad()
def reference_logprobs(model, ids, batch_size: int = 4) -> list[tuple]:
    """Per batch: float16 log-probabilities ``(b, L - 1, vocab)`` of the reference model and its
    argmax tokens (taken from the float32 logits)."""
    out = []
    for b in _batches(ids, batch_size):
        logp = torch.log_softmax(_logits(model, b)[:, :-1], -1)
        out.append((logp.half(), logp.argmax(-1)))
    return out


@torch.no_grad()
def evaluate(model, ids, reference=None, batch_size: int = 4, progress: bool = False) -> dict:
    """``{"ppl", "nll", "kl", "top1", "tokens"}`` (kl/top1 only with ``reference``)."""
    nll = 0.0
    seg_kl, seg_agree = [], []
    n = 0
    it = list(_batches(ids, batch_size))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="evaluating", leave=False)
    for bi, b in enumerate(it):
        logp = torch.log_softmax(_logits(model, b)[:, :-1], -1)
        tgt = b[:, 1:]
        nll -= logp.gather(-1, tgt[..., None]).sum().item()
        n += tgt.numel()
        if reference is not None:
            ref, top = reference[bi]
            ref = ref.float()
            seg_kl += (ref.exp() * (ref - logp)).sum(-1).mean(-1).tolist()
            seg_agree += (top == logp.argmax(-1)).float().mean(-1).tolist()
    out = {"nll": nll / n, "ppl": math.exp(nll / n), "tokens": n}
    if reference is not None:
        for key, seg in (("kl", seg_kl), ("top1", seg_agree)):
            t = torch.tensor(seg, dtype=torch.float64)
            out[key] = t.mean().item()
            out[key + "_se"] = (t.std() / math.sqrt(len(seg))).item() if len(seg) > 1 else 0.0
    return out
