"""Element-format specifications: every element format is one frozen ``ElementFormat`` value.

A spec holds only data (widths, bias, specials, defaults). The code-to-value table of every
format is derived from the spec by one of three decoders chosen by ``encoding``:

* ``"float"``: sign | exponent | mantissa, IEEE-style with a bias. ``specials`` says what the
  top codes mean: ``"ieee"`` (all-ones exponent is Inf/NaN, E5M2), ``"fn"`` (only the all-ones
  code of each sign is NaN, OCP E4M3, UE4M3, E8M0, E6M2), ``"none"`` (every code is finite, FP6
  and FP4). ``subnormals=False`` means exponent field 0 is an ordinary binade (E8M0, E6M2).
* ``"int"``: two's complement of ``bits`` bits, value = integer / 2**frac_bits (MXINT8 is
  ``frac_bits=6``, the fixed point 1.6).
* ``"hif8"``: Huawei HiFloat8 tapered layout (sign | dot prefix | exponent | mantissa), decoded
  by the table in ``hif8_value`` (hifloat.md section 1.4).

All values are exact in float64. Codes are returned as ``uint8`` with the format's bits in the
low bits (FP4 in the low nibble, FP6 in the low six bits).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

Encoding = Literal["float", "int", "hif8"]
Specials = Literal["ieee", "fn", "none"]


@dataclass(frozen=True)
class ElementFormat:
    """One element (or scale) number format.

    Attributes:
        name: registry name (``ln.formats()``).
        bits: code width in bits (codes are stored one per ``uint8``).
        encoding: ``"float"``, ``"int"`` or ``"hif8"`` (see module docstring).
        exp_bits, man_bits, bias: float layout (``encoding="float"``).
        signed: whether the top bit is a sign bit (float) or the code is two's complement (int).
        specials: meaning of the top codes for floats (``"ieee"``, ``"fn"``, ``"none"``).
        subnormals: float exponent field 0 encodes subnormals (else it is a normal binade).
        frac_bits: fixed-point fraction bits (``encoding="int"``).
        symmetric: int formats only; ``encode`` never produces the most negative code, so the
            range is symmetric (microxcaling's MXINT8 clamp). Decoding is unchanged.
        saturate: default overflow behaviour of ``encode``: ``True`` clamps to +-max,
            ``False`` overflows to Inf (or NaN where the format has no Inf).
        rounding: default rounding mode of ``encode``.
        description: one line for tables and docs.
    """

    name: str
    bits: int
    encoding: Encoding
    exp_bits: int = 0
    man_bits: int = 0
    bias: int = 0
    signed: bool = True
    specials: Specials = "none"
    subnormals: bool = True
    frac_bits: int = 0
    symmetric: bool = False
    saturate: bool = True
    rounding: str = "nearest_even"
    description: str = ""

    def replace(self, **changes) -> ElementFormat:
        """A copy with some fields changed (for peer presets, e.g. a symmetric INT8)."""
        return dataclasses.replace(self, **changes)

    @property
    def n_codes(self) -> int:
        return 1 << self.bits

    @property
    def sign_bit(self) -> int:
        """Mask of the sign bit of a sign-magnitude code (0 for unsigned and int formats)."""
        if self.encoding == "int" or not self.signed:
            return 0
        return 1 << (self.bits - 1)

    @cached_property
    def values(self) -> np.ndarray:
        """float64 value of every code 0 .. 2**bits-1 (NaN for NaN codes)."""
        vals = np.array([self._decode_one(c)[0] for c in range(self.n_codes)], dtype=np.float64)
        vals.setflags(write=False)
        return vals

    @cached_property
    def odd(self) -> np.ndarray:
        """Whether each code's significand ends in a 1 bit (drives ties-to-even).

        For formats with mantissa bits this is the code's mantissa LSB; in a binade with no
        stored mantissa bit (E8M0, HiF8 denormals) the implicit leading 1 is the last bit, so
        every non-zero code is odd. Ties between two odd neighbours go to the larger magnitude,
        which is what a carry-propagating bit-level RNE does.
        """
        out = np.array([self._decode_one(c)[1] for c in range(self.n_codes)], dtype=bool)
        out.setflags(write=False)
        return out

    @cached_property
    def overflow_code(self) -> int | None:
        """Positive code that non-saturating overflow produces (+Inf, else NaN); None if neither."""
        if self.encoding == "hif8":
            return 0x6F
        if self.encoding == "float" and self.specials == "ieee":
            return ((1 << self.exp_bits) - 1) << self.man_bits
        if self.encoding == "float" and self.specials == "fn":
            return (1 << (self.exp_bits + self.man_bits)) - 1
        return None

    @cached_property
    def overflow_value(self) -> float | None:
        """The virtual grid point just above ``max``: where rounding switches to overflow.

        It is the value the overflow code would have if it were finite (E4M3: 480, E5M2: 65536,
        E8M0: 2**128, HiF8: 1.5 * 2**15), so the overflow threshold is its midpoint with max.
        """
        if self.overflow_code is None:
            return None
        return self._finite_value(self.overflow_code)

    @cached_property
    def max(self) -> float:
        return float(np.nanmax(np.where(np.isinf(self.values), np.nan, self.values)))

    @cached_property
    def min(self) -> float:
        return float(np.nanmin(np.where(np.isinf(self.values), np.nan, self.values)))

    @cached_property
    def smallest_positive(self) -> float:
        v = self.values
        return float(np.min(v[np.isfinite(v) & (v > 0)]))

    @cached_property
    def emax(self) -> int:
        """Exponent of the largest finite value: the ``emax_elem`` of the MX scale rule."""
        return int(np.frexp(self.max)[1]) - 1

    @property
    def has_inf(self) -> bool:
        return bool(np.isinf(self.values).any())

    @property
    def has_nan(self) -> bool:
        return bool(np.isnan(self.values).any())

    @property
    def has_zero(self) -> bool:
        return bool((self.values == 0).any())

    @cached_property
    def nan_code(self) -> int | None:
        """Canonical (positive) NaN code, or None."""
        nans = np.flatnonzero(np.isnan(self.values))
        return int(nans[0]) if nans.size else None

    @cached_property
    def negative_zero_code(self) -> int | None:
        """Code of -0 in sign-magnitude formats that have one (0x80 in FP8, 0x8 in FP4)."""
        if self.sign_bit and self.encoding == "float":
            return self.sign_bit
        return None

    # -- decoders -------------------------------------------------------------------------

    def _decode_one(self, code: int) -> tuple[float, bool]:
        """(value, odd) of one code; value NaN for NaN codes."""
        if self.encoding == "int":
            if code >= 1 << (self.bits - 1):
                code -= 1 << self.bits
            return code / (1 << self.frac_bits), bool(code & 1)
        if self.encoding == "hif8":
            return hif8_value(code), hif8_odd(code)
        sign = -1.0 if code & self.sign_bit else 1.0
        mag = code & ~self.sign_bit & (self.n_codes - 1)
        e = mag >> self.man_bits
        m = mag & ((1 << self.man_bits) - 1)
        e_all = (1 << self.exp_bits) - 1
        if self.specials == "ieee" and e == e_all:
            return (sign * float("inf") if m == 0 else float("nan")), False
        if self.specials == "fn" and e == e_all and m == (1 << self.man_bits) - 1:
            return float("nan"), False
        odd = bool(m & 1) if self.man_bits else True
        if e == 0 and self.subnormals:
            return sign * m * 2.0 ** (1 - self.bias - self.man_bits), bool(m & 1)
        return sign * (1 + m / (1 << self.man_bits)) * 2.0 ** (e - self.bias), odd

    def _finite_value(self, code: int) -> float:
        """Value of a code read as an ordinary finite number (ignoring Inf/NaN meaning)."""
        if self.encoding == "hif8":
            return hif8_value(code, specials=False)
        return dataclasses.replace(self, specials="none")._decode_one(code)[0]


def _hif8_fields(p: int) -> tuple[int, int, int]:
    """(D, mantissa width, exponent-field shift) of a 7-bit HiF8 magnitude code, D=-1: denormal."""
    if p >> 3 == 0:
        return -1, 0, 0
    if p >> 3 == 1:
        return 0, 3, 3
    if p >> 4 == 1:
        return 1, 3, 3
    if p >> 5 == 1:
        return 2, 3, 3
    if p >> 5 == 2:
        return 3, 2, 2
    return 4, 1, 1


def hif8_value(code: int, specials: bool = True) -> float:
    """Decode one HiF8 byte (hifloat.md 1.4): 0x80 NaN, 0x6F/0xEF +-Inf, 0x00 the only zero."""
    p = code & 0x7F
    sign = -1.0 if code & 0x80 else 1.0
    if specials and code == 0x80:
        return float("nan")
    if p == 0:
        return 0.0
    if specials and p == 0x6F:
        return sign * float("inf")
    d, mw, _ = _hif8_fields(p)
    if d < 0:
        return sign * 2.0 ** ((p & 7) - 23)
    m = p & ((1 << mw) - 1)
    if d == 0:
        e = 0
    else:
        ef = (p >> mw) & ((1 << d) - 1)
        mag = (1 << (d - 1)) | (ef & ((1 << (d - 1)) - 1))
        e = -mag if ef >> (d - 1) else mag
    return sign * 2.0**e * (1 + m / (1 << mw))


def hif8_odd(code: int) -> bool:
    """Last significand bit of a HiF8 code: the mantissa LSB, or the implicit 1 of a denormal."""
    p = code & 0x7F
    if p == 0:
        return False
    d, mw, _ = _hif8_fields(p)
    return True if d < 0 else bool(p & 1)


def _float(name, bits, e, m, bias, specials, saturate=True, signed=True, subnormals=True, desc=""):
    return ElementFormat(
        name=name, bits=bits, encoding="float", exp_bits=e, man_bits=m, bias=bias,
        signed=signed, specials=specials, subnormals=subnormals, saturate=saturate,
        description=desc,
    )


E4M3 = _float(
    "e4m3", 8, 4, 3, 7, "fn", saturate=False, desc="OCP FP8 E4M3 (fn: no Inf, NaN S.1111.111)"
)
E5M2 = _float("e5m2", 8, 5, 2, 15, "ieee", saturate=False, desc="OCP FP8 E5M2 (IEEE-style Inf/NaN)")
E3M2 = _float("e3m2", 6, 3, 2, 3, "none", desc="OCP FP6 E3M2 (no Inf/NaN)")
E2M3 = _float("e2m3", 6, 2, 3, 1, "none", desc="OCP FP6 E2M3 (no Inf/NaN)")
E2M1 = _float("e2m1", 4, 2, 1, 1, "none", desc="OCP FP4 E2M1 (no Inf/NaN)")
E8M0 = _float(
    "e8m0", 8, 8, 0, 127, "fn", saturate=False, signed=False, subnormals=False,
    desc="OCP E8M0 scale: 2^(c-127), 0xFF NaN, no zero/sign",
)
UE4M3 = _float(
    "ue4m3", 7, 4, 3, 7, "fn", saturate=True, signed=False,
    desc="unsigned E4M3, the NVFP4 block scale (stored in a byte, sign bit 0)",
)
E6M2 = _float(
    "e6m2", 8, 6, 2, 48, "fn", saturate=True, signed=False, subnormals=False,
    desc="HiF4 level-1 scale: 2^(e-48)(1+m/4), 0xFF NaN, no zero",
)
E1M2 = _float("e1m2", 4, 1, 2, 1, "none", desc="S1P2 / FLOAT4_E1M2, the HiF4 element: k/4, k=0..7")
HIF8 = ElementFormat(
    name="hif8", bits=8, encoding="hif8", saturate=False, rounding="nearest_away",
    description="Huawei HiFloat8 tapered float, TA rounding, 0x80 NaN, 0x6F/0xEF Inf",
)
INT8_1P6 = ElementFormat(
    name="int8_1.6", bits=8, encoding="int", frac_bits=6,
    description="MXINT8 element: two's complement / 64 (fixed point 1.6)",
)
INT8 = ElementFormat(name="int8", bits=8, encoding="int", description="two's complement int8")
INT4 = ElementFormat(name="int4", bits=4, encoding="int", description="two's complement int4")

ELEMENT_FORMATS: dict[str, ElementFormat] = {
    f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1, E8M0, UE4M3, E6M2, E1M2, HIF8, INT8_1P6,
                        INT8, INT4)
}
ELEMENT_ALIASES = {"s1p2": "e1m2", "float4_e1m2": "e1m2", "mxint8_element": "int8_1.6"}


def element_format(fmt: str | ElementFormat) -> ElementFormat:
    """Look up an element format by name (or pass a spec through)."""
    if isinstance(fmt, ElementFormat):
        return fmt
    key = ELEMENT_ALIASES.get(fmt, fmt)
    try:
        return ELEMENT_FORMATS[key]
    except KeyError:
        names = ", ".join(sorted(ELEMENT_FORMATS))
        raise ValueError(f"unknown element format {fmt!r}; element formats: {names}") from None
