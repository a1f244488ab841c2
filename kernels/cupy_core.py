"""Shared pieces of the CuPy GPU kernels: CUDA source generated from the reference specs.

Every element format is rounded by one of two device functions generated from its
``ElementFormat`` (through the same parameter builders as the Numba kernels,
``core.fast_params`` / ``core.element_table``; nothing is written per format):

* ``<name>_enc`` (fast): IEEE-like signed floats with subnormals and two's-complement
  fixed-point integers, arithmetic only;
* ``<name>_enc`` (table): every other format (HiF8, UE4M3, E6M2), a slot table in shared
  memory (one row per binade: quantum exponent, first code, its count, carry count).

Both take an exact magnitude ``P * 2**E`` (``P`` an unsigned integer of 32 or 64 bits), the
sign, a NaN flag and, for stochastic rounding, the random integer; they normalise ``P`` and
round on integers, so the result is exact for any input that the caller represents exactly
(float16/bfloat16/float32 as 24-bit significands, float64 as 53-bit, the products of the
schemes as <= 32-bit integer products). This is the algorithm of ``core.encode_one`` /
``core.encode_fast`` with the significand width as a template parameter.

Arrays: CuPy arrays, or CUDA torch tensors through DLPack (zero copy); results stay on the
device and come back as the input's array type. Modules are compiled by NVRTC once per source
(CuPy caches them on disk too).
"""

from __future__ import annotations

import functools

import numpy as np

from lowbit.numerics.specs import ElementFormat

CUPY_DTYPES = ("float16", "bfloat16", "float32", "float64")
THREADS = 256


def cupy_available() -> bool:
    """Whether CuPy imports and sees a CUDA device."""
    try:
        import cupy as cp

        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device
        return False


# -- array interop --------------------------------------------------------------------------


def is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def is_device_array(x) -> bool:
    """CuPy array or CUDA torch tensor."""
    if is_cupy(x):
        return True
    return is_torch(x) and getattr(x, "is_cuda", False)


def as_cupy(x):
    """(cupy array, dtype name) of a CuPy array or CUDA torch tensor; bfloat16 as uint16 bits.

    Torch tensors go through DLPack (zero copy); torch bfloat16 is viewed as int16 first since
    CuPy has no bfloat16 dtype.
    """
    import cupy as cp

    if is_torch(x):
        import torch

        t = x.detach()
        name = str(t.dtype).replace("torch.", "")
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        arr = cp.from_dlpack(t)
        if name == "bfloat16":
            arr = arr.view(cp.uint16)
        return arr, name
    name = x.dtype.name
    if name == "bfloat16":  # a cupy array with an ml_dtypes bfloat16 dtype, if ever
        return x.view(cp.uint16), name
    return x, name


def to_like(arr, like):
    """A device result ``arr`` (cupy) as the array type of ``like`` (torch tensors via DLPack)."""
    if arr is None or not is_torch(like):
        return arr
    import torch

    return torch.from_dlpack(arr)


def torch_bf16(arr_u16):
    """A cupy uint16 array of bfloat16 bits as a torch bfloat16 tensor (zero copy)."""
    import torch

    return torch.from_dlpack(arr_u16.view("int16")).view(torch.bfloat16)


# -- CUDA source ------------------------------------------------------------------------------

COMMON = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

template <typename U> struct Wid;
template <> struct Wid<u32> { enum { W = 32 }; };
template <> struct Wid<u64> { enum { W = 64 }; };

__device__ __forceinline__ int lb_clz(u32 x) { return __clz(x); }
__device__ __forceinline__ int lb_clz(u64 x) { return __clzll(x); }

/* An exact magnitude P * 2**E, its sign and whether the input was NaN. Inf: P = 1, E = 4096. */
template <typename U> struct Mag { U P; int E; bool neg; bool nan; };

__device__ __forceinline__ Mag<u32> mag_f32(u32 b) {
    Mag<u32> m;
    u32 ex = (b >> 23) & 0xFF, man = b & 0x7FFFFF;
    m.neg = (b >> 31) != 0;
    m.nan = (ex == 0xFF) && man;
    m.P = (ex == 0xFF) ? 1u : (man | ((ex != 0) ? 0x800000u : 0u));
    m.E = (ex == 0xFF) ? 4096 : (int)(ex ? ex : 1) - 150;
    return m;
}

__device__ __forceinline__ Mag<u64> mag_f64(u64 b) {
    Mag<u64> m;
    u64 ex = (b >> 52) & 0x7FF, man = b & 0xFFFFFFFFFFFFFull;
    m.neg = (b >> 63) != 0;
    m.nan = (ex == 0x7FF) && man;
    m.P = (ex == 0x7FF) ? 1ull : (man | ((ex != 0) ? (1ull << 52) : 0ull));
    m.E = (ex == 0x7FF) ? 4096 : (int)(ex ? ex : 1) - 1075;
    return m;
}

__device__ __forceinline__ Mag<u64> widen(Mag<u32> a) {
    Mag<u64> m; m.P = a.P; m.E = a.E; m.neg = a.neg; m.nan = a.nan; return m;
}

/* IEEE binary32 operations and conversions as explicit PTX without .ftz: CuPy compiles every
   module with -ftz=true, which would flush subnormal inputs and results of ordinary float code
   (and of the __f*_rn intrinsics). Comparisons of floats that may be subnormal use the bits. */
__device__ __forceinline__ float f32_mul(float a, float b) {
    float r; asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float f32_add(float a, float b) {
    float r; asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
/* a * b rounded to odd in float32 (truncate, then set the last bit if inexact): a later
   rounding to at most 22 bits equals the rounding of the exact product (no underflow). */
__device__ __forceinline__ float f32_mul_odd(float a, float b) {
    float p, e;
    asm("mul.rz.f32 %0, %1, %2;" : "=f"(p) : "f"(a), "f"(b));
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(e) : "f"(a), "f"(b), "f"(-p));
    return __uint_as_float(__float_as_uint(p) | (e != 0.0f ? 1u : 0u));
}
__device__ __forceinline__ float f32_div(float a, float b) {
    float r; asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float f32_min(float a, float b) {
    float r; asm("min.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float f32_max(float a, float b) {
    float r; asm("max.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float f64_to_f32(double d) {
    float r; asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(d)); return r;
}
__device__ __forceinline__ double f32_to_f64(float f) {
    double r; asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(f)); return r;
}
#define F32_ABS_BITS(f) (__float_as_uint(f) & 0x7FFFFFFFu)
__device__ __forceinline__ bool f32_is_zero(float f) { return F32_ABS_BITS(f) == 0; }
__device__ __forceinline__ bool f32_is_nan(float f) { return F32_ABS_BITS(f) > 0x7F800000u; }
__device__ __forceinline__ bool f32_is_inf(float f) { return F32_ABS_BITS(f) == 0x7F800000u; }
__device__ __forceinline__ bool f32_finite(float f) { return F32_ABS_BITS(f) < 0x7F800000u; }

/* Round decision shared by both encoders. */
template <typename U>
__device__ __forceinline__ U lb_round(U P, int d, int near, int away, int even, int stoch,
                                      int nbits, u32 r) {
    const int W = Wid<U>::W;
    U n, rem, half;
    if (d <= 0) { return P; }  /* exact (or far beyond the range) */
    if (d >= W) { n = 0; rem = P ? (U)1 : (U)0; half = ((U)1) << (W - 2); }
    else { n = P >> d; rem = P & ((((U)1) << d) - 1); half = ((U)1) << (d - 1); }
    if (stoch) {
        U full = (d >= W) ? P : rem;
        int s = d - nbits;
        U scaled = (s >= W) ? (U)0 : (s >= 0 ? (full >> s) : (full << (-s)));
        n += (U)((u64)scaled + (u64)r >= (1ull << nbits));
    } else {
        bool up = (near && rem > half) || (rem == half && (away || (even && (n & 1))));
        n += (U)up;
    }
    return n;
}
"""

FAST_TEMPLATE = r"""
/* {name}: fast encoder (IEEE-like float with subnormals, or two's-complement integer). */
template <typename U>
__device__ __forceinline__ int {name}_enc(Mag<U> m, int shift, u32 r, int nbits) {{
    const int W = Wid<U>::W;
    U P = m.P; int E = m.E - shift;
    if (P) {{
        int lz = lb_clz(P) - 1;
        if (lz >= 0) {{ P <<= lz; E -= lz; }} else {{ P = (P >> 1) | (P & 1); E += 1; }}
    }} else {{ E = -100000; }}
    int e = E + W - 2;
    e = min(e, {tclamp});
    int eb = max(e, {emin});
    int d = eb - {mb} - E;
    U n = lb_round<U>(P, d, {near}, {away}, {even}, {stoch}, nbits, r);
    int lim = (m.neg ? {nmax_n} : {nmax_p}) - ((eb - ({emin})) << {mb});
    int ovc = m.neg ? {over_n} : {over_p};
    if ({tz_fin} && m.E < 4000) ovc = m.neg ? {maxc_n} : {maxc_p};
    int mag = (lim < 0 || n > (U)lim) ? ovc : (((eb - ({emin})) << {mb}) + (int)n);
    int code = mag;
    if (m.neg) code = {sign_mag} ? (mag | {sign_bit}) : ((-mag) & {mask});
    if (m.nan) code = {nan_code};
    return code;
}}
"""

TABLE_TEMPLATE = r"""
/* {name}: table encoder; tab = shared int[4 * {slots}] rows QE, BASE, LEAD, CARRY. */
__constant__ int {name}_TAB[4 * {slots}] = {{ {table} }};
#define {name}_SLOTS {slots}
template <typename U>
__device__ __forceinline__ int {name}_enc(Mag<U> m, int shift, u32 r, int nbits, const int *tab) {{
    const int W = Wid<U>::W;
    U P = m.P; int E = m.E - shift;
    if (P) {{
        int lz = lb_clz(P) - 1;
        if (lz >= 0) {{ P <<= lz; E -= lz; }} else {{ P = (P >> 1) | (P & 1); E += 1; }}
    }} else {{ E = -100000; }}
    int e = E + W - 2;
    int t = min(max(e - ({e_lo}) + 1, 0), {t_last});
    int d = tab[t] - E;
    U n = lb_round<U>(P, d, {near}, {away}, {even}, {stoch}, nbits, r);
    int ttop = m.neg ? {ttop_n} : {ttop_p};
    int nmax = m.neg ? {nmax_n} : {nmax_p};
    bool over = (t > ttop) || (t == ttop && n > (U)nmax);
    int mag;
    if (over) mag = ({tz_fin} && m.E < 4000) ? (m.neg ? {maxc_n} : {maxc_p})
                                              : (m.neg ? {over_n} : {over_p});
    else if (t < {t_last} && n >= (U)tab[3 * {slots} + t]) mag = tab[{slots} + t + 1];
    else mag = tab[{slots} + t] + (int)n - tab[2 * {slots} + t];
    int code = mag;
    if (m.neg) {{
        if ({sign_mode} == 0) code = (mag == 0) ? {negzero} : (mag | {sign_bit});
        else if ({sign_mode} == 1) code = (-mag) & {mask};
    }}
    bool undefined = m.nan;
    bool nonzero = m.P != 0;
    if ({unsigned_}) undefined = undefined || (m.neg && nonzero);
    if ({no_zero}) undefined = undefined || !nonzero;
    if (undefined) code = {nan_code};
    return code;
}}
"""

NEAREST_TEMPLATE = r"""
/* {name}_near: round-to-nearest ({mode}), saturating encoder of the float32 bits b (an
   IEEE-like format with subnormals: min binade emin = {emin}, {mb} mantissa bits, codes growing
   with the magnitude). With eb = clamp(binade(|y|), emin, emax + 1), the float32 sum
   |y| + 2**(eb - mb + 23) has ulp 2**(eb - mb), so IEEE addition rounds |y| to n quanta with ties
   to even (n is the difference of the bit patterns); ties away add one quantum where the exact
   remainder is half a quantum. The code is ((eb - emin) << mb) + n, at most the code of max. */
__device__ __forceinline__ int {name}_near(u32 b) {{
    u32 a = b & 0x7FFFFFFFu;
    int eb = {eb};
    u32 mbits = (u32)(eb + {moff}) << 23;
    float sum = f32_add(__uint_as_float(a), __uint_as_float(mbits));
    int n = (int)(__float_as_uint(sum) - mbits);
{away}    int code = min(n + ((eb - {emin_b}) << {mb}), {maxc});
    {tail}
}}
"""

NEAREST_AWAY_STEP = """\
    float rem = f32_add(__uint_as_float(a), -f32_add(sum, -__uint_as_float(mbits)));
    n += rem == __uint_as_float((u32)(eb - {mb} - 1) << 23);
"""

HWCVT_SRC = r"""
/* Two float32 values to FP8 codes by the sm_89+ conversion (RNE, saturating to the max finite). */
__device__ __forceinline__ void {name}_cvt2(float y0, float y1, int &c0, int &c1) {{
    unsigned short h;
    asm("cvt.rn.satfinite.{ptx}x2.f32 %0, %1, %2;" : "=h"(h) : "f"(y1), "f"(y0));
    c0 = h & 0xFF;
    c1 = h >> 8;
}}
"""

HWCVT_PTX = {"e4m3": "e4m3", "e5m2": "e5m2"}


def nearest_params(spec: ElementFormat, saturate: bool, rounding: str, *,
                   bounded: bool = False, nonnegative: bool = False) -> dict | None:
    """Constants of ``NEAREST_TEMPLATE`` for ``spec``, or None where it does not apply.

    It applies to float formats with subnormals, saturating, round to nearest with ties to even
    or away. Callers' guarantees drop work: ``bounded``, inputs are finite with
    ``|y| < 2**(emax + 2)`` (no NaN code, no upper clamp: MX elements after the scale);
    ``nonnegative``, ``y >= 0`` (no sign; then unsigned formats qualify: NVFP4's UE4M3 scale).
    ``eclamp_b`` / ``nan`` / ``sign_shift`` are None where the step is dropped.
    """
    if rounding not in ("nearest_even", "nearest_away") or not saturate \
            or spec.encoding != "float" or not spec.subnormals or spec.man_bits > 22 \
            or not (spec.signed or nonnegative) or 1 - spec.bias + 127 - spec.man_bits - 1 < 1:
        return None
    emin = 1 - spec.bias
    return dict(
        away=rounding == "nearest_away",
        emin=emin, emin_b=emin + 127, mb=spec.man_bits, moff=23 - spec.man_bits,
        eclamp_b=None if bounded else spec.emax + 1 + 127,
        maxc=int(np.flatnonzero(spec.values == spec.max)[0]),
        sign_shift=None if nonnegative else spec.sign_bit.bit_length() - 1,
        nan=None if bounded else (-1 if spec.nan_code is None else spec.nan_code),
    )


def nearest_source(name: str, spec: ElementFormat, saturate: bool, rounding: str, *,
                   bounded: bool = False, nonnegative: bool = False) -> str | None:
    """CUDA source of ``<name>_near`` (``NEAREST_TEMPLATE`` with ``nearest_params``), or None.
    It equals ``encoder_source``'s encoder on the inputs it is for (tests emulate it in NumPy
    against the reference; ``bench/gpu_check.py`` runs it)."""
    p = nearest_params(spec, saturate, rounding, bounded=bounded, nonnegative=nonnegative)
    if p is None:
        return None
    eb = f"max((int)(a >> 23), {p['emin_b']})"
    if p["eclamp_b"] is not None:
        eb = f"min({eb}, {p['eclamp_b']})"
    tail = "" if p["sign_shift"] is None else \
        f"code |= (int)(b >> 31) << {p['sign_shift']};\n    "
    tail += "return code;" if p["nan"] is None else f"return a > 0x7F800000u ? {p['nan']} : code;"
    away = NEAREST_AWAY_STEP.format(mb=p["mb"]) if p["away"] else ""
    return NEAREST_TEMPLATE.format(name=name, emin=p["emin"], mb=p["mb"], emin_b=p["emin_b"],
                                   eb=eb, moff=p["moff"], maxc=p["maxc"], tail=tail, away=away,
                                   mode=rounding.replace("_", " "))


def hwcvt_source(name: str, spec: ElementFormat, saturate: bool, rounding: str) -> str | None:
    """CUDA source of ``<name>_cvt2`` (the hardware FP8 conversion) where it applies: E4M3 / E5M2,
    saturating, round-to-nearest-even, finite inputs, on devices of compute capability >= 8.9
    (``LOWBIT_CUPY_HWCVT=0`` turns it off)."""
    import os

    if spec.name not in HWCVT_PTX or rounding != "nearest_even" or not saturate:
        return None
    if os.environ.get("LOWBIT_CUPY_HWCVT", "1") == "0" or compute_capability() < 89:
        return None
    return HWCVT_SRC.format(name=name, ptx=HWCVT_PTX[spec.name])


@functools.cache
def compute_capability() -> int:
    """The current device's compute capability as an integer (90 for sm_90), 0 without one."""
    if not cupy_available():
        return 0
    import cupy as cp

    return int(cp.cuda.Device().compute_capability)


_FLAGS = {
    "nearest_even": (1, 0, 1, 0),
    "nearest_away": (1, 1, 0, 0),
    "nearest_zero": (1, 0, 0, 0),
    "toward_zero": (0, 0, 0, 0),
    "stochastic": (0, 0, 0, 1),
}


def rounding_flags(rounding: str) -> tuple[int, int, int, int]:
    from lowbit.numerics.codec import ROUNDING_MODES

    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDING_MODES}")
    return _FLAGS[rounding]


def _builders():
    """The encoder parameter builders (``cupy_params``: the Numba kernels' table builders as of
    this module, kept here so that their changes cannot silently change the GPU kernels)."""
    from . import cupy_params

    return cupy_params


def uses_table(spec: ElementFormat, saturate: bool) -> bool:
    return _builders().fast_params(spec, saturate) is None


@functools.cache
def encoder_source(name: str, spec: ElementFormat, saturate: bool, rounding: str) -> str:
    """CUDA source of ``<name>_enc`` for ``spec`` (fast or table form, chosen from the spec)."""
    core = _builders()

    near, away, even, stoch = rounding_flags(rounding)
    flags = dict(near=near, away=away, even=even, stoch=stoch)
    fp = core.fast_params(spec, saturate)
    tz_fin = int(rounding == "toward_zero" and not saturate)
    if fp is not None:
        fs = core.fast_params(spec, True)
        flags.update(tz_fin=tz_fin, maxc_p=fs[core.F_OVER_P], maxc_n=fs[core.F_OVER_N])
        return FAST_TEMPLATE.format(
            name=name, tclamp=fp[core.F_TCLAMP], emin=fp[core.F_EMIN], mb=fp[core.F_MB],
            nmax_p=fp[core.F_NMAX_P], nmax_n=fp[core.F_NMAX_N], over_p=fp[core.F_OVER_P],
            over_n=fp[core.F_OVER_N], sign_mag=fp[core.F_SIGN_MAG], sign_bit=fp[core.F_SIGN_BIT],
            mask=fp[core.F_MASK], nan_code=fp[core.F_NAN], **flags,
        )
    tab, prm = core.element_table(spec, saturate)
    _, ps = core.element_table(spec, True)
    flags.update(tz_fin=tz_fin, maxc_p=ps[core.OVER_P], maxc_n=ps[core.OVER_N])
    t32 = np.minimum(tab, np.int64(2**31 - 1)).astype(np.int64)
    assert int(t32.min()) >= -(2**31)
    slots = tab.shape[1]
    return TABLE_TEMPLATE.format(
        name=name, slots=slots, table=", ".join(str(int(v)) for v in t32.reshape(-1)),
        e_lo=prm[core.E_LO], t_last=prm[core.T_LAST], ttop_p=prm[core.TTOP_P],
        ttop_n=prm[core.TTOP_N], nmax_p=prm[core.NMAX_P], nmax_n=prm[core.NMAX_N],
        over_p=prm[core.OVER_P], over_n=prm[core.OVER_N], sign_mode=prm[core.SIGN_MODE],
        sign_bit=prm[core.SIGN_BIT], negzero=prm[core.NEGZERO], nan_code=prm[core.NAN_CODE],
        mask=prm[core.MASK], unsigned_=prm[core.UNSIGNED], no_zero=prm[core.NO_ZERO], **flags,
    )


TABLE_FAST_TEMPLATE = r"""
/* {name}_tfast: {mode} encoder of the float32 bits b for a table format. One packed word per
   slot t (binade): quantum exponent qe (byte 0, biased by 128), code of the binade's first value
   (byte 1), quanta at that value (byte 2), the next slot's first code (byte 3). The float32 sum
   |y| + 2**(qe + 23) has ulp 2**qe: IEEE addition rounds |y| to n quanta, ties to even, and
   ties away add one quantum where the remainder is exactly half a quantum. */
__constant__ u32 {name}_PK[{slots}] = {{ {packed} }};
__device__ __forceinline__ int {name}_tfast(u32 b, const u32 *pk) {{
    u32 a = b & 0x7FFFFFFFu;
    int t = min(max((int)(a >> 23) - 127 - ({e_lo}) + 1, 0), {t_last});
    u32 w = pk[t];
    int qe = (int)(w & 0xFF) - 128;
    u32 mbits = (u32)(qe + 150) << 23;
    float sum = f32_add(__uint_as_float(a), __uint_as_float(mbits));
    int n = (int)(__float_as_uint(sum) - mbits);
{away}    int lead = (w >> 16) & 0xFF;
    int ttop = (b >> 31) ? {ttop_n} : {ttop_p};
    int nmax = (b >> 31) ? {nmax_n} : {nmax_p};
    bool over = (t > ttop) || (t == ttop && n > nmax);
    int mag;
    if (over) mag = (b >> 31) ? {over_n} : {over_p};
    else if (t < {t_last} && n >= (lead ? 2 * lead : 1)) mag = (int)(w >> 24);
    else mag = (int)((w >> 8) & 0xFF) + n - lead;
    int code = mag;
    bool neg = (b >> 31) != 0;
    if (neg) {{
        if ({sign_mode} == 0) code = (mag == 0) ? {negzero} : (mag | {sign_bit});
        else if ({sign_mode} == 1) code = (-mag) & {mask};
    }}
    bool undefined = a > 0x7F800000u;
    if ({unsigned_}) undefined = undefined || (neg && a != 0);
    if ({no_zero}) undefined = undefined || a == 0;
    return undefined ? {nan_code} : code;
}}
"""

AWAY_STEP = """    float rem = f32_add(__uint_as_float(a), -f32_add(sum, -__uint_as_float(mbits)));
    n += rem == __uint_as_float((u32)(qe + 126) << 23);
"""


def table_fast_params(spec: ElementFormat, saturate: bool, rounding: str) -> dict | None:
    """Parameters of ``TABLE_FAST_TEMPLATE`` (packed slot words and the encoder constants) for
    a table format in a nearest mode, or None where the packing does not fit."""
    if rounding not in ("nearest_even", "nearest_away") or not uses_table(spec, saturate):
        return None
    core = _builders()
    tab, prm = core.element_table(spec, saturate)
    qe, base, lead = tab[core.QE], tab[core.BASE], tab[core.LEAD]
    carry = tab[core.CARRY][:-1]
    nxt = np.append(base[1:], 0)
    ok = (np.all((qe + 128 >= 0) & (qe + 128 < 256) & (qe + 150 >= 2) & (qe + 150 <= 254))
          and np.all((base >= 0) & (base < 256) & (lead >= 0) & (lead < 128))
          and np.array_equal(carry, np.where(lead[:-1] > 0, 2 * lead[:-1], 1)))
    if not ok or (rounding == "nearest_away" and qe.min() < -125):
        return None
    packed = (qe + 128) | (base << 8) | (lead << 16) | (nxt << 24)
    return dict(packed=[int(v) for v in packed], e_lo=prm[core.E_LO], t_last=prm[core.T_LAST],
                ttop_p=prm[core.TTOP_P], ttop_n=prm[core.TTOP_N], nmax_p=prm[core.NMAX_P],
                nmax_n=prm[core.NMAX_N], over_p=prm[core.OVER_P], over_n=prm[core.OVER_N],
                sign_mode=prm[core.SIGN_MODE], sign_bit=prm[core.SIGN_BIT],
                negzero=prm[core.NEGZERO], nan_code=prm[core.NAN_CODE], mask=prm[core.MASK],
                unsigned_=prm[core.UNSIGNED], no_zero=prm[core.NO_ZERO],
                away=rounding == "nearest_away")


def table_fast_source(name: str, spec: ElementFormat, saturate: bool,
                      rounding: str) -> tuple[str, str] | None:
    """(CUDA source of ``<name>_tfast``, kernel-body code that copies its packed table to the
    shared ``<name>_pk``) for a table format in a nearest mode, else None."""
    p = table_fast_params(spec, saturate, rounding)
    if p is None:
        return None
    p = dict(p)
    packed, away = p.pop("packed"), p.pop("away")
    src = TABLE_FAST_TEMPLATE.format(
        name=name, slots=len(packed), packed=", ".join(f"{v}u" for v in packed),
        mode=rounding.replace("_", "-"), away=AWAY_STEP if away else "", **p)
    prologue = (f"__shared__ u32 {name}_pk[{len(packed)}]; "
                f"for (int i = threadIdx.x; i < {len(packed)}; i += blockDim.x) "
                f"{name}_pk[i] = {name}_PK[i]; __syncthreads();")
    return src, prologue


def fast_encoder(name: str, spec: ElementFormat, saturate: bool, rounding: str,
                 enabled: bool = True) -> tuple[str, str, int]:
    """(source, kernel-body prologue, FASTENC) of the fastest float32-bits encoder for ``spec``:
    2 the packed-table encoder ``<name>_tfast``, 1 the nearest encoder ``<name>_near``, 0 none
    (the generic ``<name>_enc``; also when not ``enabled``, e.g. on 64-bit or stochastic paths)."""
    tfast = table_fast_source(name, spec, saturate, rounding) if enabled else None
    if tfast:
        return tfast[0], tfast[1], 2
    near = nearest_source(name, spec, saturate, rounding) if enabled else None
    return (near, "", 1) if near else ("", "", 0)


def table_prologue(name: str, spec: ElementFormat, saturate: bool) -> tuple[str, str]:
    """(kernel-body code that fills the shared table, extra argument text for ``<name>_enc``)."""
    if not uses_table(spec, saturate):
        return "", ""
    code = (f"__shared__ int {name}_sh[4 * {name}_SLOTS];\n"
            f"for (int i = threadIdx.x; i < 4 * {name}_SLOTS; i += blockDim.x) "
            f"{name}_sh[i] = {name}_TAB[i];\n__syncthreads();\n")
    return code, f", {name}_sh"


def constant_array(name: str, ctype: str, values) -> str:
    vals = ", ".join(repr(float(v)) if ctype in ("double", "float") else str(int(v))
                     for v in values)
    return f"__constant__ {ctype} {name}[{len(values)}] = {{ {vals} }};\n"


def lut_values(spec: ElementFormat) -> list[float]:
    """Decoded values of every code (NaN for NaN codes), float64, for ``constant_array``."""
    return [float(v) for v in spec.values]


def double_literal(v: float) -> str:
    """A C expression for the double ``v``, exact (shortest round-trip decimal; NVRTC takes no
    hex floats in C++14)."""
    if np.isnan(v):
        return "__longlong_as_double(0x7ff8000000000000ll)"
    if np.isinf(v):
        return "__longlong_as_double(0x7ff0000000000000ll)" if v > 0 else \
            "__longlong_as_double(0xfff0000000000000ll)"
    r = repr(float(v))
    assert float(r) == v
    return f"({r})" if ("." in r or "e" in r) else f"({r}.0)"


def double_table(name: str, values) -> str:
    """A ``__constant__`` array of float64 bit patterns (read with ``__longlong_as_double``)."""
    bits = np.asarray(values, dtype=np.float64).view(np.uint64)
    vals = ", ".join(f"{int(v)}ull" for v in bits)
    return f"__constant__ unsigned long long {name}[{len(bits)}] = {{ {vals} }};\n"


def float_table(name: str, values) -> str:
    """A ``__constant__`` array of float32 bit patterns (values must be exact in float32)."""
    f = np.asarray(values, dtype=np.float64).astype(np.float32)
    assert np.array_equal(f.astype(np.float64), np.asarray(values, np.float64), equal_nan=True)
    vals = ", ".join(f"{int(v)}u" for v in f.view(np.uint32))
    return f"__constant__ u32 {name}[{len(f)}] = {{ {vals} }};\n"


def shared_copy(name: str, ctype: str, n: int) -> str:
    """Kernel-body code: ``{name}_s``, a shared copy of the constant array ``name`` (``double``
    and ``float`` tables hold bit patterns)."""
    load = {"double": f"__longlong_as_double((long long){name}[i])",
            "float": f"__uint_as_float({name}[i])"}.get(ctype, f"{name}[i]")
    return (f"__shared__ {ctype} {name}_s[{n}];\n"
            f"for (int i = threadIdx.x; i < {n}; i += blockDim.x) {name}_s[i] = {load};\n"
            "__syncthreads();\n")


CONVERT = r"""
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
__device__ __forceinline__ unsigned short f64_to_f16(double d) {
    unsigned short h; asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h) : "d"(d)); return h;
}
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    u32 b = __float_as_uint(f);
    if ((b & 0x7FFFFFFF) > 0x7F800000) return (unsigned short)((b >> 16) | 0x40);
    return (unsigned short)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
}

"""


# -- input loading ----------------------------------------------------------------------------

LOADERS = r"""
/* IN_KIND 0 float32, 1 bfloat16 bits, 2 float16 bits, 3 float64 */
#if IN_KIND == 0
typedef float in_t;
__device__ __forceinline__ u32 ld_bits32(const in_t *x, i64 i) { return __float_as_uint(x[i]); }
#elif IN_KIND == 1
typedef unsigned short in_t;
__device__ __forceinline__ u32 ld_bits32(const in_t *x, i64 i) { return ((u32)x[i]) << 16; }
#elif IN_KIND == 2
typedef unsigned short in_t;
__device__ __forceinline__ u32 ld_bits32(const in_t *x, i64 i) {
    return __float_as_uint(f16_to_f32(x[i]));
}
#else
typedef double in_t;
#endif
#if IN_KIND == 3
__device__ __forceinline__ double ld_f64(const in_t *x, i64 i) { return x[i]; }
#else
__device__ __forceinline__ double ld_f64(const in_t *x, i64 i) {
    return f32_to_f64(__uint_as_float(ld_bits32(x, i)));
}
#endif
/* OUT_KIND 0 float32, 1 bfloat16 bits, 2 float16 bits, 3 float64 */
#if OUT_KIND == 0
typedef float out_t;
__device__ __forceinline__ out_t st_f32(float v) { return v; }
__device__ __forceinline__ out_t st_f64(double v) { return f64_to_f32(v); }
#elif OUT_KIND == 1
typedef unsigned short out_t;
__device__ __forceinline__ out_t st_f32(float v) { return f32_to_bf16(v); }
__device__ __forceinline__ out_t st_f64(double v) { return f32_to_bf16(f64_to_f32(v)); }
#elif OUT_KIND == 2
typedef unsigned short out_t;
__device__ __forceinline__ out_t st_f32(float v) { return f32_to_f16(v); }
__device__ __forceinline__ out_t st_f64(double v) { return f64_to_f16(v); }
#else
typedef double out_t;
__device__ __forceinline__ out_t st_f32(float v) { return f32_to_f64(v); }
__device__ __forceinline__ out_t st_f64(double v) { return v; }
#endif
"""

KIND = {"float32": 0, "bfloat16": 1, "float16": 2, "float64": 3}
OUT_NAMES = {0: "float32", 1: "bfloat16", 2: "float16", 3: "float64"}


def dtype_kind(name) -> int:
    name = np.dtype(name).name if not isinstance(name, str) else name
    if name not in KIND:
        raise TypeError(f"the cupy backend takes float16/bfloat16/float32/float64, got {name}")
    return KIND[name]


def out_dtype_name(dtype) -> str:
    """Output dtype name for dequantize (``np.float32``, ``"bfloat16"``, torch dtypes...)."""
    if dtype is None:
        return "float32"
    s = str(dtype).replace("torch.", "")
    if s in KIND:
        return s
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = s
    if name not in KIND:
        raise TypeError(f"dequantize on the cupy backend returns float16/bfloat16/float32/float64, "
                        f"got {dtype}")
    return name


def alloc_out(shape, name: str):
    """A cupy array for results of dtype ``name`` (bfloat16 as uint16 bits)."""
    import cupy as cp

    dt = {"float32": cp.float32, "float64": cp.float64, "float16": cp.float16,
          "bfloat16": cp.uint16}[name]
    return cp.empty(shape, dtype=dt)


def wrap_float_out(arr, name: str, like):
    """Device float result as the caller's array type (torch bfloat16 for torch callers)."""
    if is_torch(like):
        import torch

        if name == "bfloat16":
            return torch_bf16(arr)
        return torch.from_dlpack(arr)
    return arr


# -- compilation --------------------------------------------------------------------------------


@functools.cache
def _module(source: str, name_list: tuple[str, ...]):
    import cupy as cp

    # CuPy appends -ftz=true to every NVRTC compile; the kernels therefore do all float32
    # arithmetic, conversions and comparisons that can meet subnormals through the PTX helpers
    # of COMMON (f32_mul, f32_div, f64_to_f32, ...), which no compiler flag changes.
    return cp.RawModule(code=source, options=("--std=c++14", "-fmad=false"))


def kernel(source: str, name: str):
    """``name`` from the module compiled from ``source`` (cached per source)."""
    return _module(source, ()).get_function(name)


def launch(fn, n_threads: int, args, threads: int = THREADS):
    """Launch ``fn`` with one thread per work item (1-D grid)."""
    if n_threads <= 0:
        return
    blocks = (n_threads + threads - 1) // threads
    fn((blocks,), (threads,), args)


def rbits_u32(rbits, shape, to_rows=None):
    """(uint32 device array of the random bits in the kernel's element order, width in bits).

    ``to_rows`` maps a full-shape array to the kernel's (rows, length) layout.
    """
    import cupy as cp

    if rbits is None:
        return cp.zeros(1, dtype=cp.uint32), 0
    r = rbits
    if is_torch(r):
        r = cp.from_dlpack(r.detach())
    elif not is_cupy(r):
        r = cp.asarray(np.asarray(r))
    if r.dtype.kind != "u":
        raise TypeError("rbits must have an unsigned integer dtype; its width is the bit count")
    if r.dtype.itemsize > 4:
        raise TypeError("the cupy backend takes rbits of at most 32 bits")
    nbits = r.dtype.itemsize * 8
    full = cp.broadcast_to(r, shape)
    if to_rows is not None:
        full = to_rows(full)
    return cp.ascontiguousarray(full).astype(cp.uint32).reshape(-1), nbits


# -- block kernels: thread layout, loads and code stores ----------------------------------------
# A row of ``length`` elements is cut into ``NB`` blocks of ``B``; each block is handled by
# ``L = B / V`` consecutive lanes of one warp, ``V`` elements each (16-byte loads when the rows
# are whole blocks, ALIGNED). Lanes beyond the work still take part in the shuffles.

BLOCK_IO = r"""
#if IN_KIND == 3
typedef u64 bits_t;
#define BITS_ABS(b) ((b) & 0x7FFFFFFFFFFFFFFFull)
#define BITS_INF 0x7FF0000000000000ull
#else
typedef u32 bits_t;
#define BITS_ABS(b) ((b) & 0x7FFFFFFFu)
#define BITS_INF 0x7F800000u
#endif
#define L (B / V)

struct Pos { i64 row, cb, blk; int lane; i64 col0; bool valid; };

#ifndef NEED_ROW
#define NEED_ROW 0
#endif
#define ROWS_NEEDED (!ALIGNED || SWIZZLE || NEED_ROW)

__device__ __forceinline__ Pos block_pos(i64 tid, i64 total_threads, i64 nb) {
    Pos p;
    p.valid = tid < total_threads;
    i64 t = p.valid ? tid : 0;
    p.blk = t / L;
    p.lane = (int)(t % L);
#if ROWS_NEEDED
    p.row = p.blk / nb;
    p.cb = p.blk - p.row * nb;
#else
    p.row = 0;
    p.cb = p.blk;
#endif
    p.col0 = p.cb * B + (i64)p.lane * V;
    return p;
}

__device__ __forceinline__ bits_t bits_of_elem(const in_t *x, i64 i) {
#if IN_KIND == 3
    return (bits_t)__double_as_longlong(x[i]);
#else
    return ld_bits32(x, i);
#endif
}

/* Loads the V elements of a lane as bit patterns (float32 bits for 16/32-bit inputs). */
__device__ __forceinline__ void load_vals(const in_t *__restrict__ x, const Pos &p, i64 length,
                                          bits_t v[V]) {
    if (!p.valid) {
#pragma unroll
        for (int j = 0; j < V; j++) v[j] = 0;
        return;
    }
#if ALIGNED
    i64 base = p.blk * B + (i64)p.lane * V;
#if IN_KIND == 0
    const uint4 *q = reinterpret_cast<const uint4 *>(x + base);
#pragma unroll
    for (int h = 0; h < V / 4; h++) {
        uint4 w = __ldcs(q + h);
        v[4 * h] = w.x; v[4 * h + 1] = w.y; v[4 * h + 2] = w.z; v[4 * h + 3] = w.w;
    }
#elif IN_KIND == 3
    const ulonglong2 *q = reinterpret_cast<const ulonglong2 *>(x + base);
#pragma unroll
    for (int h = 0; h < V / 2; h++) {
        ulonglong2 w = __ldcs(q + h);
        v[2 * h] = w.x; v[2 * h + 1] = w.y;
    }
#else
    const uint4 *q = reinterpret_cast<const uint4 *>(x + base);
#pragma unroll
    for (int h = 0; h < V / 8; h++) {
        uint4 w = __ldcs(q + h);
        u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
#if IN_KIND == 1
            v[8 * h + 2 * k] = ws[k] << 16;
            v[8 * h + 2 * k + 1] = ws[k] & 0xFFFF0000u;
#else
            v[8 * h + 2 * k] = __float_as_uint(f16_to_f32((unsigned short)(ws[k] & 0xFFFF)));
            v[8 * h + 2 * k + 1] = __float_as_uint(f16_to_f32((unsigned short)(ws[k] >> 16)));
#endif
        }
    }
#endif
#else
#pragma unroll
    for (int j = 0; j < V; j++) {
        i64 col = p.col0 + j;
        v[j] = (col < length) ? bits_of_elem(x, p.row * length + col) : (bits_t)0;
    }
#endif
}

__device__ __forceinline__ i64 elem_index(const Pos &p, i64 length, int j) {
#if ALIGNED
    return p.blk * B + (i64)p.lane * V + j;
#else
    return p.row * length + p.col0 + j;
#endif
}

/* Stores the V codes of a lane: PACK 0 unpacked (x's layout, padding dropped), 4/6/8 packed
   rows of NB * B codes (padding codes are 0). */
__device__ __forceinline__ void store_codes(unsigned char *__restrict__ out, const Pos &p,
                                            i64 length, i64 nb, int c[V]) {
    if (!p.valid) return;
#if PACK == 0 || (PACK == 8 && ALIGNED)   /* aligned 8-bit packing is x's layout */
#if ALIGNED
    i64 base = p.blk * B + (i64)p.lane * V;
    u32 w[V / 4];
#pragma unroll
    for (int h = 0; h < V / 4; h++)
        w[h] = (u32)c[4 * h] | ((u32)c[4 * h + 1] << 8) | ((u32)c[4 * h + 2] << 16) |
               ((u32)c[4 * h + 3] << 24);
#if V == 16
    *reinterpret_cast<uint4 *>(out + base) = make_uint4(w[0], w[1], w[2], w[3]);
#elif V == 8
    *reinterpret_cast<uint2 *>(out + base) = make_uint2(w[0], w[1]);
#else
    *reinterpret_cast<u32 *>(out + base) = w[0];
#endif
#else
#pragma unroll
    for (int j = 0; j < V; j++)
        if (p.col0 + j < length) out[p.row * length + p.col0 + j] = (unsigned char)c[j];
#endif
#else
#if !ALIGNED
#pragma unroll
    for (int j = 0; j < V; j++) if (p.col0 + j >= length) c[j] = 0;
#endif
#if PACK == 4
#if ALIGNED
    i64 base = (p.blk * B + (i64)p.lane * V) / 2;
#else
    i64 base = p.row * (nb * B / 2) + p.col0 / 2;
#endif
    u32 w0 = 0, w1 = 0;
#pragma unroll
    for (int j = 0; j < 8 && j < V; j++) w0 |= ((u32)c[j] & 0xF) << (4 * j);
#pragma unroll
    for (int j = 8; j < V; j++) w1 |= ((u32)c[j] & 0xF) << (4 * (j - 8));
#if V == 16
    *reinterpret_cast<uint2 *>(out + base) = make_uint2(w0, w1);
#elif V == 8
    *reinterpret_cast<u32 *>(out + base) = w0;
#else
    *reinterpret_cast<unsigned short *>(out + base) = (unsigned short)w0;
#endif
#elif PACK == 6
#if ALIGNED
    i64 base = (p.blk * B + (i64)p.lane * V) / 4 * 3;
#else
    i64 base = p.row * (nb * B / 4 * 3) + p.col0 / 4 * 3;
#endif
#pragma unroll
    for (int g = 0; g < V / 4; g++) {
        u32 w = (u32)c[4 * g] | ((u32)c[4 * g + 1] << 6) | ((u32)c[4 * g + 2] << 12) |
                ((u32)c[4 * g + 3] << 18);
        out[base + 3 * g] = (unsigned char)(w & 0xFF);
        out[base + 3 * g + 1] = (unsigned char)((w >> 8) & 0xFF);
        out[base + 3 * g + 2] = (unsigned char)(w >> 16);
    }
#else
#if ALIGNED
    i64 base = p.blk * B + (i64)p.lane * V;
#else
    i64 base = p.row * (nb * B) + p.col0;
#endif
#pragma unroll
    for (int j = 0; j < V; j++) out[base + j] = (unsigned char)c[j];
#endif
#endif
}

/* Loads the V unpacked codes of a lane (rows of ``length``, padding read as 0). */
__device__ __forceinline__ void load_codes(const unsigned char *__restrict__ codes, const Pos &p,
                                           i64 length, int c[V]) {
#if ALIGNED
    i64 base = p.blk * B + (i64)p.lane * V;
#if V == 16
    uint4 w = __ldcs(reinterpret_cast<const uint4 *>(codes + base));
    u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 16; j++) c[j] = (ws[j / 4] >> (8 * (j % 4))) & 0xFF;
#elif V == 8
    uint2 w = *reinterpret_cast<const uint2 *>(codes + base);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        c[j] = (w.x >> (8 * j)) & 0xFF;
        c[4 + j] = (w.y >> (8 * j)) & 0xFF;
    }
#else
    u32 w = *reinterpret_cast<const u32 *>(codes + base);
#pragma unroll
    for (int j = 0; j < 4; j++) c[j] = (w >> (8 * j)) & 0xFF;
#endif
#else
#pragma unroll
    for (int j = 0; j < V; j++)
        c[j] = (p.col0 + j < length) ? codes[p.row * length + p.col0 + j] : 0;
#endif
}

/* Stores V output values of a lane (x's layout, padding dropped). */
__device__ __forceinline__ void store_vals(out_t *__restrict__ out, const Pos &p, i64 length,
                                           out_t o[V]) {
#if ALIGNED
    i64 base = p.blk * B + (i64)p.lane * V;
#if OUT_KIND == 0
#pragma unroll
    for (int h = 0; h < V / 4; h++)
        __stcs(reinterpret_cast<float4 *>(out + base) + h,
               make_float4(o[4 * h], o[4 * h + 1], o[4 * h + 2], o[4 * h + 3]));
#elif OUT_KIND == 3
#pragma unroll
    for (int h = 0; h < V / 2; h++)
        __stcs(reinterpret_cast<double2 *>(out + base) + h, make_double2(o[2 * h], o[2 * h + 1]));
#else
#pragma unroll
    for (int h = 0; h < V / 8; h++) {
        uint4 w;
        w.x = (u32)o[8 * h] | ((u32)o[8 * h + 1] << 16);
        w.y = (u32)o[8 * h + 2] | ((u32)o[8 * h + 3] << 16);
        w.z = (u32)o[8 * h + 4] | ((u32)o[8 * h + 5] << 16);
        w.w = (u32)o[8 * h + 6] | ((u32)o[8 * h + 7] << 16);
        __stcs(reinterpret_cast<uint4 *>(out + base) + h, w);
    }
#if V == 4
    {
        uint2 w2;
        w2.x = (u32)o[0] | ((u32)o[1] << 16);
        w2.y = (u32)o[2] | ((u32)o[3] << 16);
        *reinterpret_cast<uint2 *>(out + base) = w2;
    }
#endif
#endif
#else
#pragma unroll
    for (int j = 0; j < V; j++)
        if (p.col0 + j < length) out[p.row * length + p.col0 + j] = o[j];
#endif
}

__device__ __forceinline__ i64 scale_index(const Pos &p, i64 rows, i64 nb) {
#if SWIZZLE
    i64 nc = (nb + 3) / 4;
    i64 r = p.row, c = p.cb;
    return ((r / 128) * nc + c / 4) * 512 + (r % 32) * 16 + ((r / 32) % 4) * 4 + (c % 4);
#else
    return p.blk;
#endif
}

template <typename T> __device__ __forceinline__ T lane_max(T v) {
#pragma unroll
    for (int o = 1; o < L; o <<= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = v > w ? v : w;
    }
    return v;
}
template <typename T> __device__ __forceinline__ T lane_or(T v) {
#pragma unroll
    for (int o = 1; o < L; o <<= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
"""


def lanes(in_kind: int, block: int, wide: bool = False) -> int:
    """V, the elements one thread handles (a block is ``block / V`` lanes of a warp): 4 for
    float64 input, 16 for ``wide`` kernels (two or more 16-byte loads per thread keep enough
    bytes in flight; per-block work is shared by fewer threads), else 8."""
    v = 4 if in_kind == 3 else (16 if wide and block % 16 == 0 else 8)
    if block % v:
        v = 4 if block % 4 == 0 else 0
    return v


FLAT_DEQUANT_SRC = r"""
/* Dequantization of an aligned (rows, length) code array: length is a multiple of B and the
   scales are (rows, length / B) row-major, so element i has the scale of block i / B. Each
   thread takes FG groups of FE consecutive elements (FE = 8 for 2-byte outputs, else 4: one
   16-byte store per group), the groups of a warp adjacent, so that every load and store
   instruction of a warp is contiguous. The scheme defines DQ_ARGS (extra arguments),
   DQ_SCALE(i, e) (set up the scale of block i for the FE elements from element e on) and
   DQ_VALUE(c, k) (the out_t of code c, the k-th element of the group). */
#define FG 4
#if OUT_KIND == 1 || OUT_KIND == 2
#define FE 8
typedef uint2 cgroup_t;
#else
#define FE 4
typedef u32 cgroup_t;
#endif
__device__ __forceinline__ int group_code(const cgroup_t &w, int k) {
#if FE == 8
    return ((k < 4 ? w.x : w.y) >> (8 * (k & 3))) & 0xFF;
#else
    return (w >> (8 * k)) & 0xFF;
#endif
}
__device__ __forceinline__ void store_group(out_t *__restrict__ out, i64 q, const out_t o[FE]) {
#if OUT_KIND == 0
    __stcs(reinterpret_cast<float4 *>(out) + q, make_float4(o[0], o[1], o[2], o[3]));
#elif OUT_KIND == 3
    double2 *d = reinterpret_cast<double2 *>(out) + 2 * q;
    __stcs(d, make_double2(o[0], o[1]));
    __stcs(d + 1, make_double2(o[2], o[3]));
#else
    __stcs(reinterpret_cast<uint4 *>(out) + q,
           make_uint4((u32)o[0] | ((u32)o[1] << 16), (u32)o[2] | ((u32)o[3] << 16),
                      (u32)o[4] | ((u32)o[5] << 16), (u32)o[6] | ((u32)o[7] << 16)));
#endif
}
extern "C" __global__ void flat_dequant(const unsigned char *__restrict__ codes,
                                        const unsigned char *__restrict__ scales, DQ_ARGS
                                        out_t *__restrict__ out, i64 ngroups) {
    LUT_PROLOGUE
    i64 q0 = (((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5) * (32 * FG) + (threadIdx.x & 31);
    cgroup_t cw[FG];
#pragma unroll
    for (int g = 0; g < FG; g++) {
        i64 q = q0 + 32 * g;
        if (q < ngroups) cw[g] = __ldcs(reinterpret_cast<const cgroup_t *>(codes) + q);
    }
#pragma unroll
    for (int g = 0; g < FG; g++) {
        i64 q = q0 + 32 * g;
        if (q >= ngroups) break;
        DQ_SCALE((q * FE) / B, q * FE);
        out_t o[FE];
#pragma unroll
        for (int k = 0; k < FE; k++) o[k] = DQ_VALUE(group_code(cw[g], k), k);
        store_group(out, q, o);
    }
}
"""


def launch_flat_dequant(fn, n: int, out_name: str, args) -> None:
    """Launch ``flat_dequant`` over ``n`` elements (a multiple of the block size, 8 or more);
    ``args`` end before the group count."""
    groups = n // (8 if KIND[out_name] in (1, 2) else 4)
    warps = -(-groups // (32 * 4))
    launch(fn, warps * 32, (*args, np.int64(groups)))


def block_defines(in_kind: int, block: int, length: int, pack: int = 0, swizzle: bool = False,
                  out_kind: int = 0, extra: dict | None = None,
                  wide: bool = False) -> tuple[str, int]:
    """(#define text, V) for a block kernel over rows of ``length`` (V: ``lanes``)."""
    v = lanes(in_kind, block, wide)
    if not v or (block // v) > 32 or (block // v) & (block // v - 1):
        raise ValueError(f"block size {block} is not supported by the block kernels")
    aligned = int(length % block == 0)
    d = dict(IN_KIND=in_kind, OUT_KIND=out_kind, B=block, V=v, ALIGNED=aligned, PACK=pack,
             SWIZZLE=int(swizzle))
    d.update(extra or {})
    return "".join(f"#define {k} {val}\n" for k, val in d.items()), v


def alloc_codes_scales(rows: int, length: int, nb: int, block: int, pbits: int, swizzle: bool):
    """Device outputs of a block quantizer: codes ``(rows, length)`` (or packed rows of
    ``nb * block`` codes of ``pbits`` bits) and uint8 scales ``(rows, nb)`` (or the flat cuBLAS
    128x4 swizzled layout, zero-filled padding)."""
    import cupy as cp

    if pbits:
        codes = cp.empty((rows, packed_row_bytes(nb * block, pbits)), cp.uint8)
    else:
        codes = cp.empty((rows, length), cp.uint8)
    if swizzle:
        scales = cp.zeros(32 * -(-rows // 128) * 16 * -(-nb // 4), cp.uint8)
    else:
        scales = cp.empty((rows, nb), cp.uint8)
    return codes, scales


def pack_bits(pack: bool | int, elem_bits: int) -> int:
    if not pack:
        return 0
    return {4: 4, 6: 6, 8: 8}[elem_bits]


def packed_row_bytes(n: int, bits: int) -> int:
    from lowbit.numerics.packing import packed_width

    return packed_width(n, bits)


# -- layout (device arrays) -----------------------------------------------------------------------


def rows_of(x, b):
    """``x`` (cupy, of ``b.shape``) as C-contiguous ``(rows, length)``; no copy when possible."""
    import cupy as cp

    from .layout import n_rows

    moved = cp.ascontiguousarray(cp.moveaxis(x, b.axis, -1))
    return moved.reshape(n_rows(b), b.length)


def from_rows_dev(a2, b, trailing: tuple[int, ...] = ()):
    """Inverse of ``rows_of``: ``(rows, n, *trailing)`` with ``n`` put back at the axis."""
    import cupy as cp

    lead = tuple(s for i, s in enumerate(b.shape) if i != b.axis)
    moved = a2.reshape(lead + a2.shape[1:])
    return cp.ascontiguousarray(cp.moveaxis(moved, len(lead), b.axis))


def rows_with(x, b, n):
    """Per-block data ``x`` (``b.shape`` with ``n`` along the axis) as ``(rows, n)``."""
    import cupy as cp

    from .layout import n_rows

    return cp.ascontiguousarray(cp.moveaxis(x, b.axis, -1)).reshape(n_rows(b), n)


def dev(x):
    """A device or host array as a cupy array (host numpy arrays are copied over)."""
    import cupy as cp

    if x is None:
        return None
    if is_torch(x):
        return as_cupy(x)[0]
    if is_cupy(x):
        return x
    return cp.asarray(np.asarray(x))


def prelude(in_kind: int = 0, out_kind: int = 0) -> str:
    return COMMON + CONVERT + f"#define IN_KIND {in_kind}\n#define OUT_KIND {out_kind}\n" + LOADERS
