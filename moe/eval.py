"""Quality and cost of a restructured model: perplexity, KL to the dense model, active FLOPs.

``evaluate`` keeps both models' log-probabilities in float32, so exactness checks can ask for KL
~ 0; the recorded tables use ``lowbit.integrations.evaluate`` (the PTQ study's evaluation, whose
float16 reference limits KL resolution to about 1e-5).

Perplexity: exp of the mean next-token NLL over every predicted position of non-overlapping
windows (GPTQ / CMoE convention). KL: mean over the same positions of KL(dense || restructured)
of the next-token distributions (float32 log-softmax). FLOPs: 2 x the multiply-accumulates per
token of the matrices a token touches (embedding lookups excluded, the LM head included; a CMoE
block counts its shared part, ``top_k`` routed experts and the router's two matrices).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .modules import CMoEBlock


@dataclass(frozen=True)
class Evaluation:
    """``ppl`` and ``nll`` of the model; ``kl`` and ``top1`` (agreement of the argmax) against
    the reference model, None without one; ``tokens`` predicted; ``seconds`` of the run."""

    ppl: float
    nll: float
    kl: float | None
    top1: float | None
    tokens: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, reference: nn.Module | None = None,
             batch_size: int = 1) -> Evaluation:
    """Perplexity of ``model`` on token windows (n, L), and KL / top-1 agreement to
    ``reference`` (the dense model) when given."""
    start = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    nll = kl = agree = 0.0
    count = 0
    for ids in windows.split(batch_size):
        ids = ids.to(device)
        logp = model(ids).logits[:, :-1].float().log_softmax(-1)
        target = ids[:, 1:]
        nll += float(-logp.gather(-1, target[..., None]).sum())
        count += target.numel()
        if reference is not None:
            ref = reference(ids).logits[:, :-1].float().log_softmax(-1)
            kl += float(F.kl_div(logp, ref, log_target=True, reduction="sum"))
            agree += float((logp.argmax(-1) == ref.argmax(-1)).sum())
    mean = nll / count
    return Evaluation(math.exp(mean), mean, None if reference is None else kl / count,
                      None if reference is None else agree / count, count,
                      round(time.perf_counter() - start, 3))


def _block_macs(block: CMoEBlock) -> int:
    macs = 0
    if block.shared_experts is not None:
        macs += sum(p.numel() for p in block.shared_experts.parameters())
    if block.gate is not None:
        per_expert = block.experts.gate_up_proj[0].numel() + block.experts.down_proj[0].numel()
        macs += block.top_k * per_expert + block.gate.weight.numel() + block.gate.up_weight.numel()
    return macs


def active_macs(model: nn.Module) -> int:
    """Multiply-accumulates per token of every matrix a token touches (see module docstring)."""
    embed = model.get_input_embeddings()
    skip = {id(p) for p in embed.parameters()}
    head = model.get_output_embeddings()
    macs = head.weight.numel() if head is not None else 0
    skip |= {id(p) for p in head.parameters()} if head is not None else set()
    blocks = [m for m in model.modules() if isinstance(m, CMoEBlock)]
    for b in blocks:
        skip |= {id(p) for p in b.parameters()}
        macs += _block_macs(b)
    for p in model.parameters():
        if id(p) not in skip and p.dim() >= 2:
            macs += p.numel()
            skip.add(id(p))
    return macs


def routing_load(model: nn.Module) -> list[list[int]]:
    """Tokens per routed expert of every CMoE block in the latest forward."""
    return [b.last_load.tolist() for b in model.modules() if isinstance(b, CMoEBlock)]
