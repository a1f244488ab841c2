"""Element casts on the GPU: ``encode`` for every element format, rounding mode and overflow
policy (one generated encoder per format; 16-byte loads, eight elements per thread), and the
code-to-value lookup. HiF8 with ``granularity="none"`` is this cast.

Formats without the closed-form nearest encoder (HiF8, E8M0, E6M2, UE4M3) read the split table
of ``split_table`` (two int16 codes per float32 upper half, 256 KiB in global memory, read
through the read-only cache: real data touches a few binades, so the lookups hit L1) on float32,
bfloat16 and float16 input with deterministic rounding (``FASTENC 3``).
"""

from __future__ import annotations

import functools

import numpy as np

from lowbit.numerics.codec import _check_saturate
from lowbit.numerics.specs import ElementFormat, element_format

from . import cupy_core as cc
from .split_table import split_table

ENCODE_SRC = r"""
extern "C" __global__ void ew_encode(const in_t *__restrict__ x, const u32 *__restrict__ rb,
                                     int nbits, unsigned char *__restrict__ codes,
                                     u32 *__restrict__ err, i64 n,
                                     const short *__restrict__ split) {
    TABLE_PROLOGUE
    i64 total = (n + V - 1) / V;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= total) return;
    Pos p = block_pos(tid, total, total);
    bits_t v[V];
    load_vals(x, p, n, v);
    int c[V];
    int bad = 0;
#pragma unroll
    for (int j = 0; j < V; j++) {
#if USE64
#if IN_KIND == 3
        Mag<u64> m = mag_f64((u64)v[j]);
#else
        Mag<u64> m = widen(mag_f32(v[j]));
#endif
        u32 r = 0;
#if STOCH
        if (ALIGNED || p.col0 + j < n) r = rb[elem_index(p, n, j)];
#endif
        c[j] = EL_enc<u64>(m, 0, r, nbits EL_ARG);
#elif FASTENC == 3
        c[j] = __ldg(&split[(v[j] >> 16) | ((u32)((v[j] & 0xFFFFu) != 0u) << 16)]);
#elif FASTENC == 2
        c[j] = EL_tfast(v[j], EL_pk);
#elif FASTENC == 1
        c[j] = EL_near(v[j]);
#else
        c[j] = EL_enc<u32>(mag_f32(v[j]), 0, 0u, 0 EL_ARG);
#endif
        bad |= (c[j] < 0) && (ALIGNED || p.col0 + j < n);
    }
    if (bad) atomicOr(err, 1u);
    store_codes(codes, p, n, total, c);
}
"""


def _v(in_kind: int) -> int:
    """Elements per thread (and the block of the layout helpers): 16 for 16-bit inputs."""
    return cc.lanes(in_kind, 16, wide=in_kind in (1, 2))


@functools.cache
def encode_source(spec: ElementFormat, in_kind: int, n: int, rounding: str,
                  saturate: bool) -> str:
    stoch = rounding == "stochastic"
    use64 = in_kind == 3 or stoch
    v = _v(in_kind)
    defs, _ = cc.block_defines(in_kind, v, n, 0, False, wide=v == 16, extra=dict(
        USE64=int(use64), STOCH=int(stoch), NEED_ROW=0))
    enc = cc.encoder_source("EL", spec, saturate, rounding)
    prologue, tab_arg = cc.table_prologue("EL", spec, saturate)
    fast, fast_prologue, kind = cc.fast_encoder("EL", spec, saturate, rounding, not use64)
    if uses_split(spec, in_kind, rounding, saturate):
        fast, fast_prologue, kind = "", "", 3
    prologue += fast_prologue
    defs += f"#define FASTENC {kind}\n"
    return (cc.prelude(in_kind) + defs + cc.BLOCK_IO + enc + fast
            + f"#define TABLE_PROLOGUE {prologue.replace(chr(10), ' ')}\n"
            + f"#define EL_ARG {tab_arg}\n" + ENCODE_SRC)


def uses_split(spec: ElementFormat, in_kind: int, rounding: str, saturate: bool) -> bool:
    """Whether the cast reads the split table: not float64 input, deterministic rounding, a
    format whose split table is exact and that has no closed-form nearest encoder."""
    if in_kind == 3 or split_table(spec, rounding, saturate) is None:
        return False
    return cc.fast_encoder("EL", spec, saturate, rounding)[2] != 1


@functools.cache
def _split_dev(spec: ElementFormat, rounding: str, saturate: bool):
    """The split table on the current device (cached per format and mode)."""
    import cupy as cp

    return cp.asarray(split_table(spec, rounding, saturate))


def encode_dev(arr, spec: ElementFormat, rounding: str, saturate: bool, rbits=None):
    """(uint8 codes of ``arr``'s shape, device error flag) for a cupy array of a float dtype."""
    import cupy as cp

    arr, name = cc.as_cupy(arr)
    in_kind = cc.dtype_kind(name)
    flat = cp.ascontiguousarray(arr).reshape(-1)
    n = flat.size
    codes = cp.empty(arr.shape, dtype=cp.uint8)
    err = cp.zeros(1, dtype=cp.uint32)
    rb, nbits = cc.rbits_u32(rbits if rounding == "stochastic" else None, arr.shape)
    src = encode_source(spec, in_kind, n, rounding, saturate)
    split = (_split_dev(spec, rounding, saturate) if uses_split(spec, in_kind, rounding, saturate)
             else cp.zeros(1, dtype=cp.int16))
    cc.launch(cc.kernel(src, "ew_encode"), -(-n // _v(in_kind)),
              (flat, rb, np.int32(nbits), codes.reshape(-1), err, np.int64(n), split))
    return codes, err


def encode(x, fmt, rounding=None, saturate=None, rbits=None):
    """``numerics.encode`` on the GPU (cupy array or CUDA torch tensor in, codes on the device)."""
    spec = element_format(fmt)
    rounding = spec.rounding if rounding is None else rounding
    cc.rounding_flags(rounding)
    saturate = spec.saturate if saturate is None else bool(saturate)
    _check_saturate(spec, saturate)
    if rounding == "stochastic" and rbits is None:
        raise ValueError('rounding="stochastic" needs rbits (unsigned random integers per element)')
    codes, err = encode_dev(x, spec, rounding, saturate, rbits)
    if int(err.get()[0]):
        raise ValueError(f"{spec.name} has no NaN code but the input contains NaN")
    return cc.to_like(codes, x)


def decode(codes, fmt, dtype=np.float32):
    """Values of device ``codes`` (``numerics.decode`` on the GPU, a table lookup)."""
    import cupy as cp

    spec = element_format(fmt)
    c = cc.dev(codes)
    lut = cp.asarray(spec.values).astype(np.dtype(dtype))
    return cc.to_like(lut[c.astype(cp.int64)], codes)
