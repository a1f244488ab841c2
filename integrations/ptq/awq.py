"""AWQ-style activation-aware scale search plus clipping search (Lin et al. 2024; ptq.md 4.4).

For a group of linears reading the same input ``x (T, K)`` (the groups of ``smoothquant``):

1. Scale search. ``a_j = mean_t |x_tj|``; for ``r`` in ``{0, 1/20, ..., 19/20}``:
   ``s = a^r / sqrt(max(a^r) min(a^r))`` and the group error
   ``sum_linears || Q_a(x / s) Q_w(W diag(s))^T - x W^T ||^2`` on a token sample, with the block
   quantizers of the weights (``Q_w``) and, for W+A settings, of the activations (``Q_a``) in the
   loop. The best ``s`` is folded into the preceding norm gain / ``up_proj`` rows exactly as in
   SmoothQuant (``W' = W diag(s)``, ``x' = x / s``).
2. Clipping search. For every (output row, scale block of ``B`` columns) the block is clipped to
   ``c * max|w_block|`` for ``c`` in ``{1, 0.95, ..., 0.55}``; ``c`` minimises that block's own
   partial-output error ``|| x_block (w_block - Q_w(clip_c(w_block)))^T ||^2`` on the sample (AWQ
   ignores cross-block terms too). Clipping changes the block maximum, so for E8M0 scales it is
   the exponent search of ptq.md 4.2 plus the saturation trade-off; the clipped weight is then
   quantized by RTN with the format's own rule. ``method_options``: ``grid`` (20),
   ``clip`` (True), ``samples`` (256 tokens).
"""

from __future__ import annotations

import torch

from ..fakequant import fake_quant
from ..qlinear import QuantLinear
from .calibrate import InputStats, sequential
from .smoothquant import fold, layer_groups

CLIPS = tuple(1.0 - 0.05 * i for i in range(10))


def scale_search(x, linears, wspec, aspec, grid: int = 20) -> torch.Tensor:
    a = x.abs().mean(0).clamp(min=1e-6)
    refs = [x @ lin.weight.detach().float().T for lin in linears]
    best, best_s = None, torch.ones_like(a)
    for i in range(grid):
        r = i / grid
        s = a ** r
        s = s / (s.max() * s.min()).sqrt()
        xs = fake_quant(x / s, aspec)
        err = 0.0
        for lin, ref in zip(linears, refs, strict=True):
            q = fake_quant(lin.weight.detach().float() * s, wspec)
            err += ((xs @ q.T - ref) ** 2).mean().item()
        if best is None or err < best:
            best, best_s = err, s
    return best_s


def clip_search(w: torch.Tensor, x: torch.Tensor, wspec, block: int) -> torch.Tensor:
    """Per (row, block) clipped copy of ``w (N, K)`` (module docstring, step 2)."""
    n, k = w.shape
    b = block if block and block < k else k
    pad = (-k) % b
    wp = torch.nn.functional.pad(w, (0, pad))
    xp = torch.nn.functional.pad(x, (0, pad))
    nb = wp.shape[1] // b
    wb = wp.view(n, nb, b)
    xb = xp.view(x.shape[0], nb, b)
    amax = wb.abs().amax(-1, keepdim=True)
    best_err = None
    out = wb.clone()
    for c in CLIPS:
        wc = torch.maximum(torch.minimum(wb, c * amax), -c * amax)
        q = fake_quant(wc.reshape(n, -1)[:, :k], wspec)
        dq = torch.nn.functional.pad(w - q, (0, pad)).view(n, nb, b)
        # partial output error of each (row, block): sum_t (x_tb . dq_nb)^2
        err = torch.einsum("tgb,ngb->tng", xb, dq).pow(2).sum(0)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        out = torch.where(better[..., None], wc, out)
    return out.reshape(n, -1)[:, :k]


def apply(model, targets: dict, wspec, aspec, rot, calibration, opts: dict,
          progress: bool = True) -> None:
    from ..model import set_module
    from . import rtn

    if calibration is None:
        raise ValueError("AWQ needs calibration token ids")
    if rot:
        raise ValueError("AWQ with a rotation is not supported")
    samples = int(opts.get("samples", 256))

    def fn(layer, named, run):
        groups = layer_groups(layer)
        watch = {p: layer.get_submodule(p) for _, paths, _ in groups for p in paths[:1]}
        stats = InputStats(watch, gram=False, sample=samples)
        run()
        stats.remove()
        for prev, paths, kind in groups:
            linears = [layer.get_submodule(p) for p in paths]
            x = stats.stats[paths[0]]["x"]
            if wspec is not None:
                s = scale_search(x, linears, wspec, aspec, int(opts.get("grid", 20)))
                fold(prev, linears, s, kind)
                stats.stats[paths[0]]["x"] = x / s
        if wspec is not None and opts.get("clip", True):
            # inputs of every linear after the fold (o_proj's input is not in a group: resample)
            inputs = InputStats(named, gram=False, sample=samples)
            run()
            inputs.remove()
            for name, lin in named.items():
                x = fake_quant(inputs.stats[name]["x"], aspec)
                with torch.no_grad():
                    lin.weight.copy_(clip_search(lin.weight.detach().float(), x, wspec,
                                                 wspec.block_size))
        for name, lin in named.items():
            set_module(model, name, QuantLinear.from_linear(lin, wspec, aspec, None))

    seen = sequential(model, calibration, targets, fn, progress, opts.get("batch_size", 4))
    rest = {n: m for n, m in targets.items() if n not in seen}
    if rest:
        rtn.apply(model, rest, wspec, aspec, None, progress=False)
