"""The analytic CMoE router (section 1.6-1.7 of moe.md), built from representative neurons.

Scores of the N_r routed experts for token x (float32):
``s = softmax(|(U x) * act(G x)|)``, where row j of G / U is the L2-normalised ``gate_proj`` /
``up_proj`` row of expert j's representative neuron (a mini-SwiGLU over the representatives: an
expert whose representative fires strongly is expected to carry a large hidden state).
Selection: the top-k of ``s + b``; b is the auxiliary-loss-free balancing bias (DeepSeek-V3),
which moves selection only and is a persistent buffer (saved with the model, unlike the released
code). Gate of a selected expert: ``1 + s_j * u_j`` with the learnable scale u initialised to 0,
so training-free gates are exactly 1 (the routed experts' outputs are summed unscaled).
Balancing: in training mode with ``bias_update_rate`` gamma > 0, each forward moves
``b_j += gamma * sign(mean load - load_j)`` (tokens routed to expert j in that batch), counted on
the device (no host sync, so the router traces under ``torch.compile(fullgraph=True)``).
The two N_r x d matmuls stay two: one matmul on ``cat([G, U])`` is not bit-identical to them in
float32 on the CPU (different GEMM blocking), and the scores decide the top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

BIAS_UPDATE_RATE = 1e-3
"""gamma, the code's ``--bias-speed``."""


class CMoERouter(nn.Module):
    """Routes tokens (T, d) to ``top_k`` of ``num_experts`` experts; see the module docstring.

    Parameters: ``weight`` (N_r, d) = G, ``up_weight`` (N_r, d) = U, ``scale`` (N_r,) = u;
    buffer ``e_score_correction_bias`` (N_r,) = b (DeepSeek-V3's name).
    """

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, hidden_act: str = "silu",
                 bias_update_rate: float = BIAS_UPDATE_RATE):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.bias_update_rate = bias_update_rate
        self.act_fn = ACT2FN[hidden_act]
        self.weight = nn.Parameter(torch.zeros(num_experts, hidden_size))
        self.up_weight = nn.Parameter(torch.zeros(num_experts, hidden_size))
        self.scale = nn.Parameter(torch.zeros(num_experts))
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))

    @torch.no_grad()
    def set_representatives(self, gate_rows: torch.Tensor, up_rows: torch.Tensor) -> None:
        """G, U from the representatives' raw ``gate_proj`` / ``up_proj`` rows (normalised here)."""
        self.weight.copy_(F.normalize(gate_rows.float(), dim=-1))
        self.up_weight.copy_(F.normalize(up_rows.float(), dim=-1))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """s (T, N_r), float32 softmax of the absolute mini-SwiGLU."""
        x = x.float()
        raw = (x @ self.up_weight.float().T) * self.act_fn(x @ self.weight.float().T)
        return raw.abs().softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected experts (T, k) int64 and their gates (T, k) float32."""
        s = self.scores(x)
        idx = (s + self.e_score_correction_bias).topk(self.top_k, dim=-1).indices
        gates = 1.0 + s.gather(1, idx) * self.scale[idx]
        if self.training and self.bias_update_rate > 0:
            self.update_bias(idx)
        return idx, gates

    @torch.no_grad()
    def update_bias(self, idx: torch.Tensor) -> None:
        """One balancing step from the selections ``idx`` of a batch."""
        flat = idx.flatten()  # index_add_, not bincount: no host sync on CUDA
        load = torch.zeros(self.num_experts, device=flat.device).index_add_(
            0, flat, torch.ones(flat.shape, device=flat.device))
        self.e_score_correction_bias += self.bias_update_rate * torch.sign(load.mean() - load)
