"""HiFloat4 quantize / dequantize on the GPU (CuPy RawModule), fused: one pass over the input.

A 64-element block is handled by ``64 / V`` lanes: per-4 / per-8 / per-64 maxima (integer
maxima of the magnitude bits) by shuffles, then in exact arithmetic the reference's steps
(``numerics.hif4``):

* 16/32-bit input, float32 path: ``SF = bf16(Vmax * bf16(1/7))`` from the product rounded to
  odd in float32 (exact for bfloat16/float16), rounded to 8 bits and to the E6M2 code on its
  bit pattern (``scale_constants``); ``REC = bf16(1/E6M2)`` from four bfloat16 patterns and the
  exponent code; the micro-exponents compare ``V8 * REC`` / ``V16 * REC`` rounded toward zero
  with 4 and 2 (exactly the comparisons of the exact products); S1P2 elements
  ``k = min(7, round(|x| * REC * 2**(2 - shift)))`` as the low bits of ``2**23 + k`` (``elem_k``:
  ties away by an FMA rounded toward zero then an addition rounded toward zero, ties to even by
  one FMA, no conversion instruction); other roundings through the generic encoder on the
  exact 24 x 8-bit integer product. bfloat16 rows
  of whole blocks run the element step on pairs (``cupy_bf16x2`` word loads, ``max.u16x2``
  maxima, two codes per word by one byte permute, ``LOWBIT_CUPY_BF16X2=0`` turns it off).
* float64 input or stochastic rounding: products rounded to odd in float64 (an FMA residual,
  ``numerics.hif4._mul_odd``), the generated table encoders.

``tests/test_kernels_hif4_f32.py`` emulates the float32 path (and the pair words) step by step
in NumPy against the reference. Output: logical (codes, scales, micro bits) or packed (nibbles
+ 4-byte metadata words).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from lowbit.numerics import hif4 as ref
from lowbit.numerics.api import _no_leftovers, _take
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.specs import ElementFormat
from lowbit.numerics.tensor import QuantizedTensor

from . import cupy_bf16x2
from . import cupy_core as cc

QUANT_SRC = r"""
#if USE64
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
#else
__device__ __forceinline__ float f32_mul_rz(float a, float b) {
    float r; asm("mul.rz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
/* |a| * b + c with one rounding (toward zero / to nearest even); the abs (no flush to zero)
   folds into the FMA's operand */
__device__ __forceinline__ float f32_absfma_rz(float a, float b, float c) {
    float r;
    asm("{ .reg .f32 t; abs.f32 t, %1; fma.rz.f32 %0, t, %2, %3; }"
        : "=f"(r) : "f"(a), "f"(b), "f"(c));
    return r;
}
__device__ __forceinline__ float f32_absfma_rn(float a, float b, float c) {
    float r;
    asm("{ .reg .f32 t; abs.f32 t, %1; fma.rn.f32 %0, t, %2, %3; }"
        : "=f"(r) : "f"(a), "f"(b), "f"(c));
    return r;
}
__device__ __forceinline__ float f32_add_rz(float a, float b) {
    float r; asm("add.rz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}

/* 2**23 + k for an element a (of which the magnitude is used) and its factor
   f = REC * 2**(QBITS - shift), where k = min(KMAX, round(|a| * f)): the pattern's low bits are
   k (the float32 ulp in [2**23, 2**24) is 1). Ties away: floor(|a| * f + 1/2) is the floor of
   the FMA rounded toward zero (integers are representable, so rounding toward zero never
   crosses one), taken by an addition of 2**23 rounded toward zero; ties to even: one FMA
   |a| * f + 2**23 rounds the exact product to an integer. No conversion instruction (quarter
   rate) is needed. */
#if ELMODE == 1
__device__ __forceinline__ float elem_k(float a, float f) {
    return f32_add_rz(fminf(f32_absfma_rz(a, f, 0.5f), (float)KMAX), 8388608.0f);
}
#elif ELMODE == 2
__device__ __forceinline__ float elem_k(float a, float f) {
    return fminf(f32_absfma_rn(a, f, 8388608.0f), 8388608.0f + KMAX);
}
#endif

/* The E6M2 code of SF = bf16(Vmax * bf16(1/7)), clamped, from the float32 bits of Vmax: the
   product rounded to odd in float32 (exact for 16-bit inputs) is rounded to 8 bits with ties
   to even on its bit pattern, clamped (patterns of positive floats order as integers), and its
   7 stored mantissa bits are rounded to E6M2's 2 (scale_rounding), the carry moving into the
   exponent; E6M2's exponent field is the float32 one minus SC_REBIAS. */
__device__ __forceinline__ int scale_code32(u32 vmax) {
    u32 b = __float_as_uint(f32_mul_odd(__uint_as_float(vmax), __uint_as_float(ONE_SEVENTH_BITS)));
    b = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
    b = min(max(b, SF_MIN_BITS), SF_MAX_BITS);
    u32 t = (b >> 16) - SC_REBIAS;
#if SC_AWAY
    return (int)((t + (1u << (SC_DROP - 1))) >> SC_DROP);
#else
    return (int)((t + (1u << (SC_DROP - 1)) - 1u + ((t >> SC_DROP) & 1u)) >> SC_DROP);
#endif
}

/* REC = bf16(1 / E6M2) as float32 bits: the bfloat16 pattern of the mantissa code's reciprocal
   (REC16, four 16-bit fields) with the exponent code subtracted. */
__device__ __forceinline__ u32 rec_bits(int scode) {
    return ((u32)((REC16 >> (16 * (scode & 3))) & 0xFFFFull) << 16) - ((u32)(scode >> 2) << 23);
}
#endif

#define G4 (V / 4)
#define G8 ((V >= 8) ? (V / 8) : 1)

extern "C" __global__ void hif4_quant(const in_t *__restrict__ x, const u32 *__restrict__ rb,
                                      int nbits, unsigned char *__restrict__ codes,
                                      unsigned char *__restrict__ scales,
                                      unsigned char *__restrict__ micro, i64 rows, i64 length,
                                      i64 nb) {
#if USE64
    __shared__ int SC_sh[4 * SC_SLOTS];
    for (int i = threadIdx.x; i < 4 * SC_SLOTS; i += blockDim.x) SC_sh[i] = SC_TAB[i];
    __syncthreads();
#endif
    i64 total = rows * nb * L;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    Pos p = block_pos(tid, total, nb);
    bits_t m16[G4], m8[G8];
#if PAIRS
    u32 w[V / 2];
    load_words(x, p, w);
#pragma unroll
    for (int g = 0; g < G4; g++) {
        u32 m = u16x2_max(w[2 * g] & 0x7FFF7FFFu, w[2 * g + 1] & 0x7FFF7FFFu);
        m16[g] = max(m >> 16, m & 0xFFFFu) << 16;
    }
#else
    bits_t v[V];
    load_vals(x, p, length, v);
#pragma unroll
    for (int g = 0; g < G4; g++) {
        bits_t m = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) m = max(m, BITS_ABS(v[4 * g + j]));
        m16[g] = m;
    }
#endif
    bits_t big = m16[0];
#pragma unroll
    for (int g = 1; g < G4; g++) big = max(big, m16[g]);
    big = lane_max(big);
    bool bad = big >= BITS_INF;
    if (bad) {
#pragma unroll
        for (int g = 0; g < G4; g++) m16[g] = 0;
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
    int e8[G8], e16[G4];
#if USE64
    double sf = bf16_rne(mul_odd(absval(mx), ONE_SEVENTH));
    sf = fmin(fmax(sf, SF_MIN), SF_MAX);
    int scode = SC_enc<u64>(mag_f64((u64)__double_as_longlong(sf)), 0, 0u, 0, SC_sh);
    double rec = __longlong_as_double((i64)REC[scode]);
#pragma unroll
    for (int g = 0; g < G8; g++) e8[g] = mul_odd(absval(m8[g]), rec) >= 4.0;
#pragma unroll
    for (int g = 0; g < G4; g++) {
        int ee = (V >= 8) ? e8[g / 2] : e8[0];
        e16[g] = mul_odd(absval(m16[g]), rec) >= (ee ? 4.0 : 2.0);
    }
#else
    /* thresholds on the product rounded toward zero: >= 2 or 4 exactly where the exact one is */
    int scode = scale_code32(mx);
    u32 recb = rec_bits(scode);
    float rec = __uint_as_float(recb);
#pragma unroll
    for (int g = 0; g < G8; g++) e8[g] = f32_mul_rz(__uint_as_float(m8[g]), rec) >= 4.0f;
#pragma unroll
    for (int g = 0; g < G4; g++) {
        int ee = (V >= 8) ? e8[g / 2] : e8[0];
        e16[g] = f32_mul_rz(__uint_as_float(m16[g]), rec) >= (ee ? 4.0f : 2.0f);
    }
#endif
#if PAIRS
    /* two elements per word: the k of both halves from their float32 patterns, the sign moved
       from bit 15 / 31 to SIGN_BIT where |x| != 0 (and, without NEG_ZERO, k != 0) */
    u32 cw[V / 2];
#pragma unroll
    for (int h = 0; h < V / 2; h++) {
        float f = __uint_as_float(recb + ((u32)(QBITS - e8[h / 4] - e16[h / 2]) << 23));
        u32 kw = __byte_perm(__float_as_uint(elem_k(__uint_as_float(w[h] << 16), f)),
                             __float_as_uint(elem_k(__uint_as_float(w[h] & 0xFFFF0000u), f)),
                             0x5410);
        u32 wa = w[h] & 0x7FFF7FFFu;
        u32 nz = (wa + 0x7FFF7FFFu) & 0x80008000u;
#if !NEG_ZERO
        nz &= (kw + 0x7FFF7FFFu) & 0x80008000u;
#endif
        cw[h] = bad ? 0u : (kw | ((w[h] & nz) >> SIGN_DOWN));
    }
#else
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
#elif ELMODE
        float f = __uint_as_float(recb + ((u32)(QBITS - shift) << 23));
        u32 k = __float_as_uint(elem_k(__uint_as_float(v[j]), f)) - 0x4B000000u;
        c[j] = (int)k | (neg ? SIGN_BIT : 0);
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
#endif
    if (bad) {
        scode = SC_NAN;
#pragma unroll
        for (int g = 0; g < G8; g++) e8[g] = 0;
#pragma unroll
        for (int g = 0; g < G4; g++) e16[g] = 0;
    }
#if PAIRS
    store_code_words(codes, p, cw);
#else
    store_codes(codes, p, length, nb, c);
#endif
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
#elif V == 16
    /* the 24 micro bytes of a block as six words: E1_8 bytes 0-7 from lanes 0 and 2 (each with
       the next lane's two bytes), E1_16 bytes 8 + 4 * lane .. from every lane */
    u32 w8 = (u32)e8[0] | ((u32)e8[1] << 8);
    u32 w16 = (u32)e16[0] | ((u32)e16[1] << 8) | ((u32)e16[2] << 16) | ((u32)e16[3] << 24);
    u32 next8 = __shfl_down_sync(0xffffffffu, w8, 1);
    if (p.valid) {
        u32 *mw = reinterpret_cast<u32 *>(micro + p.blk * 24);
        if ((p.lane & 1) == 0) mw[p.lane / 2] = w8 | (next8 << 16);
        mw[2 + p.lane] = w16;
        if (p.lane == 0) scales[p.blk] = (unsigned char)scode;
    }
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
def scale_constants(scale: ElementFormat) -> dict:
    """Constants of the float32 scale path (``scale_code32``, ``rec_bits``), checked against
    ``scale``: an E6M2-like format without subnormals, code ``(e << mb) | m`` for
    ``2**(e - bias) * (1 + m / 2**mb)``, whose first and last finite values are SF_MIN and SF_MAX,
    and whose reciprocals ``REC`` are the bfloat16 value of the mantissa code's reciprocal with
    the exponent code subtracted."""
    mb, bias = scale.man_bits, scale.bias
    codes = np.arange(scale.nan_code)
    want = np.exp2((codes >> mb) - bias) * (1 + (codes & ((1 << mb) - 1)) / 2**mb)
    if (scale.encoding != "float" or scale.subnormals or scale.signed or mb > 7
            or scale.nan_code != scale.n_codes - 1 or not np.array_equal(scale.values[:-1], want)
            or want[0] != ref.SF_MIN or want[-1] != ref.SF_MAX):
        raise ValueError(f"the float32 HiF4 scale path does not apply to {scale.name}")
    rec = ref.reciprocals(scale)[:-1].astype(np.float32).view(np.uint32).astype(np.int64)
    low = rec[: 1 << mb]
    if not (np.array_equal(rec, low[codes & ((1 << mb) - 1)] - ((codes >> mb) << 23))
            and not (low & 0xFFFF).any()):
        raise ValueError(f"the reciprocals of {scale.name} do not have the float32 path's form")
    return dict(ONE_SEVENTH_BITS=int(np.float32(ref.ONE_SEVENTH_BF16).view(np.uint32)),
                SF_MIN_BITS=int(np.float32(ref.SF_MIN).view(np.uint32)),
                SF_MAX_BITS=int(np.float32(ref.SF_MAX).view(np.uint32)),
                SC_REBIAS=(127 - bias) << 7, SC_DROP=7 - mb,
                REC16=sum(int(v >> 16) << (16 * i) for i, v in enumerate(low)))


def element_constants(el: ElementFormat) -> dict | None:
    """``QBITS``, ``KMAX``, ``SIGN_BIT`` where the element values are the fixed-point grid
    ``k * 2**-QBITS`` (k = 0..KMAX, code ``k`` or ``SIGN_BIT | k``), as S1P2; else None."""
    n = el.n_codes // 2
    sign = el.sign_bit
    q = el.values[1] if n > 1 else 0.0
    qbits = -int(np.log2(q)) if q > 0 and np.log2(q) == int(np.log2(q)) else None
    if (not el.signed or sign != n or qbits is None
            or not np.array_equal(el.values[:n], np.arange(n) * q)
            or not np.array_equal(el.values[n:], -np.arange(n) * q)):
        return None
    return dict(QBITS=qbits, KMAX=n - 1, SIGN_BIT=sign)


@functools.cache
def quant_source(fmt: BlockFormat, opts: ref.HiF4Options, in_kind: int, length: int,
                 pack: bool = False) -> str:
    """The quantize kernel's source. float64 input and stochastic rounding take the float64
    path (products rounded to odd, table encoders); 16/32-bit inputs the float32 path
    (``scale_constants``; elements by ``element_constants`` for nearest roundings)."""
    stoch = opts.rounding == "stochastic"
    use64 = int(in_kind == 3 or stoch)
    nz = fmt.element.negative_zero_code
    extra = dict(USE64=use64, STOCH=int(stoch), SC_NAN=fmt.scale.nan_code,
                 NEG_ZERO=int(bool(opts.negative_zero)), NZCODE=-1 if nz is None else nz)
    el = element_constants(fmt.element)
    mode = {"nearest_away": 1, "nearest_even": 2}.get(opts.rounding, 0) if el else 0
    enc = ""
    if use64:
        rec = ref.reciprocals(fmt.scale)
        extra.update(ONE_SEVENTH=cc.double_literal(ref.ONE_SEVENTH_BF16),
                     SF_MIN=cc.double_literal(ref.SF_MIN), SF_MAX=cc.double_literal(ref.SF_MAX))
        enc = (cc.encoder_source("EL", fmt.element, True, opts.rounding)
               + cc.encoder_source("SC", fmt.scale, True, opts.scale_rounding)
               + cc.double_table("REC", rec))
    else:
        sc = scale_constants(fmt.scale)
        extra.update({k: f"{v}u" for k, v in sc.items() if k != "REC16"},
                     REC16=f"{sc['REC16']}ull", SC_AWAY=int(opts.scale_rounding == "nearest_away"),
                     ELMODE=mode, **(el if mode else {}))
        if not mode:
            _, sig, exp = _rec_parts(fmt.scale)
            enc = (cc.encoder_source("EL", fmt.element, True, opts.rounding)
                   + cc.constant_array("REC_SIG", "u32", sig)
                   + cc.constant_array("REC_EXP", "int", exp))
    pairs = _pairs(fmt, in_kind, length, mode)
    if pairs:
        extra["SIGN_DOWN"] = 15 - (el["SIGN_BIT"].bit_length() - 1)
        enc += cupy_bf16x2.words_source()
    extra["PAIRS"] = int(pairs)
    defs, _ = cc.block_defines(in_kind, fmt.block_size, length, 4 if pack else 0, False,
                               wide=True, extra=extra)
    return cc.prelude(in_kind) + defs + cc.BLOCK_IO + enc + QUANT_SRC


def _pairs(fmt: BlockFormat, in_kind: int, length: int, mode: int) -> bool:
    """Whether the element step runs on pairs of bfloat16 elements (``cupy_bf16x2``'s word
    loads, ``max.u16x2`` maxima and code-word stores): bfloat16 input in rows of whole blocks,
    a nearest rounding of the float32 path, sm_90; ``LOWBIT_CUPY_BF16X2=0`` turns it off."""
    if os.environ.get("LOWBIT_CUPY_BF16X2", "1") == "0" or cc.compute_capability() < 90:
        return False
    return in_kind == 1 and mode != 0 and length % fmt.block_size == 0 \
        and cc.lanes(in_kind, fmt.block_size, True) == 16


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
