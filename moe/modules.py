"""The exact restructured FFN: ``y = E_shared(x) + sum_{j in top-k} g_j E_j(x)``.

Neurons of the dense SwiGLU FFN are partitioned, never altered: the shared part and every routed
expert are SwiGLU MLPs over their own neuron subsets, so with every routed expert selected and
gates 1 (the training-free router) the block equals the dense FFN up to float32 summation order.

Parameter names follow DeepSeek-V3 / transformers 5 MoE layouts: ``gate.*`` (the router,
``router.CMoERouter``), ``shared_experts.{gate,up,down}_proj.weight`` (width S*m), and the routed
experts fused as ``experts.gate_up_proj`` (N_r, 2m, d; gate rows first) and
``experts.down_proj`` (N_r, d, m).

Routed-expert implementations (``CMoEExperts.impl``; same parameters, same routing):

* ``"eager"`` (default): a Python loop over experts on expert-sorted rows (one host sync for the
  per-expert counts); each expert's output (width d) is multiplied by its gate, then scattered
  back and the k slots of a token summed.
* ``"grouped_mm"``: the loop replaced by two ``F.grouped_mm`` calls; otherwise as ``eager``.
* ``"fused"``: two ``F.grouped_mm`` calls with the gate multiplied into the SwiGLU hidden (width
  m) *before* the down projection, ``E_j(x) g = W_d (g h)`` instead of ``g (W_d h)``: the same
  math, rounded in a different order (in bfloat16 the gate is rounded into the hidden); the k
  slots of a token are combined by gathering through the inverse permutation,
  ``ys.index_select(0, inv).view(T, k, d).sum(1)`` (no scatter, deterministic). In
  ``CMoEBlock.forward`` the shared expert's output is then added in the epilogue of its
  down-projection GEMM (``torch.addmm``) when ``shared_experts.down_proj`` is a plain
  ``nn.Linear`` without bias or hooks (LoRA parametrizations included). No host sync: the path
  traces under ``torch.compile(fullgraph=True)`` (grouped_mm's fake kernel needs bfloat16).

Per-expert loads (``CMoEBlock.last_load``) are counted on the device (``index_add_``), never
copied to the host in ``forward``.
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


def expert_counts(idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Slots per expert (num_experts,) int64 of the selections ``idx``, on ``idx``'s device:
    ``index_add_`` of ones, not ``torch.bincount`` (which reads its input's max on the host on
    CUDA and has a data-dependent shape under torch.compile)."""
    flat = idx.flatten()
    return torch.zeros(num_experts, dtype=torch.int64, device=flat.device).index_add_(
        0, flat, torch.ones_like(flat))


class CMoEExperts(nn.Module):
    """N_r SwiGLU experts of width m as fused 3-D weights; ``forward(x, idx, gates)`` returns
    ``sum_s gates[t, s] * E_{idx[t, s]}(x[t])`` over the k slots of each token, summed in slot
    order. Slots are sorted by expert (stable) and each expert's rows multiplied at once:
    ``impl="eager"`` loops over experts, ``impl="grouped_mm"`` makes two
    ``torch.nn.functional.grouped_mm`` calls (one kernel per projection on CUDA, no host sync),
    ``impl="fused"`` is ``grouped_mm`` with the gates folded into the hidden before the down
    projection and the inverse-permutation gather combine (see the module docstring)."""

    IMPLS = ("eager", "grouped_mm", "fused")

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

    def _fused(self, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor,
               counts: torch.Tensor) -> torch.Tensor:
        t, k = idx.shape
        flat = idx.flatten()
        order = flat.argsort(stable=True)  # sorted position -> flat slot
        inv = torch.empty_like(order)  # flat slot -> sorted position (no second sort)
        inv[order] = torch.arange(order.numel(), device=order.device)
        offs = counts.cumsum(0).to(torch.int32)
        gu = F.grouped_mm(x.index_select(0, order // k), self.gate_up_proj.transpose(-2, -1),
                          offs=offs)
        gate, up = gu.chunk(2, dim=-1)
        h = self.act_fn(gate) * up * gates.flatten()[order, None].to(x.dtype)
        ys = F.grouped_mm(h, self.down_proj.transpose(-2, -1), offs=offs)
        return ys.index_select(0, inv).view(t, k, -1).sum(dim=1)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor,
                counts: torch.Tensor | None = None) -> torch.Tensor:
        """``counts``: ``expert_counts(idx, num_experts)`` if the caller has it already."""
        if counts is None:
            counts = expert_counts(idx, self.num_experts)
        if self.impl == "fused":
            return self._fused(x, idx, gates, counts)
        t, k = idx.shape
        flat = idx.flatten()
        order = flat.argsort(stable=True)
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

    ``last_load`` (N_r,) int64 holds how many tokens each routed expert received in the latest
    forward, on the input's device (no host sync; ``.tolist()`` it when needed).
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

    def _shared_addmm(self) -> bool:
        """Whether the shared expert's down projection can run as ``torch.addmm`` on its weight:
        a bias-free ``nn.Linear`` whose ``forward`` is not overridden and has no hooks (a
        parametrized weight, e.g. LoRA, is fine; a replaced/quantized module is not)."""
        se = self.shared_experts
        lin = getattr(se, "down_proj", None)
        return (type(se) is SwiGLU and isinstance(lin, nn.Linear)
                and type(lin).forward is nn.Linear.forward and lin.bias is None
                and not lin._forward_hooks and not lin._forward_pre_hooks)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        if self.gate is None:
            out = self.shared_experts(x) if self.shared_experts is not None else torch.zeros_like(x)
            return out.reshape(shape)
        idx, gates = self.gate(x)
        load = expert_counts(idx, self.gate.num_experts)
        self.last_load = load
        routed = self.experts(x, idx, gates, load)
        if self.shared_experts is None:
            out = routed
        elif self.experts.impl == "fused" and self._shared_addmm():
            se = self.shared_experts
            h = se.act_fn(se.gate_proj(x)) * se.up_proj(x)
            out = torch.addmm(routed, h, se.down_proj.weight.T)  # shared + routed in the epilogue
        else:
            out = self.shared_experts(x) + routed
        return out.reshape(shape)
