"""The exact restructured FFN: ``y = E_shared(x) + sum_{j in top-k} g_j E_j(x)``.

Neurons of the dense SwiGLU FFN are partitioned, never altered: the shared part and every routed
expert are SwiGLU MLPs over their own neuron subsets, so with every routed expert selected and
gates 1 (the training-free router) the block equals the dense FFN up to float32 summation order.

Parameter names follow DeepSeek-V3 / transformers 5 MoE layouts: ``gate.*`` (the router,
``router.CMoERouter``), ``shared_experts.{gate,up,down}_proj.weight`` (width S*m), and the routed
experts fused as ``experts.gate_up_proj`` (N_r, 2m, d; gate rows first) and
``experts.down_proj`` (N_r, d, m).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .config import MoEConfig
from .partition import Partition
from .router import BIAS_UPDATE_RATE, CMoERouter


class SwiGLU(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``, no biases (HF ``LlamaMLP`` naming)."""

    def __init__(self, hidden_size: int, width: int, hidden_act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, width, bias=False)
        self.up_proj = nn.Linear(hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class CMoEExperts(nn.Module):
    """N_r SwiGLU experts of width m as fused 3-D weights; ``forward(x, idx, gates)`` returns
    ``sum_s gates[t, s] * E_{idx[t, s]}(x[t])`` over the k slots of each token, summed in slot
    order. Slots are sorted by expert (stable) and each expert's rows multiplied at once:
    ``impl="eager"`` loops over experts, ``impl="grouped_mm"`` makes two
    ``torch.nn.functional.grouped_mm`` calls (one kernel per projection on CUDA, no host sync)."""

    IMPLS = ("eager", "grouped_mm")

    def __init__(self, hidden_size: int, num_experts: int, width: int, hidden_act: str = "silu",
                 impl: str = "eager"):
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {self.IMPLS}, got {impl!r}")
        self.num_experts, self.width, self.impl = num_experts, width, impl
        self.gate_up_proj = nn.Parameter(torch.zeros(num_experts, 2 * width, hidden_size))
        self.down_proj = nn.Parameter(torch.zeros(num_experts, hidden_size, width))
        self.act_fn = ACT2FN[hidden_act]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """E_e(x) for x (t, d)."""
        gate, up = (x @ self.gate_up_proj[e].T).chunk(2, dim=-1)
        return (self.act_fn(gate) * up) @ self.down_proj[e].T

    def _grouped(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offs = counts.cumsum(0).to(torch.int32)
        gu = F.grouped_mm(xs, self.gate_up_proj.transpose(-2, -1), offs=offs)
        gate, up = gu.chunk(2, dim=-1)
        return F.grouped_mm(self.act_fn(gate) * up, self.down_proj.transpose(-2, -1), offs=offs)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        t, k = idx.shape
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts)
        xs = x[order // k]
        if self.impl == "grouped_mm":
            ys = self._grouped(xs, counts)
        else:
            ys = torch.empty_like(xs)
            start = 0
            for e, n in enumerate(counts.tolist()):
                if n:
                    ys[start:start + n] = self.expert(e, xs[start:start + n])
                start += n
        y = torch.empty_like(ys)
        y[order] = ys * gates.flatten()[order, None].to(x.dtype)
        return y.view(t, k, -1).sum(dim=1)


class CMoEBlock(nn.Module):
    """Drop-in replacement of a SwiGLU FFN (``mlp`` of a decoder layer); see the module docstring.

    ``last_load`` (N_r,) holds how many tokens each routed expert received in the latest forward.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, config: MoEConfig,
                 hidden_act: str = "silu", bias_update_rate: float = BIAS_UPDATE_RATE):
        super().__init__()
        self.moe_config = config
        m = config.expert_size(intermediate_size)
        self.shared_experts = (SwiGLU(hidden_size, config.shared * m, hidden_act)
                               if config.shared else None)
        self.gate = CMoERouter(hidden_size, config.routed, config.active, hidden_act,
                               bias_update_rate) if config.routed else None
        self.experts = (CMoEExperts(hidden_size, config.routed, m, hidden_act)
                        if config.routed else None)
        self.last_load = torch.zeros(config.routed, dtype=torch.int64)

    @classmethod
    def from_dense(cls, mlp: nn.Module, partition: Partition, config: MoEConfig,
                   hidden_act: str = "silu",
                   bias_update_rate: float = BIAS_UPDATE_RATE) -> CMoEBlock:
        """The block carved from ``mlp`` (``gate_proj``/``up_proj``/``down_proj`` linears without
        bias) by ``partition``, in eval mode (no balancing updates); weights keep the dense dtype
        and device."""
        wg, wu, wd = (getattr(mlp, n).weight.detach()
                      for n in ("gate_proj", "up_proj", "down_proj"))
        if any(getattr(mlp, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")):
            raise NotImplementedError("FFN projections with bias are not supported")
        partition.check(wg.shape[0])
        block = cls(wg.shape[1], wg.shape[0], config, hidden_act, bias_update_rate)
        block.to(device=wg.device, dtype=wg.dtype).gate_float32()
        with torch.no_grad():
            if block.shared_experts is not None:
                s = partition.shared
                block.shared_experts.gate_proj.weight.copy_(wg[s])
                block.shared_experts.up_proj.weight.copy_(wu[s])
                block.shared_experts.down_proj.weight.copy_(wd[:, s])
            if block.experts is not None:
                e = partition.experts
                block.experts.gate_up_proj.copy_(torch.cat([wg[e], wu[e]], dim=1))
                block.experts.down_proj.copy_(wd[:, e].permute(1, 0, 2))
                r = partition.representatives
                block.gate.set_representatives(wg[r], wu[r])
        return block.eval()

    def gate_float32(self) -> CMoEBlock:
        """Keep the router's parameters and bias in float32 whatever the model dtype."""
        if self.gate is not None:
            self.gate.float()
        return self

    @property
    def top_k(self) -> int:
        return self.gate.top_k if self.gate is not None else 0

    @top_k.setter
    def top_k(self, k: int) -> None:
        """Routed experts per token (e.g. ``moe_config.routed``: every expert, the dense FFN)."""
        if self.gate is None or not 1 <= k <= self.gate.num_experts:
            raise ValueError(f"top_k must be in [1, {self.moe_config.routed}]")
        self.gate.top_k = k

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        out = self.shared_experts(x) if self.shared_experts is not None else torch.zeros_like(x)
        if self.gate is not None:
            idx, gates = self.gate(x)
            self.last_load = torch.bincount(idx.flatten().cpu(), minlength=self.gate.num_experts)
            out = out + self.experts(x, idx, gates)
        return out.reshape(shape)
