"""GPTQ adapted to block formats (Frantar et al. 2022; ptq.md section 4.5).

Layer ``y = x W^T``, ``W (N, K)``, calibration inputs ``X (n, K)``. GPTQ minimises
``||X W^T - X Q^T||^2`` column by column with the Hessian ``H = (2/n) X^T X`` (+ ``lambda *
mean(diag H) * I``, lambda = ``damp`` = 0.01; dead columns with ``H_jj = 0`` get ``H_jj = 1`` and
``W_:j = 0``). With ``U = chol(H^-1)^T`` (upper), for columns ``j`` in processing order:

    q_j = Q(w_j; scale of (row, block(j))),   e_j = (w_j - q_j) / U_jj,
    w_{j+1:} -= e_j U_{j, j+1:}

Updates inside a lazy batch of ``lazy`` (128) columns are applied immediately (compiled loop,
``sweep``); the rest of the matrix is updated once per batch with one float32 GEMM
``W[:, i2:] -= E U[i1:i2, i2:]``. ``H`` is accumulated in float32 (``calibrate.InputStats``);
its inverse Cholesky factor is computed in float64 and shared by the linears that read the same
input (q/k/v, gate/up).

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
6. Element rounding with a fixed scale uses the format's rounding and saturates: clipping
   error is part of ``e_j`` and gets compensated. Scales come from ``ptq.grid.BlockGrid``; the
   rounding is ``ptq.sweep``'s table lookup (checked against ``encode``), or
   ``BlockGrid.round_columns`` for rounding modes a table cannot express.

The result is a ``QuantizedTensor`` (codes + scales) whose ``dequantize`` is the stored weight.
"""

from __future__ import annotations

import numpy as np
import torch

from ..fakequant import QuantSpec
from ..qlinear import QuantLinear
from .calibrate import InputStats, sequential
from .grid import BlockGrid
from .sweep import element_table, sweep


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
                  lazy: int = 128, act_order: bool = True, scales: str = "dynamic",
                  cache: dict | None = None):
    """GPTQ of ``w (N, K)`` with Hessian ``h (K, K)`` in block format ``spec``.

    ``cache``: a dict shared by calls with the same ``h`` (it keeps the processing order and
    inverse factor). Returns ``(QuantizedTensor, dequantized float32 numpy (N, K))``.
    """
    if scales not in ("static", "dynamic"):
        raise ValueError("scales must be 'static' or 'dynamic'")
    w = w.detach().cpu().float().clone()
    n_rows, k = w.shape
    h = h.detach().cpu().float()
    if h.shape != (k, k):
        raise ValueError(f"Hessian shape {tuple(h.shape)} does not match K={k}")
    spec = _resolve_prescale(w.numpy(), spec)
    dead = torch.diag(h) == 0
    if dead.any():
        h = h.clone()
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
    grid = BlockGrid(w.numpy(), spec)
    b = grid.block if grid.block and grid.block < k else k
    static = scales == "static" or b >= k
    key = (b, act_order, static, damp)
    if cache is None or key not in cache:
        perm = _order(torch.diag(h), k, b, act_order, static)
        factor = (perm, _inverse_factor(h[perm][:, perm], damp))
        if cache is not None:
            cache[key] = factor
    perm, hinv = cache[key] if cache is not None else factor
    w = w[:, perm].contiguous()
    perm_np = perm.numpy()

    table = element_table(spec.fmt, grid.rounding)
    step = max(lazy, 1) if static else max(b, (lazy // b) * b)
    qvals = np.zeros((k, n_rows), np.float64)  # transposed, processing order
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        cols = perm_np[i1:i2]
        wt = w[:, i1:i2].T.double().contiguous().numpy()
        ht = hinv[i1:i2, i1:i2].contiguous().numpy()
        st = np.ascontiguousarray(grid.s_eff[:, cols].T)
        codes = np.zeros(wt.shape, np.int64)
        et = np.zeros_like(wt)
        starts = [0] if static else [i for i in range(i2 - i1) if cols[i] % b == 0]
        for c0, c1 in zip(starts, starts[1:] + [i2 - i1], strict=True):
            if not static:
                blk, width = cols[c0] // b, c1 - c0
                grid.refresh_block(blk, wt[c0:c1].T)
                st[c0:c1] = grid.s_eff[:, cols[c0]:cols[c0] + width].T
            if table.exact:
                sweep(wt, ht, st, c0, c1, table, codes, qvals[i1:i2], et)
            else:
                _sweep_encode(wt, ht, st, c0, c1, grid, cols, codes, qvals[i1:i2], et)
        grid.q.codes[:, cols] = codes.T.astype(grid.q.codes.dtype)
        w[:, i2:] -= torch.from_numpy(et.T).float() @ hinv[i1:i2, i2:].float()
    inv = np.argsort(perm_np)
    return grid.result(), qvals[inv].T.astype(np.float32)


def _order(diag: torch.Tensor, k: int, b: int, act_order: bool, static: bool) -> torch.Tensor:
    """Processing order of the columns (rule 3 of the module docstring)."""
    if not act_order:
        return torch.arange(k)
    if static:
        return torch.argsort(diag, descending=True, stable=True)
    full = k // b
    energy = diag[: full * b].reshape(full, b).sum(1)
    order = torch.argsort(energy, descending=True, stable=True).tolist()
    if full * b < k:
        order.append(full)
    return torch.cat([torch.arange(i * b, min((i + 1) * b, k)) for i in order])


def _inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """``U = chol((H + damp mean(diag H) I)^-1)^T`` (upper), in float32 like reference GPTQ, in
    float64 when float32 Cholesky fails; returned as float64."""
    def factor(hd: torch.Tensor) -> torch.Tensor:
        hd = hd + torch.eye(hd.shape[0], dtype=hd.dtype) * (damp * torch.mean(torch.diag(hd)))
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)),
                                     upper=True)

    try:
        return factor(h.float()).double()
    except torch.linalg.LinAlgError:
        return factor(h.double())


def _sweep_encode(wt, ht, st, c0, c1, grid, cols, codes, qt, et) -> None:
    """``sweep`` through ``BlockGrid.round_columns`` (rounding modes without a table)."""
    for i in range(c0, c1):
        qt[i] = grid.round_columns([cols[i]], wt[i][:, None])[:, 0]
        codes[i] = grid.q.codes[:, cols[i]]
        et[i] = (wt[i] - qt[i]) / ht[i, i]
        wt[i + 1:] -= np.outer(ht[i, i + 1:], et[i])


def apply_layer(model, layer, named: dict, run, wspec, aspec, rot, opts: dict) -> None:
    """GPTQ of the linears ``named`` (full name -> module) of one decoder layer: collect their
    input Gram matrices with ``run()``, then quantize and replace each."""
    from ..model import set_module
    from .hadamard import rotate

    if not named:
        return
    gopts = {k: opts[k] for k in ("damp", "lazy", "act_order", "scales") if k in opts}
    stats = InputStats(named, {n: rot for n in named}, channel=False)
    run()
    stats.remove()
    caches: dict[int, dict] = {}  # per distinct Gram matrix (linears sharing an input)
    for name, lin in named.items():
        s = stats.stats[name]
        if wspec is None:
            set_module(model, name, QuantLinear.from_linear(lin, None, aspec, rot))
            continue
        w = lin.weight.detach().float().cpu()
        if rot:
            w = rotate(w, rot)
        hess = s["gram"] * (2.0 / max(s["n"], 1))
        q, _ = gptq_quantize(w, hess, wspec, cache=caches.setdefault(id(s["gram"]), {}),
                             **gopts)
        set_module(model, name, QuantLinear.from_linear(lin, wspec, aspec, rot, qweight=q))


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
