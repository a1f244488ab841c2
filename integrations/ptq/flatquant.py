"""FlatQuant: learned invertible affine transforms and clipping per linear group (Sun et al. 2024,
arXiv:2410.09426), with the block-aligned variant (BATQuant-style, arXiv:2603.16590).

Linear ``y = x W^T + b``, ``W (N, K)``. For an invertible ``P (K, K)``:

    y = (x P)(W P^{-T})^T + b,

so ``x P`` is computed online (before activation quantization) and ``W P^{-T}`` is quantized
offline. Kinds of ``P``:

* ``kron`` (``rotation`` global or none): ``P = P1 (x) P2``, ``P1 (a, a)``, ``P2 (c, c)``,
  ``a c = K`` with ``a`` the largest divisor of K not above ``sqrt(K)``. For a row ``x``
  reshaped to ``X (a, c)``: ``x P = vec(P1^T X P2)`` (cost ``O(K (a + c))``), and
  ``P^{-T} = P1^{-T} (x) P2^{-T}``.
* ``block`` (``rotation=block``): ``P = blockdiag(P_1, ..., P_{K/B})``, one ``B x B`` matrix per
  scale block of the format (B = 32 MX, 16 NVFP4), so a transform never moves energy between
  blocks.

Initialisation (``init``): ``block`` starts at ``H_B`` (the block rotation of MR-GPTQ), ``kron``
at the identity (plain RTN); ``init=hadamard`` / ``identity`` forces one (a factor whose size is
not a power of two always starts at the identity). Clipping (learned, sigmoid-parameterised
``alpha = sigmoid(c)``, ``c`` starting at 4, i.e. ``alpha ~ 0.98``): activations ``x ->
clamp(x, -alpha_a m_blk, alpha_a m_blk)`` with ``m_blk`` the max ``|x|`` of each activation
block, one ``alpha_a`` per transform; weights likewise with one ``alpha_w`` per output row.

Groups: q/k/v share one transform and one activation clip (same input), as do gate/up; every
other linear has its own. Training runs layer by layer (``calibrate.sequential``): for each
decoder layer, with ``Y`` the unquantized layer's output on the stored inputs (themselves
produced by the already-quantized earlier layers), Adam minimises ``mean ||f_q(X) - Y||^2`` over
the transforms and clips, with weights and activations fake-quantized (straight-through
gradients); then the weights ``clip(W P^{-T})`` are quantized (RTN) and the layer is frozen.
Options: ``steps`` (16 per layer), ``samples`` (4 calibration sequences), ``lr`` (5e-3),
``init``. The result is a ``FlatLinear`` wrapping a ``QuantLinear``; such models
quantize and evaluate but ``load_quantized`` does not rebuild them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..fakequant import fake_quant
from ..qlinear import QuantLinear
from .calibrate import sequential
from .hadamard import hadamard

SHARED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up",
          "up_proj": "gate_up"}
CLIP_INIT = 4.0


def _factor(k: int) -> tuple[int, int]:
    a = int(math.isqrt(k))
    while k % a:
        a -= 1
    return a, k // a


def _init(n: int, init: str) -> torch.Tensor:
    if init == "hadamard" and n & (n - 1) == 0:
        return torch.from_numpy(hadamard(n)).float()
    return torch.eye(n)


def block_clip(x: torch.Tensor, logit: torch.Tensor, block: int | None) -> torch.Tensor:
    """``clamp(x, -a m, a m)``, ``a = sigmoid(logit)`` (broadcast over rows of ``x``'s blocks),
    ``m`` the max ``|x|`` of each block of ``block`` elements along the last dim (None: row)."""
    k = x.shape[-1]
    b = block if block and k % block == 0 else k
    xb = x.reshape(*x.shape[:-1], k // b, b)
    t = torch.sigmoid(logit)[..., None] * xb.detach().abs().amax(-1, keepdim=True)
    return torch.maximum(torch.minimum(xb, t), -t).reshape(x.shape)


class Transform(nn.Module):
    """An invertible ``P`` (module docstring) with its activation clip logit."""

    def __init__(self, k: int, kind: str, block: int | None = None, init: str | None = None):
        super().__init__()
        init = init or ("hadamard" if kind == "block" else "identity")
        if init not in ("hadamard", "identity"):
            raise ValueError(f"init must be 'hadamard' or 'identity', got {init!r}")
        self.kind, self.k = kind, k
        if kind == "block":
            if not block or k % block:
                raise ValueError(f"block size {block} does not divide K={k}")
            self.p = nn.Parameter(_init(block, init).repeat(k // block, 1, 1))
        elif kind == "kron":
            a, c = _factor(k)
            self.p1, self.p2 = nn.Parameter(_init(a, init)), nn.Parameter(_init(c, init))
        else:
            raise ValueError(f"unknown transform kind {kind!r}")
        self.clip = nn.Parameter(torch.tensor(CLIP_INIT))

    def _apply_factors(self, x: torch.Tensor, mats) -> torch.Tensor:
        if self.kind == "block":
            xb = x.reshape(*x.shape[:-1], *mats[0].shape[:2])
            return torch.einsum("...nj,njl->...nl", xb, mats[0].to(x.dtype)).reshape(x.shape)
        a, c = mats[0].shape[0], mats[1].shape[0]
        xm = x.reshape(*x.shape[:-1], a, c)
        y = torch.einsum("...ij,ik,jl->...kl", xm, mats[0].to(x.dtype), mats[1].to(x.dtype))
        return y.reshape(x.shape)

    def _mats(self):
        return (self.p,) if self.kind == "block" else (self.p1, self.p2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x P``."""
        return self._apply_factors(x, self._mats())

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """``W P^{-T}`` (rows of ``w`` times the inverse transpose, float64 inverse)."""
        inv = [torch.linalg.inv(m.double()).transpose(-1, -2).to(w.dtype) for m in self._mats()]
        return self._apply_factors(w, inv)


class FlatLinear(nn.Module):
    """``x -> clip_a(x P) -> [fake-quant] -> (clip_w(W P^{-T}))^T``; ``freeze`` quantizes the
    weight into a ``QuantLinear`` (which also fake-quantizes the activations)."""

    def __init__(self, linear: nn.Module, transform: Transform, wspec, aspec):
        super().__init__()
        self.linear, self.transform, self.wspec, self.aspec = linear, transform, wspec, aspec
        self.w_clip = nn.Parameter(torch.full((linear.out_features, 1), CLIP_INIT,
                                              device=linear.weight.device))
        self.frozen = False

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform(x)
        if self.aspec is not None:
            x = block_clip(x, self.transform.clip, self.aspec.block_size)
        return x

    def _weight(self) -> torch.Tensor:
        w = self.transform.weight(self.linear.weight.float())
        if self.wspec is not None:
            w = block_clip(w, self.w_clip, self.wspec.block_size)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            return self.linear(self._act(x))
        x = fake_quant(self._act(x), self.aspec)
        w = fake_quant(self._weight(), self.wspec)
        b = self.linear.bias
        return nn.functional.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))

    @torch.no_grad()
    def freeze(self) -> None:
        lin = nn.Linear(self.linear.in_features, self.linear.out_features,
                        bias=self.linear.bias is not None, device=self.linear.weight.device)
        lin.weight.copy_(self._weight())
        if self.linear.bias is not None:
            lin.bias.copy_(self.linear.bias)
        self.linear = QuantLinear.from_linear(lin, self.wspec, self.aspec)
        for q in self.parameters():
            q.requires_grad_(False)
        self.frozen = True


def wrap_layer(model, named: dict, wspec, aspec, kind: str, block: int | None,
               init: str | None = None) -> dict[str, FlatLinear]:
    """Replace the linears ``named`` of one layer by ``FlatLinear``s (shared transforms)."""
    from ..model import set_module

    shared: dict[str, Transform] = {}
    out = {}
    for name, lin in named.items():
        parent, _, leaf = name.rpartition(".")
        key = f"{parent}.{SHARED.get(leaf, leaf)}"
        if key not in shared:
            shared[key] = Transform(lin.in_features, kind, block, init).to(lin.weight.device)
        out[name] = FlatLinear(lin, shared[key], wspec, aspec)
        set_module(model, name, out[name])
    return out


def train_layer(layer, flats: dict[str, FlatLinear], inputs_run, targets: list, *,
                steps: int, lr: float) -> list[float]:
    """Adam on the transforms and clips of ``flats`` against the layer-output MSE."""
    params = {id(q): q for f in flats.values() for q in f.parameters()
              if q is not f.linear.weight and q is not f.linear.bias}
    for f in flats.values():
        f.linear.weight.requires_grad_(False)
        if f.linear.bias is not None:
            f.linear.bias.requires_grad_(False)
    opt = torch.optim.Adam(params.values(), lr=lr)
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            outs = inputs_run()
            loss = sum(((o.float() - t.float()) ** 2).mean() for o, t in zip(outs, targets,
                                                                            strict=True))
            loss = loss / len(targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def apply(model, targets: dict, wspec, aspec, rot, calibration, opts: dict,
          progress: bool = True) -> None:
    """FlatQuant over the decoder layers (module docstring); the other targets get RTN."""
    from . import rtn

    if calibration is None:
        raise ValueError("FlatQuant needs calibration token ids")
    ids = calibration if torch.is_tensor(calibration) else torch.as_tensor(calibration)
    ids = (ids[None] if ids.dim() == 1 else ids)[: int(opts.get("samples", 4))]
    steps, lr = int(opts.get("steps", 16)), float(opts.get("lr", 5e-3))
    if steps < 0 or lr <= 0:
        raise ValueError("steps must be >= 0 and lr > 0")
    kind = "block" if rot and rot["kind"] == "block" else "kron"
    block = int(rot["size"]) if kind == "block" else None

    def fn(layer, named, run):
        if not named:
            return
        ref = [o.detach() for o in run()]
        flats = wrap_layer(model, named, wspec, aspec, kind, block, opts.get("init"))
        train_layer(layer, flats, run, ref, steps=steps, lr=lr)
        for f in flats.values():
            f.freeze()

    seen = sequential(model, ids, targets, fn, progress, opts.get("batch_size", 4))
    rest = {n: m for n, m in targets.items() if n not in seen}
    if rest:
        rtn.apply(model, rest, wspec, aspec, None, progress=False)
