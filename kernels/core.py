"""Shared pieces of the Numba kernels: bit casts, input loading and the generic element rounder.

Every element format is rounded by one jitted function, ``encode_one``, driven by a small
per-format table built from the reference spec (``ElementFormat.values``), never by per-format
code. The table cuts the positive magnitudes into binades ``[2**e, 2**(e+1))``; inside a binade
the representable values are equally spaced by ``2**qe`` with consecutive codes (true of IEEE-like
floats, their subnormals, HiF8's tapered binades and fixed-point integers alike). Rounding a
float64 ``|y| = P * 2**(e-52)`` is then integer arithmetic on its significand ``P``: keep
``N = P >> d`` (``d = qe - e + 52``), decide the round-up from the discarded bits, and map
``N`` to a code; exact for every input because every float32/float16/bfloat16/float64 value is
exact in float64 and all later steps are integer operations.

Table rows (one column per slot): ``QE`` quantum exponent, ``BASE`` code of the slot's first
value, ``LEAD`` its ``N``, ``CARRY`` the ``N`` that rounds into the next slot. Slot 0 holds the
magnitudes below the smallest positive value (zero or, for formats without zero, the minimum);
slot ``t >= 1`` the binade ``e_lo + t - 1``; the last slot is past the largest binade.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from lowbit.numerics.codec import ROUNDING_MODES
from lowbit.numerics.specs import ElementFormat

# -- scalar bit casts ---------------------------------------------------------------------


def _bitcast(src, dst):
    @intrinsic
    def cast(typingctx, x):
        if x != src:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(dst))

        return dst(src), codegen

    return cast


f64_bits = _bitcast(types.float64, types.int64)
bits_f64 = _bitcast(types.int64, types.float64)
f32_bits = _bitcast(types.float32, types.int32)
bits_f32 = _bitcast(types.int32, types.float32)


def _int32_op(name: str):
    """An int32 binary operation of two integers (truncated to int32 first) that stays int32.

    Numba widens int32 arithmetic to int64, and LLVM keeps the runtime-parameter operations
    (max, shifts, masks) on 4-lane int64 vectors; these keep the loops on 8-lane int32 AVX2.
    """

    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, types.Integer) and isinstance(b, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            x, y = (context.cast(builder, v, t, types.int32)
                    for v, t in zip(args, sig.args, strict=True))
            if name == "max":
                return builder.select(builder.icmp_signed(">", x, y), x, y)
            if name == "min":
                return builder.select(builder.icmp_signed("<", x, y), x, y)
            return getattr(builder, name)(x, y)

        return types.int32(a, b), codegen

    return op


i32_add, i32_sub, i32_and, i32_or, i32_xor, i32_shr, i32_max = (
    _int32_op(n) for n in ("add", "sub", "and_", "or_", "xor", "ashr", "max"))


@njit(cache=True, inline="always")
def pow2(n: int) -> float:
    """``2.0**n`` for a normal float64 exponent, built from its bits."""
    return bits_f64((n + 1023) << 52)


# -- input loading ----------------------------------------------------------------------
# Kernels read float32/float64 arrays as they are, bfloat16 as uint16 and float16 as int16 bit
# patterns: the array dtype selects the decoder at compile time (``load``, ``f32_bits_of``).

SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")


def kernel_input(x: np.ndarray) -> np.ndarray:
    """``x`` as an array the kernels read (bfloat16 as uint16, float16 as int16 bits)."""
    if x.dtype.name == "bfloat16":
        return x.view(np.uint16)
    if x.dtype.name == "float16":
        return x.view(np.int16)
    return x


def as_float32(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to float32 (exact for float16/bfloat16; RNE for float64; no copy for
    float32): the input of the kernels whose arithmetic starts in float32 (NVFP4, INT/HiF8
    scaling, HiF4), so that they compile for one dtype."""
    if x.dtype == np.float32:
        return x
    with np.errstate(over="ignore"):
        return x.astype(np.float32)


@njit(cache=True, inline="always")
def f16_to_f64(h) -> float:
    """Exact float64 value of a float16 bit pattern."""
    v = np.int64(h) & 0xFFFF
    ex = (v >> 10) & 0x1F
    man = v & 0x3FF
    mag = np.float64(man | (np.int64(ex != 0) << 10)) * pow2(max(ex, 1) - 25)
    if ex == 0x1F:
        mag = np.inf if man == 0 else np.nan
    return -mag if v & 0x8000 else mag


def load(arr, i):
    """Element ``i`` of a kernel input as float64 (exact); jitted through the overload below."""


def f32_bits_of(arr, i):
    """float32 bit pattern (int64) of element ``i`` of a float32/bfloat16/float16 input."""


def load32(arr, i):
    """Element ``i`` of a float32/bfloat16/float16 input as float32 (exact)."""


@overload(load, inline="always")
def _load(arr, i):
    if arr.dtype == types.uint16:
        return lambda arr, i: np.float64(bits_f32(np.int32(np.int64(arr[i]) << 16)))
    if arr.dtype == types.int16:
        return lambda arr, i: f16_to_f64(arr[i])
    return lambda arr, i: np.float64(arr[i])


@overload(load32, inline="always")
def _load32(arr, i):
    if arr.dtype == types.uint16:
        return lambda arr, i: bits_f32(np.int32(np.int64(arr[i]) << 16))
    if arr.dtype == types.int16:
        return lambda arr, i: np.float32(f16_to_f64(arr[i]))
    return lambda arr, i: np.float32(arr[i])


@overload(f32_bits_of, inline="always")
def _f32_bits_of(arr, i):
    if arr.dtype == types.uint16:
        return lambda arr, i: np.int64(arr[i]) << 16
    if arr.dtype == types.int16:
        return lambda arr, i: np.int64(f32_bits(np.float32(f16_to_f64(arr[i])))) & 0xFFFFFFFF
    return lambda arr, i: np.int64(f32_bits(arr[i])) & 0xFFFFFFFF


# -- the generic element rounder ----------------------------------------------------------

QE, BASE, LEAD, CARRY = range(4)
(E_LO, T_LAST, TTOP_P, NMAX_P, OVER_P, TTOP_N, NMAX_N, OVER_N, SIGN_MODE, SIGN_BIT, NEGZERO,
 NAN_CODE, MASK, UNSIGNED, NO_ZERO, SAT_P, SAT_N, N_PRM) = range(18)
SIGN_MAGNITUDE, TWOS_COMPLEMENT, NO_SIGN = range(3)


@cache
def element_table(spec: ElementFormat, saturate: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    """(table int64[4, slots], parameters tuple[N_PRM]) of ``spec`` for ``encode_one``.

    Built from the spec's value table and checked against it: a format whose binades are not
    uniformly spaced with consecutive codes raises AssertionError.
    """
    is_int = spec.encoding == "int"
    vals = spec.values
    if is_int:
        half = 1 << (spec.bits - 1)
        mags = np.arange(1, half + 1, dtype=np.float64) / (1 << spec.frac_bits)
        mcodes = np.arange(1, half + 1)
    else:
        mcodes = np.flatnonzero(np.isfinite(vals) & (vals > 0))
        mags = vals[mcodes]
        if spec.overflow_code is not None:  # the virtual point above max fixes the top spacing
            mcodes = np.append(mcodes, spec.overflow_code)
            mags = np.append(mags, spec.overflow_value)
    order = np.argsort(mags)
    mags, mcodes = mags[order], mcodes[order]
    binade = np.frexp(mags)[1] - 1
    e_lo, e_hi = int(binade[0]), int(binade[-1])
    assert mags[0] == 2.0**e_lo, f"{spec.name}: smallest magnitude is not a power of two"
    n_slots = e_hi - e_lo + 3
    tab = np.zeros((4, n_slots), dtype=np.int64)
    zero_code = 0
    tab[:, 0] = (e_lo, zero_code if spec.has_zero else mcodes[0], 0, 1 if spec.has_zero else 0)
    for t, e in enumerate(range(e_lo, e_hi + 1), start=1):
        sel = binade == e
        m, c = mags[sel], mcodes[sel]
        assert m[0] == 2.0**e and np.all(np.diff(c) == 1), f"{spec.name}: binade {e} irregular"
        step = np.diff(m)[0] if m.size > 1 else 2.0**e
        qe = int(np.frexp(step)[1]) - 1
        assert step == 2.0**qe and np.all(np.diff(m) == step), f"{spec.name}: binade {e} spacing"
        if e < e_hi:
            assert m[-1] + step == 2.0 ** (e + 1), f"{spec.name}: binade {e} does not close"
        tab[:, t] = (qe, c[0], 1 << (e - qe), 2 << (e - qe))
    tab[:, -1] = (tab[QE, -2], 0, 0, 1 << 62)

    def top(limit: float) -> tuple[int, int, int]:
        """(slot, N, magnitude code) of the largest magnitude ``limit``."""
        t = int(np.frexp(limit)[1]) - e_lo
        n = int(limit / 2.0 ** tab[QE, t])
        return t, n, int(tab[BASE, t] + n - tab[LEAD, t])

    prm = np.zeros(N_PRM, dtype=np.int64)
    prm[E_LO], prm[T_LAST] = e_lo, n_slots - 1
    prm[TTOP_P], prm[NMAX_P], prm[OVER_P] = top(spec.max)
    neg_max = spec.max if (spec.symmetric or not is_int) else -spec.min
    prm[TTOP_N], prm[NMAX_N], prm[OVER_N] = top(neg_max)
    prm[SAT_P], prm[SAT_N] = prm[OVER_P], prm[OVER_N]
    if not saturate:
        prm[OVER_P] = prm[OVER_N] = spec.overflow_code
    prm[SIGN_MODE] = TWOS_COMPLEMENT if is_int else (SIGN_MAGNITUDE if spec.signed else NO_SIGN)
    prm[SIGN_BIT] = spec.sign_bit
    nz = spec.negative_zero_code
    prm[NEGZERO] = zero_code if nz is None else nz
    prm[NAN_CODE] = -1 if spec.nan_code is None else spec.nan_code
    prm[MASK] = spec.n_codes - 1
    prm[UNSIGNED] = int(not spec.signed)
    prm[NO_ZERO] = int(not spec.has_zero)
    tab.setflags(write=False)
    return tab, tuple(int(v) for v in prm)


class Unsupported(Exception):
    """A case the kernels leave to the reference backend (the dispatcher falls back)."""


def check_rbits(rbits, rounding: str):
    """``rbits`` as an array for stochastic rounding (else None); the reference's errors."""
    if rounding != "stochastic":
        return None
    if rbits is None:
        raise ValueError('rounding="stochastic" needs rbits (unsigned random integers per element)')
    r = np.asarray(rbits)
    if r.dtype.kind != "u" or r.dtype.itemsize > 4:
        raise TypeError("rbits must be uint8, uint16 or uint32; the dtype width is the bit count")
    return r


def rbits_width(rbits: np.ndarray | None) -> int:
    """Number of random bits per element (the unsigned dtype's width), 0 without rbits."""
    return 0 if rbits is None else rbits.dtype.itemsize * 8


RNE_FLAGS = (1, 0, 1, 0)
"""``mode_flags("nearest_even")`` as a global constant: loops passing it get the default mode
constant-folded (kernels test ``flags == RNE_FLAGS`` and run a dedicated loop)."""


def mode_flags(rounding: str) -> tuple[int, int, int, int]:
    """(nearest, ties away, ties to even, stochastic) flags of a rounding mode."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDING_MODES}")
    return {
        "nearest_even": (1, 0, 1, 0),
        "nearest_away": (1, 1, 0, 0),
        "nearest_zero": (1, 0, 0, 0),
        "toward_zero": (0, 0, 0, 0),
        "stochastic": (0, 0, 0, 1),
    }[rounding]


@njit(cache=True)
def round_up(n: int, rem: int, half: int, flags) -> bool:
    """Whether the kept quanta ``n`` round up, for the deterministic modes of ``flags``."""
    near, tie_away, tie_even, _ = flags
    return ((rem > half) & (near == 1)) | ((rem == half) & ((tie_away | (tie_even & n)) == 1))


@njit(cache=True)
def encode_one(y: float, shift: int, flags, r: int, nbits: int, tab, prm) -> int:
    """Code of ``y * 2**-shift`` (exact) in the table's format; -1: NaN in a format without NaN.

    ``flags`` from ``mode_flags``; stochastic rounding reads ``r``, the element's ``nbits``-bit
    random integer (``nbits <= 32``).
    """
    b = f64_bits(y)
    neg = b < 0
    ex = (b >> 52) & 0x7FF
    p = (b & 0xFFFFFFFFFFFFF) | (np.int64(ex != 0) << 52)
    e = max(ex, 1) - 1023 - shift
    t = min(max(e - prm[E_LO] + 1, 0), prm[T_LAST])
    d = tab[QE, t] - e + 52
    dc = min(max(d, 1), 63)
    n = p >> dc
    rem = p & ((np.int64(1) << dc) - 1)
    if flags[3]:
        n += (rem >> min(d - nbits, 63)) + r >= (np.int64(1) << nbits)
    else:
        n += round_up(n, rem, np.int64(1) << (dc - 1), flags)
    mag = tab[BASE, t + 1] if n >= tab[CARRY, t] else tab[BASE, t] + n - tab[LEAD, t]
    ttop = prm[TTOP_N] if neg else prm[TTOP_P]
    nmax = prm[NMAX_N] if neg else prm[NMAX_P]
    if (t > ttop) | ((t == ttop) & (n > nmax)):
        mag = prm[OVER_N] if neg else prm[OVER_P]
        if flags[0] == 0 and flags[3] == 0 and ex != 0x7FF:  # toward_zero never overflows
            mag = prm[SAT_N] if neg else prm[SAT_P]
    code = mag
    if neg:
        sm = prm[SIGN_MODE]
        if sm == SIGN_MAGNITUDE:
            code = prm[NEGZERO] if mag == 0 else mag | prm[SIGN_BIT]
        elif sm == TWOS_COMPLEMENT:
            code = -mag & prm[MASK]
    undefined = (ex == 0x7FF) & (p != 1 << 52)
    undefined |= (prm[UNSIGNED] == 1) & neg & (y != 0)
    undefined |= (prm[NO_ZERO] == 1) & (y == 0)
    if undefined:
        code = prm[NAN_CODE]
    return code


# -- the fast rounder: IEEE-like floats with subnormals and fixed-point integers ---------------

(F_EMIN, F_MB, F_TCLAMP, F_NMAX_P, F_NMAX_N, F_OVER_P, F_OVER_N, F_SIGN_MAG, F_SIGN_BIT, F_MASK,
 F_NAN, F_EMIN_B, F_XOR, F_ADD, F_EMIN_B32, N_FPRM) = range(16)
NO_FAST = (0,) * N_FPRM
"""Placeholder parameters where the fast rounder is not used (keeps kernel signatures fixed)."""
EXP_MASK = 0x7FF << 52


@cache
def fast_params(spec: ElementFormat, saturate: bool) -> tuple[int, ...] | None:
    """Parameters of ``encode_fast`` for ``spec``, or None when only ``encode_one`` applies.

    Applies to signed float formats with subnormals (codes grow with the magnitude: the code of
    ``N`` quanta in binade ``e`` is ``((max(e, emin) - emin) << man_bits) + N``) and to
    two's-complement integers (a float format whose every binade is "subnormal": ``emin`` above
    the largest magnitude).
    """
    p = np.zeros(N_FPRM, dtype=np.int64)
    if spec.encoding == "int":
        top = int(np.frexp(-spec.min)[1]) + 1
        p[F_EMIN], p[F_TCLAMP], p[F_MB] = top, top, top + spec.frac_bits
        p[F_XOR], p[F_ADD] = -1, 1  # negative code: (~mag + 1) & mask
        p[F_NMAX_P] = p[F_OVER_P] = int(spec.max * 2**spec.frac_bits)
        neg = spec.max if spec.symmetric else -spec.min
        p[F_NMAX_N] = p[F_OVER_N] = int(neg * 2**spec.frac_bits)
    elif spec.encoding == "float" and spec.signed and spec.subnormals:
        max_code = int(np.flatnonzero(spec.values == spec.max)[0])
        p[F_EMIN], p[F_MB], p[F_TCLAMP] = 1 - spec.bias, spec.man_bits, spec.emax + 2
        p[F_NMAX_P] = p[F_NMAX_N] = max_code
        p[F_OVER_P] = p[F_OVER_N] = max_code if saturate else spec.overflow_code
        p[F_SIGN_MAG] = 1
        p[F_XOR], p[F_ADD] = 0, spec.sign_bit  # negative code: mag + sign bit
    else:
        return None
    p[F_EMIN_B] = (p[F_EMIN] + 1023) << 52
    p[F_EMIN_B32] = (p[F_EMIN] + 127) << 23
    p[F_SIGN_BIT] = spec.sign_bit
    p[F_MASK] = spec.n_codes - 1
    p[F_NAN] = -1 if spec.nan_code is None else spec.nan_code
    return tuple(int(v) for v in p)


@njit(cache=True, inline="always")
def encode_fast(y: float, shift: int, flags, fp) -> int:
    """``encode_one`` for the formats of ``fast_params`` and the deterministic modes.

    Float64 arithmetic, exact: ``v = |y| * 2**-shift`` is scaled by the inverse quantum of its
    binade (a power of two) to ``w``, whose integer part and exact fraction give the rounding
    (``np.rint`` for ties to even); the binade and ``N`` give the code. Branch-free (selects
    only), so loops over it vectorize.
    """
    near, tie_away, tie_even, _ = flags
    nan = y != y
    v = abs(y) * pow2(-shift)
    v = 0.0 if nan else min(v, pow2(fp[F_TCLAMP]))
    eb = max(f64_bits(v) & EXP_MASK, fp[F_EMIN_B])
    w = v * bits_f64(((2046 + fp[F_MB]) << 52) - eb)
    t = np.floor(w)
    frac = w - t
    up = (frac > 0.5) | ((frac == 0.5) & (tie_away == 1))
    n = np.rint(w) if tie_even == 1 else (t + up if near == 1 else t)
    mag = ((eb - fp[F_EMIN_B]) >> (52 - fp[F_MB])) + np.int64(n)
    neg = f64_bits(y) < 0
    nmax = fp[F_NMAX_N] if neg else fp[F_NMAX_P]
    if mag > nmax:
        rtz_finite = (near == 0) & (abs(y) < np.inf)  # toward_zero never overflows a finite y
        mag = nmax if rtz_finite else (fp[F_OVER_N] if neg else fp[F_OVER_P])
    nmask = -np.int64(neg)  # the sign applied without branches (see F_XOR / F_ADD)
    code = ((mag ^ (fp[F_XOR] & nmask)) + (fp[F_ADD] & nmask)) & fp[F_MASK]
    nan_mask = -np.int64(nan)
    return (fp[F_NAN] & nan_mask) | (code & ~nan_mask)


@njit(cache=True, inline="always")
def _mag32(v: np.float32, flags, fp) -> np.int32:
    """The magnitude code of ``v >= 0`` (clamped to the format's top binade), float32/int32
    arithmetic: ``v`` scaled by the inverse quantum of its binade (a power of two) to ``w``,
    whose integer part and exact fraction give the rounding (``np.rint`` for ties to even); the
    binade and the rounded quanta give the code, which may exceed the largest finite one."""
    near, tie_away, tie_even, _ = flags
    eb = i32_max(i32_and(f32_bits(v), 0x7F800000), fp[F_EMIN_B32])
    w = v * bits_f32(i32_sub((254 + fp[F_MB]) << 23, eb))
    t = np.floor(w)
    frac = w - t
    up = (frac > np.float32(0.5)) | ((frac == np.float32(0.5)) & (tie_away == 1))
    n = np.rint(w) if tie_even == 1 else (t + np.float32(up) if near == 1 else t)
    return i32_add(i32_shr(i32_sub(eb, fp[F_EMIN_B32]), 23 - fp[F_MB]), np.int32(n))


@njit(cache=True, inline="always")
def encode_fast32(y: np.float32, scale: np.float32, flags, fp) -> int:
    """``encode_fast`` of ``y * scale`` in float32 arithmetic (8 SIMD lanes instead of 4).

    Exact when ``y * scale`` is (``scale`` a power of two and ``y`` a float32): a product that
    underflows float32's normal range is ~2**100 times below every format's smallest value and
    rounds to +-0 either way. The integer steps are int32 (``np.int32`` conversions keep LLVM
    on 8-lane AVX2 instructions; a float-to-int64 conversion would be scalarised).
    """
    near = flags[0]
    nan = y != y
    v = abs(y) * scale
    v = np.float32(0) if nan else min(v, np.float32(pow2(fp[F_TCLAMP])))
    mag = _mag32(v, flags, fp)
    neg = f32_bits(y) < 0
    nmax = np.int32(fp[F_NMAX_N]) if neg else np.int32(fp[F_NMAX_P])
    if mag > nmax:
        rtz_finite = (near == 0) & (abs(y) < np.inf)
        mag = nmax if rtz_finite else (np.int32(fp[F_OVER_N]) if neg else np.int32(fp[F_OVER_P]))
    nmask = np.int32(-np.int32(neg))
    code = i32_and(i32_add(i32_xor(mag, i32_and(fp[F_XOR], nmask)), i32_and(fp[F_ADD], nmask)),
                   fp[F_MASK])
    return np.int32(fp[F_NAN]) if nan else code


@njit(cache=True, inline="always")
def encode_sat32(y: np.float32, scale: np.float32, flags, fp) -> np.int32:
    """``encode_fast32`` of a non-NaN ``y`` for saturating parameters (``fast_params(spec,
    True)``), with fewer selects per lane; the code of a NaN ``y`` is unspecified.

    Saturating parameters have ``F_OVER_* == F_NMAX_*``, so every overflow (an Inf too, and in
    every mode) is the largest magnitude of the sign: one minimum. A positive ``mag`` is its own
    code (``0 <= mag <= F_NMAX_P < F_MASK``); the negative code is one blend by the sign bit.
    """
    v = min(abs(y) * scale, np.float32(pow2(fp[F_TCLAMP])))
    mag = _mag32(v, flags, fp)
    neg = f32_bits(y) < 0
    mag = min(mag, np.int32(fp[F_NMAX_N]) if neg else np.int32(fp[F_NMAX_P]))
    ncode = i32_and(i32_add(i32_xor(mag, fp[F_XOR]), fp[F_ADD]), fp[F_MASK])
    return ncode if neg else mag
