"""Generic exact element codec: ``encode`` (round to a format) and ``decode`` (codes to values).

One algorithm serves every element format: the spec's value table is sorted, and an input is
placed between its two neighbouring representable values ``lo <= x < hi`` by a binary search
on float64. Every input dtype (float16, bfloat16, float32, float64) converts to float64 exactly,
every format value is exact in float64, and so is every midpoint ``(lo + hi) / 2``; the
comparisons that decide the rounding are therefore exact: no float32 ``log2``, no tolerance.

Rounding modes (``rounding=``):

* ``"nearest_even"``: nearest; a tie goes to the neighbour whose last significand bit is 0
  (``ElementFormat.odd``); between two odd neighbours (formats without mantissa bits) to the
  larger magnitude, as a carry-propagating bit-level RNE does (E8M0: 3 -> 4, as ml_dtypes).
* ``"nearest_away"``: nearest, ties away from zero (HiFloat "TA", microxcaling "nearest").
* ``"nearest_zero"``: nearest, ties toward zero (ModelOpt's FP4 cast).
* ``"toward_zero"``: truncate the magnitude.
* ``"stochastic"``: with caller-supplied random integers ``rbits`` (one per element, of an
  unsigned dtype whose width ``n`` is the number of random bits): let ``f`` be the position of
  ``|x|`` between the smaller-magnitude neighbour (0) and the larger one (1); the magnitude
  rounds up iff ``floor(f * 2**n) + rbits >= 2**n``. This is adding the random bits to the ``n``
  most significant discarded bits and truncating, as hardware stochastic rounding does, so a
  hardware result can be reproduced bit for bit from its random bits.

Overflow: with ``saturate=True`` every finite or infinite input beyond the range gives +-max
(satfinite). With ``saturate=False`` rounding sees a virtual grid point one step above max
(``ElementFormat.overflow_value``) whose code is Inf, or NaN for formats without Inf, so E4M3
gives 448 for 464 and NaN for 465, E5M2 Inf from 61440, HiF8 (ties away) Inf from 40960.
``"toward_zero"`` never overflows a finite input (IEEE 754 section 7.4): it gives +-max.

Special inputs: NaN gives the format's NaN code (``ValueError`` if the format has none; HiF8
keeps NaN -> 0x80 with ``saturate=True`` too, where CANN's saturating cast gives 0x00: lowbit
does not turn NaN into a number silently);
+-Inf gives +-Inf, else the overflow code, else +-max when saturating; a negative value that
rounds to zero gives -0 where the format has it (FP8/FP6/FP4), else the zero code. Unsigned
formats (E8M0, UE4M3, E6M2) give NaN for negative input, and formats without zero (E8M0,
E6M2) give NaN for a zero input (ml_dtypes' E8M0 convention; torch gives 0x00).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .specs import ElementFormat, element_format

ROUNDING_MODES = ("nearest_even", "nearest_away", "nearest_zero", "toward_zero", "stochastic")


def as_float64(x) -> np.ndarray:
    """Convert an array of any float dtype (or integers) to float64 exactly.

    Raises TypeError for complex, bool, object and string arrays and for integers outside the
    range float64 represents exactly (|x| > 2**53).
    """
    arr = np.asarray(x)
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16" or arr.dtype.name.startswith("float"):
        return arr.astype(np.float64)
    if arr.dtype.kind in "iu":
        out = arr.astype(np.float64)
        if arr.size and np.max(np.abs(out)) > 2.0**53:
            raise TypeError("integer input has values beyond 2**53, not exact in float64")
        return out
    raise TypeError(f"expected a real floating-point array, got dtype {arr.dtype}")


@cache
def _tables(fmt: ElementFormat, saturate: bool):
    """Sorted finite grid (with virtual overflow points when not saturating), codes and parity."""
    vals = fmt.values
    finite = np.isfinite(vals)
    codes = np.flatnonzero(finite)
    codes = codes[vals[codes] != 0]
    if fmt.symmetric and fmt.encoding == "int":
        codes = codes[vals[codes] != fmt.min]
    grid_vals = list(vals[codes])
    grid_codes = list(codes)
    grid_odd = list(fmt.odd[codes])
    if fmt.has_zero:
        grid_vals.append(0.0)
        grid_codes.append(0)
        grid_odd.append(False)
    if not saturate:
        over = fmt.overflow_value
        up = fmt.overflow_code
        grid_vals.append(over)
        grid_codes.append(up)
        grid_odd.append(_overflow_odd(fmt))
        if fmt.signed and fmt.encoding != "int":
            grid_vals.append(-over)
            grid_codes.append(up | fmt.sign_bit)
            grid_odd.append(_overflow_odd(fmt))
    order = np.argsort(grid_vals, kind="stable")
    v = np.asarray(grid_vals, dtype=np.float64)[order]
    c = np.asarray(grid_codes, dtype=np.int64)[order]
    o = np.asarray(grid_odd, dtype=bool)[order]
    if np.any(np.diff(v) <= 0):
        raise AssertionError(f"{fmt.name}: value table has duplicates")
    return v, c, o


def _overflow_odd(fmt: ElementFormat) -> bool:
    if fmt.encoding == "hif8":
        return True
    if fmt.man_bits == 0:
        return True
    return bool(fmt.overflow_code & 1)


def _check_saturate(fmt: ElementFormat, saturate: bool) -> None:
    if not saturate and fmt.overflow_code is None:
        raise ValueError(
            f"{fmt.name} has no Inf or NaN code to overflow to; only saturate=True is possible"
        )


def encode(x, fmt, *, rounding: str | None = None, saturate: bool | None = None, rbits=None,
           backend: str | None = None):
    """Round ``x`` to element format ``fmt`` and return its codes (``uint8``, x's shape).

    Args:
        x: array of any real float dtype (float16, bfloat16, float32, float64) or integers.
        fmt: element format name or ``ElementFormat``.
        rounding: one of ``ROUNDING_MODES``; default the format's (RNE, HiF8 "nearest_away").
        saturate: overflow policy (see module docstring); default the format's.
        rbits: unsigned integer array broadcastable to x, required for ``"stochastic"``.
        backend: "reference" (this function), "numba" or "cupy" (``lowbit.kernels``,
            bit-identical); None: the fastest available for ``x``'s array type.
    """
    if backend != "reference":
        from ..kernels import dispatch

        return dispatch.encode(x, fmt, rounding=rounding, saturate=saturate, rbits=rbits,
                               backend=backend)
    spec = element_format(fmt)
    rounding = spec.rounding if rounding is None else rounding
    saturate = spec.saturate if saturate is None else bool(saturate)
    _check_saturate(spec, saturate)
    v = as_float64(x)
    return _encode_f64(v, spec, rounding, saturate, rbits)


def _encode_f64(v: np.ndarray, spec: ElementFormat, rounding: str, saturate: bool, rbits=None):
    """``encode`` on a float64 array (no dtype conversion); shared by the block quantizers."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDING_MODES}")
    grid, gcodes, godd = _tables(spec, saturate)
    nan = np.isnan(v)
    if nan.any() and spec.nan_code is None:
        raise ValueError(f"{spec.name} has no NaN code but the input contains NaN")
    neg = np.signbit(v)
    undefined = nan.copy()
    if not spec.signed:
        undefined |= neg & (v != 0)
    if not spec.has_zero:
        undefined |= v == 0
    if (undefined & ~nan).any() and spec.nan_code is None:
        raise ValueError(f"{spec.name} cannot represent some inputs (negative or zero)")

    w = np.where(undefined, 0.0, v)
    if rounding == "toward_zero" and not saturate:  # IEEE 754 7.4: finite overflow gives +-max
        w = np.where(np.isfinite(w), np.clip(w, spec.min, spec.max), w)
    w = np.clip(w, grid[0], grid[-1])  # saturates, or lands on the virtual overflow point
    i = np.searchsorted(grid, w, side="right") - 1
    i = np.clip(i, 0, len(grid) - 2)
    lo, hi = grid[i], grid[i + 1]
    exact_lo = w == lo
    exact_hi = w == hi
    # candidate with the smaller magnitude ("near zero") and the other one
    lo_small = np.abs(lo) <= np.abs(hi)
    small = np.where(lo_small, i, i + 1)
    big = np.where(lo_small, i + 1, i)
    if rounding == "stochastic":
        up = _stochastic_up(w, grid[small], grid[big], rbits)
    elif rounding == "toward_zero":
        up = np.zeros(w.shape, dtype=bool)
    else:
        mid = (lo + hi) / 2
        beyond = np.abs(w - mid) > 0
        toward_big = np.abs(w) > np.abs(mid)
        if rounding == "nearest_even":
            tie_up = np.where(godd[small] == godd[big], True, godd[small])
        elif rounding == "nearest_away":
            tie_up = np.ones(w.shape, dtype=bool)
        else:
            tie_up = np.zeros(w.shape, dtype=bool)
        up = np.where(beyond, toward_big, tie_up)
    idx = np.where(up, big, small)
    idx = np.where(exact_lo, i, np.where(exact_hi, i + 1, idx))
    codes = gcodes[idx]
    if spec.negative_zero_code is not None:
        codes = np.where((grid[idx] == 0) & neg, spec.negative_zero_code, codes)
    if spec.nan_code is not None:
        codes = np.where(undefined, spec.nan_code, codes)
    inf = np.isinf(v)
    if inf.any() and not saturate and spec.has_inf:
        inf_code = int(np.flatnonzero(spec.values == np.inf)[0])
        codes = np.where(inf, np.where(neg, inf_code | spec.sign_bit, inf_code), codes)
    return codes.astype(np.uint8)


def _stochastic_up(w, small, big, rbits):
    if rbits is None:
        raise ValueError('rounding="stochastic" needs rbits (unsigned random integers per element)')
    r = np.asarray(rbits)
    if r.dtype.kind != "u" or r.dtype.itemsize > 4:
        raise TypeError("rbits must be uint8, uint16 or uint32; the dtype width is the bit count")
    n = r.dtype.itemsize * 8
    r = np.broadcast_to(r, w.shape).astype(np.float64)
    step = np.abs(big - small)
    frac = np.abs(w - small) / np.where(step == 0, 1.0, step)
    scaled = np.floor(np.ldexp(frac, n))
    return (scaled + r >= 2.0**n) & (step > 0)


def decode(codes, fmt, *, dtype=np.float32) -> np.ndarray:
    """Values of ``codes`` (integers in ``[0, 2**bits)``) in element format ``fmt``.

    Returns ``dtype`` (default float32: every element format's values are exact in float32;
    pass ``np.float64`` to keep the exact values of a scale format such as E8M0's 2**127).
    Raises ValueError for codes outside the format's width.
    """
    spec = element_format(fmt)
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got dtype {c.dtype}")
    if c.size and (c.min() < 0 or c.max() >= spec.n_codes):
        raise ValueError(
            f"{spec.name} codes are {spec.bits}-bit: got values outside [0, {spec.n_codes})"
        )
    return spec.values[c.astype(np.int64)].astype(dtype)
