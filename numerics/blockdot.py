"""Block dot products of quantized tensors (OCP MX v1.0 sections 6.1/6.2), with the accumulation
as a parameter.

Every supported tensor is read as ``value_i = T * X_j * P_i`` for element ``i`` of block ``j``:

* ``P_i``: the element value from the format's value table (``fmt.element.values``). HiF4 folds
  its micro-exponents into it: ``P_i = E1M2(code_i) * 2**(E1_8[i // 8] + E1_16[i // 4])``.
* ``X_j``: the block scale from the scale format's value table (E8M0 for MX, UE4M3 for NVFP4,
  E6M2 for HiF4; a NaN code gives NaN), or the float32 scale of an absmax format (1 if unscaled).
* ``T``: the per-tensor factor, ``tensor_scale / prescale`` (either part 1 when absent): the NVFP4
  or per-tensor absmax scale and the MX pre-scale ``1 / alpha``.

The dot product of two such tensors along their blocked axis is (spec: block Dot, DotGeneral)::

    dot(A, B) = T_A T_B * sum_j X_j^A X_j^B * sum_i P_i^A P_i^B

The spec leaves internal precision and order implementation-defined; ``accumulation`` picks:

* ``"exact"``: the whole expression in exact rational arithmetic (integer block sums), rounded
  once to float64 (nearest even). ``dot_fraction`` / ``matmul_fraction`` return the exact
  ``Fraction`` instead. Exact zero is +0.0.
* ``"fp32_sequential"``: in IEEE binary32, round to nearest even, no FMA:
  (1) every element product ``P_i^A * P_i^B`` in float32; it is exact for every registered format
  pair (at most 8 + 8 significant bits, magnitudes within [2**-44, 2**32]; ``fp32_products_exact``
  checks every pair of codes of the two element tables and the fp32 modes refuse a pair that
  fails); (2) the products of a block summed left to right, starting from the first product;
  (3) the block sum multiplied by ``fl32(X_j^A * X_j^B)`` (this scale product over- or underflows
  float32 for MX exponents summing beyond float32's range; use "exact" there); (4) the block
  results summed left to right over the blocks, starting from the first; (5) the sum multiplied
  by the epilogue scalar ``fl32(T_A * T_B)`` (the exact product rounded once; 1 when both are 1).
* ``"fp32_pairwise"``: the same, with (2) and (4) as a pairwise tree: each level adds adjacent
  pairs ``(t0 + t1), (t2 + t3), ...`` and carries an odd last term unchanged to the next level,
  until one term is left (3 terms: ``(t0 + t1) + t2``).

In every mode a NaN scale (or NaN/Inf element, tensor scale) gives the IEEE result: NaN for a
NaN anywhere in the reduction, NaN for Inf * 0 or Inf - Inf, else the Inf. An axis of length 0
gives 0. Both operands must share the scheme (``BlockFormat.scheme``; element formats may differ,
e.g. MXFP8 x MXFP4), shape, axis and block size; the zero padding of a last partial block adds
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import numpy as np

from .blocks import make_blocking, tensor_to_block_axis, to_blocks
from .formats import BlockFormat, block_format
from .tensor import QuantizedTensor

ACCUMULATIONS = ("exact", "fp32_sequential", "fp32_pairwise")
_CHUNK_ELEMENTS = 1 << 22  # matmul works on row chunks of at most this many element products


@dataclass(frozen=True)
class _Operand:
    """A tensor cut into blocks along its quantized axis (moved last)."""

    fmt: str  # block format name: keys the element-table caches
    values: np.ndarray  # float64 (..., n_blocks, block_size): P_i, zero padded, exact
    scales: np.ndarray  # float64 (..., n_blocks): X_j, exact (NaN for a NaN code)
    factor: Fraction | float  # T; a float only when non-finite

    def rows(self, sl: slice, axis: int) -> _Operand:
        """Rows ``sl`` of a 2-D operand with a broadcast axis inserted at ``axis`` (matmul)."""
        return _Operand(
            self.fmt,
            np.expand_dims(self.values[sl], axis),
            np.expand_dims(self.scales[sl], axis),
            self.factor,
        )


def dot(
    qa: QuantizedTensor, qb: QuantizedTensor, *, accumulation: str = "exact"
) -> np.ndarray:
    """Dot products of ``qa`` and ``qb`` along their quantized axis (see module docstring).

    Returns the shape without that axis: float64 for ``"exact"``, float32 for the fp32 modes.
    """
    a, b = _dot_operands(qa, qb)
    return _finish(_reduce(a, b, _check_accumulation(accumulation)))


def dot_fraction(qa: QuantizedTensor, qb: QuantizedTensor) -> np.ndarray:
    """``dot`` in exact arithmetic, not rounded: an object array of ``Fraction`` (a non-finite
    result is a float NaN or Inf)."""
    return _reduce(*_dot_operands(qa, qb), "exact")


def matmul(
    qa: QuantizedTensor, qb: QuantizedTensor, *, accumulation: str = "exact"
) -> np.ndarray:
    """``A @ B.T`` for A (M, K) and B (N, K), both quantized along K: shape (M, N).

    Entry (m, n) is ``dot`` of row m of A and row n of B with the same ``accumulation``.
    """
    return _finish(_matmul(qa, qb, _check_accumulation(accumulation)))


def matmul_fraction(qa: QuantizedTensor, qb: QuantizedTensor) -> np.ndarray:
    """``matmul`` in exact arithmetic, not rounded (object array, as ``dot_fraction``)."""
    return _matmul(qa, qb, "exact")


def fp32_products_exact(fmt_a: str | BlockFormat, fmt_b: str | BlockFormat) -> bool:
    """Whether every product of two finite element values of the formats is exact in float32
    (checked over all pairs of codes; HiF4 with its micro-exponents folded in)."""
    return _fp32_products_exact(block_format(fmt_a).name, block_format(fmt_b).name)


# -- operands ----------------------------------------------------------------------------------


def _check_accumulation(accumulation: str) -> str:
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"unknown accumulation {accumulation!r}; expected one of {ACCUMULATIONS}")
    return accumulation


def _check_pair(qa: QuantizedTensor, qb: QuantizedTensor) -> None:
    sa, sb = block_format(qa.fmt), block_format(qb.fmt)
    if sa.scheme != sb.scheme:
        raise ValueError(
            f"dot needs two tensors of one scheme; got {sa.name} ({sa.scheme}) and "
            f"{sb.name} ({sb.scheme})"
        )
    if qa.block_size != qb.block_size:
        raise ValueError(f"block sizes differ: {qa.block_size} and {qb.block_size}")


def _dot_operands(qa: QuantizedTensor, qb: QuantizedTensor) -> tuple[_Operand, _Operand]:
    _check_pair(qa, qb)
    if qa.shape != qb.shape:
        raise ValueError(f"dot needs equal shapes, got {qa.shape} and {qb.shape}")
    if qa.axis != qb.axis:
        raise ValueError(f"dot needs the same quantized axis, got {qa.axis} and {qb.axis}")
    return _operand(qa), _operand(qb)


def _operand(q: QuantizedTensor) -> _Operand:
    spec = block_format(q.fmt)
    b = make_blocking(q.codes.shape, q.axis, q.block_size)
    values = to_blocks(spec.element.values[q.codes.astype(np.int64)], b, fill=0.0)
    if spec.scheme == "hif4":
        values = values * 2.0 ** _hif4_micro_exponents(q, b)
    if q.scales is None:
        if spec.scale is not None:
            raise ValueError(f"{spec.name} tensor has no block scales")
        scales = np.ones(values.shape[:-1])
    else:
        if q.scales.shape != b.scale_shape:
            raise ValueError(f"scales have shape {q.scales.shape}, expected {b.scale_shape}")
        s = tensor_to_block_axis(q.scales, b)
        if spec.scale is None:  # float32 scale values, as dequantize reads them
            scales = s.astype(np.float32).astype(np.float64)
        else:
            scales = spec.scale.values[s.astype(np.int64)]
    return _Operand(spec.name, values, scales, _tensor_factor(q))


def _hif4_micro_exponents(q: QuantizedTensor, b) -> np.ndarray:
    """E1_8[i // 8] + E1_16[i // 4] per element, shape (..., n_blocks, block_size)."""
    want = b.scale_shape + (24,)
    if q.micro is None or q.micro.shape != want or b.block_size != 64:
        got = None if q.micro is None else q.micro.shape
        raise ValueError(f"hif4 needs 64-element blocks and micro-exponent bits of shape {want}; "
                         f"got block size {b.block_size}, micro shape {got}")
    micro = tensor_to_block_axis(q.micro, b, trailing=1).astype(np.int64)
    i = np.arange(b.block_size)
    return micro[..., i // 8] + micro[..., 8 + i // 4]


def _tensor_factor(q: QuantizedTensor) -> Fraction | float:
    ts = 1.0 if q.tensor_scale is None else float(q.tensor_scale)
    alpha = 1.0 if q.prescale is None else float(q.prescale)
    if np.isfinite(ts) and np.isfinite(alpha):
        return Fraction(ts) / Fraction(alpha)
    return ts / alpha


def _matmul(qa: QuantizedTensor, qb: QuantizedTensor, accumulation: str) -> np.ndarray:
    _check_pair(qa, qb)
    if len(qa.shape) != 2 or len(qb.shape) != 2:
        raise ValueError(f"matmul needs 2-D tensors (M, K) and (N, K), got {qa.shape}, {qb.shape}")
    if qa.axis != 1 or qb.axis != 1:
        raise ValueError(f"matmul needs both tensors quantized along K (axis 1), got axes "
                         f"{qa.axis} and {qb.axis}")
    if qa.shape[1] != qb.shape[1]:
        raise ValueError(f"K differs: {qa.shape[1]} and {qb.shape[1]}")
    a, b = _operand(qa), _operand(qb)
    m, n, k = qa.shape[0], qb.shape[0], a.values.shape[-2] * a.values.shape[-1]
    step = max(1, _CHUNK_ELEMENTS // max(1, n * k))
    parts = [
        _reduce(a.rows(slice(r, r + step), 1), b.rows(slice(None), 0), accumulation)
        for r in range(0, max(m, 1), step)
    ]
    return np.concatenate(parts, axis=0)


# -- reductions ---------------------------------------------------------------------------------


def _reduce(a: _Operand, b: _Operand, accumulation: str) -> np.ndarray:
    """The dot products of broadcast-compatible operands: Fractions (exact) or float32."""
    if accumulation == "exact":
        return _exact(a, b)
    if not _fp32_products_exact(a.fmt, b.fmt):
        raise ValueError(f"{a.fmt} x {b.fmt} element products are not exact in float32; "
                         "use accumulation='exact'")
    add = _sequential if accumulation == "fp32_sequential" else _pairwise
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        products = a.values.astype(np.float32) * b.values.astype(np.float32)
        scale = a.scales.astype(np.float32) * b.scales.astype(np.float32)
        total = add(add(products) * scale)
        return np.asarray(total * _round_to_float32(a.factor * b.factor), dtype=np.float32)


def _sequential(x: np.ndarray) -> np.ndarray:
    """float32 sum over the last axis, left to right from the first term."""
    if x.shape[-1] == 0:
        return np.zeros(x.shape[:-1], dtype=np.float32)
    acc = x[..., 0].copy()
    for i in range(1, x.shape[-1]):
        acc += x[..., i]
    return acc


def _pairwise(x: np.ndarray) -> np.ndarray:
    """float32 sum over the last axis: adjacent pairs per level, an odd last term carried."""
    if x.shape[-1] == 0:
        return np.zeros(x.shape[:-1], dtype=np.float32)
    while x.shape[-1] > 1:
        even = x.shape[-1] // 2 * 2
        x = np.concatenate([x[..., 0:even:2] + x[..., 1:even:2], x[..., even:]], axis=-1)
    return x[..., 0]


def _exact(a: _Operand, b: _Operand) -> np.ndarray:
    """Exact ``T_A T_B sum_j X_j^A X_j^B sum_i P_i^A P_i^B`` as an object array of Fractions.

    Elements become integers ``P / 2**e_unit`` and block sums exact integer sums (``_block_sums``).
    Each scale product ``X^A X^B`` is exact in float64 (significands of <= 24 bits, exponents
    within +-300), i.e. ``M_j * 2**E_j`` with an integer ``M_j``, so a row of blocks sums exactly
    in Python integers as ``sum_j S_j M_j 2**(E_j - E_min)``. Where a NaN or Inf is involved, the
    result is the float64 IEEE evaluation of the same expression (non-finite exactly then).
    """
    ea, eb = _unit_exponent(a.fmt), _unit_exponent(b.fmt)
    sums = _block_sums(_integers(a.values, ea), _integers(b.values, eb))
    with np.errstate(invalid="ignore", over="ignore"):
        scale = a.scales * b.scales
        ieee = np.asarray(((a.values * b.values).sum(axis=-1) * scale).sum(axis=-1))
    mant, exp = np.frexp(np.where(np.isfinite(scale), scale, 0.0))
    exp = exp.astype(np.int64) - 53  # scale = int(mant * 2**53) * 2**exp
    low = exp.min(axis=-1, initial=0)
    ints = np.asarray(sums, dtype=object) * np.ldexp(mant, 53).astype(np.int64).astype(object)
    total = (ints << (exp - low[..., None]).astype(object)).sum(axis=-1)
    factor = a.factor * b.factor
    out = np.asarray(np.frompyfunc(_dyadic, 2, 1)(total, low + ea + eb) * factor, dtype=object)
    special = ~np.isfinite(ieee)
    out[special] = ieee[special] * float(factor)
    return out


def _block_sums(ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Exact ``sum(ma * mb, axis=-1)`` of broadcast int64 arrays: int64 when it cannot overflow,
    else Python ints combined from int64 sums of limb products."""
    n = ma.shape[-1]
    if n * _max_abs(ma) * _max_abs(mb) < 2**63:
        return (ma * mb).sum(axis=-1)
    bits = (62 - n.bit_length()) // 2  # n products of two limbs stay below 2**62
    total = 0
    for i, x in enumerate(_limbs(ma, bits)):
        for j, y in enumerate(_limbs(mb, bits)):
            total = total + (x * y).sum(axis=-1).astype(object) * (1 << bits * (i + j))
    return total


def _limbs(m: np.ndarray, bits: int) -> list[np.ndarray]:
    """``m = sum_t limbs[t] * 2**(bits * t)``, every limb below ``2**bits`` in magnitude."""
    limbs = []
    while _max_abs(m) >> bits:
        limbs.append(m & ((1 << bits) - 1))
        m = m >> bits
    return [*limbs, m]


def _integers(values: np.ndarray, unit_exponent: int) -> np.ndarray:
    """Finite element values as integer multiples of ``2**unit_exponent`` (non-finite ones 0)."""
    return np.ldexp(np.where(np.isfinite(values), values, 0.0), -unit_exponent).astype(np.int64)


def _max_abs(m: np.ndarray) -> int:
    return int(np.max(np.abs(m))) if m.size else 0


def _dyadic(n: int, e: int) -> Fraction:
    """``n * 2**e``."""
    return Fraction(n, 1 << -int(e)) if e < 0 else Fraction(n << int(e))


def _finish(out: np.ndarray) -> np.ndarray:
    """float32 results pass through; exact ones are rounded once to float64."""
    if out.dtype == object:
        return np.asarray(np.frompyfunc(float, 1, 1)(out), dtype=np.float64)
    return out


def _round_to_float32(x: Fraction | float) -> np.float32:
    """``x`` rounded once to float32, nearest even (a float64 detour could round twice)."""
    if not isinstance(x, Fraction):
        return np.float32(x)
    if x == 0:
        return np.float32(0.0)
    n, d = abs(x.numerator), x.denominator
    e = n.bit_length() - d.bit_length()  # floor(log2 |x|) is e or e - 1
    if (n << max(-e, 0)) < (d << max(e, 0)):
        e -= 1
    q = max(e, -126) - 23  # exponent of one unit in the last place
    num, den = n << max(-q, 0), d << max(q, 0)
    m, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and m % 2):
        m += 1
    v = np.ldexp(float(m), q)  # exact: m <= 2**24, q >= -149
    with np.errstate(over="ignore"):
        return np.float32(-v if x < 0 else v)


# -- element tables -----------------------------------------------------------------------------


@cache
def _finite_table(fmt: str) -> np.ndarray:
    """Every finite element value a tensor of ``fmt`` holds (HiF4: times 2**0, 2**1, 2**2)."""
    spec = block_format(fmt)
    v = spec.element.values
    v = v[np.isfinite(v)]
    if spec.scheme == "hif4":
        v = (v[:, None] * np.array([1.0, 2.0, 4.0])).ravel()
    return v


@cache
def _unit_exponent(fmt: str) -> int:
    """``e <= 0``, the largest with every finite element value a multiple of ``2**e``."""
    return -max(Fraction(float(v)).denominator for v in _finite_table(fmt)).bit_length() + 1


@cache
def _fp32_products_exact(fmt_a: str, fmt_b: str) -> bool:
    p = np.multiply.outer(_finite_table(fmt_a), _finite_table(fmt_b))
    with np.errstate(over="ignore"):
        return bool(np.array_equal(p.astype(np.float32).astype(np.float64), p))
