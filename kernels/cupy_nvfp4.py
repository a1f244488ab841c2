"""NVFP4 quantize / dequantize on the GPU (CuPy RawModule).

Pass 1 (skipped when the caller gives ``global_amax``): the float32 global amax and the
non-finite check, one read. Pass 2, fused: per 16-element block (two lanes of a warp) the block
amax, the algorithm's float32 scale arithmetic (IEEE ``__f*_rn`` intrinsics in the reference's
op order, no contraction), the UE4M3 scale (generated table encoder, RNE, saturating) and the
E2M1 elements (generated encoder), written unpacked or packed, with linear or swizzled scales.
"""

from __future__ import annotations

import functools

import numpy as np

from lowbit.numerics import nvfp4 as ref
from lowbit.numerics.api import _no_leftovers, _take
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.formats import BlockFormat, block_format
from lowbit.numerics.tensor import QuantizedTensor

from . import cupy_core as cc

ALGO = {name: i for i, name in enumerate(ref.ALGORITHMS)}

AMAX_SRC = r"""
extern "C" __global__ void nv_amax(const in_t *__restrict__ x, i64 n, u32 *__restrict__ res) {
    u32 m = 0, bad = 0;
    i64 step = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
#if IN_KIND == 3
        double d = x[i];
        float f = f64_to_f32(d);
        bad |= (!isfinite(d) || f32_is_inf(f)) ? 1u : 0u;
        u32 a = __float_as_uint(f) & 0x7FFFFFFFu;
#else
        u32 a = ld_bits32(x, i) & 0x7FFFFFFFu;
        bad |= a >= 0x7F800000u ? 1u : 0u;
#endif
        m = max(m, a);
    }
    for (int o = 16; o > 0; o >>= 1) {
        m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
        bad |= __shfl_xor_sync(0xffffffffu, bad, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicMax(res, min(m, 0x7F7FFFFFu));
        if (bad) atomicOr(res + 1, 1u);
    }
}
"""

QUANT_SRC = r"""
__device__ __forceinline__ int ue4m3(float s, const int *tab) {
#if SCFAST
    return SC_near(__float_as_uint(s));   /* 0 <= s <= 448 */
#else
    Mag<u32> m = mag_f32(__float_as_uint(s));
    return SC_enc<u32>(m, 0, 0u, 0, tab);
#endif
}

/* consts[i] = the element factor of scale code i (multiply by it; modelopt divides) and
   consts[SC_N] = the algorithm's per-tensor constant, in the reference's float32 op order; one
   small launch before nv_quant. */
extern "C" __global__ void nv_consts(const u32 *__restrict__ gbits,
                                     float *__restrict__ consts) {
    const float FMAX = 3.4028234663852886e38f, one = 1.0f, e_max = 6.0f;
    int i = threadIdx.x;
    if (i >= SC_N) return;
    float g = __uint_as_float(gbits[0]), c, fac;
    float sv = __uint_as_float(SCLUT[i]);
#if ALGO == 0
    float s_enc = f32_is_zero(g) ? one : f32_min(f32_div(2688.0f, g), FMAX);
    float s_dec = f32_div(one, s_enc);
    c = f32_mul(s_enc, f32_div(one, e_max));
    fac = f32_min(f32_div(one, f32_mul(sv, s_dec)), FMAX);
#else
    float s = f32_div(g, 2688.0f);
    c = f32_is_zero(s) ? one : s;
#if ALGO == 1
    fac = f32_div(f32_div(one, c), sv);
#else
    fac = f32_mul(sv, c);
#endif
#endif
    consts[i] = fac;
    if (i == 0) consts[SC_N] = c;
}

extern "C" __global__ void nv_quant(const in_t *__restrict__ x,
                                    const float *__restrict__ consts,
                                    const u32 *__restrict__ rb, int nbits,
                                    unsigned char *__restrict__ codes,
                                    unsigned char *__restrict__ scales, u32 *__restrict__ err,
                                    i64 rows, i64 length, i64 nb) {
#if !SCFAST
    __shared__ int SC_sh[4 * SC_SLOTS];
    for (int i = threadIdx.x; i < 4 * SC_SLOTS; i += blockDim.x) SC_sh[i] = SC_TAB[i];
    __syncthreads();
#else
    const int *SC_sh = 0;
#endif
    EL_PROLOGUE
    const float FMAX = 3.4028234663852886e38f, one = 1.0f, e_max = 6.0f, s_max = 448.0f;
    i64 total = rows * nb * L;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    Pos p = block_pos(tid, total, nb);
#if BF16X2
    u32 w[V / 2];
    load_words(x, p, w);
#else
    bits_t raw[V];
    load_vals(x, p, length, raw);
#endif
    /* the per-tensor constant and, below, the factor of the block's scale code: 129 floats
       that stay in L1 */
    const float TC = __ldg(consts + SC_N);
#if BF16X2
    u32 am, big;
    words_amax(w, am, big);
#else
    u32 v[V];
    u32 am = 0, big = 0;
#pragma unroll
    for (int j = 0; j < V; j++) {
#if IN_KIND == 3
        double d = __longlong_as_double((i64)raw[j]);
        float f = f64_to_f32(d);
        v[j] = __float_as_uint(f);
        if (!isfinite(d)) big = 0x7F800000u;
#else
        v[j] = raw[j];
#endif
        u32 a = v[j] & 0x7FFFFFFFu;
        am = max(am, a);
        big = max(big, a);
    }
#endif
    am = lane_max(am);
    float amax = __uint_as_float(am);
#if ALGO == 0
    int code = ue4m3(f32_min(f32_min(f32_mul(amax, TC), FMAX), s_max), SC_sh);
#elif ALGO == 1
    float t = f32_div(f32_div(amax, e_max), TC);
    int code = ue4m3(f32_min(f32_max(t, 0.015625f), s_max), SC_sh);
#else
    float t = f32_div(amax, f32_mul(e_max, TC));
    t = f32_is_zero(t) ? one : t;
    int code = ue4m3(f32_min(f32_max(t, 0.001953125f), s_max), SC_sh);
#endif
    float factor = __ldg(consts + code);
    u32 bad = (big >= 0x7F800000u) ? 1u : 0u;
#if BF16X2
    /* a NaN product needs a zero or infinite factor (finite inputs): checked only then */
    u32 fb = __float_as_uint(factor);
    bool risky = fb == 0 || fb >= 0x7F800000u;
    u32 cw[V / 2];
#pragma unroll
    for (int h = 0; h < V / 2; h++) {
        u32 y0 = __float_as_uint(f32_mul(__uint_as_float(w[h] << 16), factor));
        u32 y1 = __float_as_uint(f32_mul(__uint_as_float(w[h] & 0xFFFF0000u), factor));
        cw[h] = EL_near2(bf16x2_odd(y0, y1), w[h]);
    }
    if (risky) {
#pragma unroll
        for (int h = 0; h < V / 2; h++) {
            float y0 = f32_mul(__uint_as_float(w[h] << 16), factor);
            float y1 = f32_mul(__uint_as_float(w[h] & 0xFFFF0000u), factor);
            if (f32_is_nan(y0) || f32_is_nan(y1)) bad |= 2u;
        }
    }
    if (p.valid && bad) atomicOr(err, bad);
    store_code_words(codes, p, cw);
#else
    int c[V];
#pragma unroll
    for (int j = 0; j < V; j++) {
        float xv = __uint_as_float(v[j]);
#if ALGO == 2
        float y = f32_div(xv, factor);
#else
        float y = f32_mul(xv, factor);
#endif
        if (f32_is_nan(y)) bad |= 2u;
        Mag<u32> m = mag_f32(__float_as_uint(y));
#if STOCH
        u32 r = 0;
        if (p.valid && (ALIGNED || p.col0 + j < length)) r = rb[elem_index(p, length, j)];
        c[j] = EL_enc<u64>(widen(m), 0, r, nbits EL_ARG);
#elif FASTENC
        c[j] = EL_near(__float_as_uint(y));
#else
        c[j] = EL_enc<u32>(m, 0, 0u, 0 EL_ARG);
#endif
#if ALGO == 2
        if (f32_is_zero(y)) c[j] = 0;
#endif
    }
    if (p.valid && bad) atomicOr(err, bad);
    store_codes(codes, p, length, nb, c);
#endif
    if (p.valid && p.lane == 0) scales[scale_index(p, rows, nb)] = (unsigned char)code;
}
"""

DEQUANT_SRC = r"""
extern "C" __global__ void nv_dequant(const unsigned char *__restrict__ codes,
                                      const unsigned char *__restrict__ scales, double ts,
                                      out_t *__restrict__ out, i64 rows, i64 length, i64 nb) {
    LUT_PROLOGUE
    i64 total = rows * nb * L;
    i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= total) return;
    Pos p = block_pos(tid, total, nb);
    double f = SLUT_s[scales[p.blk]] * ts;
    int c[V];
    out_t o[V];
    load_codes(codes, p, length, c);
#pragma unroll
    for (int j = 0; j < V; j++) o[j] = st_f64(ELUT_s[c[j]] * f);
    store_vals(out, p, length, o);
}
"""


@functools.cache
def quant_source(fmt: BlockFormat, opts: ref.NVFP4Options, in_kind: int, length: int,
                 pack: int = 0, swizzle: bool = False) -> str:
    stoch = opts.rounding == "stochastic"
    defs, _ = cc.block_defines(in_kind, fmt.block_size, length, pack, swizzle, wide=True,
                               extra=dict(ALGO=ALGO[opts.algorithm], STOCH=int(stoch)))
    enc = cc.encoder_source("EL", fmt.element, True, opts.rounding)
    fast = cc.nearest_source("EL", fmt.element, True, opts.rounding) or ""
    defs += f"#define FASTENC {int(bool(fast))}\n"
    enc += fast
    pair = _pair_source(fmt, opts, in_kind, length, pack)
    defs += f"#define BF16X2 {int(pair is not None)}\n"
    enc += pair or ""
    sc = cc.encoder_source("SC", fmt.scale, True, "nearest_even")
    sc_fast = cc.nearest_source("SC", fmt.scale, True, "nearest_even", nonnegative=True) or ""
    defs += f"#define SCFAST {int(bool(sc_fast))}\n"
    sc += sc_fast
    assert cc.uses_table(fmt.scale, True)
    prologue, tab_arg = cc.table_prologue("EL", fmt.element, True)
    sbits = fmt.scale.values.astype(np.float32).view(np.uint32)
    sclut = (f"#define SC_N {fmt.scale.n_codes}\n__constant__ u32 SCLUT[SC_N] = {{ "
             + ", ".join(f"{int(v)}u" for v in sbits) + " };\n")
    return (cc.prelude(in_kind) + defs + cc.BLOCK_IO + enc + sc + sclut
            + f"#define EL_PROLOGUE {prologue.replace(chr(10), ' ')}\n"
            + f"#define EL_ARG {tab_arg}\n" + QUANT_SRC)


def _pair_source(fmt: BlockFormat, opts: ref.NVFP4Options, in_kind: int, length: int,
                 pack: int) -> str | None:
    """``cupy_bf16x2``'s element path where it applies: bfloat16 input in rows of whole blocks,
    codes unpacked or packed, round to nearest even, the multiplying algorithms (not modelopt:
    its division and zero rule), sm_90; ``LOWBIT_CUPY_BF16X2=0`` turns it off. Each float32
    product ``x * factor`` is rounded to odd into a bfloat16 pair, then encoded two at a time."""
    import os

    from . import cupy_bf16x2

    if os.environ.get("LOWBIT_CUPY_BF16X2", "1") == "0" or cc.compute_capability() < 90:
        return None
    if in_kind != 1 or length % fmt.block_size or pack not in (0, 4) \
            or opts.rounding != "nearest_even" or opts.algorithm == "modelopt" \
            or cc.lanes(in_kind, fmt.block_size, True) != 16:
        return None
    return cupy_bf16x2.near2_source("EL", fmt.element, scaled=False, bounded=False)


def global_amax_dev(arr2, in_kind: int):
    """Device uint32[2]: float32 bits of max|x| (capped at FP32_MAX), non-finite flag."""
    import cupy as cp

    res = cp.zeros(2, dtype=cp.uint32)
    src = cc.prelude(in_kind) + AMAX_SRC
    n = arr2.size
    if n:
        blocks = min(-(-n // (cc.THREADS * 8)), 132 * 16)
        cc.kernel(src, "nv_amax")((blocks,), (cc.THREADS,), (arr2, np.int64(n), res))
    return res


def tensor_scale(algorithm: str, g: np.float32) -> np.float32:
    """The float32 decode tensor scale of the reference (``kernels.nvfp4._tensor_scales``)."""
    one, e_max, s_max = np.float32(1), np.float32(6), np.float32(448)
    with np.errstate(all="ignore"):
        if algorithm == "transformer_engine":
            s_enc = one if g == 0 else np.minimum(s_max * e_max / g, np.finfo(np.float32).max)
            return np.float32(one / np.float32(s_enc))
        s = np.float32(g / (s_max * e_max))
        return one if s == 0 else s


def quantize_dev(x, fmt: BlockFormat, opts: ref.NVFP4Options, axis: int = -1,
                 global_amax=None, rbits=None, pack: bool = False, swizzle: bool = False,
                 check: bool = True):
    """(codes, scales, blocking, device g bits, device error flags) of NVFP4 quantization.

    ``check=False`` with a given ``global_amax`` makes it one pass and leaves the error flags
    (1: non-finite input, 2: NaN in the scaled values) for the caller.
    """
    import cupy as cp

    arr, name = cc.as_cupy(x)
    in_kind = cc.dtype_kind(name)
    b = make_blocking(arr.shape, axis, fmt.block_size)
    x2 = cc.rows_of(arr, b)
    rows, length, nb = x2.shape[0], b.length, b.n_blocks
    if global_amax is None:
        res = global_amax_dev(x2, in_kind)
        gbits = res[:1]
        if check and int(res[1].get()):
            _bad_input(x2)
    else:
        with np.errstate(over="ignore"):
            g = np.float32(float(global_amax))
        if not (np.isfinite(g) and g >= 0):
            raise ValueError(f"global_amax must be finite in float32 and >= 0, got {global_amax!r}")
        gbits = cp.asarray(np.array([g]).view(np.uint32))
    pbits = cc.pack_bits(pack, fmt.element.bits)
    src = quant_source(fmt, opts, in_kind, length, pbits, swizzle)
    codes, scales = cc.alloc_codes_scales(rows, length, nb, fmt.block_size, pbits, swizzle)
    rb, nbits = cc.rbits_u32(rbits if opts.rounding == "stochastic" else None, arr.shape,
                             lambda r: cc.rows_of(r, b))
    err = cp.zeros(1, dtype=cp.uint32)
    v = cc.lanes(in_kind, fmt.block_size, True)
    consts = cp.empty(fmt.scale.n_codes + 1, cp.float32)
    cc.kernel(src, "nv_consts")((1,), (fmt.scale.n_codes,), (gbits, consts))
    cc.launch(cc.kernel(src, "nv_quant"), rows * nb * (fmt.block_size // v),
              (x2, consts, rb, np.int32(nbits), codes, scales, err, np.int64(rows),
               np.int64(length), np.int64(nb)))
    return codes, scales, b, gbits, err


def _bad_input(x2) -> None:
    import cupy as cp

    if x2.dtype == cp.float64 and bool(cp.isfinite(x2).all()):
        raise ValueError("NVFP4 input has float64 values beyond the float32 range")
    raise ValueError("NVFP4 input contains NaN or Inf; E2M1 cannot represent them")


def quantize(x, fmt="nvfp4", axis=-1, rounding=None, rbits=None, preset=None,
             **options) -> QuantizedTensor:
    """``numerics.quantize`` for NVFP4 on the GPU; codes/scales stay on the device."""
    spec = block_format(fmt)
    opts = ref.nvfp4_options(preset, rounding=rounding, **_take(options, ref.OPTION_NAMES))
    global_amax = options.pop("global_amax", None)
    _no_leftovers(spec, options)
    if opts.rounding == "stochastic" and rbits is None:
        raise ValueError('rounding="stochastic" needs rbits (unsigned random integers per element)')
    codes, scales, b, gbits, err = quantize_dev(x, spec, opts, axis, global_amax, rbits)
    flags = int(err.get()[0])
    g = np.float32(gbits.get().view(np.float32)[0])
    if flags & 1:
        _bad_input(cc.rows_of(cc.as_cupy(x)[0], b))
    if flags & 2:
        raise ValueError(
            f"algorithm={opts.algorithm!r} is undefined for global amax {float(g)!r}: its float32 "
            'arithmetic meets 0 * Inf or 0 / 0 (NaN); use algorithm="transformer_engine"')
    return QuantizedTensor(
        fmt=spec.name, codes=cc.to_like(cc.from_rows_dev(codes, b), x),
        scales=cc.to_like(cc.from_rows_dev(scales, b), x), axis=b.axis,
        block_size=b.block_size, tensor_scale=tensor_scale(opts.algorithm, g), pad=b.pad,
        options=dict(vars(opts)),
    )


@functools.cache
def dequant_source(fmt: BlockFormat, length: int, out_kind: int) -> str:
    defs, _ = cc.block_defines(0, fmt.block_size, length, 0, False, out_kind=out_kind, wide=True)
    lut = (cc.shared_copy("ELUT", "double", fmt.element.n_codes)
           + cc.shared_copy("SLUT", "double", fmt.scale.n_codes)).replace("__syncthreads();\n", "")
    lut = lut + "__syncthreads();"
    return (cc.prelude(0, out_kind) + defs + cc.BLOCK_IO
            + cc.double_table("ELUT", fmt.element.values)
            + cc.double_table("SLUT", fmt.scale.values)
            + f"#define LUT_PROLOGUE {lut.replace(chr(10), ' ')}\n" + DEQUANT_SRC
            + "#define DQ_ARGS double ts,\n"
            + "#define DQ_SCALE(i, e) double f_ = SLUT_s[scales[i]] * ts;\n"
            + "#define DQ_VALUE(c, k) st_f64(ELUT_s[c] * f_)\n" + cc.FLAT_DEQUANT_SRC)


def dequantize_dev(codes2, scales2, ts, fmt: BlockFormat, length: int, out_name: str):
    rows = codes2.shape[0]
    nb = scales2.shape[1]
    out = cc.alloc_out((rows, length), out_name)
    src = dequant_source(fmt, length, cc.KIND[out_name])
    if length % fmt.block_size == 0:
        cc.launch_flat_dequant(cc.kernel(src, "flat_dequant"), rows * length, out_name,
                               (codes2, scales2, np.float64(ts), out))
        return out
    cc.launch(cc.kernel(src, "nv_dequant"), rows * nb * (fmt.block_size // cc.lanes(0, 16, True)),
              (codes2, scales2, np.float64(ts), out, np.int64(rows), np.int64(length),
               np.int64(nb)))
    return out


def dequantize(q: QuantizedTensor, dtype=np.float32):
    spec = block_format(q.fmt)
    codes = cc.dev(q.codes)
    b = make_blocking(codes.shape, q.axis, q.block_size)
    name = cc.out_dtype_name(dtype)
    out = dequantize_dev(cc.rows_of(codes, b), cc.rows_with(cc.dev(q.scales), b, b.n_blocks),
                         np.float64(np.float32(q.tensor_scale)), spec, b.length, name)
    return cc.wrap_float_out(cc.from_rows_dev(out, b), name, q.codes)
