"""HiFloat4 (HiF4) block quantization: Huawei's three-level scaled 4-bit format (hifloat.md 2).

Layout of one block of 64 elements along the quantized axis (4.5 bits per element):

* level 1: one unsigned **E6M2** scale, ``2**(e6 - 48) * (1 + m2/4)``, codes 0x00 (2**-48) ..
  0xFE (49152), 0xFF NaN, no zero;
* level 2: **E1_8**, eight 1-bit micro-exponents, group ``g`` = elements ``8g .. 8g+7``;
* level 3: **E1_16**, sixteen 1-bit micro-exponents, group ``j`` = elements ``4j .. 4j+3``;
* elements: **S1P2** (bit-identical to FLOAT4_E1M2, ``specs.E1M2``), code ``(s << 3) | k``,
  magnitude ``k/4``, ``k = 0..7``.

Value: ``x_i = (-1)**s_i * E6M2 * 2**(E1_8[i//8] + E1_16[i//4]) * k_i/4`` (exact in float64 and
float32). The fields stay logical (``quantize_blocks`` returns codes, scale codes and the 24
micro bits as ``micro[..., :8]`` = E1_8, ``micro[..., 8:]`` = E1_16): the hardware packing of
the 32 metadata bits is not public (hifloat.md 4.6), so none is imposed here.

Encoder: R4 ``To_HiFX`` (v14), hifloat.md 2.2, in exact arithmetic:

1. ``V16`` / ``V8`` / ``Vmax``: maxima of ``|x|`` per 4, per 8 and per 64 elements.
2. ``SF = bf16(Vmax * bf16(1/7))`` clamped to ``[2**-48, 49152]`` and rounded to E6M2
   (``scale_rounding``, default ties-to-even as every implementation does, 4.7). ``bf16()`` is
   round-to-nearest-even to 8 significant bits; its exponent range is not modelled because the
   clamp bounds lie far inside it (clamping before or after ``bf16`` gives the same result).
3. ``REC = bf16(1/E6M2)``, the correctly rounded reciprocal (``reciprocals``):
   ``2**(48 - e6) * (1, 0.80078125, 0.66796875, 0.5703125)`` for ``m2 = 0..3``, the hardware
   table. Elements are scaled by ``REC``, never divided by E6M2.
4. ``E1_8 = [V8 * REC >= 4]``, ``E1_16 = [V16 * REC * 2**-E1_8 >= 2]``.
5. ``k = min(7, floor(|x| * REC * 2**-(E1_8 + E1_16) * 4 + 0.5))`` for the default
   ``rounding="nearest_away"``; this is ``codec`` rounding of the signed quotient to E1M2 with
   saturation, so the other ``codec.ROUNDING_MODES`` (stochastic with ``rbits``) apply too.

Exactness: every product above is computed rounded to odd in float64 (``_mul_odd``), which is
exact for float16/bfloat16/float32 inputs (at most 24 + 8 significant bits) and, for float64
inputs with more bits, lands strictly on the same side of every decision point (thresholds 2
and 4, element grid points and midpoints, bf16 rounding boundaries), all of which are
short binary fractions; so every input dtype gets the exact-arithmetic result. Stochastic
rounding is exact for ``rbits`` of up to 32 bits.

Resolved ambiguities (hifloat.md 4):

* 4.7 E6M2 ties: ``scale_rounding="nearest_even"`` (default) or ``"nearest_away"`` (the
  reference comment's alternative).
* 4.8 sign of zero elements: as R4 (sign = ``x < 0``), a negative input that rounds to 0 gives
  -0 (0x8) and a -0.0 input gives 0x0; ``negative_zero=False`` emits 0x0 for every zero.
* 4.9 non-BF16 input: the exact reading above. It equals R4 bit for bit on BF16 input (the
  golden vectors) and, as its float32 arithmetic is then exact too, on float16 input. R4's
  numpy reference rounds the products of float32 input to float32, which can differ in rare
  last-bit cases (round inputs to BF16 first for parity with it).
* Non-finite input (undefined in R4): a block holding any NaN or +-Inf gets the E6M2 NaN scale
  0xFF, micro bits 0 and element codes 0; every element of it dequantizes to NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from fractions import Fraction
from functools import cache

import numpy as np

from .codec import ROUNDING_MODES, _encode_f64
from .formats import BlockFormat
from .specs import ElementFormat

OPTION_NAMES = ("scale_rounding", "negative_zero")
SCALE_ROUNDINGS = ("nearest_even", "nearest_away")
BLOCK_SIZE = 64
SF_MIN = 2.0**-48
SF_MAX = 49152.0


def bf16_round(q: Fraction) -> Fraction:
    """Round a positive rational to 8 significant bits, ties to even (bf16 precision)."""
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if q < Fraction(2) ** e:
        e -= 1  # now 2**e <= q < 2**(e + 1)
    ulp = Fraction(2) ** (e - 7)
    return round(q / ulp) * ulp  # round() of a Fraction is half-to-even


ONE_SEVENTH_BF16 = float(bf16_round(Fraction(1, 7)))
"""bf16(1/7) = 0.142578125; 7 = 2**2 * 1.75 is the largest magnitude levels 2-3 and S1P2 reach."""


@cache
def reciprocals(scale: ElementFormat) -> np.ndarray:
    """``REC = bf16(1/v)`` for every code of the scale format (NaN for its NaN code)."""
    rec = [float(bf16_round(1 / Fraction(v))) if np.isfinite(v) else np.nan for v in scale.values]
    out = np.array(rec, dtype=np.float64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class HiF4Options:
    """Options of HiF4 quantization (module docstring for the ambiguities they resolve).

    Attributes:
        rounding: element rounding, one of ``codec.ROUNDING_MODES``; the reference's
            ``floor(v + 0.5)`` is ``"nearest_away"``.
        scale_rounding: E6M2 rounding of SF, ``"nearest_even"`` (reference) or ``"nearest_away"``.
        negative_zero: a negative input that rounds to zero gives code 0x8 (reference) or 0x0.
    """

    rounding: str = "nearest_away"
    scale_rounding: str = "nearest_even"
    negative_zero: bool = True

    def __post_init__(self):
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding={self.rounding!r}; expected one of {ROUNDING_MODES}")
        if self.scale_rounding not in SCALE_ROUNDINGS:
            raise ValueError(
                f"scale_rounding={self.scale_rounding!r}; expected one of {SCALE_ROUNDINGS}"
            )
        if not isinstance(self.negative_zero, (bool, np.bool_)):
            raise TypeError(f"negative_zero must be a bool, got {self.negative_zero!r}")


def hif4_options(rounding: str | None = None, **overrides) -> HiF4Options:
    """Resolve options (None values mean the default); unknown names raise TypeError."""
    known = {f.name for f in fields(HiF4Options)}
    given = {"rounding": rounding, **overrides}
    for key in given:
        if key not in known:
            raise TypeError(f"unknown HiF4 option {key!r}; options: {sorted(known)}")
    return HiF4Options(**{k: v for k, v in given.items() if v is not None})


_LOW32 = np.uint64(0xFFFF_FFFF)


def _mul_odd(a: np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """``a * b`` rounded to odd in float64, for finite ``a >= 0`` and ``b`` of <= 8 bits.

    ``a = hi + lo`` with ``hi`` its top 21 significand bits, so ``hi*b`` and ``lo*b`` are exact;
    TwoSum gives ``s = fl(hi*b + lo*b)`` and its exact error. An inexact ``s`` is replaced by
    whichever of ``s`` and its neighbour toward the exact product has significand LSB 1: that
    value is never a short binary fraction, so it compares with every decision point as the
    exact product does, and rounding it to <= 51 bits gives the correctly rounded product.
    This holds unless the product is below 2**-1022, far under any decision point. Inputs of
    <= 45 significant bits (every float32, float16 and bfloat16 value) take the plain product,
    which is exact.
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not (a.view(np.uint64) & np.uint64(0xFF)).any():
        return a * b
    hi = (a.view(np.uint64) & ~_LOW32).view(np.float64)
    p = hi * b
    q = (a - hi) * b
    s = np.ascontiguousarray(p + q)
    t = s - p
    err = (p - (s - t)) + (q - t)
    even = (s.view(np.uint64) & np.uint64(1)) == 0
    toward = np.nextafter(s, np.where(err > 0, np.inf, -np.inf))
    return np.where((err != 0) & even, toward, s)


def _bf16_rne(v: np.ndarray) -> np.ndarray:
    """Non-negative finite float64 ``v`` rounded to 8 significant bits, ties to even.

    Bit manipulation on the float64 pattern (carries into the exponent as they should);
    exponent range unbounded, and float64 subnormals, far below SF_MIN, round on a fixed grid.
    """
    bits = np.ascontiguousarray(v, dtype=np.float64).view(np.uint64)
    drop = np.uint64(45)  # 52 stored bits - 7 kept
    lsb = (bits >> drop) & np.uint64(1)
    half = np.uint64(1 << 44)
    rounded = (bits + half - np.uint64(1) + lsb) & ~np.uint64((1 << 45) - 1)
    return rounded.view(np.float64)


def quantize_blocks(
    blocks: np.ndarray, fmt: BlockFormat, opts: HiF4Options, rbits: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize float64 blocks ``(..., nb, 64)``.

    Returns (element codes uint8 ``(..., nb, 64)``, E6M2 scale codes uint8 ``(..., nb)``,
    micro-exponent bits uint8 ``(..., nb, 24)``: E1_8 then E1_16, group 0 first).
    """
    if blocks.shape[-1] != BLOCK_SIZE:
        raise ValueError(f"HiF4 blocks have {BLOCK_SIZE} elements, got {blocks.shape[-1]}")
    bad = ~np.isfinite(blocks).all(axis=-1)
    x = np.where(bad[..., None], 0.0, blocks)
    a = np.abs(x)
    v16 = a.reshape(*a.shape[:-1], 16, 4).max(axis=-1)
    v8 = v16.reshape(*v16.shape[:-1], 8, 2).max(axis=-1)
    vmax = v8.max(axis=-1)

    sf = np.clip(_bf16_rne(_mul_odd(vmax, ONE_SEVENTH_BF16)), SF_MIN, SF_MAX)
    scale = _encode_f64(sf, fmt.scale, opts.scale_rounding, True).astype(np.int64)
    rec = reciprocals(fmt.scale)[scale][..., None]

    e8 = (_mul_odd(v8, rec) >= 4).astype(np.int64)
    e16 = (np.ldexp(_mul_odd(v16, rec), -np.repeat(e8, 2, axis=-1)) >= 2).astype(np.int64)
    shift = np.repeat(e8, 8, axis=-1) + np.repeat(e16, 4, axis=-1)
    y = np.ldexp(_mul_odd(a, rec), -shift)
    codes = _encode_f64(np.where(x < 0, -y, y), fmt.element, opts.rounding, True, rbits)
    if not opts.negative_zero:
        codes = np.where(fmt.element.values[codes] == 0, 0, codes)

    codes = np.where(bad[..., None], 0, codes)
    scale = np.where(bad, fmt.scale.nan_code, scale)
    micro = np.where(bad[..., None], 0, np.concatenate([e8, e16], axis=-1))
    return codes.astype(np.uint8), scale.astype(np.uint8), micro.astype(np.uint8)


def dequantize_blocks(
    codes: np.ndarray, scale_codes: np.ndarray, micro: np.ndarray, fmt: BlockFormat
) -> np.ndarray:
    """Exact float64 values ``(-1)**s * E6M2 * 2**(E1_8 + E1_16) * k/4``; NaN scale: NaN."""
    m = np.asarray(micro).astype(np.int64)
    if m.size and (m.min() < 0 or m.max() > 1):
        raise ValueError("HiF4 micro-exponents must be 0/1 bits")
    vals = fmt.element.values[np.asarray(codes).astype(np.int64)]
    scale = fmt.scale.values[np.asarray(scale_codes).astype(np.int64)]
    shift = np.repeat(m[..., :8], 8, axis=-1) + np.repeat(m[..., 8:], 4, axis=-1)
    return np.ldexp(vals * scale[..., None], shift)
