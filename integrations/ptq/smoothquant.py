"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights.

For a group of linear layers reading the same input ``x (T, K)`` (q/k/v after the attention
norm; gate/up after the MLP norm; down after up), per input channel ``j``:

    s_j = max_t |x_tj|^alpha / max_n |W_nj|^(1 - alpha)     (over every weight of the group)
    x' = x diag(s)^-1,   W' = W diag(s),   so x' W'^T = x W^T exactly.

``diag(s)^-1`` is folded into the preceding op: the RMSNorm gain (``gamma_j /= s_j``) or, for
``down_proj``, the rows of ``up_proj`` (``down(act(gate) * up(x))`` is linear in ``up``'s
output). ``v -> o`` is not folded (GQA repeats value heads). The migration strength ``alpha``
(default 0.5) is ``method_options["alpha"]``; with ``alpha="search"`` it is chosen per group from
``{0.3, 0.4, ..., 0.8}`` by the group's output error with the block quantizers in the loop.
Per-block scales already isolate outliers to their block, so smoothing matters less for MX /
NVFP4 than for per-tensor INT8 (ptq.md 4.3). Calibration is layer by layer
(``calibrate.sequential``); the weights are then quantized by RTN
(``method_options["gptq"]=True``: GPTQ on the smoothed weights).
"""

from __future__ import annotations

import torch

from ..fakequant import fake_quant
from ..qlinear import QuantLinear
from .calibrate import InputStats, sequential

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def layer_groups(layer) -> list[tuple[object, list[str], str]]:
    """``(preceding module, [linear attribute paths], kind)`` for a Llama-style decoder layer."""
    groups = []
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    norm1 = getattr(layer, "input_layernorm", None)
    norm2 = getattr(layer, "pre_feedforward_layernorm", None) or \
        getattr(layer, "post_attention_layernorm", None)
    for norm in (norm1, norm2):
        if norm is not None and "gemma" in type(norm).__name__.lower():
            raise NotImplementedError("Gemma RMSNorm (1 + weight) folding is not implemented")
    if attn is not None and norm1 is not None and all(
            hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")):
        groups.append((norm1, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                       "norm"))
    if mlp is not None and norm2 is not None and all(
            hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        groups.append((norm2, ["mlp.gate_proj", "mlp.up_proj"], "norm"))
        groups.append((mlp.up_proj, ["mlp.down_proj"], "linear"))
    return groups


def fold(prev, linears: list, s: torch.Tensor, kind: str) -> None:
    """``x' = x / s`` in ``prev``'s output, ``W' = W * s`` in each linear (exact in real
    arithmetic)."""
    with torch.no_grad():
        if kind == "norm":
            prev.weight.div_(s.to(prev.weight.dtype))
        else:
            prev.weight.div_(s[:, None].to(prev.weight.dtype))
            if prev.bias is not None:
                prev.bias.div_(s.to(prev.bias.dtype))
        for lin in linears:
            lin.weight.mul_(s[None, :].to(lin.weight.dtype))


def group_error(x, linears, s, wspec, aspec) -> float:
    """Output MSE of the group with weights ``W diag(s)`` and inputs ``x / s`` quantized."""
    xs = fake_quant(x / s, aspec)
    err = 0.0
    for lin in linears:
        w = lin.weight.detach().float()
        ref = x @ w.T
        q = fake_quant(w * s, wspec)
        err += ((xs @ q.T - ref) ** 2).mean().item()
    return err


def smooth_scales(xmax, linears, alpha: float) -> torch.Tensor:
    wmax = torch.stack([lin.weight.detach().abs().amax(0).float() for lin in linears]).amax(0)
    s = xmax.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(min=1e-5)


def apply(model, targets: dict, wspec, aspec, rot, calibration, opts: dict,
          progress: bool = True) -> None:
    from ..model import set_module
    from . import gptq, rtn

    if calibration is None:
        raise ValueError("SmoothQuant needs calibration token ids")
    if rot:
        raise ValueError("SmoothQuant with a rotation is not supported")
    alpha = opts.get("alpha", 0.5)
    search = alpha == "search"

    def fn(layer, named, run):
        groups = layer_groups(layer)
        watch = {p: layer.get_submodule(p) for _, paths, _ in groups for p in paths[:1]}
        stats = InputStats(watch, gram=False, sample=256 if search else 0)
        run()
        stats.remove()
        for prev, paths, kind in groups:
            linears = [layer.get_submodule(p) for p in paths]
            st = stats.stats[paths[0]]
            if search:
                x = st["x"]
                best = min(ALPHAS, key=lambda a: group_error(
                    x, linears, smooth_scales(st["max"], linears, a), wspec, aspec))
            else:
                best = float(alpha)
            fold(prev, linears, smooth_scales(st["max"], linears, best), kind)
        if opts.get("gptq") and wspec is not None:
            gptq.apply_layer(model, layer, named, run, wspec, aspec, None, opts)
        else:
            for name, lin in named.items():
                set_module(model, name, QuantLinear.from_linear(lin, wspec, aspec, None))

    seen = sequential(model, calibration, targets, fn, progress, opts.get("batch_size", 4))
    rest = {n: m for n, m in targets.items() if n not in seen}
    if rest:
        rtn.apply(model, rest, wspec, aspec, None, progress=False)
