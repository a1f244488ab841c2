"""Quantize a transformers causal LM, save it, load it back.

    from lowbit.integrations.model import quantize_model, save_quantized, load_quantized
    quantize_model(model, weights="mxfp4", activations="mxfp4", kv_cache="mxfp8_e4m3",
                   method="gptq", calibration=ids)          # ids: LongTensor (n, seq_len)
    save_quantized(model, "out/")                         # safetensors + lowbit.json + config
    model2 = load_quantized("out/")                       # bit-identical outputs

Specs (``weights``, ``activations``, ``kv_cache``): a format name with options, see
``fakequant.parse_spec`` (``"mxfp4:scale_rule=rceil,prescale=0.75"``, ``"int4:group_size=32"``,
``{"format": "nvfp4"}``), or None for none. ``kv_cache`` may be a ``(keys, values)`` pair.

Every ``nn.Linear`` whose qualified name matches none of the ``exclude`` regular expressions
(``re.search``; default ``("lm_head",)``) becomes a ``QuantLinear``; fused mixture-of-experts
weights (``experts.gate_up_proj`` / ``down_proj``, matched as ``<module>.<param>``) are quantized
per expert by RTN after the method has run on the linears (``experts``); embeddings, norms and
routers stay as they are. The KV cache becomes a ``QuantizedKVCache`` (``kvcache``).

Methods (``ptq``): ``rtn``; ``gptq``; ``mrgptq`` (block Hadamard of the weight block size +
GPTQ + the 3/4 MX pre-scale); ``smoothquant``; ``awq``; ``quarot`` (residual-stream rotation
fused into the weights, ``ptq.fuse_rotation``; ``method_options={"rotation": "block"}`` for the
block-aligned kind, ``{"gptq": True}`` for GPTQ); ``spinquant``; ``flatquant``;
``rotation="block"|"global"`` adds an online rotation to any other method. Calibrated methods
run layer by layer over the decoder layers: the inputs of layer ``i`` are the outputs of the
already-quantized layers ``< i`` (activation quantization included), the model is modified in
place and never copied.
"""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from .experts import (
    experts_layouts,
    prepare_experts,
    quantize_experts,
    refresh_experts,
    target_experts,
)
from .fakequant import check_spec, parse_spec
from .kvcache import install_kv_cache
from .qlinear import QuantLinear

CONFIG_NAME = "lowbit.json"
WEIGHTS_NAME = "model.safetensors"


def _patterns(exclude) -> list[re.Pattern]:
    if isinstance(exclude, str):
        exclude = (exclude,)
    try:
        return [re.compile(p) for p in (exclude or ())]
    except re.error as e:
        raise ValueError(f"bad exclude pattern in {exclude!r}: {e}") from e


def target_linears(model: nn.Module, exclude=("lm_head",)) -> dict[str, nn.Linear]:
    pats = _patterns(exclude)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(p.search(name) for p in pats)}


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _rotation(kind, weight_spec, size=None, seed=0):
    if kind in (None, False, "none"):
        return None
    if kind == "block":
        b = size or (weight_spec.block_size if weight_spec is not None else None) or 32
        return {"kind": "block", "size": int(b)}
    if kind == "global":
        return {"kind": "global", "seed": int(seed)}
    raise ValueError(f"rotation must be None, 'block' or 'global', got {kind!r}")


def quantize_model(model: nn.Module, weights=None, activations=None, kv_cache=None, *,
                   method: str = "rtn", calibration=None, exclude=("lm_head",),
                   rotation: str | None = None, rotation_size: int | None = None,
                   method_options: dict | None = None, progress: bool = True) -> nn.Module:
    """Quantize ``model`` in place (see the module docstring) and return it."""
    from .ptq import METHODS, run_method

    wspec, aspec = parse_spec(weights), parse_spec(activations)
    if isinstance(kv_cache, (tuple, list)):
        kspec, vspec = parse_spec(kv_cache[0]), parse_spec(kv_cache[1])
    else:
        kspec = vspec = parse_spec(kv_cache)
    for spec, what in ((wspec, "weights"), (aspec, "activations"), (kspec, "kv_cache keys"),
                       (vspec, "kv_cache values")):
        check_spec(spec, what)
    opts = dict(method_options or {})
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "mrgptq":
        rotation = rotation or "block"
        if wspec is not None and wspec.fmt.startswith("mx") and "prescale" not in wspec.options \
                and not wspec.options.get("prescale_search"):
            wspec = type(wspec)(wspec.fmt, {**wspec.options, "prescale": 0.75})
    if method == "quarot":
        rotation = rotation or "global"
    rot = _rotation(rotation, wspec, rotation_size, opts.get("seed", 0))
    targets = target_linears(model, exclude)
    experts = target_experts(model, exclude)
    if experts and method in ("quarot", "spinquant", "flatquant"):
        raise ValueError(f"method {method!r} does not transform fused expert weights "
                         f"({next(iter(experts))}); use rtn, gptq, smoothquant or awq")
    if wspec is not None or aspec is not None or rot is not None:
        run_method(model, targets, method, wspec, aspec, rot, calibration, opts, progress)
    for name, params in experts.items():
        quantize_experts(model.get_submodule(name), wspec, aspec, params)
    install_kv_cache(model, kspec, vspec)
    model.lowbit_config = {
        "weights": None if wspec is None else wspec.to_dict(),
        "activations": None if aspec is None else aspec.to_dict(),
        "kv_cache": [None if s is None else s.to_dict() for s in (kspec, vspec)],
        "method": method, "rotation": rot, "exclude": [p.pattern for p in _patterns(exclude)],
        "method_options": opts,
    }
    return model


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_quantized(model: nn.Module, path: str, tokenizer=None) -> None:
    """Write ``config.json``, ``lowbit.json`` (specs, per-layer packing metadata) and
    ``model.safetensors`` (packed codes and scales of the quantized layers, every other tensor
    as it is; tied tensors once). ``lowbit.json`` lists the QuantLinears under ``modules``
    and FlatQuant's ``FlatLinear``s (each with its QuantLinear) under ``flat``."""
    from safetensors.torch import save_model

    from .ptq.flatquant import flat_configs

    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path)
    flat = flat_configs(model)
    doc = {
        "version": 1,
        "lowbit_config": getattr(model, "lowbit_config", {}),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "modules": {n: m.config() for n, m in quant_linears(model).items()
                    if n.rpartition(".")[0] not in flat},
        "flat": flat,
        "experts": experts_layouts(model),
    }
    with open(os.path.join(path, CONFIG_NAME), "w") as fh:
        json.dump(doc, fh, indent=1)
    save_model(model, os.path.join(path, WEIGHTS_NAME))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def load_quantized(path: str, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by ``save_quantized``; its outputs are bit-identical."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from .ptq.flatquant import rebuild

    with open(os.path.join(path, CONFIG_NAME)) as fh:
        doc = json.load(fh)
    config = AutoConfig.from_pretrained(path)
    dtype = getattr(torch, doc.get("dtype", "float32"))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, cfg in doc["modules"].items():
        set_module(model, name, QuantLinear.from_config(cfg))
    rebuild(model, doc.get("flat", {}))
    for name, layout in doc.get("experts", {}).items():
        prepare_experts(model.get_submodule(name), layout)
    model.to(device)
    missing, unexpected = load_model(model, os.path.join(path, WEIGHTS_NAME), strict=False,
                                     device=str(device))
    non_persistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    missing = [k for k in missing if k not in non_persistent]
    if unexpected or missing:
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    for m in quant_linears(model).values():
        m.refresh()
    for name in doc.get("experts", {}):
        refresh_experts(model.get_submodule(name))
    cfg = doc.get("lowbit_config", {})
    kv = cfg.get("kv_cache") or [None, None]
    install_kv_cache(model, parse_spec(kv[0]), parse_spec(kv[1]))
    model.lowbit_config = cfg
    model.eval()
    return model
