"""Kernel validation: diff a foreign implementation's codes and scales against the reference.

    c = compare(x, codes, scales, "mxfp8_e4m3", scale_rule="rceil")
    c.ok               # bit-identical?
    print(c.summary()) # every mismatch with its exact rounding context, and the candidates
    c.candidates       # the configurations that reproduce the foreign bits exactly

The reference is ``quantize(x, fmt, axis=axis, **quantize_options)``. Element mismatches carry
the value that was rounded (``scaled``), the nearest rounding boundary of the element grid (the
exact midpoint of two neighbouring values) and the signed distance to it in grid steps, so a
near-tie disagreement (an FP32 operation-order effect) is told apart from a real bug at a glance.
Where the foreign block scale (or HiF4 micro-exponent, or NVFP4 tensor scale) differs, the
element mismatches it causes are flagged ``consequential``. Blocks whose expected and foreign
scales are both NaN have don't-care elements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from itertools import product
from typing import NamedTuple

import numpy as np

from .api import dequantize, quantize
from .blocks import make_blocking, tensor_to_block_axis, to_blocks
from .codec import ROUNDING_MODES, as_float64
from .formats import BlockFormat, block_format
from .mx import MX_PRESETS, SCALE_RULES
from .nvfp4 import ALGORITHMS as NVFP4_ALGORITHMS
from .tensor import QuantizedTensor

SEARCH_ROUNDINGS = tuple(m for m in ROUNDING_MODES if m != "stochastic")
SEARCHED = ("preset", "scale_rule", "rounding", "algorithm")
SAMPLE_BLOCKS = 256
"""MX candidate search: configurations are screened on at most this many blocks (those that
mismatch under the given options first, then random ones) before survivors are counted in full."""


class ElementMismatch(NamedTuple):
    """One element whose foreign code differs from the reference.

    ``scaled`` is the value the reference rounded: exactly ``alpha * x / 2**k`` for MX, the
    float32 quotient ``fl32(x / s)`` for absmax formats, and the ideal quotient
    ``x / (block scale)`` for NVFP4 and HiF4 (whose kernels compute it in FP32). ``boundary`` is
    the nearest midpoint of two neighbouring grid values, ``distance`` is
    ``(scaled - boundary) / step`` with ``step`` the spacing of those two values (computed
    exactly near a tie).
    """

    index: tuple[int, ...]
    block: tuple[int, ...]
    expected_code: int
    got_code: int
    expected_value: float
    got_value: float
    scaled: float
    boundary: float
    distance: float
    consequential: bool


class ScaleMismatch(NamedTuple):
    """One differing per-block scale, HiF4 micro-exponent set or (``block == ()``) tensor scale."""

    block: tuple[int, ...]
    expected: int | float | str
    got: int | float | str
    field: str = "scale"


@dataclass(frozen=True)
class Candidate:
    """A configuration (quantize keyword arguments) and its mismatch count on the foreign data."""

    options: dict
    mismatches: int

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.options.items())


@dataclass
class _Foreign:
    """The foreign outputs, normalised, plus the fixed (not searched) quantize options."""

    x: np.ndarray
    codes: np.ndarray
    scales: np.ndarray | None
    micro: np.ndarray | None
    tensor_scale: float | None
    axis: int
    fixed: dict


@dataclass
class Comparison:
    """Result of ``compare``: every mismatch, ``ok``, ``candidates`` and ``summary()``."""

    fmt: str
    shape: tuple[int, ...]
    axis: int
    options: dict
    n_blocks: int
    elements: list[ElementMismatch]
    scales: list[ScaleMismatch]
    foreign: _Foreign = field(repr=False)

    @property
    def ok(self) -> bool:
        """True when every code and scale is bit-identical (don't-care elements excepted)."""
        return not self.elements and not self.scales

    @cached_property
    def candidates(self) -> list[Candidate]:
        """Every searched configuration with zero mismatches; if none, the closest ones.

        Searched: MX presets x scale rules x roundings; NVFP4 algorithms x roundings; roundings
        for the other formats (stochastic excluded). Options given to ``compare`` other than
        these stay fixed.
        """
        return _search(self.fmt, self.foreign, self._mismatch_blocks())

    def summary(self, max_report: int = 20, candidates: bool = True) -> str:
        """Readable multi-line report: header, scale and element mismatches, and (unless
        ``candidates=False``, which skips the search) the candidate configurations."""
        spec = block_format(self.fmt)
        n = int(np.prod(self.shape))
        opts = " ".join(f"{k}={v}" for k, v in self.options.items())
        lines = [
            f"{self.fmt} {self.shape} along axis {self.axis}: {n} elements, "
            f"{self.n_blocks} blocks",
            f"reference options: {opts or '(defaults)'}",
        ]
        if self.ok:
            lines.append("IDENTICAL: every element code and scale matches")
        else:
            cons = sum(e.consequential for e in self.elements)
            lines.append(
                f"MISMATCH: {len(self.elements)} element code(s) ({cons} consequential: their "
                f"block scale differs), {len(self.scales)} scale(s)"
            )
        if self.scales:
            lines.append("scales (field, block: expected -> got):")
            for s in self.scales[:max_report]:
                lines.append(f"  {s.field} {s.block}: {_fmt_scale(s.expected, spec)} -> "
                             f"{_fmt_scale(s.got, spec)}")
            lines += _more(len(self.scales), max_report)
        if self.elements:
            lines.append("element codes (index, block: expected -> got; scaled value, nearest "
                         "boundary, distance in grid steps):")
            bits = spec.element.bits
            for e in self.elements[:max_report]:
                tail = "  [consequential]" if e.consequential else ""
                lines.append(
                    f"  {e.index} {e.block}: {_code(e.expected_code, bits)} "
                    f"({e.expected_value:.9g}) -> {_code(e.got_code, bits)} ({e.got_value:.9g}); "
                    f"scaled {e.scaled:.9g}, boundary {e.boundary:.9g}, "
                    f"distance {e.distance:+.3g}{tail}"
                )
            lines += _more(len(self.elements), max_report)
        if not candidates:
            return "\n".join(lines)
        cands = self.candidates
        if cands and cands[0].mismatches == 0:
            lines.append(f"configurations reproducing the foreign bits exactly ({len(cands)}):")
        else:
            best = cands[0].mismatches if cands else "-"
            lines.append(f"no searched configuration reproduces the foreign bits; closest "
                         f"({best} mismatches):")
        grouped = _grouped(cands)
        lines += [f"  {label}" for label in grouped[:max_report]]
        lines += _more(len(grouped), max_report)
        return "\n".join(lines)

    def to_dict(self, candidates: bool = True) -> dict:
        """JSON-serialisable form: every mismatch (index tuples become lists, NaN stays NaN as
        Python's ``json`` writes it) and, unless ``candidates=False``, the candidates."""
        doc = {
            "format": self.fmt,
            "shape": list(self.shape),
            "axis": self.axis,
            "options": {k: _plain(v) for k, v in self.options.items()},
            "ok": self.ok,
            "scales": [s._asdict() for s in self.scales],
            "elements": [e._asdict() for e in self.elements],
        }
        if candidates:
            doc["candidates"] = [{"options": c.options, "mismatches": c.mismatches}
                                 for c in self.candidates]
        return doc

    def _mismatch_blocks(self) -> set[tuple[int, ...]]:
        return {e.block for e in self.elements} | {s.block for s in self.scales if s.block}


def compare(
    x,
    codes,
    scales,
    fmt: str | BlockFormat,
    *,
    tensor_scale=None,
    micro=None,
    axis: int = -1,
    **quantize_options,
) -> Comparison:
    """Compare a foreign quantization of ``x`` (its ``codes`` and ``scales``) with the reference.

    Args:
        x: the input the foreign implementation quantized (any real float dtype).
        codes: its element codes, unpacked, one per element, ``x``'s shape (integers, or 1-byte
            ml_dtypes arrays, which are read as their bytes).
        scales: its per-block scales in ``QuantizedTensor.scales`` layout: uint8 codes for
            mx/nvfp4/hif4 (or 1-byte float8 arrays), float values for absmax formats. None:
            not compared (the reference scales are used to decode the foreign codes).
        fmt: block format name.
        tensor_scale: NVFP4 (or per-tensor absmax) float32 decode scale; None: not compared.
        micro: HiF4 micro-exponent bits, ``scales.shape + (24,)``; None: not compared.
        axis: the quantized axis.
        **quantize_options: options of the reference (``scale_rule``, ``rounding``,
            ``preset``, ``global_amax``, ...), as for ``quantize``.
    """
    spec = block_format(fmt)
    x64 = as_float64(x)
    q = quantize(x64, spec, axis=axis, **quantize_options)
    got = _validated(q, spec, codes, scales, micro, tensor_scale)
    f = _Foreign(
        x=x64, codes=got.codes.astype(np.int64), scales=got.scales if scales is not None else None,
        micro=got.micro if micro is not None else None,
        tensor_scale=got.tensor_scale if tensor_scale is not None else None, axis=q.axis,
        fixed={k: v for k, v in quantize_options.items() if k not in SEARCHED and k != "rbits"},
    )
    elem, scale_bad, micro_bad, ts_bad = _diff_masks(q, f)
    scale_list = _scale_mismatches(q, got, spec, scale_bad, micro_bad, ts_bad)
    block_bad = np.zeros(q.codes.shape, dtype=bool) | ts_bad
    for bad in (scale_bad, micro_bad):
        if bad is not None:
            block_bad |= _per_element(bad, q)
    return Comparison(
        fmt=spec.name, shape=tuple(q.codes.shape), axis=q.axis, options=dict(q.options),
        n_blocks=int(np.prod(q.scales.shape)) if q.scales is not None else 1,
        elements=_element_mismatches(q, got, x64, elem, block_bad), scales=scale_list,
        foreign=f,
    )


# -- validation and masks -----------------------------------------------------------------------


def _validated(q: QuantizedTensor, spec: BlockFormat, codes, scales, micro, tensor_scale):
    """The foreign outputs as a ``QuantizedTensor`` (reference metadata, foreign data)."""
    c = _as_int(codes, "codes")
    if c.shape != q.codes.shape:
        raise ValueError(f"codes have shape {c.shape}, the input has {q.codes.shape}")
    if c.size and (c.min() < 0 or c.max() >= spec.element.n_codes):
        raise ValueError(f"{spec.name} element codes are {spec.element.bits}-bit and unpacked "
                         f"(one per element); got values outside [0, {spec.element.n_codes})")
    s = q.scales
    if scales is not None:
        if q.scales is None:
            raise ValueError(f"{spec.name} with these options has no per-block scales; pass "
                             "scales=None (and a per-tensor scale as tensor_scale)")
        s = np.asarray(scales, dtype=np.float64) if spec.scale is None else _as_int(scales,
                                                                                     "scales")
        if s.shape != q.scales.shape:
            raise ValueError(f"scales have shape {s.shape}, expected {q.scales.shape}")
        if spec.scale is not None and s.size and (s.min() < 0 or s.max() >= spec.scale.n_codes):
            raise ValueError(f"{spec.scale.name} scale codes must lie in [0, {spec.scale.n_codes})")
    m = q.micro
    if micro is not None:
        m = _as_int(micro, "micro")
        if q.micro is None or m.shape != q.micro.shape:
            want = None if q.micro is None else q.micro.shape
            raise ValueError(f"micro has shape {m.shape}, expected {want}")
    ts = q.tensor_scale
    if tensor_scale is not None:
        if q.tensor_scale is None:
            raise ValueError(f"{spec.name} with these options has no tensor scale")
        ts = float(tensor_scale)
    return dataclasses.replace(q, codes=c.astype(np.uint8), scales=s, micro=m, tensor_scale=ts)


def _as_int(a, what: str) -> np.ndarray:
    """Integer array; 1-byte non-integer dtypes (ml_dtypes float8/float4) are read as bytes."""
    arr = np.asarray(a)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        if arr.dtype.itemsize != 1:
            raise TypeError(f"{what} must be integer codes, got dtype {arr.dtype}")
        arr = arr.view(np.uint8)
    return arr.astype(np.int64)


def _nan_scale(s: np.ndarray, spec: BlockFormat) -> np.ndarray:
    if spec.scale is None:
        return np.isnan(np.asarray(s, dtype=np.float64))
    return np.isnan(spec.scale.values[np.asarray(s, dtype=np.int64)])


def _same_scale(a: np.ndarray, b: np.ndarray, spec: BlockFormat) -> np.ndarray:
    if spec.scale is not None:
        return np.asarray(a, dtype=np.int64) == np.asarray(b, dtype=np.int64)
    return _same_float(a, b)


def _same_float(a, b) -> np.ndarray:
    """Equal values with equal signs (so -0 != +0), or both NaN."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a64 == b64) & (np.signbit(a64) == np.signbit(b64)) | (np.isnan(a64) & np.isnan(b64))


def _per_element(per_block: np.ndarray, q: QuantizedTensor) -> np.ndarray:
    """Per-block data (scales layout) repeated onto every element of its block."""
    rep = np.repeat(per_block, q.block_size, axis=q.axis)
    return np.take(rep, np.arange(q.codes.shape[q.axis]), axis=q.axis)


def _diff_masks(q: QuantizedTensor, f: _Foreign, valid: np.ndarray | None = None):
    """(element mask, scale mask or None, micro mask or None, tensor scale differs)."""
    spec = block_format(q.fmt)
    elem = q.codes.astype(np.int64) != f.codes
    scale_bad = micro_bad = None
    if q.scales is not None:  # NaN blocks (both NaN, or the foreign scale not given): don't-care
        dont_care = _nan_scale(q.scales, spec)
        if f.scales is not None:
            scale_bad = ~_same_scale(q.scales, f.scales, spec)
            dont_care &= _nan_scale(f.scales, spec)
        elem &= ~_per_element(dont_care, q)
    if f.micro is not None:
        micro_bad = (q.micro.astype(np.int64) != f.micro).any(axis=-1)
    ts_bad = f.tensor_scale is not None and not bool(_same_float(q.tensor_scale, f.tensor_scale))
    if valid is not None:
        elem &= valid
    return elem, scale_bad, micro_bad, ts_bad


def _count(q: QuantizedTensor, f: _Foreign, valid: np.ndarray | None = None) -> int:
    elem, scale_bad, micro_bad, ts_bad = _diff_masks(q, f, valid)
    return int(elem.sum()) + sum(int(m.sum()) for m in (scale_bad, micro_bad) if m is not None) \
        + int(ts_bad)


# -- mismatch details ---------------------------------------------------------------------------


def _scale_mismatches(q, got, spec, scale_bad, micro_bad, ts_bad) -> list[ScaleMismatch]:
    out = []
    if ts_bad:
        out.append(ScaleMismatch((), float(q.tensor_scale), float(got.tensor_scale),
                                 "tensor_scale"))
    if scale_bad is not None:
        for idx in zip(*np.nonzero(scale_bad), strict=True):
            e, g = q.scales[idx], got.scales[idx]
            cast = int if spec.scale is not None else float
            out.append(ScaleMismatch(_tuple(idx), cast(e), cast(g)))
    if micro_bad is not None:
        for idx in zip(*np.nonzero(micro_bad), strict=True):
            bits = ("".join(map(str, m.astype(int))) for m in (q.micro[idx], got.micro[idx]))
            out.append(ScaleMismatch(_tuple(idx), *bits, field="micro"))
    return out


def _element_mismatches(q, got, x64, elem, block_bad) -> list[ElementMismatch]:
    idx = np.nonzero(elem)
    if not idx[0].size:
        return []
    flat = np.ravel_multi_index(idx, q.codes.shape)
    exp_val = dequantize(q, dtype=np.float64).reshape(-1)[flat]
    got_val = dequantize(got, dtype=np.float64).reshape(-1)[flat]
    scaled, num, den = _scaled(q, x64, flat)
    boundary, step = _nearest_boundary(block_format(q.fmt), scaled)
    distance = (scaled - boundary) / step
    for i in np.flatnonzero(np.abs(scaled - boundary) <= 8 * np.spacing(np.abs(scaled))):
        exact = Fraction(num[i]) / Fraction(den[i])
        distance[i] = float((exact - Fraction(boundary[i])) / Fraction(step[i]))
    pos = np.stack(idx, axis=1)
    blk = pos.copy()
    blk[:, q.axis] //= q.block_size
    columns = (
        map(tuple, pos.tolist()), map(tuple, blk.tolist()),
        *(a.reshape(-1)[flat].tolist() for a in (q.codes, got.codes)),
        *(a.tolist() for a in (exp_val, got_val, scaled, boundary, distance)),
        block_bad.reshape(-1)[flat].tolist(),
    )
    return [ElementMismatch(*row) for row in zip(*columns, strict=True)]


def _scaled(q: QuantizedTensor, x64: np.ndarray, flat: np.ndarray):
    """(float64 value the reference rounded, numerator, denominator): ``num / den`` is the
    exact value (``den`` is 1 where the float64 value is already exact)."""
    spec = block_format(q.fmt)
    x = x64.reshape(-1)[flat]
    one = np.ones_like(x)
    if spec.scheme == "mx":
        code = _per_element(q.scales, q).reshape(-1)[flat].astype(np.int64)
        k = code - 127
        divisor = q.options.get("code0_divisor")
        if divisor == "f32_min_normal":
            k = np.maximum(k, -126)
        elif divisor == "one":
            k = np.where(code == 0, 0, k)
        v = np.where(code == 0xFF, np.nan, np.ldexp(x * (q.prescale or 1.0), -k))
        return v, v, one
    ones = np.flatnonzero(spec.element.values == 1.0)[0]
    s = dequantize(dataclasses.replace(q, codes=np.full_like(q.codes, ones)), dtype=np.float64)
    s = s.reshape(-1)[flat]
    with np.errstate(invalid="ignore", divide="ignore"):
        if spec.scheme == "absmax":
            quotient = (x.astype(np.float32) / s.astype(np.float32)).astype(np.float64)
            v = np.where(s == 0, 0.0, quotient)
            return v, v, one
        return x / s, x, s


def _nearest_boundary(spec: BlockFormat, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest midpoint of two neighbouring element values, their spacing) for each ``v``."""
    vals = spec.element.values
    grid = np.unique(vals[np.isfinite(vals)])
    mids, steps = (grid[:-1] + grid[1:]) / 2, np.diff(grid)
    j = np.searchsorted(mids, np.nan_to_num(v))
    lo, hi = np.clip(j - 1, 0, len(mids) - 1), np.clip(j, 0, len(mids) - 1)
    pick = np.where(np.abs(v - mids[lo]) <= np.abs(v - mids[hi]), lo, hi)
    bad = ~np.isfinite(v)
    return np.where(bad, np.nan, mids[pick]), np.where(bad, np.nan, steps[pick])


# -- candidate search ---------------------------------------------------------------------------


def _configs(spec: BlockFormat) -> list[dict]:
    if spec.scheme == "mx":
        return [{"preset": p, "scale_rule": r, "rounding": m}
                for p, r, m in product(MX_PRESETS, SCALE_RULES, SEARCH_ROUNDINGS)]
    if spec.scheme == "nvfp4":
        return [{"algorithm": a, "rounding": m}
                for a, m in product(NVFP4_ALGORITHMS, SEARCH_ROUNDINGS)]
    return [{"rounding": m} for m in SEARCH_ROUNDINGS]


def _evaluate(spec: BlockFormat, f: _Foreign, cfg: dict, valid=None) -> int | None:
    """Mismatch count of one configuration; None if the configuration is not valid."""
    try:
        q = quantize(f.x, spec, axis=f.axis, **f.fixed, **cfg)
    except (ValueError, TypeError):
        return None
    return _count(q, f, valid)


def _search(fmt: str, f: _Foreign, hot: set[tuple[int, ...]]) -> list[Candidate]:
    spec = block_format(fmt)
    configs = _configs(spec)
    sample = _sample(spec, f, hot) if spec.scheme == "mx" else None
    if sample is not None:
        sub, valid = sample
        screened = [(c, _evaluate(spec, sub, c, valid)) for c in configs]
        screened = [(c, n) for c, n in screened if n is not None]
        best = min((n for _, n in screened), default=None)
        configs = [c for c, n in screened if n == 0 or (best and n == best)]
    counted = [(c, _evaluate(spec, f, c)) for c in configs]
    counted = [(c, n) for c, n in counted if n is not None]
    best = min((n for _, n in counted), default=None)
    return [Candidate(c, n) for c, n in counted if n == 0 or n == best]


def _sample(spec: BlockFormat, f: _Foreign, hot: set[tuple[int, ...]]):
    """MX blocks are independent: a block subset as its own ``(n, block_size)`` problem (with
    the mask of real, unpadded elements), or None when the tensor has few blocks."""
    b = make_blocking(f.x.shape, f.axis, spec.block_size)
    lead = b.scale_shape[: b.axis] + b.scale_shape[b.axis + 1:] + (b.n_blocks,)
    n = int(np.prod(lead))
    if n <= SAMPLE_BLOCKS:
        return None
    hot_rows = sorted(
        int(np.ravel_multi_index(blk[: b.axis] + blk[b.axis + 1:] + (blk[b.axis],), lead))
        for blk in hot
    )[: SAMPLE_BLOCKS // 2]
    rest = np.setdiff1d(np.arange(n), hot_rows)
    extra = np.random.default_rng(0).choice(rest, SAMPLE_BLOCKS - len(hot_rows), replace=False)
    pick = np.concatenate([np.asarray(hot_rows, dtype=np.int64), extra])
    rows = lambda a, fill=0: to_blocks(a, b, fill).reshape(n, b.block_size)[pick]  # noqa: E731
    scales = None
    if f.scales is not None:
        scales = tensor_to_block_axis(f.scales, b).reshape(n)[pick][:, None]
    sub = _Foreign(x=rows(f.x), codes=rows(f.codes), scales=scales, micro=None,
                   tensor_scale=None, axis=1, fixed=f.fixed)
    return sub, rows(np.ones(f.x.shape, dtype=bool), False)


# -- formatting ---------------------------------------------------------------------------------


def _tuple(idx) -> tuple[int, ...]:
    return tuple(int(i) for i in idx)


def _code(c: int, bits: int) -> str:
    return f"0x{c:0{1 if bits <= 4 else 2}X}"


def _fmt_scale(v, spec: BlockFormat) -> str:
    if isinstance(v, int) and spec.scale is not None:
        return f"{_code(v, 8)} ({spec.scale.values[v]:.9g})"
    if isinstance(v, float):
        return f"{v:.9g} (0x{int(np.float32(v).view(np.uint32)):08X})"
    return str(v)


def _grouped(cands: list[Candidate]) -> list[str]:
    """Candidate labels with the values of the last option joined: "... rounding=a|b"."""
    groups: dict[tuple, list[str]] = {}
    for c in cands:
        *head, (last, val) = c.options.items()
        groups.setdefault((tuple(head), last), []).append(str(val))
    return [" ".join([*(f"{k}={v}" for k, v in head), f"{last}={'|'.join(vals)}"])
            for (head, last), vals in groups.items()]


def _more(n: int, shown: int) -> list[str]:
    return [f"  ... {n - shown} more"] if n > shown else []


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)

