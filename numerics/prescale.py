"""Per-tensor search of the MX pre-scale alpha (ptq.md section 1.4).

``quantize(w, "mxfp4", prescale=alpha)`` keeps each block's E8M0 exponent from the unscaled block
maximum, rounds the elements from ``alpha * w`` and divides by alpha on dequantization; with
alpha = 3/4 the block maximum no longer clips (it lands in [3, 6) instead of [4, 8)), at the cost
of resolution for small values. ``search_prescale`` picks alpha per tensor by measured error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .api import dequantize, quantize
from .codec import as_float64
from .formats import BlockFormat, block_format
from .mx import check_prescale_exact

DEFAULT_CANDIDATES: tuple[float, ...] = tuple(i / 32 for i in range(16, 33))
"""0.5, 0.53125, ..., 1.0: dyadic with at most 5 significant bits (so ``alpha * w`` is exact for
float32/bfloat16/float16 weights); contains 0.75 and 1.0 (no pre-scale)."""


@dataclass(frozen=True)
class PrescaleSearch:
    """Result of ``search_prescale``.

    Attributes:
        alpha: the chosen pre-scale; 1.0 means none. Use it as ``quantize(..., prescale=alpha)``.
        error: the chosen alpha's error.
        criterion: ``"output_mse"`` (calibration inputs given) or ``"weight_mse"``.
        table: ``(alpha, error)`` for every candidate, by increasing alpha.
    """

    alpha: float
    error: float
    criterion: str
    table: tuple[tuple[float, float], ...]


def search_prescale(
    w,
    fmt: str | BlockFormat = "mxfp4",
    *,
    candidates=None,
    inputs=None,
    axis: int = -1,
    **quantize_options,
) -> PrescaleSearch:
    """Choose the pre-scale alpha of ``w`` in MX format ``fmt`` that minimises the error.

    Every candidate quantizes ``w`` with ``quantize(w, fmt, axis=axis, prescale=alpha,
    **quantize_options)`` (alpha = 1.0: no pre-scale) and is scored in float64:

    * with ``inputs`` (calibration activations ``(n, K)``; ``w`` is ``(N, K)`` quantized along K):
      ``mean((inputs @ dequantize(q).T - inputs @ w.T) ** 2)``, the layer-output MSE;
    * else ``mean((dequantize(q) - w) ** 2)``, the weight reconstruction MSE.

    The smallest error wins; ties go to the alpha closest to 1, then to the smaller alpha.

    Args:
        w: finite weight array; float32/bfloat16/float16 in practice: ``alpha * w`` must be exact
            in float64 (``mx.check_prescale_exact``), which fails for full-precision float64.
        fmt: an MX block format.
        candidates: positive alphas (default ``DEFAULT_CANDIDATES``); duplicates are merged.
        inputs: optional calibration activations, see above.
        axis: the quantized axis of ``w``.
        **quantize_options: passed to ``quantize`` (``scale_rule``, ``rounding``, ``preset``...).

    Raises:
        ValueError: a candidate is not a positive finite alpha or breaks exactness (the message
            names it), ``fmt`` is not MX, ``w`` or ``inputs`` is not finite or has the wrong shape.
    """
    spec = block_format(fmt)
    if spec.scheme != "mx":
        raise ValueError(f"the pre-scale applies to MX formats, not {spec.name}")
    if "prescale" in quantize_options:
        raise TypeError("search_prescale chooses prescale itself; do not pass prescale=")
    w64 = as_float64(w)
    if not np.isfinite(w64).all():
        raise ValueError("w must be finite")
    alphas = sorted({float(a) for a in (DEFAULT_CANDIDATES if candidates is None else candidates)})
    if not alphas:
        raise ValueError("candidates is empty")
    for alpha in alphas:
        if alpha != 1.0:
            try:
                check_prescale_exact(w64, alpha)
            except ValueError as err:
                raise ValueError(f"candidate alpha={alpha!r} rejected: {err}") from err

    if inputs is None:
        criterion = "weight_mse"

        def error(deq: np.ndarray) -> float:
            return float(np.mean((deq - w64) ** 2))
    else:
        criterion = "output_mse"
        x = _check_inputs(inputs, w64, axis)
        y = x @ w64.T

        def error(deq: np.ndarray) -> float:
            return float(np.mean((x @ deq.T - y) ** 2))

    errors = []
    for alpha in alphas:
        q = quantize(w64, spec, axis=axis, prescale=None if alpha == 1.0 else alpha,
                     **quantize_options)
        errors.append(error(dequantize(q, dtype=np.float64)))
    table = tuple(zip(alphas, errors, strict=True))
    best = min(table, key=lambda row: (row[1], abs(row[0] - 1.0), row[0]))
    return PrescaleSearch(best[0], best[1], criterion, table)


def _check_inputs(inputs, w64: np.ndarray, axis: int) -> np.ndarray:
    """Calibration inputs as float64 ``(n, K)`` for a weight ``(N, K)`` quantized along K."""
    if w64.ndim != 2 or axis not in (1, -1):
        raise ValueError(f"inputs need a 2-D weight (N, K) quantized along K (axis -1); got "
                         f"shape {w64.shape}, axis {axis}")
    x = as_float64(inputs)
    if x.ndim != 2 or x.shape[1] != w64.shape[1]:
        raise ValueError(f"inputs must have shape (n, {w64.shape[1]}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("inputs must be finite")
    return x
