"""Storage layout: ``QuantizedTensor`` <-> packed bytes (``pack`` / ``unpack``).

Element data. The quantized axis is moved last, the other dimensions are flattened (C order)
into ``rows``, and each row is zero-padded to whole blocks (``q.pad``), then packed by element
width (bit ``k`` of a byte means ``1 << k``):

* 8-bit codes: one per byte.
* 4-bit codes (FP4 E2M1, HiF4 S1P2, INT4): two per byte, element ``2i`` in the LOW nibble and
  ``2i + 1`` in the high nibble of byte ``i``. This is torchao ``pack_uint4`` (0.18), TE
  ``cast_to_fp4x2``, ModelOpt and CUDA ``__nv_fp4x2_e2m1``; for HiF4 it is the project
  convention of hifloat.md 4.6. A row of odd length (INT4 per channel) gets one more zero code.
* 6-bit codes (FP6 E3M2/E2M3): four codes per three bytes, ``w = c0 | c1<<6 | c2<<12 | c3<<18``
  stored little-endian (``w & 0xFF`` first). This is a PROJECT-DEFINED convention: the OCP MX
  spec fixes no memory layout. It is the LSB-first bit stream of the FP4 rule (element ``i``
  occupies bits ``6i .. 6i+5`` of the row). It is NOT the layout of ``pack_uint6`` in earlier
  torchao prototype releases (mx_formats), which split each code into 4 + 2 bits across the
  three bytes; torchao 0.18 has no FP6 packing and keeps MXFP6 one code per byte. A row whose
  length is not a multiple of 4 gets zero codes up to the next multiple.

Block scales, ``scale_layout``:

* ``"linear"``: 2-D ``(rows, n_blocks)``, row ``r`` belonging to data row ``r``. uint8 codes
  (E8M0, UE4M3) or float32 values (absmax formats; None when they have no per-block scale).
* ``"swizzled"``: uint8 codes only, in the cuBLAS / TransformerEngine 128x4 block-scaling-factor
  layout (``swizzle_scales``), flat 1-D.

HiF4 metadata, PROJECT-DEFINED (hifloat.md section 4 item 6; no public source gives the hardware
packing): 4 bytes per block, ``meta[r, b] = [E6M2, E1_8, E1_16 & 0xFF, E1_16 >> 8]``. E1_8 has
bit ``g`` = group ``g`` of 8 elements, E1_16 is little-endian with bit ``j`` = group ``j`` of
4 elements. The E6M2 scale lives only there (``PackedTensor.scales`` is None). HiF4 has no
swizzled layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .blocks import make_blocking
from .formats import BlockFormat, block_format
from .tensor import QuantizedTensor

SCALE_LAYOUTS = ("linear", "swizzled")
CODE_BITS = (4, 6, 8)
HIF4_META_BYTES = 4
_TILE_ROWS, _TILE_COLS = 128, 4


@dataclass(frozen=True)
class PackedTensor:
    """A block-format tensor in storage layout (module docstring), enough to rebuild it exactly.

    Attributes:
        fmt: block format name.
        shape: shape of the unpacked codes (the original tensor).
        axis: the quantized axis (non-negative) of ``shape``.
        block_size, pad: as in ``QuantizedTensor``.
        data: uint8 ``(rows, row_bytes)``: the packed element codes of each row.
        scales: ``"linear"``: ``(rows, n_blocks)`` uint8 or float32; ``"swizzled"``: 1-D uint8
            of ``32 * ceil(rows / 128) * 16 * ceil(n_blocks / 4)`` bytes; None without
            per-block scales (HiF4, unscaled or per-tensor absmax).
        meta: HiF4 only: uint8 ``(rows, n_blocks, 4)`` metadata words; else None.
        scale_layout: ``"linear"`` or ``"swizzled"``.
        tensor_scale, prescale, options: copied from the ``QuantizedTensor``.
    """

    fmt: str
    shape: tuple[int, ...]
    axis: int
    block_size: int
    pad: int
    data: np.ndarray
    scales: np.ndarray | None
    meta: np.ndarray | None
    scale_layout: str
    tensor_scale: np.float32 | None = None
    prescale: float | None = None
    options: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Product of the dimensions other than ``axis``."""
        return _rows(self.shape, self.axis)

    @property
    def n_blocks(self) -> int:
        """Blocks per row."""
        return make_blocking(self.shape, self.axis, self.block_size).n_blocks

    @property
    def nbytes(self) -> int:
        """Bytes of ``data`` + ``scales`` + ``meta`` (swizzle padding included; per-tensor
        scalars such as ``tensor_scale`` not counted)."""
        return sum(a.nbytes for a in (self.data, self.scales, self.meta) if a is not None)


# -- element codes ----------------------------------------------------------------------------


def packed_width(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take (padded to 2 codes for 4-bit, 4 for 6-bit)."""
    _check_bits(bits)
    if bits == 4:
        return -(-n // 2)
    if bits == 6:
        return 3 * -(-n // 4)
    return n


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes along the last axis: ``(..., n)`` -> ``(..., packed_width(n, bits))``.

    4-bit: even index in the low nibble. 6-bit: ``c0 | c1<<6 | c2<<12 | c3<<18`` as 3 bytes,
    little-endian. 8-bit: unchanged. The tail is padded with zero codes.
    """
    _check_bits(bits)
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("pack_codes needs at least one dimension (the packed axis)")
    if codes.size and int(codes.max()) >= 1 << bits:
        raise ValueError(f"code {int(codes.max()):#x} does not fit in {bits} bits")
    per_group = {4: 2, 6: 4, 8: 1}[bits]
    n = codes.shape[-1]
    extra = -n % per_group
    if extra:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], extra), np.uint8)], axis=-1)
    if bits == 8:
        return np.ascontiguousarray(codes)
    if bits == 4:
        return codes[..., 0::2] | (codes[..., 1::2] << 4)
    lead, groups = codes.shape[:-1], codes.shape[-1] // 4
    c = codes.reshape(*lead, groups, 4).astype(np.uint32)
    w = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    out = np.stack([w & 0xFF, (w >> 8) & 0xFF, w >> 16], axis=-1).astype(np.uint8)
    return out.reshape(*lead, 3 * groups)


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of ``pack_codes``: ``(..., packed_width(n, bits))`` uint8 -> ``(..., n)`` codes."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed bytes must be uint8, got {packed.dtype}")
    if packed.ndim == 0 or packed.shape[-1] != packed_width(n, bits):
        raise ValueError(
            f"{n} codes of {bits} bits take {packed_width(n, bits)} bytes per row; "
            f"got packed shape {packed.shape}"
        )
    if bits == 8:
        return np.ascontiguousarray(packed)
    lead = packed.shape[:-1]
    if bits == 4:
        out = np.stack([packed & 0xF, packed >> 4], axis=-1)
    else:
        b = packed.reshape(*lead, packed.shape[-1] // 3, 3).astype(np.uint32)
        w = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        out = np.stack([(w >> s) & 0x3F for s in (0, 6, 12, 18)], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(out.reshape(*lead, out.shape[-2] * out.shape[-1])[..., :n])


def _check_bits(bits: int) -> None:
    if bits not in CODE_BITS:
        raise ValueError(f"code width must be one of {CODE_BITS} bits, got {bits}")


# -- scale swizzle ----------------------------------------------------------------------------


def swizzle_scales(s2d: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` scales -> flat cuBLAS / TransformerEngine 128x4 block-scaling layout.

    Rows are zero-padded to a multiple of 128 and columns to a multiple of 4. The 128x4 tiles
    follow each other row-block-major (tile ``(R, C)`` at index ``R * ceil(cols / 4) + C``, 512
    bytes each); inside a tile, entry ``(r, c)`` sits at ``(r % 32) * 16 + (r // 32) * 4 + c``.
    This is torchao ``to_blocked`` (flattened). Any dtype; the layout is meant for 1-byte codes.
    """
    s = np.asarray(s2d)
    if s.ndim != 2:
        raise ValueError(f"swizzle_scales needs a 2-D (rows, cols) array, got shape {s.shape}")
    rows, cols = s.shape
    nr, nc = -(-rows // _TILE_ROWS), -(-cols // _TILE_COLS)
    padded = np.zeros((nr * _TILE_ROWS, nc * _TILE_COLS), dtype=s.dtype)
    padded[:rows, :cols] = s
    tiles = padded.reshape(nr, 4, 32, nc, _TILE_COLS)  # (R, r // 32, r % 32, C, c)
    return np.ascontiguousarray(tiles.transpose(0, 3, 2, 1, 4)).reshape(-1)


def unswizzle_scales(flat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Inverse of ``swizzle_scales``: the ``(rows, cols)`` scales (torchao ``from_blocked``)."""
    f = np.asarray(flat)
    nr, nc = -(-rows // _TILE_ROWS), -(-cols // _TILE_COLS)
    size = nr * nc * _TILE_ROWS * _TILE_COLS
    if f.ndim != 1 or f.size != size:
        raise ValueError(
            f"swizzled scales of a ({rows}, {cols}) matrix are 1-D with {size} entries; "
            f"got shape {f.shape}"
        )
    tiles = f.reshape(nr, nc, 32, 4, _TILE_COLS).transpose(0, 3, 2, 1, 4)
    return np.ascontiguousarray(tiles.reshape(nr * _TILE_ROWS, nc * _TILE_COLS)[:rows, :cols])


# -- HiF4 metadata ----------------------------------------------------------------------------


def _hif4_meta(scales: np.ndarray, micro: np.ndarray) -> np.ndarray:
    """E6M2 ``(rows, n_blocks)`` + micro bits ``(rows, n_blocks, 24)`` -> 4-byte words."""
    bits = np.packbits(micro, axis=-1, bitorder="little")  # E1_8, E1_16 low, E1_16 high
    return np.concatenate([scales[..., None], bits], axis=-1)


def _hif4_unmeta(meta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``_hif4_meta``: (E6M2 codes, micro-exponent bits)."""
    micro = np.unpackbits(meta[..., 1:], axis=-1, bitorder="little")
    return np.ascontiguousarray(meta[..., 0]), micro


# -- pack / unpack ----------------------------------------------------------------------------


def pack(q: QuantizedTensor, *, scale_layout: str = "linear") -> PackedTensor:
    """Pack a ``QuantizedTensor`` into storage layout (module docstring); ``unpack`` inverts it.

    Raises TypeError for wrong dtypes and ValueError for codes or scales outside their width,
    inconsistent shapes or metadata, an unknown ``scale_layout``, or ``"swizzled"`` without
    uint8 per-block scale codes (absmax float32 scales, HiF4).
    """
    if scale_layout not in SCALE_LAYOUTS:
        raise ValueError(f"unknown scale_layout {scale_layout!r}; expected one of {SCALE_LAYOUTS}")
    spec = block_format(q.fmt)
    codes = np.asarray(q.codes)
    b = make_blocking(codes.shape, q.axis, q.block_size)
    if q.pad != b.pad:
        raise ValueError(f"pad={q.pad} but an axis of {b.length} in blocks of {b.block_size} "
                         f"needs pad={b.pad}")
    _check_codes("element codes", codes, np.uint8, spec.element.bits)
    rows = _rows(b.shape, b.axis)
    moved = np.moveaxis(codes, b.axis, -1).reshape(rows, b.length)
    padded = np.zeros((rows, b.n_blocks * b.block_size), dtype=np.uint8)
    padded[:, : b.length] = moved
    data = pack_codes(padded, spec.element.bits)

    s2d = _scales_2d(q, spec, b.scale_shape, b.axis, rows)
    meta = None
    if spec.scheme == "hif4":
        micro = _micro_3d(q, b.scale_shape, b.axis, rows)
        meta, s2d = _hif4_meta(s2d, micro), None
    if scale_layout == "swizzled":
        if meta is not None:
            raise ValueError("scale_layout='swizzled' is not defined for hif4: its E6M2 scale "
                             "lives in the 4-byte HiF4 metadata words; use 'linear'")
        if s2d is None or s2d.dtype != np.uint8:
            raise ValueError(f"scale_layout='swizzled' needs uint8 per-block scale codes; "
                             f"{q.fmt} has {_describe(q.scales)}")
        s2d = swizzle_scales(s2d)
    return PackedTensor(
        fmt=spec.name, shape=tuple(codes.shape), axis=b.axis, block_size=b.block_size,
        pad=b.pad, data=data, scales=s2d, meta=meta, scale_layout=scale_layout,
        tensor_scale=q.tensor_scale, prescale=q.prescale, options=dict(q.options),
    )


def unpack(p: PackedTensor) -> QuantizedTensor:
    """Rebuild the ``QuantizedTensor`` that ``pack`` packed (bit-identical)."""
    if p.scale_layout not in SCALE_LAYOUTS:
        raise ValueError(f"unknown scale_layout {p.scale_layout!r}; expected {SCALE_LAYOUTS}")
    spec = block_format(p.fmt)
    b = make_blocking(p.shape, p.axis, p.block_size)
    rows = _rows(b.shape, b.axis)
    bits = spec.element.bits
    data = np.asarray(p.data)
    width = packed_width(b.n_blocks * b.block_size, bits)
    if data.shape != (rows, width):
        raise ValueError(f"data of {p.fmt} shape {p.shape} must be ({rows}, {width}), "
                         f"got {data.shape}")
    codes = unpack_codes(data, bits, b.n_blocks * b.block_size)[:, : b.length]
    moved_shape = tuple(s for i, s in enumerate(b.shape) if i != b.axis) + (b.length,)
    codes = _to_tensor(codes, moved_shape, b.axis)

    s2d, micro = p.scales, None
    if spec.scheme == "hif4":
        if p.meta is None or p.meta.shape != (rows, b.n_blocks, HIF4_META_BYTES):
            got = None if p.meta is None else p.meta.shape
            raise ValueError(f"hif4 meta must be ({rows}, {b.n_blocks}, 4) uint8, got {got}")
        s2d, micro3 = _hif4_unmeta(p.meta)
        micro = _to_tensor(micro3, moved_shape[:-1] + (b.n_blocks, 24), b.axis, trailing=1)
    elif s2d is not None and p.scale_layout == "swizzled":
        s2d = unswizzle_scales(s2d, rows, b.n_blocks)
    scales = None
    if s2d is not None:
        if s2d.shape != (rows, b.n_blocks):
            raise ValueError(f"scales must be ({rows}, {b.n_blocks}), got {s2d.shape}")
        scales = _to_tensor(s2d, moved_shape[:-1] + (b.n_blocks,), b.axis)
    return QuantizedTensor(
        fmt=p.fmt, codes=codes, scales=scales, axis=b.axis, block_size=b.block_size,
        tensor_scale=p.tensor_scale, micro=micro, pad=b.pad, prescale=p.prescale,
        options=dict(p.options),
    )


def _rows(shape: tuple[int, ...], axis: int) -> int:
    return math.prod(s for i, s in enumerate(shape) if i != axis)


def _to_tensor(a2d: np.ndarray, moved_shape: tuple, axis: int, trailing: int = 0) -> np.ndarray:
    """Reshape row-major 2-D (or 3-D) data to ``moved_shape`` and put its blocked axis back."""
    src = len(moved_shape) - 1 - trailing
    return np.ascontiguousarray(np.moveaxis(a2d.reshape(moved_shape), src, axis))


def _check_codes(what: str, a: np.ndarray, dtype, bits: int) -> None:
    if a.dtype != dtype:
        raise TypeError(f"{what} must be {np.dtype(dtype)}, got {a.dtype}")
    if a.size and int(a.max()) >= 1 << bits:
        raise ValueError(f"{what}: {int(a.max()):#x} does not fit in {bits} bits")


def _describe(scales) -> str:
    return "no per-block scales" if scales is None else f"{np.asarray(scales).dtype} scales"


def _scales_2d(q: QuantizedTensor, spec: BlockFormat, scale_shape: tuple, axis: int,
               rows: int) -> np.ndarray | None:
    """Per-block scales as ``(rows, n_blocks)`` after checking dtype, width and shape."""
    if q.scales is None:
        if spec.scheme != "absmax":
            raise ValueError(f"{spec.name} needs per-block scales, got None")
        return None
    s = np.asarray(q.scales)
    if s.shape != scale_shape:
        raise ValueError(f"scales of {spec.name} must have shape {scale_shape}, got {s.shape}")
    if spec.scale is None:
        if s.dtype != np.float32:
            raise TypeError(f"{spec.name} scales must be float32, got {s.dtype}")
    else:
        _check_codes(f"{spec.scale.name} scale codes", s, np.uint8, spec.scale.bits)
    return np.moveaxis(s, axis, -1).reshape(rows, scale_shape[axis])


def _micro_3d(q: QuantizedTensor, scale_shape: tuple, axis: int, rows: int) -> np.ndarray:
    """HiF4 micro-exponent bits as ``(rows, n_blocks, 24)`` after checking them."""
    if q.micro is None:
        raise ValueError("hif4 needs micro-exponent bits (q.micro), got None")
    m = np.asarray(q.micro)
    if m.shape != scale_shape + (24,):
        raise ValueError(f"hif4 micro must have shape {scale_shape + (24,)}, got {m.shape}")
    _check_codes("hif4 micro-exponent bits", m, np.uint8, 1)
    return np.moveaxis(m, axis, -2).reshape(rows, scale_shape[axis], 24)
