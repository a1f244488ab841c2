"""Fused mixture-of-experts weights (transformers 5): quantize, pack, save, load.

transformers 5 stores the experts of Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE, DeepSeek-V3, ... as
3-D parameters of one module, ``gate_up_proj (E, 2I, H)`` and ``down_proj (E, H, I)`` (``(E, K, N)``
when the module says ``is_transposed``), not as ``nn.Linear``. Each expert ``e`` is its own GEMM
weight ``W_e (N, K)``, so it is quantized as one tensor: blocks of the weight spec along its
input dimension ``K`` (per-expert NVFP4 tensor scale), RTN with the format's scale rule (the
calibrated methods of ``ptq`` apply to the ``nn.Linear`` layers; the experts always get RTN).

Storage mirrors ``QuantLinear``: persistent buffers ``<param>_data`` / ``_scales`` / ``_meta``
(the packed codes of every expert, stacked on a leading expert axis) and a JSON layout
(``lowbit_experts``, saved by ``save_quantized``); the parameter itself becomes a non-persistent
buffer holding ``dequantize(codes)``, which every experts implementation (eager, grouped_mm,
batched_mm) reads as before. A reloaded module dequantizes the same codes: bit-identical.

Activations (``act_spec``): the experts' forward is replaced by the eager routing loop of
transformers with ``fake_quant`` on each expert GEMM's input (the routed tokens' hidden states
for ``gate_up_proj``, ``act(gate) * up`` for ``down_proj``), blocks along ``K`` per token.
Supported for the concatenated ``[gate; up]`` layout without biases (Qwen2/3-MoE, Mixtral,
OLMoE, DeepSeek-V3); other layouts raise ``NotImplementedError``.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from torch import nn

from .fakequant import dequantize_array, fake_quant, parse_spec
from .qlinear import QuantLinear, _pack, quantize_weight

EXPERT_PARAMS = ("gate_up_proj", "down_proj")


def target_experts(model: nn.Module, exclude=("lm_head",)) -> dict[str, list[str]]:
    """``{module name: [parameter names]}`` of the fused expert weights (3-D ``gate_up_proj`` /
    ``down_proj``) whose ``<module>.<param>`` name matches none of the ``exclude`` patterns."""
    from .model import _patterns

    pats = _patterns(exclude)
    out = {}
    for name, mod in model.named_modules():
        params = [p for p in EXPERT_PARAMS if _weight(mod, p) is not None
                  and not any(pat.search(f"{name}.{p}") for pat in pats)]
        if params:
            out[name] = params
    return out


def _weight(mod: nn.Module, pname: str):
    w = mod._parameters.get(pname)
    return w if w is not None and w.dim() == 3 else None


def _transposed(mod: nn.Module) -> bool:
    return bool(getattr(mod, "is_transposed", False))


def quantize_experts(mod: nn.Module, weight_spec=None, act_spec=None,
                     params=EXPERT_PARAMS) -> None:
    """Quantize the fused expert weights ``params`` of ``mod`` in place (module docstring)."""
    wspec, aspec = parse_spec(weight_spec), parse_spec(act_spec)
    if wspec is None and aspec is None:
        return
    layout = {"weights": None if wspec is None else wspec.to_dict(),
              "activations": None if aspec is None else aspec.to_dict(), "params": {}}
    if wspec is not None:
        for pname in params:
            w = _weight(mod, pname)
            if w is None:
                raise ValueError(f"{type(mod).__name__} has no 3-D parameter {pname!r}")
            dense = w.detach().float().cpu()
            if _transposed(mod):
                dense = dense.transpose(1, 2)
            metas, arrays = [], []
            for e in range(dense.shape[0]):
                meta, arr = _pack(quantize_weight(dense[e].contiguous().numpy(), wspec))
                metas.append(meta)
                arrays.append(arr)
            layout["params"][pname] = {
                "shape": list(w.shape), "dtype": str(w.dtype).removeprefix("torch."),
                "experts": [{k: v for k, v in m.items() if k != "buffers"} for m in metas],
                "buffers": {k: ([len(arrays), *a.shape], str(a.dtype))
                            for k, a in arrays[0].items()},
            }
            _make_buffers(mod, pname, layout["params"][pname], w.device)
            for k in arrays[0]:
                getattr(mod, f"{pname}_{k[2:]}").copy_(
                    torch.from_numpy(np.stack([a[k] for a in arrays])))
    _finish(mod, layout)


def prepare_experts(mod: nn.Module, layout: dict) -> None:
    """Give ``mod`` (fresh from its config) the buffers of a saved layout, to be filled by
    ``load_state_dict``; ``refresh_experts`` then dequantizes them."""
    for pname, p in layout["params"].items():
        _make_buffers(mod, pname, p, _weight(mod, pname).device)
    _finish(mod, layout, refresh=False)


def _make_buffers(mod: nn.Module, pname: str, p: dict, device) -> None:
    from .qlinear import _DTYPES

    del mod._parameters[pname]
    mod.register_buffer(pname, torch.zeros(p["shape"], dtype=getattr(torch, p["dtype"]),
                                           device=device), persistent=False)
    for k, (shape, dt) in p["buffers"].items():
        mod.register_buffer(f"{pname}_{k[2:]}", torch.zeros(shape, dtype=_DTYPES[dt],
                                                            device=device))


def _finish(mod: nn.Module, layout: dict, refresh: bool = True) -> None:
    mod.lowbit_experts = layout
    aspec = parse_spec(layout["activations"])
    if aspec is not None:
        _check_layout(mod)
        mod.forward = types.MethodType(_quantized_forward, mod)
    mod._lowbit_act = aspec
    if refresh:
        refresh_experts(mod)


def refresh_experts(mod: nn.Module) -> None:
    """Recompute every expert's dequantized weight from the packed buffers."""
    for pname, p in mod.lowbit_experts["params"].items():
        target = getattr(mod, pname)
        for e, meta in enumerate(p["experts"]):
            bufs = {k: getattr(mod, f"{pname}_{k[2:]}")[e] for k in p["buffers"]}
            ql = _Unpacker(meta, bufs)
            deq = torch.from_numpy(dequantize_array(ql.quantized_weight(), np.float32))
            if _transposed(mod):
                deq = deq.T
            target[e].copy_(deq.to(target.dtype))


class _Unpacker:
    """Just enough of ``QuantLinear`` to reuse its ``quantized_weight`` unpacking."""

    quantized_weight = QuantLinear.quantized_weight

    def __init__(self, meta: dict, bufs: dict):
        self.meta = {**meta, "buffers": bufs}
        for k, v in bufs.items():
            setattr(self, k, v)


def _check_layout(mod: nn.Module) -> None:
    ok = (getattr(mod, "has_gate", True) and not getattr(mod, "has_bias", False)
          and getattr(mod, "is_concatenated", True) and not _transposed(mod)
          and not getattr(mod, "has_post_expert_norm", False)
          and hasattr(mod, "act_fn") and hasattr(mod, "num_experts"))
    if not ok:
        raise NotImplementedError(f"activation quantization of {type(mod).__name__}: only the "
                                  "concatenated [gate; up] layout without biases is supported")


def _quantized_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' eager experts loop with fake-quantized GEMM inputs."""
    spec = self._lowbit_act
    out = torch.zeros_like(hidden_states)
    xq = fake_quant(hidden_states, spec)
    for e in torch.unique(top_k_index).tolist():
        if e >= self.num_experts:
            continue
        token, pos = torch.where(top_k_index == e)
        gate, up = nn.functional.linear(xq[token], self.gate_up_proj[e]).chunk(2, dim=-1)
        h = fake_quant(self.act_fn(gate) * up, spec)
        h = nn.functional.linear(h, self.down_proj[e]) * top_k_weights[token, pos, None]
        out.index_add_(0, token, h.to(out.dtype))
    return out


def experts_layouts(model: nn.Module) -> dict[str, dict]:
    """``{module name: layout}`` of the quantized experts (for ``save_quantized``)."""
    return {n: m.lowbit_experts for n, m in model.named_modules()
            if getattr(m, "lowbit_experts", None) is not None}
