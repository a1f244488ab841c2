"""Float-scaled formats (INT8, INT4, HiF8): ``scale = amax / target`` per channel, group or tensor.

Arithmetic follows what accelerators do, in float32 and in this order (IEEE-754 binary32,
correctly rounded, so every backend reproduces it bit for bit):

    s    = max(fl32(fl32(amax) / fl32(target)), 2**-149)   # decode-convention scale (float32)
    code = encode(clip(fl32(fl32(x) / s), -target, target))  # round the float32 quotient

Scaled inputs are therefore rounded to float32 first (exact for float16/bfloat16/float32 input;
a float64 input is rounded once, to nearest even); unscaled HiF8 (``granularity="none"``) is the
exact element cast of the input as given. The clip keeps a tiny group whose float32 scale lost
precision (subnormal) from overflowing, and the floor keeps it from being zeroed.
``target`` defaults to the element's largest magnitude used symmetrically (INT8 127, INT4 7)
and to 2**15 for HiF8 (its largest finite value; a smaller target keeps more values in HiF8's
3-bit-mantissa range |E| <= 3).

Element rounding: nearest-even for INT, "nearest_away" (TA) for HiF8 by default; codes are
clamped to [-target, target] for INT (symmetric). Zero groups get scale 0 and codes 0. A group
with NaN or Inf gets a NaN scale and codes 0 (it dequantizes to NaN), so nothing is lost
silently. ``granularity="none"`` (HiF8's default) applies no scale: a plain element cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codec import ROUNDING_MODES, _encode_f64
from .formats import BlockFormat

GRANULARITIES = ("channel", "group", "tensor", "none")


@dataclass(frozen=True)
class AbsmaxOptions:
    """Options of float-scaled quantization.

    Attributes:
        granularity: ``"channel"`` (one scale per slice along ``axis``), ``"group"`` (one per
            ``group_size`` elements along ``axis``), ``"tensor"`` (one for the whole tensor) or
            ``"none"`` (no scale; HiF8 only).
        group_size: elements per group for ``granularity="group"``.
        rounding: element rounding mode.
        target: the magnitude amax is mapped to (see module docstring).
        saturate: HiF8 only: clamp overflow to +-max instead of Inf.
    """

    granularity: str
    group_size: int | None
    rounding: str
    target: float
    saturate: bool = False

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r}; expected one of {GRANULARITIES}")
        if self.granularity == "group" and not (self.group_size and self.group_size > 0):
            raise ValueError("granularity='group' needs a positive group_size")
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"unknown rounding {self.rounding!r}")
        if not (np.isfinite(self.target) and self.target > 0):
            raise ValueError(f"target must be positive and finite, got {self.target}")


def absmax_options(fmt: BlockFormat, granularity=None, group_size=None, rounding=None,
                   target=None, saturate=None) -> AbsmaxOptions:
    """Defaults per format: INT per channel (per group when ``group_size`` is given), HiF8 none."""
    is_int = fmt.element.encoding == "int"
    if granularity is None:
        granularity = "group" if group_size else ("channel" if is_int else "none")
    if granularity == "none" and is_int:
        raise ValueError(f"{fmt.name} needs a scale: granularity 'channel', 'group' or 'tensor'")
    if target is None:
        target = float(fmt.element.max) if is_int else 2.0**15
    return AbsmaxOptions(
        granularity=granularity,
        group_size=group_size,
        rounding=rounding or fmt.element.rounding,
        target=float(target),
        saturate=bool(saturate) if saturate is not None else fmt.element.saturate,
    )


def group_size(opts: AbsmaxOptions) -> int | None:
    """Block size along the axis: None (whole axis) for channel and tensor granularity."""
    return opts.group_size if opts.granularity == "group" else None


def compute_scales(blocks32: np.ndarray, opts: AbsmaxOptions) -> np.ndarray:
    """float32 scale per block of float32 ``blocks32`` (``(..., n_blocks, block_size)``)."""
    if opts.granularity == "tensor":
        amax = np.max(np.abs(blocks32), initial=np.float32(0)) if blocks32.size else np.float32(0)
        amax = np.broadcast_to(np.float32(amax), blocks32.shape[:-1])
    else:
        amax = np.max(np.abs(blocks32), axis=-1, initial=np.float32(0))
    amax = amax.astype(np.float32)
    s = (amax / np.float32(opts.target)).astype(np.float32)
    s = np.where(amax > 0, np.maximum(s, np.float32(2.0**-149)), s)
    bad = ~np.isfinite(amax)
    if blocks32.size:
        has_nan = np.isnan(blocks32).any(axis=-1)
        if opts.granularity == "tensor":
            has_nan = np.broadcast_to(has_nan.any(), has_nan.shape)
        bad = bad | has_nan
    return np.where(bad, np.float32(np.nan), s).astype(np.float32)


def quantize_blocks(blocks: np.ndarray, fmt: BlockFormat, opts: AbsmaxOptions,
                    rbits=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes, float32 scales or None) of float64 blocks (exact copies of the input)."""
    elem = fmt.element
    if opts.granularity == "none":
        return _encode_f64(blocks, elem, opts.rounding, opts.saturate, rbits), None
    blocks32 = blocks.astype(np.float32)
    s = compute_scales(blocks32, opts)
    bad = ~np.isfinite(s)
    safe = np.where(bad | (s == 0), np.float32(1), s)[..., None]
    y = (blocks32 / safe).astype(np.float32)
    y = np.where(bad[..., None] | (s == 0)[..., None], np.float32(0), y)
    y = np.clip(y, np.float32(-opts.target), np.float32(opts.target))
    if elem.encoding == "int":
        codes = _encode_f64(y.astype(np.float64), elem.replace(symmetric=True), opts.rounding,
                            True, rbits)
    else:
        codes = _encode_f64(y.astype(np.float64), elem, opts.rounding, opts.saturate, rbits)
    return codes, s


def dequantize_blocks(codes: np.ndarray, scales: np.ndarray | None, fmt: BlockFormat) -> np.ndarray:
    """float32 values: ``fl32(element_value * scale)``."""
    vals = fmt.element.values[codes.astype(np.int64)].astype(np.float32)
    if scales is None:
        return vals
    return (vals * scales.astype(np.float32)[..., None]).astype(np.float32)
