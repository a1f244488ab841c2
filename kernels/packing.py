"""Packed storage (``numerics.packing``): element codes to bytes and back, in parallel over rows.

Only the element data, the bulk of a tensor, is packed here; scales, swizzle and HiF4 metadata
(one byte or less per block) reuse the reference's functions, so the ``PackedTensor`` is the
reference's, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.numerics import packing as ref
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import block_format
from lowbit.numerics.tensor import QuantizedTensor

from .layout import from_rows, n_rows, to_rows

PER_GROUP = {4: 2, 6: 4, 8: 1}
"""Codes per packing group (2 nibbles, 4 six-bit codes in 3 bytes, 1 byte)."""


@njit(parallel=True, cache=True)
def _pack(codes, bits, out) -> None:
    """Pack ``(rows, n)`` codes into ``out`` ``(rows, width)``; missing codes are 0."""
    rows, n = codes.shape
    per = 2 if bits == 4 else 4
    groups = out.shape[1] // (1 if bits == 4 else 3)
    for r in prange(rows):
        for g in range(groups):
            w = 0
            for k in range(per):
                i = g * per + k
                w |= (np.int64(codes[r, i]) if i < n else 0) << (bits * k)
            if bits == 4:
                out[r, g] = w
            else:
                out[r, 3 * g] = w & 0xFF
                out[r, 3 * g + 1] = (w >> 8) & 0xFF
                out[r, 3 * g + 2] = w >> 16


@njit(parallel=True, cache=True)
def _unpack(packed, bits, out) -> None:
    """Inverse of ``_pack``: the first ``out.shape[1]`` codes of each packed row."""
    rows, n = out.shape
    per = 2 if bits == 4 else 4
    mask = (1 << bits) - 1
    for r in prange(rows):
        for g in range(-(-n // per)):
            if bits == 4:
                w = np.int64(packed[r, g])
            else:
                w = (np.int64(packed[r, 3 * g]) | (np.int64(packed[r, 3 * g + 1]) << 8)
                     | (np.int64(packed[r, 3 * g + 2]) << 16))
            for k in range(per):
                i = g * per + k
                if i < n:
                    out[r, i] = (w >> (bits * k)) & mask


def pack_codes(codes2: np.ndarray, bits: int, n: int) -> np.ndarray:
    """``ref.pack_codes`` of ``codes2`` zero-extended to ``n`` codes per row."""
    out = np.empty((codes2.shape[0], ref.packed_width(n, bits)), dtype=np.uint8)
    if bits == 8:
        out[:, : codes2.shape[1]] = codes2
        out[:, codes2.shape[1]:] = 0
    else:
        _pack(codes2, bits, out)
    return out


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """``ref.unpack_codes``: ``(rows, packed_width(n, bits))`` bytes to ``(rows, n)`` codes."""
    if bits == 8:
        return np.ascontiguousarray(packed[:, :n])
    out = np.empty((packed.shape[0], n), dtype=np.uint8)
    _unpack(np.ascontiguousarray(packed), bits, out)
    return out


def pack(q: QuantizedTensor, scale_layout: str = "linear") -> ref.PackedTensor:
    """``numerics.packing.pack`` with the element codes packed by the kernel (same result)."""
    if scale_layout not in ref.SCALE_LAYOUTS:
        raise ValueError(f"unknown scale_layout {scale_layout!r}; "
                         f"expected one of {ref.SCALE_LAYOUTS}")
    spec = block_format(q.fmt)
    codes = np.asarray(q.codes)
    b = make_blocking(codes.shape, q.axis, q.block_size)
    if q.pad != b.pad:
        raise ValueError(f"pad={q.pad} but an axis of {b.length} in blocks of {b.block_size} "
                         f"needs pad={b.pad}")
    ref._check_codes("element codes", codes, np.uint8, spec.element.bits)
    rows = n_rows(b)
    data = pack_codes(to_rows(codes, b), spec.element.bits, b.n_blocks * b.block_size)
    s2d = ref._scales_2d(q, spec, b.scale_shape, b.axis, rows)
    meta = None
    if spec.scheme == "hif4":
        meta, s2d = ref._hif4_meta(s2d, ref._micro_3d(q, b.scale_shape, b.axis, rows)), None
    if scale_layout == "swizzled":
        if meta is not None:
            raise ValueError("scale_layout='swizzled' is not defined for hif4: its E6M2 scale "
                             "lives in the 4-byte HiF4 metadata words; use 'linear'")
        if s2d is None or s2d.dtype != np.uint8:
            raise ValueError(f"scale_layout='swizzled' needs uint8 per-block scale codes; "
                             f"{q.fmt} has {ref._describe(q.scales)}")
        s2d = ref.swizzle_scales(s2d)
    return ref.PackedTensor(
        fmt=spec.name, shape=tuple(codes.shape), axis=b.axis, block_size=b.block_size,
        pad=b.pad, data=data, scales=None if s2d is None else np.ascontiguousarray(s2d),
        meta=meta, scale_layout=scale_layout, tensor_scale=q.tensor_scale,
        prescale=q.prescale, options=dict(q.options),
    )


def unpack(p: ref.PackedTensor) -> QuantizedTensor:
    """``numerics.packing.unpack`` with the element codes unpacked by the kernel (same result)."""
    spec = block_format(p.fmt)
    b = make_blocking(p.shape, p.axis, p.block_size)
    rows = n_rows(b)
    data = np.asarray(p.data)
    width = ref.packed_width(b.n_blocks * b.block_size, spec.element.bits)
    meta_ok = spec.scheme != "hif4" or (
        p.meta is not None and p.meta.shape == (rows, b.n_blocks, ref.HIF4_META_BYTES))
    if p.scale_layout not in ref.SCALE_LAYOUTS or data.dtype != np.uint8 or \
            data.shape != (rows, width) or not meta_ok:
        return ref.unpack(p)  # raises the reference's error
    codes = from_rows(unpack_codes(data, spec.element.bits, b.length), b)
    s2d, micro = p.scales, None
    if spec.scheme == "hif4":
        s2d, micro3 = ref._hif4_unmeta(p.meta)
        micro = from_rows(micro3, b)
    elif s2d is not None and p.scale_layout == "swizzled":
        s2d = ref.unswizzle_scales(s2d, rows, b.n_blocks)
    if s2d is not None and s2d.shape != (rows, b.n_blocks):
        raise ValueError(f"scales must be ({rows}, {b.n_blocks}), got {s2d.shape}")
    return QuantizedTensor(
        fmt=p.fmt, codes=codes, scales=None if s2d is None else from_rows(s2d, b), axis=b.axis,
        block_size=b.block_size, tensor_scale=p.tensor_scale, micro=micro, pad=b.pad,
        prescale=p.prescale, options=dict(p.options),
    )
