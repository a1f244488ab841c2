"""GPTQ adapted to block formats (Frantar et al. 2022; ptq.md section 4.5).

Layer ``y = x W^T``, ``W (N, K)``, calibration inputs ``X (n, K)``. GPTQ minimises
``||X W^T - X Q^T||^2`` column by column with the Hessian ``H = (2/n) X^T X`` (+ ``lambda *
mean(diag H) * I``, lambda = ``damp`` = 0.01; dead columns with ``H_jj = 0`` get ``H_jj = 1`` and
``W_:j = 0``). With ``U = chol(H^-1)^T`` (upper), for columns ``j`` in processing order:

    q_j = Q(w_j; scale of (row, block(j))),   e_j = (w_j - q_j) / U_jj,
    w_{j+1:} -= e_j U_{j, j+1:}

Updates inside a lazy batch of ``lazy`` (128) columns are applied immediately; the rest of the
matrix is updated once per batch with one GEMM ``W[:, i2:] -= E U[i1:i2, i2:]``.

Block-format rules:

1. Scales. ``scales="dynamic"`` (default): a block's scales (E8M0 / UE4M3 / E6M2 + micro
   exponents / float32) are computed by the format's own rule when the sweep reaches the block's
   first column, from the error-updated values of that block, and stay fixed for its columns.
   ``scales="static"``: all scales from the original ``W`` before the sweep.
2. Alignment. The lazy batch size is a multiple of the block size ``B`` and batches start on
   block boundaries, so no block straddles two batches.
3. Act-order (``act_order=True``). Blocks are processed in decreasing ``sum diag(H)`` over the
   block, each block's columns kept contiguous and in order, so scales stay those of contiguous
   hardware blocks; with static scales (or a single block per row: per-channel INT) columns are
   ordered individually by ``diag(H)`` (the scale is looked up by original column). A partial last
   block (K not a multiple of B) is processed last.
4. NVFP4: the FP32 tensor scale is fixed first from the original ``W`` (``global_amax``);
   block scales then follow rule 1.
5. Pre-scale: a fixed MX ``prescale`` applies to every block; ``prescale_search`` picks alpha on
   ``W`` (weight MSE) before the sweep.
6. Element rounding with a fixed scale uses the format's rounding and saturates
   (``ptq.grid.BlockGrid``): clipping error is part of ``e_j`` and gets compensated.

The result is a ``QuantizedTensor`` (codes + scales) whose ``dequantize`` is the stored weight.
"""

from __future__ import annotations

import numpy as np
import torch

from ..fakequant import QuantSpec
from ..qlinear import QuantLinear
from .calibrate import InputStats, sequential
from .grid import BlockGrid


def _resolve_prescale(w: np.ndarray, spec: QuantSpec) -> QuantSpec:
    if not spec.options.get("prescale_search"):
        return spec
    from lowbit import numerics as ln

    opts = {k: v for k, v in spec.quantize_options.items() if k != "prescale"}
    alpha = ln.search_prescale(w, spec.fmt, **opts).alpha
    opts = dict(opts)
    if alpha != 1.0:
        opts["prescale"] = alpha
    return QuantSpec(spec.fmt, opts)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, *, damp: float = 0.01,
                  lazy: int = 128, act_order: bool = True, scales: str = "dynamic"):
    """GPTQ of ``w (N, K)`` with Hessian ``h (K, K)`` in block format ``spec``.

    Returns ``(QuantizedTensor, dequantized float32 numpy (N, K))``.
    """
    w = w.detach().cpu().double().clone()
    n_rows, k = w.shape
    h = h.detach().cpu().double().clone()
    spec = _resolve_prescale(w.float().numpy(), spec)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    grid = BlockGrid(w.float().numpy(), spec)
    b = grid.block if grid.block and grid.block < k else k
    single = b >= k
    static = scales == "static" or single
    if scales not in ("static", "dynamic"):
        raise ValueError("scales must be 'static' or 'dynamic'")

    # processing order
    n_blocks = -(-k // b)
    if act_order and static:
        perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    elif act_order:
        full = k // b
        energy = torch.stack([torch.diag(h)[i * b:(i + 1) * b].sum() for i in range(full)]) \
            if full else torch.zeros(0)
        order = torch.argsort(energy, descending=True, stable=True).tolist()
        if full < n_blocks:
            order.append(full)
        perm = torch.cat([torch.arange(i * b, min((i + 1) * b, k)) for i in order])
    else:
        perm = torch.arange(k)
    w = w[:, perm]
    h = h[perm][:, perm]
    perm_np = perm.numpy()

    h += torch.eye(k, dtype=h.dtype) * (damp * torch.mean(torch.diag(h)))
    hinv = torch.linalg.cholesky(h)
    hinv = torch.cholesky_inverse(hinv)
    hinv = torch.linalg.cholesky(hinv, upper=True)

    if static:
        step = max(lazy, 1)
    else:
        step = max(b, (lazy // b) * b)
    qvals = torch.zeros_like(w)
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            orig = int(perm_np[col])
            if not static and orig % b == 0:
                blk = orig // b
                width = min(b, k - orig)
                grid.refresh_block(blk, w1[:, i:i + width].float().numpy())
            wc = w1[:, i]
            q = torch.from_numpy(grid.round_columns([orig], wc.numpy()[:, None])[:, 0])
            qvals[:, col] = q
            e = (wc - q) / hinv1[i, i]
            w1[:, i:] -= e[:, None] @ hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    return grid.result(), qvals[:, inv].float().numpy()


def apply_layer(model, layer, named: dict, run, wspec, aspec, rot, opts: dict) -> None:
    """GPTQ of the linears ``named`` (full name -> module) of one decoder layer: collect their
    input Gram matrices with ``run()``, then quantize and replace each."""
    from ..model import set_module
    from .hadamard import rotate

    if not named:
        return
    gopts = {k: opts[k] for k in ("damp", "lazy", "act_order", "scales") if k in opts}
    stats = InputStats(named, {n: rot for n in named})
    run()
    stats.remove()
    for name, lin in named.items():
        s = stats.stats[name]
        if wspec is None:
            set_module(model, name, QuantLinear.from_linear(lin, None, aspec, rot))
            continue
        w = lin.weight.detach().float().cpu()
        if rot:
            w = rotate(w, rot)
        hess = s["gram"] * (2.0 / max(s["n"], 1))
        q, _ = gptq_quantize(w, hess, wspec, **gopts)
        set_module(model, name, QuantLinear.from_linear(lin, wspec, aspec, rot, qweight=q))
        del stats.stats[name]


def apply(model, targets: dict, wspec, aspec, rot, calibration, opts: dict,
          progress: bool = True) -> None:
    """Quantize every target linear with GPTQ, layer by layer (``calibrate.sequential``)."""
    from . import rtn

    if calibration is None:
        raise ValueError("GPTQ needs calibration token ids")

    def fn(layer, named, run):
        apply_layer(model, layer, named, run, wspec, aspec, rot, opts)

    seen = sequential(model, calibration, targets, fn, progress, opts.get("batch_size", 4))
    rest = {n: m for n, m in targets.items() if n not in seen}
    if rest:
        rtn.apply(model, rest, wspec, aspec, rot, progress=False)
