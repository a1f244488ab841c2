"""SpinQuant: a learned residual rotation R1 (Liu et al. 2024, arXiv:2405.16406), fused like QuaRot.

After the norms are folded (``fuse_rotation``), the model is a function of the orthogonal
``Q (d, d)`` that rotates the residual stream; unquantized it does not depend on ``Q``, quantized
it does. ``Q`` is parameterised by the Cayley transform of a skew-symmetric matrix:

    A = X - X^T,   C(A) = (I - A)^{-1} (I + A),   Q = R0 C(A),

which is orthogonal for every ``X`` (``C(A)^T C(A) = I`` because ``A`` and ``(I - A)^{-1}``
commute and ``A^T = -A``). ``X = 0`` gives ``Q = R0``, the QuaRot rotation (randomised Hadamard
for ``global``; for ``block``, ``Q = blockdiag(H_b C(A_i))`` with one ``b x b`` Cayley factor per
scale block, so the learned rotation stays inside the format's blocks).

Training minimises the next-token cross-entropy of the fake-quantized model on calibration
sequences, ``L(Q) = CE(f_q(ids; W(Q)))``: every target linear's weight ``W(Q)`` is fake-quantized in
the weight format and its input in the activation format (the down projection after its online
Hadamard R4), with straight-through gradients (``fakequant.fake_quant``); Adam on ``X``. QuaRot's
fixed per-head R2 is fused first (not learned here; ``r2=false`` drops it), so training sees it; the
learned ``Q`` is then fused into the weights and the model quantized as in QuaRot (RTN, or GPTQ with
``gptq=true``). Options: ``steps`` (16), ``samples`` (4 calibration sequences), ``train_batch``
(sequences per step; default all ``samples``: with full batches the lowest-loss ``Q``, ``R0``
included, is kept), ``lr`` (2e-3), ``loss`` (``ce``, or ``kl``: KL divergence from the unquantized
model, a smoother target on small models), ``seed``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fakequant import fake_quant
from .fuse_rotation import (
    down_rotation,
    fuse_heads,
    fuse_residual,
    head_matrix,
    prepare,
    quantize_rotated,
    residual_matrix,
    rotated_params,
)
from .hadamard import hadamard, rotate


def cayley(x: torch.Tensor) -> torch.Tensor:
    """``C(X - X^T)`` for ``x (..., n, n)`` (module docstring); orthogonal."""
    a = x - x.transpose(-1, -2)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device).expand_as(a)
    return torch.linalg.solve(eye - a, eye + a)


class CayleyRotation(nn.Module):
    """``Q = R0 C(A)`` for ``kind="global"``, ``blockdiag(H_b C(A_i))`` for ``kind="block"``."""

    def __init__(self, rot: dict, d: int, dtype=torch.float32):
        super().__init__()
        self.kind = rot["kind"]
        if self.kind == "block":
            b = int(rot["size"])
            if d % b:
                raise ValueError(f"block size {b} does not divide the hidden size {d}")
            self.register_buffer("r0", torch.from_numpy(hadamard(b)).to(dtype))
            self.x = nn.Parameter(torch.zeros(d // b, b, b, dtype=dtype))
        else:
            self.register_buffer("r0", residual_matrix(rot, d).to(dtype))
            self.x = nn.Parameter(torch.zeros(d, d, dtype=dtype))

    def forward(self) -> torch.Tensor:
        c = self.r0 @ cayley(self.x)
        return torch.block_diag(*c) if self.kind == "block" else c


class QuantizedLoss:
    """``L(Q)`` of the module docstring on the folded model ``p`` (``fuse_rotation.prepare``):
    cross-entropy (``loss="ce"``) or KL divergence from the unquantized model's next-token
    distribution (``loss="kl"``). Use as a context manager (it installs activation hooks)."""

    def __init__(self, model, p, targets: dict, wspec, aspec, r4: dict, loss: str = "ce"):
        if loss not in ("ce", "kl"):
            raise ValueError(f"loss must be 'ce' or 'kl', got {loss!r}")
        self.model, self.p, self.wspec, self.aspec, self.r4, self.kind = \
            model, p, wspec, aspec, r4, loss
        self.downs = set(p.downs)
        self.names = [n for n in targets if n in set(p.readers) | set(p.writers)]
        self.hooks: list = []
        self.active = False
        self.last: tuple = (None, None)  # q/k/v (gate/up) read the same tensor: quantize once

    def _hook(self, name):
        def hook(mod, args):
            if not self.active:
                return None
            if args[0] is self.last[0] and name not in self.downs:
                return (self.last[1], *args[1:])
            x = rotate(args[0], self.r4) if name in self.downs else args[0]
            out = fake_quant(x, self.aspec)
            if name not in self.downs:
                self.last = (args[0], out)
            return (out, *args[1:])

        return hook

    def __enter__(self):
        if self.aspec is not None:
            self.hooks = [self.model.get_submodule(n).register_forward_pre_hook(self._hook(n))
                          for n in self.names]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def __call__(self, q: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        params = rotated_params(self.model, self.p, q)
        for n in self.names:
            w = params[f"{n}.weight"]
            if n in self.downs:
                w = rotate(w, self.r4)
            params[f"{n}.weight"] = fake_quant(w, self.wspec)
        self.active = True
        try:
            out = torch.func.functional_call(self.model, params, (ids,), {"use_cache": False},
                                             strict=False)
        finally:
            self.active = False
            self.last = (None, None)
        logits = out.logits[:, :-1].float()
        if self.kind == "ce":
            return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               ids[:, 1:].reshape(-1))
        with torch.no_grad():
            ref = torch.log_softmax(self.model(ids, use_cache=False).logits[:, :-1].float(), -1)
        logq = torch.log_softmax(logits, -1)
        return (ref.exp() * (ref - logq)).sum(-1).mean()


def train_rotation(model, p, targets: dict, wspec, aspec, rot: dict, r4: dict, ids: torch.Tensor,
                   *, steps: int = 16, lr: float = 2e-3, train_batch: int | None = None,
                   seed: int = 0, loss: str = "ce", progress: bool = True
                   ) -> tuple[torch.Tensor, list[float]]:
    """Learn ``Q`` on the folded model (``fuse_rotation.prepare`` done, weights not rotated).

    Each step uses ``train_batch`` random rows of ``ids`` (None: all of them). Returns the
    orthogonal ``Q`` (float64, detached) and the loss of every step (the first is at ``R0``).
    With full batches the ``Q`` of the lowest loss is returned (``R0`` included), else the last.
    """
    full = train_batch is None or train_batch >= ids.shape[0]
    train_batch = ids.shape[0] if full else train_batch
    if steps < 1 or train_batch < 1 or lr <= 0:
        raise ValueError("steps and train_batch must be >= 1 and lr > 0")
    device = next(model.parameters()).device
    d = model.get_submodule(p.embed).weight.shape[1]
    spin = CayleyRotation(rot, d).to(device)
    opt = torch.optim.Adam(spin.parameters(), lr=lr)
    grads = {n: q.requires_grad for n, q in model.named_parameters()}
    for q in model.parameters():
        q.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    best = (float("inf"), None)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="SpinQuant", leave=False)
    try:
        with torch.enable_grad(), QuantizedLoss(model, p, targets, wspec, aspec, r4, loss) as fn:
            for _ in it:
                rows = torch.randperm(ids.shape[0], generator=gen)[:train_batch]
                value = fn(spin(), ids[rows].to(device))
                losses.append(value.item())
                if losses[-1] < best[0] or not full:
                    best = (losses[-1], spin.x.detach().clone())
                opt.zero_grad()
                value.backward()
                opt.step()
                if progress:
                    it.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        for n, q in model.named_parameters():
            q.requires_grad_(grads[n])
    with torch.no_grad():
        spin.x.copy_(best[1])
        return spin.double()().detach(), losses


def apply(model, targets: dict, wspec, aspec, rot: dict, calibration, opts: dict,
          progress: bool = True) -> None:
    """SpinQuant: learn R1 (``train_rotation``), fuse it, then quantize as QuaRot does."""
    if calibration is None:
        raise ValueError("SpinQuant needs calibration token ids")
    ids = calibration if torch.is_tensor(calibration) else torch.as_tensor(calibration)
    ids = ids[None] if ids.dim() == 1 else ids
    ids = ids[: int(opts.get("samples", 4))]
    p = prepare(model)
    if opts.get("r2", True):
        fuse_heads(model, p, head_matrix(rot, p.head_dim))
    r4 = down_rotation(rot, model, p)
    q, _ = train_rotation(model, p, targets, wspec, aspec, rot, r4,
                          ids, steps=int(opts.get("steps", 16)), lr=float(opts.get("lr", 2e-3)),
                          train_batch=opts.get("train_batch"),
                          seed=int(opts.get("seed", 0)), loss=str(opts.get("loss", "ce")),
                          progress=progress)
    fuse_residual(model, p, q)
    quantize_rotated(model, targets, set(p.downs), wspec, aspec, r4, calibration, opts, progress)
