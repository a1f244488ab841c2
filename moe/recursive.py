"""Recursive (hierarchical) CMoE: every routed expert of an MoE model carved into shared and
routed sub-experts with its own analytic sub-router (paper section 4.4, moe.md 1.9).

Supported: transformers 5 MoE blocks whose ``mlp.gate(x)`` returns ``(logits, weights, indices)``
and whose ``mlp.experts(x, indices, weights)`` holds fused ``gate_up_proj`` (E, 2I, H) /
``down_proj`` (E, H, I) weights: Qwen2-MoE, Qwen3-MoE, Mixtral and DeepSeek-V3 (whose
``first_k_dense_replace`` dense layers are left alone). The original router still picks the
experts with its own weights (softmax or DeepSeek-V3's sigmoid, group-limited top-k and
``routed_scaling_factor`` included); expert e then runs as a ``CMoEBlock`` (sub-configuration
``SxAyEz`` over its I neurons) on the tokens routed to it. Each expert is profiled on the
calibration tokens its router sends it (layer by layer, as ``convert.restructure``). Shared
experts of the block (Qwen2-MoE, DeepSeek-V3) stay as they are. With every sub-expert active the
model equals the original MoE to float32 rounding. ``config.cmoe_recursive`` records what was done;
``load_recursive`` rebuilds and loads a saved model.
"""

from __future__ import annotations

import pathlib
import time

import torch
from torch import nn

from .config import MoEConfig, parse_config
from .convert import _capture, _ffn_inputs, decoder_layers, load_safetensors_state
from .modules import CMoEBlock, SwiGLU
from .partition import partition_neurons
from .profile import K_ACT, profile_ffn


class HierarchicalExperts(nn.Module):
    """Drop-in for a fused experts module: ``forward(x, indices, weights)`` sums
    ``weights[t, s] * blocks[indices[t, s]](x[t])``; ``blocks[e]`` is expert e as a CMoE block."""

    def __init__(self, num_experts: int, hidden_size: int, width: int, config: MoEConfig,
                 hidden_act: str = "silu"):
        super().__init__()
        self.num_experts = num_experts
        self.blocks = nn.ModuleList(CMoEBlock(hidden_size, width, config, hidden_act)
                                    for _ in range(num_experts))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        hit = torch.bincount(top_k_index.flatten(), minlength=self.num_experts)
        for e in hit.nonzero().flatten().tolist():
            tok, slot = (top_k_index == e).nonzero(as_tuple=True)
            y = self.blocks[e](hidden_states[tok]) * top_k_weights[tok, slot, None]
            out.index_add_(0, tok, y.to(out.dtype))
        return out


def _expert_mlp(experts: nn.Module, e: int, act: str) -> SwiGLU:
    gu, down = experts.gate_up_proj[e], experts.down_proj[e]
    width = down.shape[1]
    mlp = SwiGLU(gu.shape[1], width, act).to(dtype=gu.dtype, device=gu.device)
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(gu[:width])
        mlp.up_proj.weight.copy_(gu[width:])
        mlp.down_proj.weight.copy_(down)
    return mlp


@torch.no_grad()
def restructure_experts(model: nn.Module, config: str | MoEConfig, calibration: torch.Tensor, *,
                        k_act: int = K_ACT, normalize: bool = True, batch_size: int = 1) -> float:
    """Carve every routed expert of every MoE layer of ``model`` in place; returns seconds."""
    config = parse_config(config)
    start = time.perf_counter()
    model.eval()
    act = getattr(model.config, "hidden_act", "silu")
    device = next(model.parameters()).device
    hidden, kwargs = _capture(model, [b.to(device) for b in calibration.split(batch_size)])
    carved = []
    for i, layer in enumerate(decoder_layers(model)):
        inputs, residuals = _ffn_inputs(layer, hidden, kwargs[i])
        experts = getattr(layer.mlp, "experts", None)
        if experts is not None and isinstance(getattr(experts, "gate_up_proj", None),
                                              nn.Parameter):
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs])
            idx = layer.mlp.gate(x)[-1]
            n, width = experts.gate_up_proj.shape[0], experts.down_proj.shape[-1]
            new = HierarchicalExperts(n, x.shape[-1], width, config, act)
            for e in range(n):
                mlp = _expert_mlp(experts, e, act)
                routed = x[(idx == e).any(dim=-1)]
                prof = profile_ffn(routed, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn,
                                   k_act=min(k_act, width), normalize=normalize)
                new.blocks[e] = CMoEBlock.from_dense(mlp, partition_neurons(prof, config),
                                                     config, act)
            layer.mlp.experts = new.train(layer.training)
            carved.append(i)
        hidden = [r + layer.mlp(t) for r, t in zip(residuals, inputs, strict=True)]
    model.config.cmoe_recursive = {"config": config.name, "layers": carved, "k_act": k_act,
                                   "normalize": normalize}
    return time.perf_counter() - start


def save_recursive(model: nn.Module, path: str | pathlib.Path) -> None:
    """``save_pretrained`` in the in-memory (transformers 5) layout: the default
    ``save_original_format=True`` rewrites Mixtral keys into the legacy per-expert layout."""
    model.save_pretrained(path, save_original_format=False)


def load_recursive(path: str | pathlib.Path) -> nn.Module:
    """A model saved by ``save_recursive`` after ``restructure_experts``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = pathlib.Path(path)
    cfg = AutoConfig.from_pretrained(path)
    meta = cfg.cmoe_recursive
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    act = getattr(cfg, "hidden_act", "silu")
    config = parse_config(meta["config"])
    for i in meta["layers"]:
        mlp = decoder_layers(model)[i].mlp
        n, hidden, width = mlp.experts.down_proj.shape
        mlp.experts = HierarchicalExperts(n, hidden, width, config, act)
    load_safetensors_state(model, path, cfg)
    return model.eval()
