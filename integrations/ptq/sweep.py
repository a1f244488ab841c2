"""The GPTQ column sweep with fixed scales, compiled with Numba (used by ``gptq``).

Rounding to an element grid with a fixed scale is a table lookup. With the element's finite
values sorted, ``v_0 < v_1 < ... < v_m``, and the midpoints ``t_i = (v_i + v_{i+1}) / 2``,
the nearest value of ``r = w / s`` is ``v_k`` with ``k = #{i : t_i < r}``, plus one when
``r == t_k`` exactly and the format's tie rule rounds that midpoint up (read once per format
from ``lowbit.numerics.encode`` on the midpoints). Values beyond the ends saturate to ``v_0`` /
``v_m``. ``ElementTable`` builds the table and checks it bit for bit against ``encode`` on
probes (midpoints, their neighbours, random values, signed zeros); a rounding mode the table
cannot express (stochastic, toward zero, ...) is reported by ``exact = False`` and GPTQ then
rounds column by column through ``encode`` instead.

``sweep(wt, hinv, s, c0, c1, table, codes, qt)`` runs GPTQ's inner loop over the columns
``c0 .. c1 - 1`` of one lazy batch (stored transposed: ``wt[i]`` is column ``i``, float64):

    q_i = s_i * round(w_i / s_i),   e_i = (w_i - q_i) / U_ii,   w_l -= e_i U_il  (l > i in batch)

with ``q_i`` rounded to float32 (the dequantized weight that is stored; so weights already on
the grid give ``e_i = 0`` exactly, and float-scaled blocks keep their scale), and returns the
errors ``E`` (for the batch's GEMM update of the later columns). A zero scale
(an all-zero block) quantizes to the code of +0.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _nearest(r, mids, up):
    lo = 0
    hi = mids.size
    while lo < hi:  # first midpoint >= r
        mid = (lo + hi) // 2
        if mids[mid] < r:
            lo = mid + 1
        else:
            hi = mid
    if lo < mids.size and mids[lo] == r and up[lo]:
        lo += 1
    return lo


@njit(cache=True)
def _round_codes(r, mids, up, code_of, zero_idx, neg_zero):
    out = np.empty(r.size, np.int64)
    for j in range(r.size):
        k = _nearest(r[j], mids, up)
        out[j] = neg_zero if (k == zero_idx and np.signbit(r[j])) else code_of[k]
    return out


@njit(cache=True)
def _sweep(wt, hinv, s, c0, c1, mids, up, vals, code_of, zero_idx, neg_zero, codes, qt, et):
    n = wt.shape[1]
    c = wt.shape[0]
    for i in range(c0, c1):
        d = hinv[i, i]
        for j in range(n):
            w = wt[i, j]
            sc = s[i, j]
            if sc != 0.0:
                r = w / sc
                k = _nearest(r, mids, up)
                q = np.float64(np.float32(vals[k] * sc))  # the stored float32 weight
                codes[i, j] = neg_zero if (k == zero_idx and np.signbit(r)) else code_of[k]
            else:
                q = 0.0
                codes[i, j] = code_of[zero_idx]
            qt[i, j] = q
            et[i, j] = (w - q) / d
        for m in range(i + 1, c):
            h = hinv[i, m]
            if h != 0.0:
                for j in range(n):
                    wt[m, j] -= et[i, j] * h


class ElementTable:
    """Sorted finite values of an element format, midpoints, tie directions and codes."""

    def __init__(self, elem, rounding: str | None):
        from lowbit import numerics as ln

        def enc(x):
            return np.asarray(ln.encode(np.asarray(x, np.float64), elem, rounding=rounding,
                                        saturate=True, backend="reference"), np.int64)

        codes = np.arange(2 ** elem.bits, dtype=np.int64)
        vals = np.asarray(ln.decode(codes, elem, dtype=np.float64), np.float64)
        vals = np.unique(vals[np.isfinite(vals)]) + 0.0  # one zero, +0.0
        self.vals = vals
        self.mids = (vals[:-1] + vals[1:]) / 2
        zero = np.flatnonzero(vals == 0)
        self.zero_idx = int(zero[0]) if zero.size else -1
        try:
            self.up = np.asarray(ln.decode(enc(self.mids), elem, dtype=np.float64)
                                 == vals[1:], np.bool_)
            self.code_of = enc(vals)
            self.neg_zero = int(enc([-0.0])[0])
        except ValueError:  # e.g. stochastic rounding without random bits
            self.exact = False
            return
        self.exact = self._check(enc)

    def _check(self, enc) -> bool:
        """Whether the table rounds exactly like ``encode`` (it cannot for directed or
        stochastic rounding)."""
        rng = np.random.default_rng(0)
        top = float(np.abs(self.vals).max())
        probes = np.concatenate([
            self.mids, np.nextafter(self.mids, np.inf), np.nextafter(self.mids, -np.inf),
            self.vals, rng.uniform(-1.5 * top, 1.5 * top, 4096),
            rng.standard_normal(1024) * 1e-3, [0.0, -0.0, 1e-30, -1e-30, 10 * top, -10 * top]])
        return bool(np.array_equal(self.round_codes(probes), enc(probes)))

    def round_codes(self, r: np.ndarray) -> np.ndarray:
        r = np.ascontiguousarray(r, np.float64).ravel()
        return _round_codes(r, self.mids, self.up, self.code_of, self.zero_idx, self.neg_zero)


@functools.lru_cache(maxsize=32)
def element_table(fmt: str, rounding: str | None) -> ElementTable:
    from lowbit import numerics as ln

    return ElementTable(ln.block_format(fmt).element, rounding)


def sweep(wt: np.ndarray, hinv: np.ndarray, s: np.ndarray, c0: int, c1: int,
          table: ElementTable, codes: np.ndarray, qt: np.ndarray, et: np.ndarray) -> None:
    """In place on the batch arrays (module docstring); ``codes``, ``qt``, ``et`` receive the
    codes, dequantized values and scaled errors of columns ``c0 .. c1 - 1``."""
    _sweep(wt, hinv, s, c0, c1, table.mids, table.up, table.vals, table.code_of,
           table.zero_idx, table.neg_zero, codes, qt, et)
