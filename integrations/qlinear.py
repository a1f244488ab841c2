"""``QuantLinear``: a Linear layer holding its weight in a block format, packed.

The weight ``W (N, K)`` is stored as ``ln.pack`` output (element codes packed two per byte for
4-bit formats, four per three bytes for FP6, scales linear, HiF4 metadata words) in buffers
``w_data``, ``w_scales``, ``w_meta`` and ``w_tensor_scale``; the layout metadata (format, shape,
pad, pre-scale, options) is ``meta`` (JSON, saved by ``save_quantized``). The float weight used
by ``forward`` is ``ln.dequantize(ln.unpack(...))``, computed once and kept in a non-persistent
buffer, so a saved and reloaded layer computes bit-identical outputs.

``forward(x)``: ``x -> rotate(x) -> fake_quant(x, activations) -> x @ W_deq^T + b``. ``rotation``
(``ptq.hadamard``) is fused into the stored weight (``W R``) and applied online to ``x``.
Without a weight spec the layer keeps a float ``weight`` (activation-only quantization).
Linears called in a row on the same input tensor with the same rotation and activation spec
(q/k/v, gate/up) reuse the first one's quantized input instead of quantizing it again (same
values; a one-entry cache keyed by tensor identity and version counter, bypassed when autograd
needs the graph and for inference-mode tensors).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .fakequant import QuantSpec, dequantize_array, fake_quant, parse_spec, quantize_array
from .ptq.hadamard import rotate

_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


def quantize_weight(w: np.ndarray, spec: QuantSpec, inputs: np.ndarray | None = None):
    """RTN quantization of ``w (N, K)`` along K; ``prescale_search`` picks alpha per tensor."""
    from lowbit import numerics as ln

    if spec.options.get("prescale_search"):
        found = ln.search_prescale(w, spec.fmt, inputs=inputs, **{
            k: v for k, v in spec.quantize_options.items() if k != "prescale"})
        return quantize_array(w, spec, prescale=found.alpha if found.alpha != 1.0 else None)
    return quantize_array(w, spec)


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool,
                 weight_spec=None, act_spec=None, rotation: dict | None = None,
                 meta: dict | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_spec = parse_spec(weight_spec)
        self.act_spec = parse_spec(act_spec)
        self.rotation = rotation or None
        self.meta = meta
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        if meta is None:
            self.weight = nn.Parameter(torch.zeros(out_features, in_features),
                                       requires_grad=False)
        else:
            self.weight = None
            for name, (shape, dt) in meta["buffers"].items():
                self.register_buffer(name, torch.zeros(shape, dtype=_DTYPES[dt]))
        self.register_buffer("w_deq", None, persistent=False)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_spec=None, act_spec=None,
                    rotation: dict | None = None, qweight=None) -> QuantLinear:
        """Wrap ``linear``. ``qweight``: a ``QuantizedTensor`` of the (rotated) weight computed
        by a PTQ method; default RTN of ``W R``."""
        weight_spec, act_spec = parse_spec(weight_spec), parse_spec(act_spec)
        w = linear.weight.detach().float()
        if rotation:
            w = rotate(w, rotation)
        if weight_spec is not None and qweight is None:
            qweight = quantize_weight(w.cpu().numpy(), weight_spec)
        meta, arrays = (None, None) if qweight is None else _pack(qweight)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                weight_spec, act_spec, rotation, meta)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach().float())
        if meta is None:
            m.weight.data.copy_(w)
        else:
            for name, a in arrays.items():
                getattr(m, name).copy_(torch.from_numpy(a))
        m.to(linear.weight.device)
        m.refresh()
        return m

    def refresh(self) -> None:
        """Recompute the dequantized weight from the packed buffers."""
        if self.meta is None:
            self.w_deq = None
            return
        q = self.quantized_weight()
        self.w_deq = torch.from_numpy(dequantize_array(q, np.float32)).to(self._device())

    def _device(self):
        return next(iter(self.buffers())).device

    def quantized_weight(self):
        """The weight as a ``QuantizedTensor`` (unpacked from the buffers)."""
        from lowbit import numerics as ln

        m = self.meta
        bufs = {k: getattr(self, k).cpu().numpy() for k in m["buffers"]}
        ts = m.get("tensor_scale")
        p = ln.PackedTensor(
            fmt=m["fmt"], shape=tuple(m["shape"]), axis=m["axis"], block_size=m["block_size"],
            pad=m["pad"], data=bufs["w_data"], scales=bufs.get("w_scales"),
            meta=bufs.get("w_meta"), scale_layout="linear",
            tensor_scale=None if ts is None else np.float32(ts), prescale=m.get("prescale"),
            options=dict(m.get("options", {})),
        )
        return ln.unpack(p)

    def config(self) -> dict:
        """JSON-able description (``save_quantized``)."""
        return {
            "in_features": self.in_features, "out_features": self.out_features,
            "bias": self.bias is not None,
            "weights": None if self.weight_spec is None else self.weight_spec.to_dict(),
            "activations": None if self.act_spec is None else self.act_spec.to_dict(),
            "rotation": self.rotation, "meta": self.meta,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> QuantLinear:
        return cls(cfg["in_features"], cfg["out_features"], cfg["bias"], cfg["weights"],
                   cfg["activations"], cfg["rotation"], cfg["meta"])

    # -- forward ------------------------------------------------------------------------------

    def dense_weight(self) -> torch.Tensor:
        if self.meta is None:
            return self.weight
        if self.w_deq is None:
            self.refresh()
        return self.w_deq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _quantized_input(x, self.rotation, self.act_spec)
        w = self.dense_weight()
        return nn.functional.linear(x, w.to(x.dtype),
                                    None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, weights={self.weight_spec}, "
                f"activations={self.act_spec}, rotation={self.rotation}")


_LAST: list = []  # [(input, input version, rotation, spec), quantized input]


def _quantized_input(x: torch.Tensor, rotation, spec) -> torch.Tensor:
    """``fake_quant(rotate(x, rotation), spec)``, reused for the same unmodified input."""
    if (x.requires_grad and torch.is_grad_enabled()) or x.is_inference():
        return fake_quant(rotate(x, rotation), spec)  # (inference tensors have no version)
    if _LAST:
        (x0, version, rot0, spec0), out = _LAST
        if x0 is x and version == x._version and rot0 == rotation and spec0 == spec:
            return out
    out = fake_quant(rotate(x, rotation), spec)
    _LAST[:] = [(x, x._version, rotation, spec), out]
    return out


def _pack(q) -> tuple[dict, dict]:
    """``QuantizedTensor`` -> (JSON meta, numpy arrays for the buffers)."""
    from lowbit import numerics as ln

    p = ln.pack(q)
    arrays = {"w_data": np.ascontiguousarray(p.data)}
    if p.scales is not None:
        arrays["w_scales"] = np.ascontiguousarray(p.scales)
    if p.meta is not None:
        arrays["w_meta"] = np.ascontiguousarray(p.meta)
    meta = {
        "fmt": p.fmt, "shape": list(p.shape), "axis": p.axis, "block_size": p.block_size,
        "pad": p.pad,
        "tensor_scale": None if p.tensor_scale is None else float(p.tensor_scale),
        "prescale": p.prescale,
        "options": {k: v for k, v in p.options.items()},
        "buffers": {k: (list(a.shape), str(a.dtype)) for k, a in arrays.items()},
    }
    return meta, arrays
