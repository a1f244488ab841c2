"""Reshaping between a tensor and its blocks along one axis (zero padding of the last block)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Blocking:
    """How a tensor of ``shape`` is cut into blocks of ``block_size`` along ``axis``."""

    shape: tuple[int, ...]
    axis: int
    block_size: int

    @property
    def length(self) -> int:
        return self.shape[self.axis]

    @property
    def n_blocks(self) -> int:
        return -(-self.length // self.block_size)

    @property
    def pad(self) -> int:
        return self.n_blocks * self.block_size - self.length

    @property
    def scale_shape(self) -> tuple[int, ...]:
        s = list(self.shape)
        s[self.axis] = self.n_blocks
        return tuple(s)


def make_blocking(shape: tuple[int, ...], axis: int, block_size: int | None) -> Blocking:
    """Normalise ``axis`` and check it; ``block_size=None`` makes one block of the whole axis."""
    if len(shape) == 0:
        raise ValueError("quantize needs an array with at least one dimension, got a scalar")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} out of range for an array of {len(shape)} dimensions")
    axis = axis % len(shape)
    if block_size is None:
        block_size = max(shape[axis], 1)
    if block_size < 1:
        raise ValueError(f"block size must be positive, got {block_size}")
    return Blocking(tuple(shape), axis, int(block_size))


def to_blocks(x: np.ndarray, b: Blocking, fill=0) -> np.ndarray:
    """``x`` as ``(*other_dims, n_blocks, block_size)``, the last block padded with ``fill``."""
    moved = np.moveaxis(x, b.axis, -1)
    if b.pad:
        widths = [(0, 0)] * (moved.ndim - 1) + [(0, b.pad)]
        moved = np.pad(moved, widths, constant_values=fill)
    return moved.reshape(*moved.shape[:-1], b.n_blocks, b.block_size)


def from_blocks(blocks: np.ndarray, b: Blocking) -> np.ndarray:
    """Inverse of ``to_blocks``: drop the padding and move the axis back."""
    flat = blocks.reshape(*blocks.shape[:-2], b.n_blocks * b.block_size)[..., : b.length]
    return np.ascontiguousarray(np.moveaxis(flat, -1, b.axis))


def block_axis_to_tensor(per_block: np.ndarray, b: Blocking) -> np.ndarray:
    """``(*other_dims, n_blocks, *trailing)`` per-block data with the block axis put at ``axis``."""
    extra = per_block.ndim - (len(b.shape))
    src = per_block.ndim - 1 - extra
    return np.ascontiguousarray(np.moveaxis(per_block, src, b.axis))


def tensor_to_block_axis(per_block: np.ndarray, b: Blocking, trailing: int = 0) -> np.ndarray:
    """Inverse of ``block_axis_to_tensor``."""
    return np.moveaxis(per_block, b.axis, per_block.ndim - 1 - trailing)
