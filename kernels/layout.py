"""Moving the blocked axis last (a 2-D ``(rows, length)`` C-contiguous view) and back."""

from __future__ import annotations

import math

import numpy as np

from lowbit.numerics.blocks import Blocking


def n_rows(b: Blocking) -> int:
    """Product of the dimensions other than the blocked axis."""
    return math.prod(s for i, s in enumerate(b.shape) if i != b.axis)


def to_rows(x: np.ndarray, b: Blocking, length: int | None = None) -> np.ndarray:
    """``x`` (of ``b.shape``, or with ``length`` along the axis) as C-contiguous ``(rows, len)``.

    No copy when the axis is already last and ``x`` is C-contiguous; otherwise one temporary of
    ``x``'s size.
    """
    moved = np.ascontiguousarray(np.moveaxis(x, b.axis, -1))
    return moved.reshape(n_rows(b), b.length if length is None else length)


def from_rows(a2: np.ndarray, b: Blocking, trailing: tuple[int, ...] = ()) -> np.ndarray:
    """Inverse of ``to_rows``: ``(rows, n, *trailing)`` data with ``n`` put back at the axis."""
    lead = tuple(s for i, s in enumerate(b.shape) if i != b.axis)
    moved = a2.reshape(lead + a2.shape[1:])
    return np.ascontiguousarray(np.moveaxis(moved, len(lead), b.axis))


def rows_rbits(rbits, b: Blocking) -> tuple[np.ndarray, int]:
    """(rbits broadcast to ``b.shape`` in the ``to_rows`` layout, flat uint32; stride 1), or a
    dummy read with stride 0 when there are none (one rbits dtype: fewer compiled variants)."""
    if rbits is None:
        return np.zeros(1, dtype=np.uint32), 0
    full = np.broadcast_to(np.asarray(rbits), b.shape)
    return to_rows(full, b).reshape(-1).astype(np.uint32), 1
