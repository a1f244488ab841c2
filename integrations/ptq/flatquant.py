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
As in the paper (and its code, ruikangliu/FlatQuant), the clips learn 10x faster than the
transforms (5e-3 and 5e-2) and both learning rates follow a cosine decay over the steps down to
1e-3 of their start. The loss is measured at the starting point and after every step; training
stops at the first non-finite loss or gradient, and the parameters of the lowest loss (the
starting point included) are restored, so a layer never ends worse than it started on this
objective.

Options: ``steps`` (16 per layer), ``samples`` (4 calibration sequences), ``lr`` (5e-3, the
transforms), ``clip_lr`` (the clips; default ``10 lr``), ``init``. The result is a frozen
``FlatLinear`` wrapping a ``QuantLinear``; ``save_quantized`` records it (``flat_configs``) and
``load_quantized`` rebuilds it (``rebuild``) with bit-identical outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..fakequant import QuantSpec, fake_quant, parse_spec
from ..qlinear import QuantLinear
from .calibrate import sequential
from .hadamard import hadamard

SHARED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up",
          "up_proj": "gate_up"}
CLIP_INIT = 4.0
CLIP_LR_FACTOR = 10.0  # clip learning rate / transform learning rate (the paper's code)
MIN_LR = 1e-3  # the cosine schedule's final learning rate, relative to the start


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
        self.kind, self.k, self.block = kind, k, block if kind == "block" else None
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
        """``W P^{-T}`` (rows of ``w`` times the inverse transpose, float64 inverse; a singular
        ``P`` gives non-finite values, not an error)."""
        inv = [torch.linalg.inv_ex(m.double())[0].transpose(-1, -2).to(w.dtype)
               for m in self._mats()]
        return self._apply_factors(w, inv)

    def config(self) -> dict:
        return {"kind": self.kind, "k": self.k, "block": self.block}


class FlatLinear(nn.Module):
    """``x -> clip_a(x P) -> [fake-quant] -> (clip_w(W P^{-T}))^T``; ``freeze`` quantizes the
    weight into a ``QuantLinear`` (which also fake-quantizes the activations) and drops the
    weight clip. ``frozen=True`` wraps an already quantized ``linear`` (``from_config``)."""

    def __init__(self, linear: nn.Module, transform: Transform, wspec: QuantSpec | None,
                 aspec: QuantSpec | None, frozen: bool = False):
        super().__init__()
        self.linear, self.transform, self.wspec, self.aspec = linear, transform, wspec, aspec
        self.w_clip = None if frozen else nn.Parameter(
            torch.full((linear.out_features, 1), CLIP_INIT, device=linear.weight.device))
        self.frozen = frozen

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
        self.w_clip = None
        self.requires_grad_(False)
        self.frozen = True

    def config(self, shared_with: str) -> dict:
        """JSON-able description of a frozen layer; ``shared_with``: the name of the first
        ``FlatLinear`` holding the same ``Transform``."""
        if not self.frozen:
            raise ValueError("a FlatLinear is saved after freeze()")
        return {"linear": self.linear.config(),
                "transform": {**self.transform.config(), "shared_with": shared_with},
                "weights": None if self.wspec is None else self.wspec.to_dict(),
                "activations": None if self.aspec is None else self.aspec.to_dict()}

    @classmethod
    def from_config(cls, cfg: dict, transform: Transform) -> FlatLinear:
        """The frozen layer ``config`` describes (its tensors still to be loaded)."""
        f = cls(QuantLinear.from_config(cfg["linear"]), transform, parse_spec(cfg["weights"]),
                parse_spec(cfg["activations"]), frozen=True)
        f.requires_grad_(False)
        return f


def flat_configs(model: nn.Module) -> dict[str, dict]:
    """``FlatLinear.config`` of every ``FlatLinear`` of ``model`` by qualified name."""
    owners: dict[int, str] = {}
    return {name: m.config(owners.setdefault(id(m.transform), name))
            for name, m in model.named_modules() if isinstance(m, FlatLinear)}


def rebuild(model: nn.Module, configs: dict[str, dict]) -> None:
    """Install the frozen ``FlatLinear``s of ``flat_configs`` (shared transforms shared again)."""
    from ..model import set_module

    transforms: dict[str, Transform] = {}
    for name, cfg in configs.items():
        t = cfg["transform"]
        if t["shared_with"] not in transforms:
            transforms[t["shared_with"]] = Transform(t["k"], t["kind"], t["block"], "identity")
        set_module(model, name, FlatLinear.from_config(cfg, transforms[t["shared_with"]]))


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


def _layer_loss(outs: list, targets: list) -> torch.Tensor:
    return sum(((o.float() - t.float()) ** 2).mean() for o, t in zip(outs, targets, strict=True)
               ) / len(targets)


def train_layer(layer: nn.Module, flats: dict[str, FlatLinear], inputs_run: Callable[[], list],
                targets: list, *, steps: int, lr: float, clip_lr: float | None = None
                ) -> tuple[float, list[float]]:
    """Adam on the transforms (``lr``) and clips (``clip_lr``, default ``10 lr``) of ``flats``
    against the layer-output MSE, cosine learning rates (module docstring).

    Returns the lowest loss and the losses (``losses[i]`` after ``i`` steps, ``losses[0]`` at
    the start; shorter when a non-finite loss or gradient stopped training); the parameters of
    the lowest loss are restored (none finite: the starting point is kept, ``inf`` returned).
    """
    clip_lr = CLIP_LR_FACTOR * lr if clip_lr is None else clip_lr
    mats, clips = {}, {}
    for f in flats.values():
        for n, q in f.transform.named_parameters():
            (clips if n == "clip" else mats)[id(q)] = q
        clips[id(f.w_clip)] = f.w_clip
    params = [*mats.values(), *clips.values()]
    grads = {q: q.requires_grad for q in layer.parameters()}
    layer.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam([{"params": list(mats.values()), "lr": lr},
                            {"params": list(clips.values()), "lr": clip_lr}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: MIN_LR + (1 - MIN_LR) * (1 + math.cos(math.pi * i / max(steps, 1))) / 2)
    best, kept = math.inf, None
    losses: list[float] = []
    try:
        for i in range(steps + 1):
            with torch.set_grad_enabled(i < steps):
                loss = _layer_loss(inputs_run(), targets)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            if losses[-1] < best:
                best, kept = losses[-1], [q.detach().clone() for q in params]
            if i == steps:
                break
            opt.zero_grad()
            loss.backward()
            if not all(torch.isfinite(q.grad).all() for q in params if q.grad is not None):
                break
            opt.step()
            sched.step()
    finally:
        if kept is not None:
            with torch.no_grad():
                for q, v in zip(params, kept, strict=True):
                    q.copy_(v)
        for q, g in grads.items():
            q.requires_grad_(g)
        for q in params:
            q.grad = None
    return best, losses


def apply(model, targets: dict, wspec, aspec, rot, calibration, opts: dict,
          progress: bool = True) -> None:
    """FlatQuant over the decoder layers (module docstring); the other targets get RTN."""
    from . import rtn

    if calibration is None:
        raise ValueError("FlatQuant needs calibration token ids")
    ids = calibration if torch.is_tensor(calibration) else torch.as_tensor(calibration)
    ids = (ids[None] if ids.dim() == 1 else ids)[: int(opts.get("samples", 4))]
    steps, lr = int(opts.get("steps", 16)), float(opts.get("lr", 5e-3))
    clip_lr = float(opts.get("clip_lr", CLIP_LR_FACTOR * lr))
    if steps < 0 or lr <= 0 or clip_lr <= 0:
        raise ValueError("steps must be >= 0, lr and clip_lr > 0")
    kind = "block" if rot and rot["kind"] == "block" else "kron"
    block = int(rot["size"]) if kind == "block" else None

    def fn(layer, named, run):
        if not named:
            return
        ref = [o.detach() for o in run()]
        flats = wrap_layer(model, named, wspec, aspec, kind, block, opts.get("init"))
        train_layer(layer, flats, run, ref, steps=steps, lr=lr, clip_lr=clip_lr)
        for f in flats.values():
            f.freeze()

    seen = sequential(model, ids, targets, fn, progress, opts.get("batch_size", 4))
    rest = {n: m for n, m in targets.items() if n not in seen}
    if rest:
        rtn.apply(model, rest, wspec, aspec, None, progress=False)
