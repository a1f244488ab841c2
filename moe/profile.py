"""Activation profiling of a SwiGLU FFN on calibration inputs (CMoE section 1.3 of moe.md).

Hidden state of neuron i for token x: ``h_i = act(g_i . x) * (u_i . x)`` (rows g_i, u_i of
``gate_proj`` / ``up_proj``). With ``normalize=True`` (the released code) x and every row are
L2-normalised first, so h measures direction agreement, not weight or token scale; the paper's
equation 3 uses the plain h (``normalize=False``). Marker ("ATopK"): per token the ``k_act`` neurons
with the largest ``|h|`` get 1, all others 0; neuron i's activation rate is the mean of its marker
column over the q calibration tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

K_ACT = 10
"""Markers per token, the paper's K_a."""


@dataclass(frozen=True)
class Profile:
    """``markers``: bool (q, d_h), token-by-neuron ATopK markers; ``rates``: float64 (d_h,),
    each neuron's activation rate."""

    markers: torch.Tensor
    rates: torch.Tensor

    @property
    def silent(self) -> int:
        """Neurons never marked (their expert is then decided by assignment tie-breaking)."""
        return int((self.rates == 0).sum())


def hidden_states(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act,
                  normalize: bool = True) -> torch.Tensor:
    """SwiGLU hidden states ``act(x @ gate.T) * (x @ up.T)`` in float32, (q, d_h); ``x`` (q, d),
    ``gate``/``up`` (d_h, d); with ``normalize`` on L2-normalised x and rows."""
    x, gate, up = x.float(), gate.float(), up.float()
    if normalize:
        x, gate, up = F.normalize(x, dim=-1), F.normalize(gate, dim=-1), F.normalize(up, dim=-1)
    return act(x @ gate.T) * (x @ up.T)


def profile_ffn(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act, *,
                k_act: int = K_ACT, normalize: bool = True, chunk: int = 4096) -> Profile:
    """Markers and activation rates of the FFN (``gate``, ``up``, ``act``) on inputs ``x``
    (q, d), processed ``chunk`` tokens at a time."""
    if not 1 <= k_act <= gate.shape[0]:
        raise ValueError(f"k_act must be in [1, {gate.shape[0]}], got {k_act}")
    x = x.reshape(-1, x.shape[-1])
    markers = torch.zeros(x.shape[0], gate.shape[0], dtype=torch.bool)
    for s in range(0, x.shape[0], chunk):
        h = hidden_states(x[s:s + chunk], gate, up, act, normalize).abs()
        idx = h.topk(k_act, dim=-1).indices.cpu()
        markers[s:s + chunk].scatter_(1, idx, True)
    return Profile(markers, markers.double().mean(dim=0))
