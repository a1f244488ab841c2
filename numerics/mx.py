"""OCP MX block quantization (MXFP8, MXFP6, MXFP4, MXINT8): E8M0 power-of-two block scales.

Value of element i of a block: ``X * P_i`` with ``X = 2**k`` stored as the E8M0 byte
``k + 127`` (0xFF = NaN). Every scale rule below is computed from the exponent bits of the
block's absolute maximum (``np.frexp`` on float64, exact), never from a float32 ``log2``:

* ``"floor"`` (OCP MX v1.0 section 6.3, the default): ``k = floor(log2 amax) - emax_elem``.
  It routinely saturates the block maximum (957 -> 896 in E4M3).
* ``"ceil"``: ``k = ceil(log2 amax) - emax_elem`` (torchao CEIL; wastes a binade at powers of 2).
* ``"rceil"``: the hardware round-up rule of TransformerEngine and torchao on Blackwell,
  ``cvt.rp.satfinite.ue8m0x2.f32(fp32(fp32(amax) * fp32(1 / max_normal)))``: the float32
  product (emulated exactly: IEEE binary32 multiply, round to nearest even) rounded up to a
  power of two. ``amax`` is taken in float32 (a float64 input's amax is rounded to float32 first,
  as the hardware receives float32).
* ``"rceil_exact"``: the smallest ``k`` with ``amax <= max_normal * 2**k`` in exact arithmetic.
  It equals ``"rceil"`` for every float32 ``amax`` and every FP element format (checked on
  whole binades in the tests); for MXINT8, where ``fp32(64/127)`` is inexact, they differ on
  one float32 significand per binade (pinned in the tests).
* ``"even"``: ``amax`` first rounded half-up to the element's mantissa width, then floor
  (torchao EVEN).

``k`` is clamped to [-127, 127]; an all-zero block gets ``k = -127`` (0x00). Elements are
``P_i = round(x_i / 2**k)`` with the chosen rounding, always saturating to +-max (spec).

Non-finite inputs (``MXOptions.inf_policy``): a NaN anywhere in a block gives the NaN scale 0xFF
(every element then decodes to NaN; the element codes are 0). An Inf gives, by policy,
``"nan"`` (default; the Algorithm-1 reading, microxcaling), ``"max_scale"`` (scale 0xFE and the
Inf element saturates to +-max: gfloat, TransformerEngine) or ``"exponent_128"`` (torchao
FLOOR/CEIL/EVEN, which reads the Inf exponent field as 2**128: scale ``128 - emax_elem + 127``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .codec import ROUNDING_MODES, _encode_f64
from .formats import BlockFormat
from .specs import ElementFormat

SCALE_RULES = ("floor", "ceil", "rceil", "rceil_exact", "even")
INF_POLICIES = ("nan", "max_scale", "exponent_128")
CODE0_DIVISORS = ("exact", "f32_min_normal", "one")
ZERO_SIGNS = ("input", "zero_input_negative")
E8M0_NAN = 0xFF


@dataclass(frozen=True)
class MXOptions:
    """Options of MX quantization; the defaults are the OCP v1.0 reading.

    Attributes:
        scale_rule: one of ``SCALE_RULES``.
        rounding: element rounding, one of ``codec.ROUNDING_MODES``.
        inf_policy: one of ``INF_POLICIES`` (module docstring).
        code0_divisor: what a block whose scale byte is 0x00 (2**-127) divides by:
            ``"exact"`` 2**-127; ``"f32_min_normal"`` 2**-126 (torchao's clamp: the elements are
            encoded for 2**-126 but decode with 2**-127); ``"one"`` 1.0 (TransformerEngine's
            reciprocal of code 0).
        symmetric_int: MXINT8 only: never emit -2.0 (0x80), clamp to +-127/64 (microxcaling).
        zero_sign: ``"input"`` keeps the sign of the input in zero results;
            ``"zero_input_negative"`` encodes inputs that are exactly +-0 as -0 (ModelOpt's MXFP4
            quirk: ``torch.sign(0) == 0`` sets the sign bit, +0 -> 0x8).
    """

    scale_rule: str = "floor"
    rounding: str = "nearest_even"
    inf_policy: str = "nan"
    code0_divisor: str = "exact"
    symmetric_int: bool = False
    zero_sign: str = "input"

    def __post_init__(self):
        for name, allowed in (
            ("scale_rule", SCALE_RULES),
            ("rounding", ROUNDING_MODES),
            ("inf_policy", INF_POLICIES),
            ("code0_divisor", CODE0_DIVISORS),
            ("zero_sign", ZERO_SIGNS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")


MX_PRESETS: dict[str, dict] = {
    "ocp": {},
    "torchao": {"inf_policy": "exponent_128", "code0_divisor": "f32_min_normal"},
    "transformer_engine": {
        "scale_rule": "rceil", "inf_policy": "max_scale", "code0_divisor": "one",
    },
    "microxcaling": {"rounding": "nearest_away", "symmetric_int": True},
    "modelopt": {
        "scale_rule": "rceil", "rounding": "nearest_zero", "zero_sign": "zero_input_negative",
    },
    "gfloat": {"inf_policy": "max_scale"},
}
"""Peer presets (formats-mx-nvfp4.md sections 2 and 4). What they do not reproduce: microxcaling
and gfloat on float32 arrays compute floor(log2) in float32 and pick a scale one step too large
just below powers of two (vector M11); torchao RCEIL in eager mode and ModelOpt use a float32
log2 the same way (M12). Those depend on the libm's log2 rounding and are left out on purpose.
torchao's preset is its FLOOR mode (``scale_rule`` may be overridden to "ceil"/"even"/"rceil")."""


def mx_options(preset: str | None = None, **overrides) -> MXOptions:
    """Resolve a preset plus explicit overrides (None values are ignored) into ``MXOptions``."""
    base = dict(MX_PRESETS[_check_preset(preset)]) if preset else {}
    known = {f.name for f in fields(MXOptions)}
    for key, val in overrides.items():
        if key not in known:
            raise TypeError(f"unknown MX option {key!r}; options: {sorted(known)}")
        if val is not None:
            base[key] = val
    return MXOptions(**base)


def _check_preset(preset: str) -> str:
    if preset not in MX_PRESETS:
        raise ValueError(f"unknown MX preset {preset!r}; presets: {sorted(MX_PRESETS)}")
    return preset


def scale_exponent(amax: np.ndarray, elem: ElementFormat, rule: str) -> np.ndarray:
    """Unclamped power-of-two exponent k of the block scale for finite ``amax >= 0`` (float64).

    Zero ``amax`` gives a very negative k (clamped to -127 by the caller).
    """
    a = np.asarray(amax, dtype=np.float64)
    pos = a > 0
    safe = np.where(pos, a, 1.0)
    m, e = np.frexp(safe)  # safe = m * 2**e, m in [0.5, 1): floor(log2) = e - 1, exact
    floor_log2 = e.astype(np.int64) - 1
    if rule == "floor":
        k = floor_log2 - elem.emax
    elif rule == "ceil":
        k = floor_log2 + (m != 0.5) - elem.emax
    elif rule == "even":
        bits = elem.man_bits if elem.encoding == "float" else elem.frac_bits
        rounded = np.floor(np.ldexp(m, bits + 1) + 0.5)  # half-up at the element's width
        k = floor_log2 + (rounded >= 2.0 ** (bits + 1)) - elem.emax
    elif rule == "rceil_exact":
        mm, em = np.frexp(elem.max)
        k = (e.astype(np.int64) - int(em)) + (m > mm)
    elif rule == "rceil":
        with np.errstate(over="ignore"):  # a float64 amax beyond float32 becomes Inf
            d = safe.astype(np.float32) * (np.float32(1) / np.float32(elem.max))
        d = d.astype(np.float64)
        dm, de = np.frexp(np.where((d > 0) & np.isfinite(d), d, 1.0))
        k = np.where(d > 0, de.astype(np.int64) - 1 + (dm != 0.5), -(1 << 20))
        k = np.where(np.isinf(d), 1 << 20, k)  # satfinite: the largest scale
    else:
        raise ValueError(f"unknown scale rule {rule!r}; expected one of {SCALE_RULES}")
    return np.where(pos, k, -(1 << 20))


def quantize_blocks(
    blocks: np.ndarray,
    fmt: BlockFormat,
    opts: MXOptions,
    rbits: np.ndarray | None = None,
    prescale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize float64 blocks ``(..., n_blocks, block_size)``; returns (codes, E8M0 scale codes).

    ``prescale``: the MXFP4 pre-scale alpha: the scale comes from the unscaled block maximum and
    the elements are rounded from ``alpha * x / 2**k`` (the product must be exact in float64,
    which ``check_prescale_exact`` enforces).
    """
    elem = fmt.element
    if opts.symmetric_int and elem.encoding == "int":
        elem = elem.replace(symmetric=True)
    absb = np.abs(blocks)
    has_nan = np.isnan(blocks).any(axis=-1)
    has_inf = np.isinf(blocks).any(axis=-1)
    finite_amax = np.max(np.where(np.isfinite(absb), absb, 0.0), axis=-1, initial=0.0)
    k = np.clip(scale_exponent(finite_amax, elem, opts.scale_rule), -127, 127)
    if opts.inf_policy == "max_scale":
        k = np.where(has_inf, 127, k)
    elif opts.inf_policy == "exponent_128":
        k = np.where(has_inf, 128 - elem.emax, k)
    scale_codes = (k + 127).astype(np.int64)
    nan_block = has_nan | (has_inf & (opts.inf_policy == "nan"))
    scale_codes = np.where(nan_block, E8M0_NAN, scale_codes)

    divisor_k = k
    if opts.code0_divisor == "f32_min_normal":
        divisor_k = np.maximum(k, -126)
    elif opts.code0_divisor == "one":
        divisor_k = np.where(scale_codes == 0, 0, k)
    vals = blocks if prescale is None else blocks * prescale
    vals = np.where(nan_block[..., None], 0.0, vals)
    vals = np.where(np.isnan(vals), 0.0, vals)
    y = np.ldexp(vals, -divisor_k[..., None])
    codes = _encode_f64(y, elem, opts.rounding, True, rbits)
    codes = np.where(nan_block[..., None], 0, codes)
    if opts.zero_sign == "zero_input_negative" and elem.negative_zero_code is not None:
        codes = np.where(blocks == 0, elem.negative_zero_code, codes)
    return codes.astype(np.uint8), scale_codes.astype(np.uint8)


def dequantize_blocks(
    codes: np.ndarray, scale_codes: np.ndarray, fmt: BlockFormat, prescale: float | None = None
) -> np.ndarray:
    """float64 values of MX blocks: ``element_value * 2**(scale - 127) / alpha``; NaN scale: NaN."""
    vals = fmt.element.values[codes.astype(np.int64)]
    k = scale_codes.astype(np.int64) - 127
    out = np.ldexp(vals, k[..., None])
    out = np.where((scale_codes == E8M0_NAN)[..., None], np.nan, out)
    if prescale is not None:
        out = out / prescale
    return out


def check_prescale_exact(x64: np.ndarray, alpha: float) -> None:
    """Raise unless ``alpha * x`` is exact in float64 for every x (so rounding stays exact).

    True whenever the significand widths of alpha and of the inputs add up to at most 53 bits,
    e.g. any dyadic alpha with <= 29 significant bits on float32/bfloat16/float16 input.
    """
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"prescale alpha must be a positive finite number, got {alpha}")
    need = _significant_bits(np.array([alpha]))[0] + (
        int(_significant_bits(x64).max()) if x64.size else 0
    )
    if need > 53:
        raise ValueError(
            f"prescale alpha={alpha!r} times the input is not exact in float64 ({need} bits); "
            "use a dyadic alpha with few bits (e.g. 0.75) or float32 input"
        )


def _significant_bits(v: np.ndarray) -> np.ndarray:
    """Number of significant bits of each finite float64 (0 for zero and non-finite)."""
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(v) & (v != 0)
    m, _ = np.frexp(np.where(ok, np.abs(v), 1.0))
    mant = np.ldexp(m, 53).astype(np.uint64)  # integer significand, 53 bits
    low = mant & (~mant + np.uint64(1))  # lowest set bit
    tz = np.frexp(low.astype(np.float64))[1].astype(np.int64) - 1  # low = 2**tz exactly
    return np.where(ok, 53 - tz, 0)
