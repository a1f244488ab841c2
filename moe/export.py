"""Export of a restructured Llama / Qwen2 model to the standard ``Qwen2MoeForCausalLM`` layout
(no remote code), and the approximation that costs (moe.md section 5.2-5.3).

Mapping of a CMoE block (S*m shared neurons, N_r routed experts of m, top-k):
* ``shared_expert`` = the shared SwiGLU with ``down_proj`` x 2 and ``shared_expert_gate`` = 0, so
  ``sigmoid(0) * 2 = 1``: exact (power-of-two scaling).
* ``experts`` = the routed experts (same fused layout) with ``down_proj`` x k.
* ``gate.weight`` = eps * W, a *linear* router; Qwen2-MoE renormalises the top-k softmax
  probabilities (``norm_topk_prob``), which tend to 1/k as eps -> 0, so each selected expert's
  weight k * p_j / sum(p) = 1 + O(eps * logit gap): the training-free unit gates (eps = 2^-12).
* W, the only real approximation (CMoE's router is a non-linear mini-SwiGLU): ``"fit"`` = least
  squares of the per-token centred log(s + b) (top-k of it = CMoE's selection) on calibration
  FFN inputs; ``"representative"`` = the normalised representative gate rows G.
Learned gate scales u != 0 cannot be expressed and are dropped (``ExportReport.dropped_scale``).
Unrestructured layers stay dense (``mlp_only_layers``); attention, norms and embeddings are copied.
No Mixtral export: Mixtral has no shared-expert slot and its router no bias, so the always-on
shared neurons could only be approximated (as experts a linear router happens to pick).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .config import parse_config
from .convert import decoder_layers
from .modules import CMoEBlock

EPS = 2.0**-12


@dataclass(frozen=True)
class ExportReport:
    """Per restructured layer: ``topk_agreement`` (fraction of calibration tokens whose top-k
    set equals CMoE's; None without calibration) and the largest dropped |u|."""

    router: str
    topk_agreement: list[float | None]
    dropped_scale: float

    def to_dict(self) -> dict:
        return asdict(self)


def qwen2_moe_config(model: nn.Module):
    """The ``Qwen2MoeConfig`` matching a restructured Llama / Qwen2 ``model``."""
    from transformers import Qwen2MoeConfig

    src, meta = model.config, model.config.cmoe
    cfg = parse_config(meta["config"])
    if cfg.shared == 0 or cfg.routed == 0:
        raise NotImplementedError("Qwen2-MoE export needs shared and routed experts")
    if getattr(src, "attention_bias", False) or getattr(src, "mlp_bias", False):
        raise NotImplementedError("Llama attention / MLP biases have no Qwen2-MoE slot")
    if getattr(src, "use_sliding_window", False):
        raise NotImplementedError("sliding-window attention is not exported")
    m = cfg.expert_size(src.intermediate_size)
    n_layers = src.num_hidden_layers
    return Qwen2MoeConfig(
        vocab_size=src.vocab_size, hidden_size=src.hidden_size,
        intermediate_size=src.intermediate_size, num_hidden_layers=n_layers,
        num_attention_heads=src.num_attention_heads,
        num_key_value_heads=src.num_key_value_heads, hidden_act=src.hidden_act,
        max_position_embeddings=src.max_position_embeddings, rms_norm_eps=src.rms_norm_eps,
        tie_word_embeddings=src.tie_word_embeddings, rope_parameters=src.rope_parameters,
        head_dim=getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads,
        qkv_bias=src.model_type == "qwen2", use_sliding_window=False,
        num_experts=cfg.routed, num_experts_per_tok=cfg.active, moe_intermediate_size=m,
        shared_expert_intermediate_size=cfg.shared * m, norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i in range(n_layers) if i not in meta["layers"]],
        bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id,
        pad_token_id=getattr(src, "pad_token_id", None),
    )


def _fit_router(block: CMoEBlock, x: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Least-squares W (N_r, d) with x W^T ~ centred log(s + b) on inputs x (q, d)."""
    x = x.double()
    target = (block.gate.scores(x.float()).double()
              + block.gate.e_score_correction_bias.double()).clamp_min(1e-30).log()
    target = target - target.mean(dim=-1, keepdim=True)
    gram = x.T @ x + ridge * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.T @ target).T.float()


def _ffn_inputs(model: nn.Module, calibration: torch.Tensor) -> dict[int, torch.Tensor]:
    inputs: dict[int, list[torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(decoder_layers(model)):
        if isinstance(layer.mlp, CMoEBlock):
            hooks.append(layer.mlp.register_forward_pre_hook(
                lambda _, a, i=i: inputs.setdefault(i, []).append(
                    a[0].reshape(-1, a[0].shape[-1]))))
    try:
        with torch.no_grad():
            for ids in calibration.split(1):
                model(ids)
    finally:
        for h in hooks:
            h.remove()
    return {i: torch.cat(v) for i, v in inputs.items()}


@torch.no_grad()
def export_qwen2_moe(model: nn.Module, calibration: torch.Tensor | None = None,
                     router: str = "fit", eps: float = EPS):
    """A ``Qwen2MoeForCausalLM`` equivalent to the restructured ``model`` up to its linear
    router (see the module docstring), and an ``ExportReport``. ``router="fit"`` needs
    ``calibration`` token ids (n, L)."""
    from transformers import Qwen2MoeForCausalLM

    if router not in ("fit", "representative"):
        raise ValueError(f"router must be 'fit' or 'representative', got {router!r}")
    if router == "fit" and calibration is None:
        raise ValueError("router='fit' needs calibration token ids")
    model.eval()
    config = qwen2_moe_config(model)
    ks = {b.top_k for b in model.modules() if isinstance(b, CMoEBlock)}
    if len(ks) != 1:
        raise NotImplementedError(f"blocks route to different numbers of experts {sorted(ks)}")
    k = config.num_experts_per_tok = ks.pop()  # a runtime top_k override is exported
    inputs = _ffn_inputs(model, calibration) if calibration is not None else {}
    state = {}
    agreement: list[float | None] = []
    dropped = 0.0
    for name, tensor in model.state_dict().items():
        if ".mlp." not in name:
            state[name] = tensor
    for i, layer in enumerate(decoder_layers(model)):
        pre = f"model.layers.{i}.mlp."
        block = layer.mlp
        if not isinstance(block, CMoEBlock):
            for n, p in block.state_dict().items():
                state[pre + n] = p
            continue
        w = _fit_router(block, inputs[i]) if router == "fit" else block.gate.weight.float()
        if i in inputs:
            x = inputs[i].float()
            ref = block.gate(x)[0].sort(-1).values
            got = (x @ w.T).topk(k, dim=-1).indices.sort(-1).values
            agreement.append(float((ref == got).all(-1).float().mean()))
        else:
            agreement.append(None)
        dropped = max(dropped, float(block.gate.scale.abs().max()))
        sh = block.shared_experts
        dtype = sh.down_proj.weight.dtype
        state[pre + "gate.weight"] = (eps * w).to(dtype)
        state[pre + "experts.gate_up_proj"] = block.experts.gate_up_proj
        state[pre + "experts.down_proj"] = block.experts.down_proj * k
        state[pre + "shared_expert.gate_proj.weight"] = sh.gate_proj.weight
        state[pre + "shared_expert.up_proj.weight"] = sh.up_proj.weight
        state[pre + "shared_expert.down_proj.weight"] = sh.down_proj.weight * 2
        state[pre + "shared_expert_gate.weight"] = torch.zeros(1, config.hidden_size, dtype=dtype)
    out = Qwen2MoeForCausalLM(config).to(next(model.parameters()).dtype)
    missing, unexpected = out.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"export mismatch: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return out.eval(), ExportReport(router, agreement, dropped)
