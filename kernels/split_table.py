"""The split table: element encoding of float32 bit patterns by two lookups per upper half.

For a float32 bit pattern ``b`` the table holds ``tab[b >> 16]``, the code of ``b & 0xFFFF0000``,
and ``tab[65536 + (b >> 16)]``, the code shared by every ``b`` whose lower 16 bits are not all
zero. This is exact when every rounding boundary of the format (representable values and, for
the nearest modes, midpoints) has zero lower 16 bits -- at most 6 kept mantissa bits in every
binade: the float32 values with one upper half and a nonzero lower half then lie strictly between
two neighbouring boundaries and round alike. ``split_table`` builds the table with the reference
codec and checks it at both ends of every such interval (lower half 1 and 0xFFFF); a format or
mode where they differ gets None. bfloat16 input indexes the first half directly; float16 input
is converted to float32 bits first (exact). Used by the Numba and the CuPy element casts for the
formats without a closed-form fast encoder (HiF8, E8M0, E6M2, UE4M3).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from lowbit.numerics import codec
from lowbit.numerics.specs import ElementFormat

DETERMINISTIC = ("nearest_even", "nearest_away", "nearest_zero", "toward_zero")


def _codes(spec: ElementFormat, rounding: str, saturate: bool, lower: int) -> np.ndarray:
    """int16 codes of every upper half with lower half ``lower`` (-1: NaN, no NaN code)."""
    x = ((np.arange(1 << 16, dtype=np.uint32) << 16) | np.uint32(lower)).view(np.float32)
    out = np.full(x.shape, -1, dtype=np.int16)
    ok = ~np.isnan(x) if spec.nan_code is None else np.ones(x.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        out[ok] = codec.encode(x[ok], spec, rounding=rounding, saturate=saturate,
                               backend="reference")
    return out


@cache
def split_table(spec: ElementFormat, rounding: str, saturate: bool) -> np.ndarray | None:
    """int16[2 * 65536] split table of ``spec`` (see the module docstring), or None where it is
    not exact or ``rounding`` is stochastic."""
    if rounding not in DETERMINISTIC:
        return None
    nonzero = _codes(spec, rounding, saturate, 1)
    if not np.array_equal(nonzero, _codes(spec, rounding, saturate, 0xFFFF)):
        return None
    table = np.concatenate([_codes(spec, rounding, saturate, 0), nonzero])
    table.setflags(write=False)
    return table
