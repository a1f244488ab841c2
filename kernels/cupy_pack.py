"""``numerics.pack`` for ``QuantizedTensor``s on the device (one RawKernel per element width:
codes -> packed row bytes; the cuBLAS 128x4 scale swizzle as an index kernel; HiF4 metadata words).
The fused quantize+pack kernels (``cupy_api.quantize_packed``) write the same layout directly.
"""

from __future__ import annotations

import numpy as np

from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import block_format
from lowbit.numerics.packing import SCALE_LAYOUTS, PackedTensor

from . import cupy_core as cc

PACK_SRC = r"""
typedef long long i64;
typedef unsigned int u32;
/* one thread per output group: 4-bit 2 codes -> 1 byte, 6-bit 4 codes -> 3 bytes, 8-bit copy */
extern "C" __global__ void pack_rows(const unsigned char *__restrict__ codes,
                                     unsigned char *__restrict__ out, i64 rows, i64 length,
                                     i64 padded, int bits) {
    int per = bits == 4 ? 2 : (bits == 6 ? 4 : 1);
    i64 groups = padded / per;
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows * groups) return;
    i64 row = t / groups, g = t - row * groups;
    u32 c[4] = {0, 0, 0, 0};
    for (int k = 0; k < per; k++) {
        i64 col = g * per + k;
        c[k] = col < length ? codes[row * length + col] : 0;
    }
    if (bits == 4) out[row * groups + g] = (unsigned char)(c[0] | (c[1] << 4));
    else if (bits == 6) {
        u32 w = c[0] | (c[1] << 6) | (c[2] << 12) | (c[3] << 18);
        unsigned char *o = out + row * groups * 3 + g * 3;
        o[0] = w & 0xFF; o[1] = (w >> 8) & 0xFF; o[2] = w >> 16;
    } else out[row * groups + g] = (unsigned char)c[0];
}

extern "C" __global__ void swizzle(const unsigned char *__restrict__ s,
                                   unsigned char *__restrict__ out, i64 rows, i64 cols) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows * cols) return;
    i64 r = t / cols, c = t - r * cols, nc = (cols + 3) / 4;
    out[((r / 128) * nc + c / 4) * 512 + (r % 32) * 16 + ((r / 32) % 4) * 4 + (c % 4)] = s[t];
}

extern "C" __global__ void hif4_meta(const unsigned char *__restrict__ s,
                                     const unsigned char *__restrict__ micro,
                                     unsigned char *__restrict__ out, i64 n) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    u32 b8 = 0, b16 = 0;
    for (int k = 0; k < 8; k++) b8 |= (u32)(micro[t * 24 + k] & 1) << k;
    for (int k = 0; k < 16; k++) b16 |= (u32)(micro[t * 24 + 8 + k] & 1) << k;
    out[4 * t] = s[t]; out[4 * t + 1] = b8; out[4 * t + 2] = b16 & 0xFF; out[4 * t + 3] = b16 >> 8;
}
"""


def pack(q, *, scale_layout: str = "linear") -> PackedTensor:
    import cupy as cp

    if scale_layout not in SCALE_LAYOUTS:
        raise ValueError(f"unknown scale_layout {scale_layout!r}; expected one of {SCALE_LAYOUTS}")
    spec = block_format(q.fmt)
    codes = cc.dev(q.codes)
    if codes.dtype != cp.uint8:
        raise TypeError(f"element codes must be uint8, got {codes.dtype}")
    b = make_blocking(codes.shape, q.axis, q.block_size)
    c2 = cc.rows_of(codes, b)
    rows, length = c2.shape
    bits = spec.element.bits
    padded = b.n_blocks * b.block_size
    padded += -padded % {4: 2, 6: 4, 8: 1}[bits]
    data = cp.empty((rows, cc.packed_row_bytes(padded, bits)), cp.uint8)
    per = {4: 2, 6: 4, 8: 1}[bits]
    cc.launch(cc.kernel(PACK_SRC, "pack_rows"), rows * (padded // per),
              (c2, data, np.int64(rows), np.int64(length), np.int64(padded), np.int32(bits)))
    s2 = None if q.scales is None else cc.rows_with(cc.dev(q.scales), b, b.n_blocks)
    meta = None
    if spec.scheme == "hif4":
        micro = cc.dev(q.micro)
        m3 = cp.ascontiguousarray(cp.moveaxis(micro, b.axis, -2)).reshape(rows, b.n_blocks, 24)
        meta = cp.empty((rows, b.n_blocks, 4), cp.uint8)
        n = rows * b.n_blocks
        cc.launch(cc.kernel(PACK_SRC, "hif4_meta"), n, (s2, m3, meta, np.int64(n)))
        s2 = None
    if scale_layout == "swizzled":
        if meta is not None:
            raise ValueError("scale_layout='swizzled' is not defined for hif4: its E6M2 scale "
                             "lives in the 4-byte HiF4 metadata words; use 'linear'")
        if s2 is None or s2.dtype != cp.uint8:
            raise ValueError(f"scale_layout='swizzled' needs uint8 per-block scale codes; "
                             f"{q.fmt} has none")
        out = cp.zeros(32 * -(-rows // 128) * 16 * -(-b.n_blocks // 4), cp.uint8)
        cc.launch(cc.kernel(PACK_SRC, "swizzle"), s2.size,
                  (cp.ascontiguousarray(s2), out, np.int64(rows), np.int64(b.n_blocks)))
        s2 = out
    return PackedTensor(fmt=spec.name, shape=tuple(codes.shape), axis=b.axis,
                        block_size=b.block_size, pad=b.pad, data=data, scales=s2, meta=meta,
                        scale_layout=scale_layout, tensor_scale=q.tensor_scale,
                        prescale=q.prescale, options=dict(q.options))
