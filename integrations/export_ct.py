"""Export a model quantized by ``quantize_model`` as a compressed-tensors checkpoint (for vLLM).

    from lowbit.integrations.export_ct import export_compressed_tensors
    quantize_model(model, weights="nvfp4")
    export_compressed_tensors(model, "out/", tokenizer=tok)   # config.json + model.safetensors

The layout is the one compressed-tensors 0.20.1 writes itself (``ModelCompressor.compress_model``
+ ``save_pretrained`` + ``update_config``) for its presets NVFP4(A16), MXFP4(A16) and MXFP8(A16):
one config group ``group_0`` targeting ``Linear``, every ``nn.Linear`` that is not a lowbit
``QuantLinear`` (``lm_head`` by default) in ``ignore``, ``quantization_status: compressed``.
Per quantized layer ``L`` (weight ``W (N, K)``, blocks along K, K a multiple of the block):

* ``nvfp4`` -> format ``nvfp4-pack-quantized`` (strategy ``tensor_group``, group 16):
  ``L.weight_packed`` uint8 ``(N, K/2)``: E2M1 codes, element ``2i`` in the LOW nibble and
  ``2i+1`` in the high nibble (sign bit 0x8), i.e. lowbit's ``pack`` bytes unchanged;
  ``L.weight_scale`` float8_e4m3fn ``(N, K/16)``: the UE4M3 block-scale bytes unchanged;
  ``L.weight_global_scale`` float32 ``(1,)``: ``G``, the ENCODE scale. lowbit keeps the DECODE
  tensor scale ``ts`` (``x ~= e2m1 * S_b * ts``); compressed-tensors decodes
  ``x = e2m1 * S_b / G`` (its ``G = 448 * 6 / amax``), so ``G = fl32(1 / ts)``. The export
  checks ``fl32(1 / G) == ts`` bit for bit. Under lowbit's default ``transformer_engine``
  algorithm ``ts = fl32(1 / S_enc)`` and the check passed on 200,000 random ``S_enc``; about
  17 % of arbitrary float32 ``ts`` (significand above ~1.42, reachable with
  ``algorithm=torchao|modelopt``) have no such reciprocal and are refused.
* ``mxfp4`` -> ``mxfp4-pack-quantized`` (strategy ``group``, group 32): ``L.weight_packed`` as
  above; ``L.weight_scale`` uint8 ``(N, K/32)``: the E8M0 byte ``127 + k`` (scale ``2**k``).
* ``mxfp8_e4m3`` -> ``mxfp8-quantized`` (strategy ``group``, group 32): ``L.weight``
  float8_e4m3fn ``(N, K)``: the OFP8 E4M3 codes unchanged; ``L.weight_scale`` uint8 as for mxfp4.

Decoded values: MX weights are e2m1/e4m3 times ``2**k``, exact in bfloat16, so compressed-tensors'
decompressor (bfloat16 output) returns lowbit's weights bit for bit. For NVFP4 it computes
``bf16(fl32(e2m1 * fl32(S_b / G)))``; unless ``ts`` is a power of two (then everything is exact)
the float32 ``S_b / G`` can put a product one bfloat16 ulp away from ``bf16(e2m1 * S_b * ts)``.

Every other tensor (embeddings, norms, biases, ignored linears) is written as it is (cast to
``dtype`` when given), tied tensors once. The stored codes and scales are lowbit's, so the scale
rule and rounding that produced them do not matter; what the layout cannot express is refused
with ``ValueError``: other formats (hif4, hif8, int*, mxint8, mxfp6, mxfp8_e5m2), the MX pre-scale
(its ``1/alpha`` has no place), online rotations and transforms (QuantLinear ``rotation``, a
QuantLinear wrapped by a lowbit module such as FlatQuant's), K not a multiple of the block
(lowbit pads), activation-only layers, mixed formats, NaN scales, and a quantized KV cache
(unless dropped).

Activations (``activations``): compressed-tensors expresses dynamic MX activation quantization
as ``input_activations`` (``dynamic: true``, group 32, uint8 scales), computed at run time by the
engine, in the weights' format (its presets MXFP4 and MXFP8 pair equal formats; other pairs
are refused). Its reference rule (``generate_mx_scales``) is
``k = floor(log2(round_half_up(amax, 1 mantissa bit))) - emax``, for MXFP8 too, with
round-to-nearest-even elements.

* ``"record"`` (default): write ``input_activations`` only when lowbit's activation spec is that
  rule: mxfp4 with ``scale_rule="even"``, ``rounding="nearest_even"``; else refuse. No lowbit
  MXFP8 rule rounds the amax at 1 mantissa bit, so mxfp8 activations need ``"engine"``.
* ``"engine"``: write the MX scheme (mxfp4 / mxfp8_e4m3) whatever lowbit's scale rule; the
  serving engine's rule then replaces it (noted in ``lowbit_export.json``).
* ``"drop"``: weights only (the ``A16`` scheme); the activation spec is noted as dropped.

NVFP4 activations are refused in every mode but ``"drop"``: the layout needs a calibrated
static ``input_global_scale`` per layer, and lowbit takes the global amax of each call.
``lowbit_export.json`` records the source specs, the mode and these notes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .fakequant import QuantSpec, parse_spec
from .qlinear import QuantLinear

CT_VERSION = "0.20.1"
ACTIVATION_MODES = ("record", "engine", "drop")
EXPORT_NAME = "lowbit_export.json"
WEIGHTS_NAME = "model.safetensors"
_F32 = np.float32

_WEIGHT = {  # lowbit format -> (compressed-tensors format, weight args)
    "nvfp4": ("nvfp4-pack-quantized", {
        "dynamic": False, "group_size": 16, "num_bits": 4, "scale_dtype": "torch.float8_e4m3fn",
        "strategy": "tensor_group", "symmetric": True, "type": "float"}),
    "mxfp4": ("mxfp4-pack-quantized", {
        "dynamic": False, "group_size": 32, "num_bits": 4, "scale_dtype": "torch.uint8",
        "strategy": "group", "symmetric": True, "type": "float"}),
    "mxfp8_e4m3": ("mxfp8-quantized", {
        "dynamic": False, "group_size": 32, "num_bits": 8, "scale_dtype": "torch.uint8",
        "strategy": "group", "symmetric": True, "type": "float"}),
}
WEIGHT_FORMATS = tuple(_WEIGHT)
_ACT_BITS = {"mxfp4": 4, "mxfp8_e4m3": 8}
_NAN_SCALE = {"nvfp4": 0x7F, "mxfp4": 0xFF, "mxfp8_e4m3": 0xFF}


@dataclass
class ExportReport:
    """What ``export_compressed_tensors`` wrote."""

    out_dir: str
    weights: str
    ct_format: str
    layers: int
    input_activations: dict | None
    ignore: list[str]
    notes: list[str] = field(default_factory=list)


def export_compressed_tensors(model: nn.Module, out_dir: str, *, activations: str = "record",
                              drop_kv_cache: bool = False, dtype: torch.dtype | None = None,
                              tokenizer=None, progress: bool = True) -> ExportReport:
    """Write ``model`` (quantized by ``quantize_model``) to ``out_dir`` in the compressed-tensors
    layout of the module docstring; return an ``ExportReport``. Raises ``ValueError`` for
    anything the layout cannot express."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations={activations!r}; expected one of {ACTIVATION_MODES}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ValueError("the model has no QuantLinear layer; quantize it with quantize_model")
    wfmt = _weight_format(model, layers)
    notes: list[str] = []
    act_args = _activation_args(layers, wfmt, activations, notes)
    notes += _kv_cache_notes(model, drop_kv_cache)
    ignore = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear)]

    tensors: dict[str, torch.Tensor] = {}
    scales: dict[str, dict] = {}
    for name, m in tqdm(layers.items(), desc="export", disable=not progress):
        layer_tensors, info = _layer_tensors(name, m, wfmt)
        tensors.update(layer_tensors)
        if info:
            scales[name] = info
    owned = tuple(n + "." for n in layers)
    seen: set[tuple] = set()
    for key, t in model.state_dict().items():
        if key.startswith(owned) and not key.endswith(".bias"):
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen:
            continue  # tied tensor (lm_head = embed_tokens)
        seen.add(ident)
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[key] = t.contiguous()

    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": "pt"})
    ct_format = _WEIGHT[wfmt][0]
    qconfig = quantization_config(wfmt, act_args, ignore)
    model.config.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg["quantization_config"] = qconfig
    if dtype is not None:
        cfg["dtype"] = str(dtype).removeprefix("torch.")
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    doc = {
        "compressed_tensors_layout": CT_VERSION, "weights": wfmt, "ct_format": ct_format,
        "activations_mode": activations,
        "lowbit_config": getattr(model, "lowbit_config", {}),
        "nvfp4_tensor_scales": scales, "notes": notes,
    }
    with open(os.path.join(out_dir, EXPORT_NAME), "w") as fh:
        json.dump(doc, fh, indent=1)
    return ExportReport(out_dir, wfmt, ct_format, len(layers), act_args, ignore, notes)


def quantization_config(wfmt: str, act_args: dict | None, ignore: list[str]) -> dict:
    """The ``quantization_config`` entry of ``config.json`` (compressed-tensors 0.20.1 keys)."""
    ct_format, wargs = _WEIGHT[wfmt]
    group = {"format": ct_format, "input_activations": act_args, "output_activations": None,
             "targets": ["Linear"], "weights": dict(wargs)}
    return {
        "config_groups": {"group_0": group}, "format": ct_format,
        "global_compression_ratio": None, "ignore": list(ignore), "kv_cache_scheme": None,
        "moe_sparsity_config": None, "quant_method": "compressed-tensors",
        "quantization_status": "compressed", "sparsity_config": {}, "transform_config": {},
        "version": CT_VERSION,
    }


def global_scale(tensor_scale: float) -> np.float32:
    """``G = fl32(1 / ts)``, checked so that ``fl32(1 / G) == ts`` bit for bit."""
    ts = _F32(tensor_scale)
    if not np.isfinite(ts) or ts <= 0:
        raise ValueError(f"NVFP4 tensor scale {ts!r} is not a positive finite float32")
    with np.errstate(over="ignore"):
        g = _F32(1) / ts
    if not np.isfinite(g) or _F32(1) / g != ts:
        raise ValueError(
            f"NVFP4 decode tensor scale {float(ts)!r} ({ts.view(np.uint32):#010x}) has no float32 "
            "global scale G with fl32(1/G) == ts, so compressed-tensors' G = 1/ts cannot "
            "carry it exactly; quantize with the default algorithm (transformer_engine)")
    return g


# -- checks --------------------------------------------------------------------------------------


def _weight_format(model: nn.Module, layers: dict[str, QuantLinear]) -> str:
    fmts = set()
    for name, m in layers.items():
        if type(m) is not QuantLinear:
            raise ValueError(f"{name}: {type(m).__name__} is not a plain QuantLinear")
        if m.meta is None:
            raise ValueError(f"{name}: activation-only layer (float weight); export needs "
                             "quantized weights in every QuantLinear")
        if m.rotation:
            raise ValueError(f"{name}: online rotation {m.rotation} cannot be expressed "
                             "(compressed-tensors transform configs are not written)")
        parent = model.get_submodule(name.rpartition(".")[0])
        if type(parent).__module__.startswith("lowbit."):
            raise ValueError(f"{name} sits inside a lowbit {type(parent).__name__} (an online "
                             "transform, e.g. FlatQuant), which cannot be expressed")
        fmts.add(m.meta["fmt"])
    if len(fmts) != 1:
        raise ValueError(f"mixed weight formats {sorted(fmts)}; one format per export")
    fmt = fmts.pop()
    if fmt not in _WEIGHT:
        raise ValueError(f"weight format {fmt!r} has no compressed-tensors layout here; "
                         f"supported: {sorted(_WEIGHT)}")
    return fmt


def _layer_tensors(name: str, m: QuantLinear, fmt: str) -> tuple[dict, dict | None]:
    meta = m.meta
    shape, block = tuple(meta["shape"]), meta["block_size"]
    if len(shape) != 2 or meta["axis"] != 1 or meta["pad"]:
        raise ValueError(f"{name}: weight {shape} must be 2-D, blocked along K with K a "
                         f"multiple of {block} (got axis {meta['axis']}, pad {meta['pad']})")
    if meta.get("prescale") not in (None, 1.0):
        raise ValueError(f"{name}: MX pre-scale {meta['prescale']} has no place in the "
                         "compressed-tensors layout (no per-tensor factor for MX)")
    data, sc = m.w_data.detach().cpu(), m.w_scales.detach().cpu()
    n, k = shape
    if tuple(sc.shape) != (n, k // block) or sc.dtype != torch.uint8:
        raise ValueError(f"{name}: unexpected scale buffer {tuple(sc.shape)} {sc.dtype}")
    if bool((sc == _NAN_SCALE[fmt]).any()):
        raise ValueError(f"{name}: NaN block scale (non-finite weights) cannot be exported")
    out: dict[str, torch.Tensor] = {}
    info = None
    if fmt == "mxfp8_e4m3":
        out[f"{name}.weight"] = data.reshape(n, k).contiguous().view(torch.float8_e4m3fn)
        out[f"{name}.weight_scale"] = sc.contiguous()
    else:
        out[f"{name}.weight_packed"] = data.reshape(n, k // 2).contiguous()
        if fmt == "mxfp4":
            out[f"{name}.weight_scale"] = sc.contiguous()
        else:
            out[f"{name}.weight_scale"] = sc.contiguous().view(torch.float8_e4m3fn)
            ts = _F32(meta["tensor_scale"])
            g = global_scale(ts)
            out[f"{name}.weight_global_scale"] = torch.tensor([g], dtype=torch.float32)
            info = {"tensor_scale": float(ts), "global_scale": float(g)}
    return out, info


def _activation_args(layers: dict[str, QuantLinear], wfmt: str, mode: str,
                     notes: list[str]) -> dict | None:
    specs = {str(m.act_spec) for m in layers.values()}
    if len(specs) != 1:
        raise ValueError(f"layers have different activation specs {sorted(specs)}")
    spec: QuantSpec | None = parse_spec(next(iter(layers.values())).act_spec)
    if spec is None:
        return None
    if mode == "drop":
        notes.append(f"activation quantization {spec} dropped: weight-only scheme written")
        return None
    if spec.fmt == "nvfp4":
        raise ValueError("NVFP4 activations need a calibrated static input_global_scale per "
                         "layer, which lowbit does not keep (it takes each call's amax); "
                         "use activations='drop'")
    if spec.fmt not in _ACT_BITS:
        raise ValueError(f"activation format {spec.fmt!r} cannot be expressed; supported: "
                         f"{sorted(_ACT_BITS)} (or activations='drop')")
    if spec.fmt != wfmt:
        raise ValueError(f"{wfmt} weights with {spec.fmt} activations match no "
                         "compressed-tensors scheme (its presets pair equal formats); use "
                         "activations='drop'")
    if {"prescale", "prescale_search"} & set(spec.options):
        raise ValueError(f"activation pre-scale in {spec} cannot be expressed")
    from lowbit.numerics.mx import mx_options

    o = spec.options
    opts = mx_options(o.get("preset"), scale_rule=o.get("scale_rule"),
                      rounding=o.get("rounding"))
    exact = spec.fmt == "mxfp4" and opts.scale_rule == "even" and opts.rounding == "nearest_even"
    if mode == "record" and not exact:
        raise ValueError(
            f"activations {spec} (scale_rule={opts.scale_rule}, rounding={opts.rounding}) are "
            "not compressed-tensors' dynamic MX rule (amax rounded half-up at 1 mantissa bit, "
            "then floor; RNE elements: lowbit mxfp4 with scale_rule=even); use "
            "activations='engine' to let the engine's rule replace it, or 'drop'")
    if not exact:
        notes.append(f"activations {spec}: recorded as dynamic MX group-32; the serving "
                     "engine computes the scales with its own rule, not "
                     f"scale_rule={opts.scale_rule}")
    return {"dynamic": True, "group_size": 32, "num_bits": _ACT_BITS[spec.fmt],
            "scale_dtype": "torch.uint8", "strategy": "group", "symmetric": True,
            "type": "float"}


def _kv_cache_notes(model: nn.Module, drop: bool) -> list[str]:
    kv = (getattr(model, "lowbit_config", None) or {}).get("kv_cache") or []
    kv = [s for s in kv if s is not None]
    if not kv:
        return []
    if not drop:
        raise ValueError(f"KV-cache quantization {kv} cannot be expressed (compressed-tensors "
                         "kv_cache_scheme is per-tensor/per-head FP8 with static scales); "
                         "pass drop_kv_cache=True")
    return [f"KV-cache quantization {kv} dropped"]
