"""INT8 / INT4 / HiF8 float-scaled formats on the GPU (``numerics.absmax``).

``granularity="none"`` (HiF8's default) is the element cast (``cupy_elementwise``). Scaled
granularities take two passes: one warp per group computes the float32 amax and the scale
``max(fl32(amax / target), 2**-149)`` (NaN for groups with NaN/Inf; per tensor, the maximum of the
group scales, as the reference), then every element is ``encode(clip(fl32(x32 / s), +-target))``
with the generated encoder of the (symmetric, for INT) element format.
"""

from __future__ import annotations

import functools

import numpy as np

from lowbit.numerics import absmax as ref
from lowbit.numerics.api import _ABSMAX_NAMES, _no_leftovers, _take
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import block_format
from lowbit.numerics.tensor import QuantizedTensor

from . import cupy_core as cc
from . import cupy_elementwise as ew

SCALES_SRC = r"""
__device__ __forceinline__ float x32_at(const in_t *x, i64 i) {
#if IN_KIND == 3
    return f64_to_f32(x[i]);
#else
    return __uint_as_float(ld_bits32(x, i));
#endif
}
extern "C" __global__ void am_scales(const in_t *__restrict__ x, float *__restrict__ scales,
                                     i64 rows, i64 length, i64 nb, i64 gs, float target) {
    i64 w = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (w >= rows * nb) return;
    i64 row = w / nb, cb = w - row * nb;
    i64 start = cb * gs, stop = min(start + gs, length);
    u32 m = 0;  /* float32 bits of max |x| (NaN bits above Inf) */
    for (i64 j = start + lane; j < stop; j += 32)
        m = max(m, __float_as_uint(x32_at(x, row * length + j)) & 0x7FFFFFFFu);
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) {
        float s;
        if (m >= 0x7F800000u) s = __int_as_float(0x7fc00000);   /* NaN or Inf in the group */
        else {
            s = f32_div(__uint_as_float(m), target);
            if (m > 0 && __float_as_uint(s) < 1u) s = __uint_as_float(1u);   /* 2**-149 */
            if (!f32_finite(s)) s = __int_as_float(0x7fc00000);
        }
        scales[w] = s;
    }
}

extern "C" __global__ void am_quant(const in_t *__restrict__ x, const float *__restrict__ scales,
                                    const u32 *__restrict__ rb, int nbits,
                                    unsigned char *__restrict__ codes, i64 rows, i64 length,
                                    i64 nb, i64 gs, float target, int tensor) {
    TABLE_PROLOGUE
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * length) return;
    i64 row = i / length, col = i - row * length;
    float s = scales[tensor ? 0 : row * nb + col / gs];
    bool zero = !f32_finite(s) || f32_is_zero(s);
    float y = zero ? 0.0f : f32_div(x32_at(x, i), s);
    y = f32_min(f32_max(y, -target), target);
    Mag<u32> m = mag_f32(__float_as_uint(y));
#if STOCH
    codes[i] = (unsigned char)EL_enc<u64>(widen(m), 0, rb[i], nbits EL_ARG);
#elif FASTENC == 2
    codes[i] = (unsigned char)EL_tfast(__float_as_uint(y), EL_pk);
#elif FASTENC == 1
    codes[i] = (unsigned char)EL_near(__float_as_uint(y));
#else
    codes[i] = (unsigned char)EL_enc<u32>(m, 0, 0u, 0 EL_ARG);
#endif
}
"""

DEQUANT_SRC = r"""
extern "C" __global__ void am_dequant(const unsigned char *__restrict__ codes,
                                      const float *__restrict__ scales,
                                      const float *__restrict__ lut,
                                      out_t *__restrict__ out, i64 rows, i64 length, i64 nb,
                                      i64 gs, int mode) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * length) return;
    float v = lut[codes[i]];
    if (mode == 1) {
        i64 row = i / length, col = i - row * length;
        v = f32_mul(v, scales[row * nb + col / gs]);
    } else if (mode == 2) {
        v = f32_mul(v, scales[0]);
    }
    out[i] = st_f32(v);
}
"""


DEQUANT8_SRC = r"""
/* Modes 0 (no scale) and 2 (one tensor scale) over a flat array of 8k codes: 8 per thread,
   8-byte loads and 16-byte stores, the value table in shared memory (for 16-bit outputs in
   mode 0 also the output patterns themselves, converted once per block). */
extern "C" __global__ void am_dequant8(const unsigned char *__restrict__ codes,
                                       const float *__restrict__ scales,
                                       const float *__restrict__ lut, int n_lut,
                                       out_t *__restrict__ out, i64 n8, int mode) {
    __shared__ float lut_s[256];
#if OUT_KIND == 1 || OUT_KIND == 2
    __shared__ out_t lut_o[256];
#endif
    for (int i = threadIdx.x; i < n_lut; i += blockDim.x) {
        lut_s[i] = lut[i];
#if OUT_KIND == 1 || OUT_KIND == 2
        lut_o[i] = st_f32(lut[i]);
#endif
    }
    __syncthreads();
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n8) return;
    uint2 w = __ldcs(reinterpret_cast<const uint2 *>(codes) + t);
    float s = mode == 2 ? scales[0] : 1.0f;
    out_t o[8];
#if OUT_KIND == 1 || OUT_KIND == 2
    if (mode != 2) {
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = lut_o[((j < 4 ? w.x : w.y) >> (8 * (j & 3))) & 0xFF];
    } else
#endif
    {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float v = lut_s[((j < 4 ? w.x : w.y) >> (8 * (j & 3))) & 0xFF];
            o[j] = st_f32(mode == 2 ? f32_mul(v, s) : v);
        }
    }
#if OUT_KIND == 0
    float4 *q = reinterpret_cast<float4 *>(out) + 2 * t;
    __stcs(q, make_float4(o[0], o[1], o[2], o[3]));
    __stcs(q + 1, make_float4(o[4], o[5], o[6], o[7]));
#elif OUT_KIND == 3
    double2 *q = reinterpret_cast<double2 *>(out) + 4 * t;
#pragma unroll
    for (int h = 0; h < 4; h++) __stcs(q + h, make_double2(o[2 * h], o[2 * h + 1]));
#else
    uint4 u;
    u.x = (u32)o[0] | ((u32)o[1] << 16);
    u.y = (u32)o[2] | ((u32)o[3] << 16);
    u.z = (u32)o[4] | ((u32)o[5] << 16);
    u.w = (u32)o[6] | ((u32)o[7] << 16);
    __stcs(reinterpret_cast<uint4 *>(out) + t, u);
#endif
}
"""


def dequant_dev(c2, s2, lut, mode: int, out, out_name: str, block_size: int) -> None:
    """Fill ``out`` (rows, length) from codes ``c2`` (rows, length): mode 0 values, 1 times the
    per-group float32 scales ``s2`` (rows, n_groups), 2 times the tensor scale ``s2[0]``."""
    rows, length = c2.shape
    src = cc.prelude(0, cc.KIND[out_name]) + DEQUANT_SRC + DEQUANT8_SRC
    n = rows * length
    if mode != 1 and n % 8 == 0:
        cc.launch(cc.kernel(src, "am_dequant8"), n // 8,
                  (c2, s2, lut, np.int32(lut.size), out, np.int64(n // 8), np.int32(mode)))
        return
    nb = s2.shape[-1] if mode == 1 else 1
    cc.launch(cc.kernel(src, "am_dequant"), n,
              (c2, s2, lut, out, np.int64(rows), np.int64(length), np.int64(nb),
               np.int64(block_size), np.int32(mode)))


@functools.cache
def _source(spec, elem, saturate, rounding, in_kind) -> str:
    stoch = rounding == "stochastic"
    enc = cc.encoder_source("EL", elem, saturate, rounding)
    prologue, tab_arg = cc.table_prologue("EL", elem, saturate)
    fast, fast_prologue, kind = cc.fast_encoder("EL", elem, saturate, rounding, not stoch)
    prologue += fast_prologue
    return (cc.prelude(in_kind) + f"#define STOCH {int(stoch)}\n#define FASTENC {kind}\n"
            + enc + fast
            + f"#define TABLE_PROLOGUE {prologue.replace(chr(10), ' ')}\n"
            + f"#define EL_ARG {tab_arg}\n" + SCALES_SRC)


def quantize(x, fmt, axis=-1, rounding=None, rbits=None, preset=None, **options) -> QuantizedTensor:
    import cupy as cp

    spec = block_format(fmt)
    if preset not in (None, False):
        raise TypeError(f"preset= applies to MX formats (and presets to MX/NVFP4), not {spec.name}")
    opts = ref.absmax_options(spec, rounding=rounding, **_take(options, _ABSMAX_NAMES))
    _no_leftovers(spec, options)
    if opts.rounding == "stochastic" and rbits is None:
        raise ValueError('rounding="stochastic" needs rbits (unsigned random integers per element)')
    arr, name = cc.as_cupy(x)
    in_kind = cc.dtype_kind(name)
    b = make_blocking(arr.shape, axis, ref.group_size(opts))
    is_int = spec.element.encoding == "int"
    elem = spec.element.replace(symmetric=True) if is_int else spec.element
    saturate = True if is_int else opts.saturate
    if opts.granularity == "none":
        codes, err = ew.encode_dev(x, elem, opts.rounding, saturate, rbits)
        if int(err.get()[0]):
            raise ValueError(f"{elem.name} has no NaN code but the input contains NaN")
        return QuantizedTensor(fmt=spec.name, codes=cc.to_like(codes, x), scales=None,
                               axis=b.axis, block_size=b.block_size, pad=b.pad,
                               options=dict(vars(opts)))
    x2 = cc.rows_of(arr, b)
    rows, length, nb, gs = x2.shape[0], b.length, b.n_blocks, b.block_size
    src = _source(spec, elem, saturate, opts.rounding, in_kind)
    scales = cp.empty((rows, nb), cp.float32)
    t32 = np.float32(opts.target)
    cc.launch(cc.kernel(src, "am_scales"), rows * nb * 32,
              (x2, scales, np.int64(rows), np.int64(length), np.int64(nb), np.int64(gs), t32))
    tensor = opts.granularity == "tensor"
    if tensor and scales.size:
        s_all = cp.where(cp.isnan(scales).any(), cp.float32(np.nan), scales.max())
        scales = cp.full((rows, nb), s_all, dtype=cp.float32)
    rb, nbits = cc.rbits_u32(rbits if opts.rounding == "stochastic" else None, arr.shape,
                             lambda r: cc.rows_of(r, b))
    codes = cp.empty((rows, length), cp.uint8)
    cc.launch(cc.kernel(src, "am_quant"), rows * length,
              (x2, scales, rb, np.int32(nbits), codes, np.int64(rows), np.int64(length),
               np.int64(nb), np.int64(gs), t32, np.int32(0)))
    codes_t = cc.to_like(cc.from_rows_dev(codes, b), x)
    if tensor:
        ts = np.float32(scales.reshape(-1)[0].get()) if scales.size else np.float32(0)
        return QuantizedTensor(fmt=spec.name, codes=codes_t, scales=None, axis=b.axis,
                               block_size=b.block_size, tensor_scale=ts, pad=b.pad,
                               options=dict(vars(opts)))
    return QuantizedTensor(fmt=spec.name, codes=codes_t,
                           scales=cc.to_like(cc.from_rows_dev(scales, b), x), axis=b.axis,
                           block_size=b.block_size, pad=b.pad, options=dict(vars(opts)))


def dequantize(q: QuantizedTensor, dtype=np.float32):
    import cupy as cp

    spec = block_format(q.fmt)
    codes = cc.dev(q.codes)
    b = make_blocking(codes.shape, q.axis, q.block_size)
    name = cc.out_dtype_name(dtype)
    c2 = cc.rows_of(codes, b)
    rows, length = c2.shape[0], b.length
    if q.scales is not None:
        s2, mode = cc.rows_with(cc.dev(q.scales), b, b.n_blocks).astype(cp.float32), 1
    elif q.tensor_scale is not None:
        s2, mode = cp.asarray(np.array([q.tensor_scale], np.float32)), 2
    else:
        s2, mode = cp.zeros(1, cp.float32), 0
    lut = cp.asarray(spec.element.values.astype(np.float32))
    out = cc.alloc_out((rows, length), name)
    dequant_dev(c2, s2, lut, mode, out, name, b.block_size)
    return cc.wrap_float_out(cc.from_rows_dev(out, b), name, q.codes)
