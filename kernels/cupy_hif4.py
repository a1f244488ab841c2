"""HiFloat4 quantize / dequantize on the GPU (CuPy RawModule), fused: one pass over the input.

A 64-element block is handled by ``64 / V`` lanes: per-4 / per-8 / per-64 maxima by shuffles,
``SF = bf16(Vmax * bf16(1/7))`` (products rounded to odd in float64 through an FMA residual,
``numerics.hif4._mul_odd``), the E6M2 scale (generated table encoder, ``scale_rounding``),
``REC = bf16(1/E6M2)`` from the reference's table, the micro-exponents, and the S1P2 elements
rounded from the exact product ``|x| * REC`` (a 24 x 8-bit integer product on the 32-bit path).
Output: logical (codes, scales, micro bits) or packed (nibbles + 4-byte metadata words).
"""

from __future__ import annotations

import functools

import numpy as np

from lowbit.numerics import hif4 as ref
from lowbit.numerics.api import _no_leftovers, _take
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.tensor import QuantizedTensor

from . import cupy_core as cc

QUANT_SRC = r"""
__device__ __forceinline__ double mul_odd(double a, double b) {
    double p = a * b;
    double e = fma(a, b, -p);
    u64 pb = (u64)__double_as_longlong(p);
    if (e != 0.0 && !(pb & 1ull)) {
        /* the neighbour of p toward the exact product (p >= 0 here) */
        pb = (e > 0.0) ? pb + 1 : pb - 1;
        p = __longlong_as_double((i64)pb);
    }
    return p;
}

__device__ __forceinline__ double bf16_rne(double v) {
    u64 b = (u64)__double_as_longlong(v);
    u64 lsb = (b >> 45) & 1ull;
    b = (b + (1ull << 44) - 1ull + lsb) & ~((1ull << 45) - 1ull);
    return __longlong_as_double((i64)b);
}

__device__ __forceinline__ double absval(bits_t b) {
#if IN_KIND == 3
    return __longlong_as_double((i64)BITS_ABS(b));
#else
    return f32_to_f64(__uint_as_float(BITS_ABS(b)));
#endif
}

#define G4 (V / 4)
#define G8 ((V >= 8) ? (V / 8) : 1)

extern "C" __global__ void hif4_quant(const in_t *__restrict__ x, const u32 *__restrict__ rb,
                                      int nbits, unsigned char *__restrict__ codes,
                                      unsigned char *__restrict__ scales,
                                      unsigned char *__restrict__ micro, i64 rows, i64 length,
                                      i64 nb) {
    __shared__ int SC_sh[4 * SC_SLOTS];
    for (int i = threadIdx.x; i < 4 * SC_SLOTS; i += blockDim.x) SC_sh[i] = SC_TAB[i];
    __syncthreads();
    i64 total = rows * nb * L;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    Pos p = block_pos(tid, total, nb);
    bits_t v[V];
    load_vals(x, p, length, v);
    bits_t big = 0;
#pragma unroll
    for (int j = 0; j < V; j++) big = max(big, BITS_ABS(v[j]));
    big = lane_max(big);
    bool bad = big >= BITS_INF;
    if (bad) {
#pragma unroll
        for (int j = 0; j < V; j++) v[j] = 0;
    }
    bits_t m16[G4], m8[G8];
#pragma unroll
    for (int g = 0; g < G4; g++) {
        bits_t m = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) m = max(m, BITS_ABS(v[4 * g + j]));
        m16[g] = m;
    }
#if V >= 8
#pragma unroll
    for (int g = 0; g < G8; g++) m8[g] = max(m16[2 * g], m16[2 * g + 1]);
#else
    m8[0] = max(m16[0], (bits_t)__shfl_xor_sync(0xffffffffu, m16[0], 1));
#endif
    bits_t mx = m8[0];
#pragma unroll
    for (int g = 1; g < G8; g++) mx = max(mx, m8[g]);
    mx = lane_max(mx);
    double sf = bf16_rne(mul_odd(absval(mx), ONE_SEVENTH));
    sf = fmin(fmax(sf, SF_MIN), SF_MAX);
    int scode = SC_enc<u64>(mag_f64((u64)__double_as_longlong(sf)), 0, 0u, 0, SC_sh);
    double rec = __longlong_as_double((i64)REC[scode]);
    int e8[G8], e16[G4];
#pragma unroll
    for (int g = 0; g < G8; g++) e8[g] = mul_odd(absval(m8[g]), rec) >= 4.0;
#pragma unroll
    for (int g = 0; g < G4; g++) {
        int ee = (V >= 8) ? e8[g / 2] : e8[0];
        e16[g] = mul_odd(absval(m16[g]), rec) >= (ee ? 4.0 : 2.0);
    }
    int c[V];
#pragma unroll
    for (int j = 0; j < V; j++) {
        int shift = ((V >= 8) ? e8[j / 8] : e8[0]) + e16[j / 4];
        bool neg = (v[j] >> (sizeof(bits_t) * 8 - 1)) && BITS_ABS(v[j]) != 0;
#if USE64
        Mag<u64> m = mag_f64((u64)__double_as_longlong(mul_odd(absval(v[j]), rec)));
        m.neg = neg;
        u32 r = 0;
#if STOCH
        if (p.valid && (ALIGNED || p.col0 + j < length)) r = rb[elem_index(p, length, j)];
#endif
        c[j] = EL_enc<u64>(m, shift, r, nbits);
#elif FASTENC
        /* |x| * REC rounded to odd in float32 keeps the nearest rounding to S1P2 exact; the
           micro-exponent shift is exact (values it would make subnormal encode to zero) */
        float y = f32_mul_odd(__uint_as_float(BITS_ABS(v[j])), __uint_as_float(RECF[scode]));
        y = f32_mul(y, __uint_as_float((u32)(127 - shift) << 23));
        c[j] = EL_near(__float_as_uint(y) | (neg ? 0x80000000u : 0u));
#else
        Mag<u32> m = mag_f32(BITS_ABS(v[j]));
        m.P *= REC_SIG[scode];
        m.E += REC_EXP[scode];
        m.neg = neg;
        c[j] = EL_enc<u32>(m, shift, 0u, 0);
#endif
        if (!NEG_ZERO && c[j] == NZCODE) c[j] = 0;
        if (bad) c[j] = 0;
    }
    if (bad) {
        scode = SC_NAN;
#pragma unroll
        for (int g = 0; g < G8; g++) e8[g] = 0;
#pragma unroll
        for (int g = 0; g < G4; g++) e16[g] = 0;
    }
    store_codes(codes, p, length, nb, c);
#if PACK
    u32 b8 = 0, b16 = 0;
#if V >= 8
#pragma unroll
    for (int g = 0; g < G8; g++) b8 |= (u32)e8[g] << (p.lane * G8 + g);
#else
    if ((p.lane & 1) == 0) b8 |= (u32)e8[0] << (p.lane / 2);
#endif
#pragma unroll
    for (int g = 0; g < G4; g++) b16 |= (u32)e16[g] << (p.lane * G4 + g);
    b8 = lane_or(b8);
    b16 = lane_or(b16);
    if (p.valid && p.lane == 0)
        reinterpret_cast<u32 *>(scales)[p.blk] = (u32)scode | (b8 << 8) | (b16 << 16);
#else
    if (p.valid) {
        if (p.lane == 0) scales[p.blk] = (unsigned char)scode;
        unsigned char *mb = micro + p.blk * 24;
#if V >= 8
#pragma unroll
        for (int g = 0; g < G8; g++) mb[p.lane * G8 + g] = (unsigned char)e8[g];
#else
        if ((p.lane & 1) == 0) mb[p.lane / 2] = (unsigned char)e8[0];
#endif
#pragma unroll
        for (int g = 0; g < G4; g++) mb[8 + p.lane * G4 + g] = (unsigned char)e16[g];
    }
#endif
}
"""

DEQUANT_SRC = r"""
extern "C" __global__ void hif4_dequant(const unsigned char *__restrict__ codes,
                                        const unsigned char *__restrict__ scales,
                                        const unsigned char *__restrict__ micro,
                                        out_t *__restrict__ out, i64 rows, i64 length, i64 nb) {
    LUT_PROLOGUE
    i64 total = rows * nb * L;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= total) return;
    Pos p = block_pos(tid, total, nb);
    double s = SLUT_s[scales[p.blk]];
    const unsigned char *mb = micro + p.blk * 24;
    int c[V];
    out_t o[V];
    load_codes(codes, p, length, c);
#pragma unroll
    for (int j = 0; j < V; j++) {
        int col = p.lane * V + j;
        int sh = mb[col / 8] + mb[8 + col / 4];
        o[j] = st_f64(ELUT_s[c[j]] * s * (double)(1 << sh));
    }
    store_vals(out, p, length, o);
}
"""


@functools.cache
def _rec_parts(scale_fmt):
    rec = ref.reciprocals(scale_fmt)
    sig = np.zeros(rec.size, dtype=np.int64)
    exp = np.zeros(rec.size, dtype=np.int64)
    for i, r in enumerate(rec):
        if not np.isfinite(r):
            continue
        m, e = np.frexp(r)
        s_, x_ = int(np.ldexp(m, 53)), int(e) - 53
        while s_ % 2 == 0:
            s_ //= 2
            x_ += 1
        assert s_ < 256
        sig[i], exp[i] = s_, x_
    return rec, sig, exp


@functools.cache
def quant_source(fmt: BlockFormat, opts: ref.HiF4Options, in_kind: int, length: int,
                 pack: bool = False) -> str:
    stoch = opts.rounding == "stochastic"
    use64 = int(in_kind == 3 or stoch)
    rec, sig, exp = _rec_parts(fmt.scale)
    nz = fmt.element.negative_zero_code
    defs, _ = cc.block_defines(in_kind, fmt.block_size, length, 4 if pack else 0, False,
                               wide=True, extra=dict(USE64=use64, STOCH=int(stoch),
                                          ONE_SEVENTH=cc.double_literal(ref.ONE_SEVENTH_BF16),
                                          SF_MIN=cc.double_literal(ref.SF_MIN),
                                          SF_MAX=cc.double_literal(ref.SF_MAX),
                                          SC_NAN=fmt.scale.nan_code,
                                          NEG_ZERO=int(bool(opts.negative_zero)),
                                          NZCODE=-1 if nz is None else nz))
    enc = cc.encoder_source("EL", fmt.element, True, opts.rounding)
    assert not cc.uses_table(fmt.element, True)
    near = "" if use64 else (cc.nearest_source("EL", fmt.element, True, opts.rounding) or "")
    defs += f"#define FASTENC {int(bool(near))}\n"
    enc += near
    sc = cc.encoder_source("SC", fmt.scale, True, opts.scale_rounding)
    recf = np.where(np.isfinite(rec), rec, 0.0).astype(np.float32).view(np.uint32)
    assert np.array_equal(recf.view(np.float32).astype(np.float64)[np.isfinite(rec)],
                          rec[np.isfinite(rec)])
    tables = (cc.double_table("REC", rec) + cc.constant_array("RECF", "u32", recf)
              + cc.constant_array("REC_SIG", "u32", sig) + cc.constant_array("REC_EXP", "int", exp))
    return cc.prelude(in_kind) + defs + cc.BLOCK_IO + enc + sc + tables + QUANT_SRC


def quantize_dev(x, fmt: BlockFormat, opts: ref.HiF4Options, axis: int = -1, rbits=None,
                 pack: bool = False):
    """Device (codes, scales, micro, blocking); with ``pack``: (data, meta, None, blocking)."""
    import cupy as cp

    arr, name = cc.as_cupy(x)
    in_kind = cc.dtype_kind(name)
    b = make_blocking(arr.shape, axis, fmt.block_size)
    x2 = cc.rows_of(arr, b)
    rows, length, nb = x2.shape[0], b.length, b.n_blocks
    src = quant_source(fmt, opts, in_kind, length, pack)
    if pack:
        codes = cp.empty((rows, nb * fmt.block_size // 2), cp.uint8)
        scales = cp.empty((rows, nb, 4), cp.uint8)
        micro = cp.empty(1, cp.uint8)
    else:
        codes = cp.empty((rows, length), cp.uint8)
        scales = cp.empty((rows, nb), cp.uint8)
        micro = cp.empty((rows, nb, 24), cp.uint8)
    rb, nbits = cc.rbits_u32(rbits if opts.rounding == "stochastic" else None, arr.shape,
                             lambda r: cc.rows_of(r, b))
    v = cc.lanes(in_kind, fmt.block_size, True)
    cc.launch(cc.kernel(src, "hif4_quant"), rows * nb * (fmt.block_size // v),
              (x2, rb, np.int32(nbits), codes, scales, micro, np.int64(rows), np.int64(length),
               np.int64(nb)))
    return codes, scales, (None if pack else micro), b


def quantize(x, fmt="hif4", axis=-1, rounding=None, rbits=None, preset=None,
             **options) -> QuantizedTensor:
    spec = block_format(fmt)
    if preset not in (None, False):
        raise TypeError(f"preset= applies to MX formats (and presets to MX/NVFP4), not {spec.name}")
    opts = ref.hif4_options(rounding=rounding, **_take(options, ref.OPTION_NAMES))
    _no_leftovers(spec, options)
    if opts.rounding == "stochastic" and rbits is None:
        raise ValueError('rounding="stochastic" needs rbits (unsigned random integers per element)')
    codes, scales, micro, b = quantize_dev(x, spec, opts, axis, rbits)
    return QuantizedTensor(
        fmt=spec.name, codes=cc.to_like(cc.from_rows_dev(codes, b), x),
        scales=cc.to_like(cc.from_rows_dev(scales, b), x), axis=b.axis,
        block_size=b.block_size, micro=cc.to_like(cc.from_rows_dev(micro, b, (24,)), x),
        pad=b.pad, options=dict(vars(opts)),
    )


FLAT_DQ = r"""
#define DQ_ARGS const unsigned char *__restrict__ micro,
/* a group is 4 or 8 elements of one 8-group (one e8 bit), one or two 4-groups (e16 bits) */
#define DQ_SCALE(i, e) const unsigned char *mb_ = micro + (i) * 24; int g_ = (int)((e) % B) / 4; \
    float s_ = SLUTF_s[scales[i]]; \
    int e8_ = 127 + mb_[g_ / 2]; \
    float f0_ = f32_mul(s_, __uint_as_float((u32)(e8_ + mb_[8 + g_]) << 23)); \
    float f1_ = FE == 8 ? f32_mul(s_, __uint_as_float((u32)(e8_ + mb_[9 + g_]) << 23)) : f0_;
#define DQ_VALUE(c, k) st_f32(f32_mul(ELUTF_s[c], (k) < 4 ? f0_ : f1_))
"""


@functools.cache
def dequant_source(fmt: BlockFormat, length: int, out_kind: int) -> str:
    """Both kernels; the flat one in float32 (value * scale * 2**shift is exact in float32, so
    every output dtype gets the bits of the exact product's rounding)."""
    defs, _ = cc.block_defines(0, fmt.block_size, length, 0, False, out_kind=out_kind)
    lut = (cc.shared_copy("ELUT", "double", fmt.element.n_codes)
           + cc.shared_copy("SLUT", "double", fmt.scale.n_codes)).replace("__syncthreads();\n", "")
    lut = lut + "__syncthreads();"
    flut = (cc.shared_copy("ELUTF", "float", fmt.element.n_codes)
            + cc.shared_copy("SLUTF", "float", fmt.scale.n_codes)).replace("__syncthreads();\n", "")
    flut = flut + "__syncthreads();"
    flat = (FLAT_DQ + cc.FLAT_DEQUANT_SRC).replace("LUT_PROLOGUE", flut.replace(chr(10), " "))
    return (cc.prelude(0, out_kind) + defs + cc.BLOCK_IO
            + cc.double_table("ELUT", fmt.element.values)
            + cc.double_table("SLUT", fmt.scale.values)
            + cc.float_table("ELUTF", fmt.element.values)
            + cc.float_table("SLUTF", fmt.scale.values)
            + f"#define LUT_PROLOGUE {lut.replace(chr(10), ' ')}\n" + DEQUANT_SRC + flat)


def dequantize_dev(codes2, scales2, micro3, fmt: BlockFormat, length: int, out_name: str):
    rows = codes2.shape[0]
    nb = scales2.shape[1]
    out = cc.alloc_out((rows, length), out_name)
    src = dequant_source(fmt, length, cc.KIND[out_name])
    if length % fmt.block_size == 0:
        cc.launch_flat_dequant(cc.kernel(src, "flat_dequant"), rows * length, out_name,
                               (codes2, scales2, micro3, out))
        return out
    cc.launch(cc.kernel(src, "hif4_dequant"), rows * nb * (fmt.block_size // 8),
              (codes2, scales2, micro3, out, np.int64(rows), np.int64(length), np.int64(nb)))
    return out


def dequantize(q: QuantizedTensor, dtype=np.float32):
    import cupy as cp

    spec = block_format(q.fmt)
    codes = cc.dev(q.codes)
    b = make_blocking(codes.shape, q.axis, q.block_size)
    name = cc.out_dtype_name(dtype)
    micro = cc.dev(q.micro)
    micro3 = cp.ascontiguousarray(cp.moveaxis(micro, b.axis, -2)).reshape(-1, b.n_blocks, 24)
    out = dequantize_dev(cc.rows_of(codes, b), cc.rows_with(cc.dev(q.scales), b, b.n_blocks),
                         micro3, spec, b.length, name)
    return cc.wrap_float_out(cc.from_rows_dev(out, b), name, q.codes)
