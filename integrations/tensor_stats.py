"""Per-tensor statistics for the format study (pure NumPy).

For a tensor ``x`` (any shape; the last axis is the quantization/reduction axis, as in
``fakequant``), with ``a = |x|`` and mean ``mu``, standard deviation ``sigma`` over all elements:

* kurtosis (Pearson, not excess):  ``E[(x - mu)^4] / sigma^4``  (uniform 1.8, normal 3,
  Laplace 6, Student-t with nu <= 4 unbounded);
* range in binades:  ``log2(max a / median a)`` over the non-zero elements (how far the largest
  value sits above the typical one; a quantizer whose scale maps the max to its top code must
  resolve values this many binades lower);
* row range:  the median over rows (slices along the last axis) of the per-row range; per-channel
  / per-token / per-block scales see this range rather than the whole tensor's;
* outlier fraction:  ``P(|x - mu| > k sigma)`` (default ``k = 6``; a normal gives 2e-9, Laplace
  ``exp(-6 sqrt 2)`` = 2.1e-4);
* SQNR of a quantized copy ``q``:  ``10 log10(sum x^2 / sum (x - q)^2)`` dB (``inf`` if exact).

``spearman(a, b)`` is Pearson's correlation of the average ranks (ties share their mean rank);
it is NaN when either input is constant.
"""

from __future__ import annotations

import numpy as np

OUTLIER_K = 6.0


def _as_float(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ValueError("statistics of an empty tensor are undefined")
    if not np.all(np.isfinite(x)):
        raise ValueError("tensor has NaN or Inf values")
    return x


def kurtosis(x) -> float:
    """Pearson kurtosis ``E[(x - mu)^4] / sigma^4`` (normal: 3); NaN for a constant tensor."""
    x = _as_float(x).ravel()
    d = x - x.mean()
    var = np.mean(d * d)
    return float(np.mean(d**4) / var**2) if var > 0 else float("nan")


def range_binades(x) -> float:
    """``log2(max|x| / median|x|)`` over the non-zero elements (0 if there are none)."""
    a = np.abs(_as_float(x)).ravel()
    a = a[a > 0]
    return float(np.log2(a.max() / np.median(a))) if a.size else 0.0


def row_range_binades(x) -> float:
    """Median over the rows (slices along the last axis) of ``range_binades``."""
    x = _as_float(x)
    rows = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x[None]
    return float(np.median([range_binades(r) for r in rows]))


def outlier_fraction(x, k: float = OUTLIER_K) -> float:
    """Fraction of elements with ``|x - mu| > k sigma`` (0 for a constant tensor)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    x = _as_float(x).ravel()
    d = np.abs(x - x.mean())
    sigma = np.sqrt(np.mean(d * d))
    return float(np.mean(d > k * sigma)) if sigma > 0 else 0.0


def sqnr_db(x, q) -> float:
    """``10 log10(sum x^2 / sum (x - q)^2)`` in dB (inf when ``q == x``)."""
    x, q = _as_float(x), np.asarray(q, dtype=np.float64)
    if x.shape != q.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {q.shape}")
    err = float(np.sum((x - q) ** 2))
    sig = float(np.sum(x * x))
    if err == 0:
        return float("inf")
    return float(10 * np.log10(sig / err)) if sig > 0 else float("-inf")


def tensor_stats(x, k: float = OUTLIER_K) -> dict:
    """``{"numel", "absmax", "kurtosis", "range_binades", "row_range_binades",
    "outlier_fraction"}`` of one tensor."""
    x = _as_float(x)
    return {
        "numel": int(x.size),
        "absmax": float(np.abs(x).max()),
        "kurtosis": kurtosis(x),
        "range_binades": range_binades(x),
        "row_range_binades": row_range_binades(x),
        "outlier_fraction": outlier_fraction(x, k),
    }


def rankdata(a) -> np.ndarray:
    """Ranks 1..n of a 1-D array; ties get the mean of their ranks."""
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size)
    ranks[order] = np.arange(1, a.size + 1)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length 1-D samples (NaN if one is constant or
    fewer than 3 finite pairs)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"lengths differ: {a.size} vs {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / den) if den > 0 else float("nan")
