"""OCP MX quantize / dequantize on the GPU (CuPy RawModule), fused: one pass over the input.

Each 32-element block is handled by ``32 / V`` lanes of a warp: 16-byte loads, a shuffle
reduction of the finite amax (on the bit patterns) and the NaN/Inf flags, the scale rule on the
float64 bits of amax (``kernels.mx`` constants, ``numerics.mx`` semantics), then every element
rounded by the generated encoder of the element format with the scale exponent applied to the
exponent (no division). Options: every scale rule, rounding mode (stochastic with rbits),
inf policy, code-0 divisor, symmetric MXINT8, zero sign, pre-scale; optional packed output
(FP4 nibbles / FP6 3-byte groups) and swizzled scales in the same pass.
"""

from __future__ import annotations

import functools

import numpy as np

from lowbit.numerics import mx as ref
from lowbit.numerics.api import DEFAULT_PRESCALE
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.tensor import QuantizedTensor

from . import cupy_core as cc

SCALE_SRC = r"""
__device__ __forceinline__ int mx_scale_exp(double amax) {
    const u64 SIGM = 0xFFFFFFFFFFFFFull;
    if (amax == 0.0) return -(1 << 20);
    u64 b = (u64)__double_as_longlong(amax);
    int fl = (int)((b >> 52) & 0x7FF) - 1023;
    if (fl == -1023) {
        b = (u64)__double_as_longlong(amax * 18446744073709551616.0);
        fl = (int)((b >> 52) & 0x7FF) - 1023 - 64;
    }
    u64 sig = (b & SIGM) | (1ull << 52);
#if RULE == 0
    return fl - EMAX;
#elif RULE == 1
    return fl + ((b & SIGM) != 0) - EMAX;
#elif RULE == 4
    return fl + (sig >= (1ull << 53) - (1ull << (51 - EVEN_BITS))) - EMAX;
#elif RULE == 3
    return fl + 1 - RCEIL_E + (sig > RCEIL_SIG);
#else
    float d = f32_mul(f64_to_f32(amax), __uint_as_float(RECIP));
    if (f32_is_zero(d)) return -(1 << 20);
    if (f32_is_inf(d)) return 0;
    u64 db = (u64)__double_as_longlong(f32_to_f64(d));
    return (int)((db >> 52) & 0x7FF) - 1023 + ((db & SIGM) != 0);
#endif
}
"""

QUANT_SRC = r"""
extern "C" __global__ void mx_quant(const in_t *__restrict__ x, const u32 *__restrict__ rb,
                                    int nbits, unsigned char *__restrict__ codes,
                                    unsigned char *__restrict__ scales, i64 rows, i64 length,
                                    i64 nb) {
    TABLE_PROLOGUE
    i64 total = rows * nb * L;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    Pos p = block_pos(tid, total, nb);
#if BF16X2
    u32 w[V / 2];
    load_words(x, p, w);
    bits_t amax, big;
    words_amax(w, amax, big);
#else
    bits_t v[V];
    load_vals(x, p, length, v);
    bits_t amax = 0, big = 0;
#pragma unroll
    for (int j = 0; j < V; j++) {
        bits_t a = BITS_ABS(v[j]);
        amax = max(amax, a < BITS_INF ? a : (bits_t)0);
        big = max(big, a);
    }
#endif
    amax = lane_max(amax);
    big = lane_max(big);
    bool has_nan = big > BITS_INF, has_inf = big == BITS_INF;
#if IN_KIND == 3
    double amaxd = __longlong_as_double((i64)amax);
#else
    double amaxd = f32_to_f64(__uint_as_float(amax));
#endif
    int k = min(max(mx_scale_exp(amaxd), -127), 127);
    if (has_inf && INF_POLICY == 1) k = 127;
    else if (has_inf && INF_POLICY == 2) k = 128 - EMAX;
    int scode = k + 127;
    bool nanblk = has_nan || (has_inf && INF_POLICY == 0);
    if (nanblk) scode = 0xFF;
    if (DIVISOR == 1) k = max(k, -126);
    else if (DIVISOR == 2 && scode == 0) k = 0;
#if BF16X2
    /* 2**-k as bfloat16 in both halves: k <= 126 here (a finite bfloat16 amax is below 2**128
       and the element formats of this path have emax >= 2) */
    u32 p2 = (u32)(127 - k) << 7;
    p2 |= p2 << 16;
    u32 keep = nanblk ? 0u : 0xFFFFFFFFu;
    u32 cw[V / 2];
#pragma unroll
    for (int h = 0; h < V / 2; h++) cw[h] = EL_near2(w[h], p2) & keep;
    store_code_words(codes, p, cw);
#else
    int c[V];
#if FASTENC
    /* y = x * 2**-k in float32: exact unless below 2**-126, where every code is zero anyway */
    float p2 = __uint_as_float(k <= 126 ? (u32)(127 - k) << 23 : 0x00400000u);
#if FASTENC == 2
#pragma unroll
    for (int j = 0; j < V; j += 2)
        EL_cvt2(f32_mul(__uint_as_float(v[j]), p2), f32_mul(__uint_as_float(v[j + 1]), p2),
                c[j], c[j + 1]);
#else
#pragma unroll
    for (int j = 0; j < V; j++) c[j] = EL_near(__float_as_uint(f32_mul(__uint_as_float(v[j]), p2)));
#endif
#pragma unroll
    for (int j = 0; j < V; j++) {
        if (nanblk) c[j] = 0;
        if (ZCODE >= 0 && BITS_ABS(v[j]) == 0) c[j] = ZCODE;
    }
#else
#pragma unroll
    for (int j = 0; j < V; j++) {
        if (nanblk) { c[j] = 0; }
        else {
#if USE64
#if IN_KIND == 3
            double xv = __longlong_as_double((i64)v[j]);
#else
            double xv = f32_to_f64(__uint_as_float(v[j]));
#endif
            Mag<u64> m = mag_f64((u64)__double_as_longlong(xv * ALPHA_D));
            u32 r = 0;
#if STOCH
            if (p.valid && (ALIGNED || p.col0 + j < length)) r = rb[elem_index(p, length, j)];
#endif
            c[j] = EL_enc<u64>(m, k, r, nbits EL_ARG);
#else
            Mag<u32> m = mag_f32(v[j]);
            m.P *= ALPHA_INT;
            m.E += ALPHA_EXP;
            c[j] = EL_enc<u32>(m, k, 0u, 0 EL_ARG);
#endif
        }
        if (ZCODE >= 0 && BITS_ABS(v[j]) == 0) c[j] = ZCODE;
    }
#endif
    store_codes(codes, p, length, nb, c);
#endif
    if (p.valid && p.lane == 0) scales[scale_index(p, rows, nb)] = (unsigned char)scode;
}
"""

DEQUANT_SRC = r"""
extern "C" __global__ void mx_dequant(const unsigned char *__restrict__ codes,
                                      const unsigned char *__restrict__ scales,
                                      out_t *__restrict__ out, i64 rows, i64 length, i64 nb) {
    LUT_PROLOGUE
    i64 total = rows * nb * L;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= total) return;
    Pos p = block_pos(tid, total, nb);
    int s = scales[p.blk];
    int c[V];
    out_t o[V];
    load_codes(codes, p, length, c);
#if F32DQ
    /* value * 2**(s - 127) rounded once to float32 (the float64 product is exact), as float32 */
    float f = __uint_as_float(s == 0xFF ? 0x7FC00000u : (s ? (u32)s << 23 : 0x00400000u));
#pragma unroll
    for (int j = 0; j < V; j++) o[j] = st_f32(f32_mul(ELUT_s[c[j]], f));
#else
    double f = (s == 0xFF) ? __longlong_as_double(0x7ff8000000000000ll)
                           : __longlong_as_double((i64)(s - 127 + 1023) << 52);
#pragma unroll
    for (int j = 0; j < V; j++) {
        double val = ELUT_s[c[j]] * f;
#if PRESCALE
        val = val / ALPHA_D;
#endif
        o[j] = st_f64(val);
    }
#endif
    store_vals(out, p, length, o);
}
"""


FLAT_DQ = r"""
#define DQ_ARGS
#if F32DQ
#define DQ_SCALE(i, e) int s_ = scales[i]; \
    float f_ = __uint_as_float(s_ == 0xFF ? 0x7FC00000u : (s_ ? (u32)s_ << 23 : 0x00400000u));
#define DQ_VALUE(c, k) st_f32(f32_mul(ELUT_s[c], f_))
#else
#define DQ_SCALE(i, e) int s_ = scales[i]; \
    double f_ = (s_ == 0xFF) ? __longlong_as_double(0x7ff8000000000000ll) \
                             : __longlong_as_double((i64)(s_ - 127 + 1023) << 52);
#if PRESCALE
#define DQ_VALUE(c, k) st_f64(ELUT_s[c] * f_ / ALPHA_D)
#else
#define DQ_VALUE(c, k) st_f64(ELUT_s[c] * f_)
#endif
#endif
"""


def _wide(in_kind: int) -> bool:
    """16 elements per thread for 16-bit inputs (one 16-byte load would be too little in flight)."""
    return in_kind in (1, 2)


def _alpha_parts(alpha: float | None) -> tuple[int, int, bool]:
    """(odd integer significand, exponent, fits the 32-bit path) of the pre-scale."""
    if alpha is None:
        return 1, 0, True
    m, e = np.frexp(alpha)
    sig = int(np.ldexp(m, 53))
    exp = int(e) - 53
    while sig and sig % 2 == 0:
        sig //= 2
        exp += 1
    return sig, exp, sig < 256


def _elem(fmt: BlockFormat, opts: ref.MXOptions):
    elem = fmt.element
    if opts.symmetric_int and elem.encoding == "int":
        elem = elem.replace(symmetric=True)
    return elem


@functools.cache
def quant_source(fmt: BlockFormat, opts: ref.MXOptions, in_kind: int, length: int,
                 alpha: float | None, pack: int = 0, swizzle: bool = False) -> str:
    from . import cupy_params as kmx

    S_DIV, S_EMAX, S_EVEN_BITS, S_INF = kmx.S_DIV, kmx.S_EMAX, kmx.S_EVEN_BITS, kmx.S_INF
    S_RCEIL_E, S_RCEIL_SIG, S_RECIP_BITS = kmx.S_RCEIL_E, kmx.S_RCEIL_SIG, kmx.S_RECIP_BITS
    S_RULE, S_ZERO_CODE, scale_params = kmx.S_RULE, kmx.S_ZERO_CODE, kmx.scale_params

    elem = _elem(fmt, opts)
    sp = scale_params(elem, opts)
    a_int, a_exp, small = _alpha_parts(alpha)
    stoch = opts.rounding == "stochastic"
    use64 = int(in_kind == 3 or stoch or not small)
    extra = dict(
        RULE=sp[S_RULE], EMAX=sp[S_EMAX], EVEN_BITS=sp[S_EVEN_BITS], RCEIL_E=sp[S_RCEIL_E],
        RCEIL_SIG=f"{sp[S_RCEIL_SIG]}ull", RECIP=f"{sp[S_RECIP_BITS] & 0xFFFFFFFF}u",
        INF_POLICY=sp[S_INF], DIVISOR=sp[S_DIV], ZCODE=sp[S_ZERO_CODE], USE64=use64,
        STOCH=int(stoch), ALPHA_INT=f"{a_int}u", ALPHA_EXP=a_exp,
        ALPHA_D=cc.double_literal(1.0 if alpha is None else alpha),
    )
    defs, _ = cc.block_defines(in_kind, fmt.block_size, length, pack, swizzle,
                               wide=_wide(in_kind), extra=extra)
    enc = cc.encoder_source("EL", elem, True, opts.rounding)
    prologue, tab_arg = cc.table_prologue("EL", elem, True)
    fast, pair = "", None
    if not use64 and alpha is None:
        # the hardware conversion only meets finite values (Inf blocks are NaN blocks)
        hw = sp[S_INF] == kmx.INF_NAN
        fast = (cc.hwcvt_source("EL", elem, True, opts.rounding) or "") if hw else ""
        if fast:
            defs += "#define FASTENC 2\n"
        else:
            fast = cc.nearest_source("EL", elem, True, opts.rounding, bounded=hw) or ""
            defs += "#define FASTENC 1\n" if fast else ""
            if fast and hw:
                pair = _pair_source(elem, opts, sp, in_kind, length, fmt.block_size, pack)
    defs += "" if fast else "#define FASTENC 0\n"
    defs += f"#define BF16X2 {int(pair is not None)}\n"
    return (cc.prelude(in_kind) + defs + cc.BLOCK_IO + enc + fast + (pair or "") + SCALE_SRC
            + f"#define TABLE_PROLOGUE {prologue.replace(chr(10), ' ')}\n"
            + f"#define EL_ARG {tab_arg}\n" + QUANT_SRC)


def _pair_source(elem, opts: ref.MXOptions, sp, in_kind: int, length: int, block: int,
                 pack: int) -> str | None:
    """``cupy_bf16x2``'s element path where it applies: bfloat16 input in rows of whole blocks
    of 16-element lanes, codes unpacked or packed FP4 nibbles, round to nearest even, no
    zero-sign code, an element format with ``emax >= 2`` (so ``k <= 126``), sm_90;
    ``LOWBIT_CUPY_BF16X2=0`` turns it off."""
    import os

    from . import cupy_bf16x2
    from .cupy_params import S_ZERO_CODE

    if os.environ.get("LOWBIT_CUPY_BF16X2", "1") == "0" or cc.compute_capability() < 90:
        return None
    if in_kind != 1 or length % block or cc.lanes(in_kind, block, True) != 16 \
            or pack not in (0, 4) or opts.rounding != "nearest_even" or sp[S_ZERO_CODE] >= 0 \
            or elem.emax < 2:
        return None
    return cupy_bf16x2.near2_source("EL", elem)


def quantize_dev(x, fmt: BlockFormat, opts: ref.MXOptions, axis: int = -1,
                 alpha: float | None = None, rbits=None, pack: bool = False,
                 swizzle: bool = False):
    """Device arrays (codes, scales, blocking) of MX quantization of cupy/torch ``x``.

    ``pack``: codes as packed rows ``(rows, packed bytes)`` (``numerics.packing`` layout) and
    scales ``(rows, n_blocks)`` (or the flat swizzled layout with ``swizzle``).
    """
    arr, name = cc.as_cupy(x)
    in_kind = cc.dtype_kind(name)
    b = make_blocking(arr.shape, axis, fmt.block_size)
    x2 = cc.rows_of(arr, b)
    rows, length, nb = x2.shape[0], b.length, b.n_blocks
    pbits = cc.pack_bits(pack, fmt.element.bits)
    src = quant_source(fmt, opts, in_kind, length, alpha, pbits, swizzle)
    fn = cc.kernel(src, "mx_quant")
    codes, scales = cc.alloc_codes_scales(rows, length, nb, fmt.block_size, pbits, swizzle)
    rb, nbits = cc.rbits_u32(rbits if opts.rounding == "stochastic" else None, arr.shape,
                             lambda r: cc.rows_of(r, b))
    total = rows * nb * (fmt.block_size // cc.lanes(in_kind, fmt.block_size, _wide(in_kind)))
    cc.launch(fn, total, (x2, rb, np.int32(nbits), codes, scales, np.int64(rows),
                          np.int64(length), np.int64(nb)))
    return codes, scales, b


def resolve(fmt, scale_rule=None, rounding=None, prescale=None, preset=None, **options):
    spec = block_format(fmt)
    opts = ref.mx_options(preset, scale_rule=scale_rule, rounding=rounding, **options)
    alpha = DEFAULT_PRESCALE if prescale is True else (
        None if prescale in (None, False) else float(prescale))
    return spec, opts, alpha


def quantize(x, fmt, axis=-1, scale_rule=None, rounding=None, prescale=None, rbits=None,
             preset=None, **options) -> QuantizedTensor:
    """``numerics.quantize`` for an MX format on the GPU; codes/scales stay on the device."""
    spec, opts, alpha = resolve(fmt, scale_rule, rounding, prescale, preset, **options)
    if opts.rounding == "stochastic" and rbits is None:
        raise ValueError('rounding="stochastic" needs rbits (unsigned random integers per element)')
    if alpha is not None:
        _check_alpha(x, alpha)
    codes, scales, b = quantize_dev(x, spec, opts, axis, alpha, rbits)
    return QuantizedTensor(
        fmt=spec.name, codes=cc.to_like(cc.from_rows_dev(codes, b), x),
        scales=cc.to_like(cc.from_rows_dev(scales, b), x), axis=b.axis,
        block_size=b.block_size, pad=b.pad, prescale=alpha, options=dict(vars(opts)),
    )


def _check_alpha(x, alpha: float) -> None:
    """The reference's exactness check of alpha * x (data only needed for float64 input)."""
    arr, name = cc.as_cupy(x)
    sig, _, _ = _alpha_parts(alpha)
    if name != "float64" and sig.bit_length() <= 29:
        ref.check_prescale_exact(np.zeros(0), alpha)
        return
    host = arr.get()
    if name == "bfloat16":
        import ml_dtypes

        host = host.view(ml_dtypes.bfloat16)
    ref.check_prescale_exact(host.astype(np.float64), alpha)


@functools.cache
def dequant_source(fmt: BlockFormat, length: int, out_kind: int, alpha) -> str:
    extra = dict(PRESCALE=int(alpha is not None), NEED_ROW=0,
                 ALPHA_D=cc.double_literal(1.0 if alpha is None else alpha))
    defs, _ = cc.block_defines(0, fmt.block_size, length, 0, False, out_kind=out_kind, wide=True,
                               extra=extra)
    n = fmt.element.n_codes
    # float32 arithmetic gives the same bits where the output rounds through float32 anyway
    f32 = alpha is None and out_kind in (0, 1)
    ctype, table = ("float", cc.float_table) if f32 else ("double", cc.double_table)
    lut = cc.shared_copy("ELUT", ctype, n).replace("\n", " ")
    return (cc.prelude(0, out_kind) + defs + f"#define F32DQ {int(f32)}\n" + cc.BLOCK_IO
            + table("ELUT", fmt.element.values)
            + f"#define LUT_PROLOGUE {lut}\n" + DEQUANT_SRC + FLAT_DQ + cc.FLAT_DEQUANT_SRC)


def dequantize_dev(codes2, scales2, fmt: BlockFormat, length: int, alpha, out_name: str):
    """(rows, length) values from (rows, length) codes and (rows, n_blocks) scales."""
    rows = codes2.shape[0]
    nb = scales2.shape[1]
    out = cc.alloc_out((rows, length), out_name)
    src = dequant_source(fmt, length, cc.KIND[out_name], alpha)
    if length % fmt.block_size == 0:
        cc.launch_flat_dequant(cc.kernel(src, "flat_dequant"), rows * length, out_name,
                               (codes2, scales2, out))
        return out
    total = rows * nb * (fmt.block_size // cc.lanes(0, fmt.block_size, True))
    cc.launch(cc.kernel(src, "mx_dequant"), total,
              (codes2, scales2, out, np.int64(rows), np.int64(length), np.int64(nb)))
    return out


def dequantize(q: QuantizedTensor, dtype=np.float32):
    spec = block_format(q.fmt)
    like = q.codes
    codes = cc.dev(q.codes)
    b = make_blocking(codes.shape, q.axis, q.block_size)
    name = cc.out_dtype_name(dtype)
    out = dequantize_dev(cc.rows_of(codes, b), cc.rows_with(cc.dev(q.scales), b, b.n_blocks),
                         spec, b.length, q.prescale, name)
    return cc.wrap_float_out(cc.from_rows_dev(out, b), name, like)
