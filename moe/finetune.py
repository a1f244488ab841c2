"""Light LoRA fine-tuning of a restructured model with the balancing-bias update (moe.md 1.8).

LoRA is a weight parametrization ``W + (alpha / r) B A`` (B zero-initialised, A ~ N(0, 1/in)),
so one class covers ``nn.Linear`` weights (out, in) and the fused expert weights (N_r, out, in),
one low-rank pair per expert. Targets (the released code's): attention q/k/v/o and every
gate/up/down projection, shared and routed; the routers' G/U are not adapted, their gate scales u
train with their own learning rate (in the released code they probably never train, see moe.md).
In training mode every CMoE router also moves its balancing bias (``router.CMoERouter``).
Loss: plain causal-LM loss on every token; Adam betas (0.9, 0.95), eps 1e-8, no weight decay.
No LoRA dropout (a weight parametrization has no per-input dropout). Each step's forward runs
under ``parametrize.cached()``: the eager expert loop slices the fused weights once per expert,
which would otherwise rebuild (and keep for backward) every ``W + BA`` N_r times per layer.
Resumable: the LoRA factors, gate scales, biases, optimizer state and step go to ``checkpoint``
every ``save_every`` steps; a later call with the same arguments continues from there.
``merge_lora`` folds the factors in.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .modules import CMoEBlock

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
           "gate_up_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """LoRA rank / alpha, learning rates (LoRA: the code's 5.65e-5; gate scales u: 1e-3),
    sequences per step, checkpoint interval in steps."""

    rank: int = 8
    alpha: float = 32.0
    lr: float = 5.65e-5
    scale_lr: float = 1e-3
    batch_size: int = 2
    save_every: int = 50


class LoRA(nn.Module):
    """Parametrization ``W -> W + (alpha / rank) B A`` for W of shape (..., out, in)."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float, generator: torch.Generator,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        *batch, out, inp = shape
        a = torch.randn(*batch, rank, inp, generator=generator) / inp**0.5
        self.A = nn.Parameter(a.to(dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(*batch, out, rank, dtype=dtype, device=device))
        self.scaling = alpha / rank

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.B @ self.A) * self.scaling


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 32.0, seed: int = 0,
             targets: tuple[str, ...] = TARGETS) -> list[nn.Parameter]:
    """Freeze ``model``, attach LoRA to every target weight of its decoder, return the factors."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name, module in list(model.named_modules()):
        if ".layers." not in f".{name}":
            continue
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and leaf in targets:
            slots = [(module, "weight")]
        elif hasattr(module, "gate_up_proj") and isinstance(module.gate_up_proj, nn.Parameter):
            slots = [(module, n) for n in ("gate_up_proj", "down_proj") if n in targets]
        else:
            continue
        for mod, attr in slots:
            w = getattr(mod, attr)
            lora = LoRA(w.shape, rank, alpha, g, w.dtype, w.device)
            parametrize.register_parametrization(mod, attr, lora)
            params += [lora.A, lora.B]
    return params


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA parametrization into its weight (plain parameters again)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t for n, t in model.state_dict().items()
            if n.endswith((".A", ".B", "gate.scale", "gate.e_score_correction_bias"))}


def finetune(model: nn.Module, sequences: torch.Tensor, config: FinetuneConfig = FinetuneConfig(),
             checkpoint: str | os.PathLike | None = None, seed: int = 0,
             progress: bool = False) -> list[float]:
    """One epoch over ``sequences`` (n, L) token ids, ``config.batch_size`` per step; returns the
    per-step losses (of this call). LoRA stays attached; call ``merge_lora`` afterwards."""
    from tqdm.auto import tqdm

    lora = add_lora(model, config.rank, config.alpha, seed)
    scales = [b.gate.scale for b in model.modules() if isinstance(b, CMoEBlock) and b.gate]
    for s in scales:
        s.requires_grad_(True)
    groups = [{"params": lora, "lr": config.lr}]
    if scales:
        groups.append({"params": scales, "lr": config.scale_lr})
    opt = torch.optim.Adam(groups, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    batches = sequences.split(config.batch_size)
    step = 0
    ckpt = pathlib.Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        saved = torch.load(ckpt)
        model.load_state_dict(saved["trainable"], strict=False)
        opt.load_state_dict(saved["optimizer"])
        step = saved["step"]
    device = next(model.parameters()).device
    model.train()
    losses = []
    bar = tqdm(total=len(batches), initial=step, desc="LoRA", disable=not progress)
    for ids in batches[step:]:
        ids = ids.to(device)
        with parametrize.cached():  # W + BA once per step, not once per expert slice
            loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.detach().item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if ckpt is not None and (step % config.save_every == 0 or step == len(batches)):
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"step": step, "trainable": _trainable_state(model),
                        "optimizer": opt.state_dict()}, tmp)
            tmp.replace(ckpt)
    bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses
