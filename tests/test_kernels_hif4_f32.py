"""The float32 path of the CuPy HiF4 quantizer (``kernels.cupy_hif4``, 16/32-bit inputs),
emulated step by step in NumPy with the constants of its generated source, against the
reference: the E6M2 scale from the bit pattern of ``Vmax * bf16(1/7)``, ``REC`` from four
bfloat16 patterns, micro-exponents from products rounded toward zero, S1P2 elements as the low
bits of ``2**23 + k`` (an FMA rounded toward zero then an addition rounded toward zero for ties
away, one FMA for ties to even), on single elements and on the bfloat16 pair words. Inputs sit
on and next to every kind of decision point. Runs without a GPU; ``bench/gpu_check.py`` runs the
CUDA code itself.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lowbit import numerics as ln
from lowbit.kernels import cupy_hif4
from lowbit.numerics import hif4

SPEC = ln.block_format("hif4")
SC = cupy_hif4.scale_constants(SPEC.scale)
EL = cupy_hif4.element_constants(SPEC.element)


def _toward_zero_f32(v: np.ndarray) -> np.ndarray:
    """Non-negative float64 values rounded toward zero to float32."""
    f = v.astype(np.float32)
    return np.where(f.astype(np.float64) > v, np.nextafter(f, np.float32(0)), f)


def _odd_f32(v: np.ndarray) -> np.ndarray:
    """Non-negative float64 values rounded to odd in float32."""
    f = _toward_zero_f32(v)
    inexact = f.astype(np.float64) != v
    return (f.view(np.uint32) | inexact.astype(np.uint32)).view(np.float32)


def _f(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32).astype(np.float64)


def _pair_codes(bits: np.ndarray, k: np.ndarray, negative_zero: bool) -> np.ndarray:
    """The pair path's codes: words of two bfloat16 inputs (element 2i low), the k of both
    halves by a byte permute, the sign moved from bit 15 / 31 where |x| != 0 (and k != 0)."""
    h = (bits >> 16).astype(np.uint32)
    w = h[:, 0::2] | (h[:, 1::2] << 16)
    kw = (k[:, 0::2] & 0xFFFF | (k[:, 1::2] & 0xFFFF) << 16).astype(np.uint32)
    wa = w & np.uint32(0x7FFF7FFF)
    nz = (wa + np.uint32(0x7FFF7FFF)) & np.uint32(0x80008000)
    if not negative_zero:
        nz &= (kw + np.uint32(0x7FFF7FFF)) & np.uint32(0x80008000)
    sign_down = 15 - (EL["SIGN_BIT"].bit_length() - 1)
    cw = (kw | ((w & nz) >> np.uint32(sign_down))).astype(np.int64)
    return np.stack([cw & 0xFFFF, cw >> 16], -1).reshape(k.shape)


def emulate(x: np.ndarray, rounding: str, scale_rounding: str, negative_zero: bool,
            pairs: bool = False):
    """(codes, scales, micro) of finite float32 blocks ``(n, 64)`` as the float32 path makes
    them, operation by operation (products of a float32 and a <= 8-bit float are exact in
    float64, so each rounded PTX operation is the rounding of an exact float64 value);
    ``pairs``: the bfloat16 pair path's code words (``x`` holds bfloat16 values)."""
    bits = x.view(np.uint32)
    a = bits & np.uint32(0x7FFFFFFF)
    m16 = a.reshape(-1, 16, 4).max(-1)
    m8 = m16.reshape(-1, 8, 2).max(-1)
    vmax = m8.max(-1)
    # scale_code32
    b = _odd_f32(_f(vmax) * _f(SC["ONE_SEVENTH_BITS"])).view(np.uint32).astype(np.int64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    b = np.clip(b, SC["SF_MIN_BITS"], SC["SF_MAX_BITS"])
    t = (b >> 16) - SC["SC_REBIAS"]
    drop = SC["SC_DROP"]
    half = 1 << (drop - 1)
    scode = (t + half) >> drop if scale_rounding == "nearest_away" else \
        (t + half - 1 + ((t >> drop) & 1)) >> drop
    # rec_bits
    recb = ((SC["REC16"] >> (16 * (scode & 3)).astype(np.uint64)) & 0xFFFF).astype(np.int64)
    recb = (recb << 16) - ((scode >> 2) << 23)
    rec = _f(recb)[:, None]
    e8 = (_toward_zero_f32(_f(m8) * rec) >= 4).astype(np.int64)
    e16 = (_toward_zero_f32(_f(m16) * rec) >= np.where(np.repeat(e8, 2, -1) == 1, 4, 2))
    e16 = e16.astype(np.int64)
    shift = np.repeat(e8, 8, -1) + np.repeat(e16, 4, -1)
    f = _f(recb[:, None] + ((EL["QBITS"] - shift) << 23))
    prod = _f(a) * f
    if rounding == "nearest_away":  # add.rz(min(fma.rz(a, f, 1/2), KMAX), 2**23)
        t1 = np.minimum(_toward_zero_f32(prod + 0.5), EL["KMAX"]).astype(np.float64)
        t = _toward_zero_f32(t1 + 2.0**23)
    else:  # min(fma.rn(a, f, 2**23), 2**23 + KMAX): one rounding of the exact sum
        t = (2.0**23 + np.minimum(np.rint(prod), EL["KMAX"])).astype(np.float32)
    k = (t.view(np.uint32) - np.uint32(0x4B000000)).astype(np.int64)
    if pairs:
        codes = _pair_codes(bits, k, negative_zero)
    else:
        neg = (bits >> 31).astype(bool) & (a != 0)
        codes = k | np.where(neg, EL["SIGN_BIT"], 0)
        if not negative_zero:
            codes = np.where(codes == SPEC.element.negative_zero_code, 0, codes)
    return codes.astype(np.uint8), scode.astype(np.uint8), np.concatenate([e8, e16], -1)


def _rec_of_max(vmax: np.ndarray, scale_rounding: str) -> np.ndarray:
    """The reference's REC for blocks whose magnitude maximum is ``vmax``."""
    blocks = np.zeros((vmax.size, 64))
    blocks[:, 0] = vmax
    q = ln.quantize(blocks, "hif4", scale_rounding=scale_rounding, backend="reference")
    return hif4.reciprocals(SPEC.scale)[q.scales.astype(np.int64)]


def _inputs(rng, scale_rounding: str, bf16: bool) -> np.ndarray:
    """Blocks whose maxima span the clamped and unclamped scale range (every bfloat16 significand
    near the E6M2 boundaries included), with group maxima at and next to the micro-exponent
    thresholds and elements at and next to the S1P2 midpoints, signs and zeros mixed."""
    n = 4096
    sig = rng.integers(128, 256, n) / 128.0
    sig[: 512] = 1 + np.arange(512) % 128 / 128.0  # every bfloat16 significand
    vmax = sig * np.exp2(rng.integers(-60, 20, n))
    vmax[:16] = np.exp2(np.arange(16) * 10.0 - 140)  # tiny to huge
    vmax = vmax.astype(np.float32)
    if bf16:
        vmax = vmax.astype(ml_dtypes.bfloat16).astype(np.float32)
    rec = _rec_of_max(vmax.astype(np.float64), scale_rounding).reshape(n, 1)
    # candidate magnitudes: thresholds 2, 4, midpoints (k + 1/2) / 4 * 2**shift, and grid points
    k = rng.integers(0, 8, (n, 63))
    shift = rng.integers(0, 3, (n, 63))
    target = np.where(rng.random((n, 63)) < 0.3, np.exp2(rng.integers(1, 3, (n, 63))),
                      (k + rng.choice([0.5, 0.0], (n, 63))) / 4 * np.exp2(shift))
    near = (target / rec).astype(np.float32)
    step = rng.integers(-2, 3, (n, 63))
    for s in (1, -1):
        sel = np.sign(step) == s
        for _ in range(2):
            near = np.where(sel & (np.abs(step) > _), np.nextafter(near, np.float32(s * np.inf)),
                            near)
    if bf16:
        near = near.astype(ml_dtypes.bfloat16).astype(np.float32)
    near = np.minimum(near, vmax[:, None])
    near = np.where(rng.random((n, 63)) < 0.05, np.float32(0), near)
    x = np.concatenate([vmax[:, None], near], -1)
    x = np.where(rng.random(x.shape) < 0.5, -x, x)
    perm = np.argsort(rng.random(x.shape), -1)
    return np.take_along_axis(x, perm, -1).astype(np.float32)


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("rounding,scale_rounding,negative_zero", [
    ("nearest_away", "nearest_even", True), ("nearest_even", "nearest_even", True),
    ("nearest_away", "nearest_away", False), ("nearest_even", "nearest_away", False)])
def test_float32_path_emulated_equals_reference(bf16, rounding, scale_rounding, negative_zero):
    rng = np.random.default_rng(7 + bf16)
    x = _inputs(rng, scale_rounding, bf16)
    opts = dict(rounding=rounding, scale_rounding=scale_rounding, negative_zero=negative_zero)
    q = ln.quantize(x, "hif4", backend="reference", **opts)
    for pairs in (False, True) if bf16 else (False,):
        codes, scales, micro = emulate(x, rounding, scale_rounding, negative_zero, pairs)
        assert np.array_equal(scales, q.scales.reshape(-1))
        assert np.array_equal(micro, q.micro.reshape(-1, 24))
        bad = np.argwhere(codes != q.codes)
        assert bad.size == 0, (pairs, x[tuple(bad[:3].T)], codes[tuple(bad[:3].T)],
                               q.codes[tuple(bad[:3].T)])


def test_inputs_reach_every_decision():
    """The inputs above hit exact ties and both micro-exponent values (else the test is weak)."""
    x = _inputs(np.random.default_rng(7), "nearest_even", False)
    q = ln.quantize(x, "hif4", backend="reference")
    micro = q.micro.reshape(-1, 24).astype(np.int64)
    assert 0.2 < micro[:, :8].mean() < 0.8 and 0.2 < micro[:, 8:].mean() < 0.8
    rec = hif4.reciprocals(SPEC.scale)[q.scales.reshape(-1, 1).astype(np.int64)]
    shift = np.repeat(micro[:, :8], 8, -1) + np.repeat(micro[:, 8:], 4, -1)
    y4 = np.abs(x.astype(np.float64)) * rec * np.exp2(2.0 - shift)
    assert ((y4 % 1 == 0.5) & (y4 < 8)).sum() > 1000
    assert len(np.unique(q.scales)) > 200


def test_constants_fail_on_another_scale():
    with pytest.raises(ValueError):
        cupy_hif4.scale_constants(ln.element_format("e4m3"))
    assert cupy_hif4.element_constants(ln.element_format("e2m1")) is None
