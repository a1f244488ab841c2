"""Parameters of the generated GPU encoders and MX scale rules, derived from the reference specs.

Copies of the table builders of the Numba kernels (``kernels.core.element_table`` /
``fast_params``, ``kernels.mx.scale_params``, as of 2026-11-29) kept here so that the GPU kernels
need no Numba (the GPU image's Numba need not match its NumPy) and do not change when the CPU
kernels are refactored. The GPU checks compare the results with ``lowbit.numerics`` bit for bit.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from lowbit.numerics import mx as ref
from lowbit.numerics.specs import ElementFormat

QE, BASE, LEAD, CARRY = range(4)
(E_LO, T_LAST, TTOP_P, NMAX_P, OVER_P, TTOP_N, NMAX_N, OVER_N, SIGN_MODE, SIGN_BIT, NEGZERO,
 NAN_CODE, MASK, UNSIGNED, NO_ZERO, N_PRM) = range(16)
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



(F_EMIN, F_MB, F_TCLAMP, F_NMAX_P, F_NMAX_N, F_OVER_P, F_OVER_N, F_SIGN_MAG, F_SIGN_BIT, F_MASK,
 F_NAN, N_FPRM) = range(12)
NO_FAST = (0,) * N_FPRM
"""Placeholder parameters where the fast rounder is not used (keeps kernel signatures fixed)."""


@cache
def fast_params(spec: ElementFormat, saturate: bool) -> tuple[int, ...] | None:
    """Parameters of ``encode_fast`` for ``spec``, or None when only ``encode_one`` applies.

    Applies to signed float formats with subnormals (codes grow with the magnitude, so the code
    of ``N`` quanta in binade ``e`` is ``((max(e, emin) - emin) << man_bits) + N``) and to
    two's-complement integers (a float format whose every binade is "subnormal").
    """
    p = np.zeros(N_FPRM, dtype=np.int64)
    if spec.encoding == "int":
        top = int(np.frexp(-spec.min)[1]) + 1
        p[F_EMIN] = p[F_TCLAMP] = top
        p[F_MB] = top + spec.frac_bits
        p[F_NMAX_P] = p[F_OVER_P] = int(spec.max * 2**spec.frac_bits)
        neg = spec.max if spec.symmetric else -spec.min
        p[F_NMAX_N] = p[F_OVER_N] = int(neg * 2**spec.frac_bits)
    elif spec.encoding == "float" and spec.signed and spec.subnormals:
        max_code = int(np.flatnonzero(spec.values == spec.max)[0])
        p[F_EMIN] = 1 - spec.bias
        p[F_MB] = spec.man_bits
        p[F_TCLAMP] = spec.emax + 2
        p[F_NMAX_P] = p[F_NMAX_N] = max_code
        p[F_OVER_P] = p[F_OVER_N] = max_code if saturate else spec.overflow_code
        p[F_SIGN_MAG] = 1
    else:
        return None
    p[F_SIGN_BIT] = spec.sign_bit
    p[F_MASK] = spec.n_codes - 1
    p[F_NAN] = -1 if spec.nan_code is None else spec.nan_code
    return tuple(int(v) for v in p)



SCALE_RULE = {name: i for i, name in enumerate(ref.SCALE_RULES)}
INF_POLICY = {name: i for i, name in enumerate(ref.INF_POLICIES)}
CODE0_DIVISOR = {name: i for i, name in enumerate(ref.CODE0_DIVISORS)}
FLOOR, CEIL, RCEIL, RCEIL_EXACT, EVEN = (
    SCALE_RULE[r] for r in ("floor", "ceil", "rceil", "rceil_exact", "even")
)
INF_NAN, INF_MAX_SCALE, INF_EXP128 = (INF_POLICY[p] for p in ("nan", "max_scale", "exponent_128"))
DIV_EXACT, DIV_F32_MIN, DIV_ONE = (CODE0_DIVISOR[d] for d in ("exact", "f32_min_normal", "one"))
# scale parameters (int64 array)
(S_RULE, S_EMAX, S_EVEN_BITS, S_RCEIL_E, S_RCEIL_SIG, S_INF, S_DIV, S_ZERO_CODE,
 S_RECIP_BITS, N_SPRM) = range(10)
SIG_MASK = (1 << 52) - 1


def scale_params(elem: ElementFormat, opts: ref.MXOptions) -> tuple[int, ...]:
    """The per-(element format, options) constants of ``block_scale``."""
    mm, em = np.frexp(elem.max)
    p = np.zeros(N_SPRM, dtype=np.int64)
    p[S_RULE] = SCALE_RULE[opts.scale_rule]
    p[S_EMAX] = elem.emax
    p[S_EVEN_BITS] = elem.man_bits if elem.encoding == "float" else elem.frac_bits
    p[S_RCEIL_E] = int(em)
    p[S_RCEIL_SIG] = int(np.ldexp(mm, 53))
    p[S_INF] = INF_POLICY[opts.inf_policy]
    p[S_DIV] = CODE0_DIVISOR[opts.code0_divisor]
    nz = elem.negative_zero_code
    p[S_ZERO_CODE] = nz if (opts.zero_sign == "zero_input_negative" and nz is not None) else -1
    p[S_RECIP_BITS] = int((np.float32(1) / np.float32(elem.max)).view(np.int32))
    return tuple(int(v) for v in p)


