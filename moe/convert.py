"""Dense -> MoE restructuring of a transformers causal LM, layer by layer, and its save / load.

``restructure`` runs the calibration sequences through the decoder one layer at a time (GPTQ
style): the inputs of layer 0 and every layer's keyword arguments (masks, rotary embeddings) are
captured once, then for each layer the FFN inputs are recorded, the FFN is profiled, partitioned
and replaced by a ``CMoEBlock``, and the layer is run again with the new block to produce the
next layer's inputs, so every profile sees the errors of the layers restructured before it.

A restructured model saves with ``save_pretrained``; ``config.cmoe`` records the configuration
and the restructured layers, and ``load_restructured`` rebuilds the blocks before loading the
weights (plain transformers classes, no remote code).
"""

from __future__ import annotations

import pathlib
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .config import MoEConfig, parse_config
from .modules import CMoEBlock
from .partition import partition_neurons
from .profile import K_ACT, profile_ffn
from .router import BIAS_UPDATE_RATE


@dataclass(frozen=True)
class LayerReport:
    """``silent``: neurons never marked; ``load``: fraction of calibration routing slots each
    routed expert received; ``seconds``: profiling + partition + rebuild time."""

    layer: int
    silent: int
    load: list[float]
    seconds: float


@dataclass
class Conversion:
    """What ``restructure`` did: the configuration, one report per layer, the total time."""

    config: str
    tokens: int
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (``model.model.layers``)."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise NotImplementedError(f"{type(model).__name__}: no decoder layers found")
    return layers


class _Catcher(nn.Module):
    """Stands in for a decoder layer: records its input and keyword arguments, passes through."""

    def __init__(self, layer: nn.Module, record: list):
        super().__init__()
        self.layer, self.record = layer, record

    def forward(self, hidden_states, *args, **kwargs):
        self.record.append((hidden_states, kwargs))
        return hidden_states


def _run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _capture(model: nn.Module, batches: list[torch.Tensor]) -> tuple[list, list[list[dict]]]:
    """Layer-0 inputs per batch and every layer's keyword arguments per batch."""
    layers = decoder_layers(model)
    records: list[list] = [[] for _ in layers]
    originals = list(layers)
    for i, layer in enumerate(originals):
        layers[i] = _Catcher(layer, records[i])
    try:
        for ids in batches:
            model.base_model(input_ids=ids, use_cache=False)
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    hidden = [h for h, _ in records[0]]
    kwargs = [[kw for _, kw in rec] for rec in records]
    return hidden, kwargs


class _Stop(nn.Module):
    """Stands in for an FFN: records its input, returns zeros."""

    def __init__(self, record: list):
        super().__init__()
        self.record = record

    def forward(self, x):
        self.record.append(x)
        return torch.zeros_like(x)


def _ffn_inputs(layer: nn.Module, hidden: list, kwargs: list) -> tuple[list, list]:
    """FFN inputs and residual streams (inputs of ``post_attention_layernorm``) of ``layer`` per
    batch; the layer output is then ``residual + mlp(input)``, as the Llama-family layers compute
    it. The dense FFN is not run."""
    if not hasattr(layer, "post_attention_layernorm") or any(
            hasattr(layer, n) for n in ("post_feedforward_layernorm", "pre_feedforward_layernorm")):
        raise NotImplementedError(f"{type(layer).__name__}: not a pre-norm Llama-style layer")
    inputs: list[torch.Tensor] = []
    residuals: list[torch.Tensor] = []
    hook = layer.post_attention_layernorm.register_forward_pre_hook(
        lambda _, a: residuals.append(a[0]))
    mlp, layer.mlp = layer.mlp, _Stop(inputs)
    try:
        for h, kw in zip(hidden, kwargs, strict=True):
            _run_layer(layer, h, kw)
    finally:
        hook.remove()
        layer.mlp = mlp
    return inputs, residuals


@torch.no_grad()
def restructure(model: nn.Module, config: str | MoEConfig, calibration: torch.Tensor, *,
                k_act: int = K_ACT, normalize: bool = True, batch_size: int = 1,
                bias_update_rate: float = BIAS_UPDATE_RATE, layers: list[int] | None = None,
                progress: bool = False) -> Conversion:
    """Replace the SwiGLU FFN of ``layers`` (default all) of ``model`` in place by CMoE blocks.

    ``calibration``: token ids (n, L), run ``batch_size`` sequences at a time; ``k_act`` and
    ``normalize``: profiling (``profile.profile_ffn``); ``bias_update_rate``: balancing gamma.
    """
    from tqdm.auto import tqdm

    config = parse_config(config)
    start = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    batches = [b.to(device) for b in calibration.split(batch_size)]
    hidden, kwargs = _capture(model, batches)
    all_layers = decoder_layers(model)
    chosen = sorted(set(range(len(all_layers)) if layers is None else layers))
    act = getattr(model.config, "hidden_act", "silu")
    report = Conversion(config.name, calibration.numel())
    for i in tqdm(range(max(chosen) + 1), desc=f"CMoE {config.name}", disable=not progress):
        layer = all_layers[i]
        if i in chosen:
            t0 = time.perf_counter()
            inputs, residuals = _ffn_inputs(layer, hidden, kwargs[i])
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs])
            mlp = layer.mlp
            prof = profile_ffn(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn,
                               k_act=k_act, normalize=normalize)
            block = CMoEBlock.from_dense(mlp, partition_neurons(prof, config), config, act,
                                         bias_update_rate)
            layer.mlp = block.train(layer.training)
            load = torch.zeros(config.routed)
            if block.gate is not None:
                idx, _ = block.gate(x)
                load = torch.bincount(idx.flatten().cpu(), minlength=config.routed) / idx.numel()
            report.layers.append(LayerReport(i, prof.silent, [round(float(v), 4) for v in load],
                                             round(time.perf_counter() - t0, 3)))
            hidden = [r + layer.mlp(t) for r, t in zip(residuals, inputs, strict=True)]
        else:
            hidden = [_run_layer(layer, h, kw) for h, kw in zip(hidden, kwargs[i], strict=True)]
    model.config.cmoe = {"config": config.name, "layers": chosen, "k_act": k_act,
                         "normalize": normalize, "bias_update_rate": bias_update_rate,
                         "calibration_tokens": calibration.numel()}
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def install_blocks(model: nn.Module, meta: dict) -> None:
    """Replace the FFNs named by ``meta`` (a ``config.cmoe``) with empty CMoE blocks."""
    config = parse_config(meta["config"])
    act = getattr(model.config, "hidden_act", "silu")
    layers = decoder_layers(model)
    for i in meta["layers"]:
        mlp = layers[i].mlp
        w = mlp.gate_proj.weight
        block = CMoEBlock(w.shape[1], w.shape[0], config, act, meta["bias_update_rate"])
        layers[i].mlp = block.to(device=w.device, dtype=w.dtype).gate_float32()


def load_safetensors_state(model: nn.Module, path: pathlib.Path, cfg) -> None:
    """Load every ``*.safetensors`` of ``path`` into ``model``; anything missing (but a tied
    ``lm_head``) or unexpected is an error."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path}: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def load_restructured(path: str | pathlib.Path, dtype: torch.dtype | None = None) -> nn.Module:
    """A model saved by ``save_pretrained`` after ``restructure`` (weights, router bias and all)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = pathlib.Path(path)
    cfg = AutoConfig.from_pretrained(path)
    meta = getattr(cfg, "cmoe", None)
    if meta is None:
        raise ValueError(f"{path} holds no restructured model (config.cmoe missing)")
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32)
    install_blocks(model, meta)
    load_safetensors_state(model, path, cfg)
    for block in model.modules():
        if isinstance(block, CMoEBlock):
            block.gate_float32()
    return model.eval()
