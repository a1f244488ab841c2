"""Two bfloat16 elements per 32-bit word: the MX and NVFP4 quantizers' element path for
bfloat16 input.

For a bfloat16 input whose rows are whole blocks, the kernels keep the loaded words packed
and do their per-element work on pairs (sm_90 PTX: ``max.u16x2``, ``min.u16x2``,
``mul.rn.bf16x2``, ``add.rn.bf16x2``, and 32-bit integer adds whose halves never carry or
borrow into each other):

* the block amax: one ``max.u16x2`` per word on the magnitude bits (the finite amax is taken
  element by element only where a lane holds an Inf or NaN);
* the element codes: ``<name>_near2``, the ``cupy_core.NEAREST_TEMPLATE`` addition trick in
  bfloat16 arithmetic (below), two codes per word;
* NaN blocks zero their codes with one mask per word, and the codes are stored by byte
  permutes.

MX scales by a power of two, exactly in bfloat16 (``scaled``). NVFP4 multiplies by a float32
factor: each product is rounded in float32 as the reference does, then to odd into a bfloat16
pair of magnitudes (``bf16x2_odd``: truncate, set the last bit where inexact by one
``min.u16x2``), which the unscaled, clamped encoder (signs from the input word) rounds to E2M1
as if from the float32 value (rounding to odd with at least two extra bits, 8 >= 2 + 2, makes
the second rounding exact).

``<name>_near2(w, p2)``: ``w`` holds two bfloat16 inputs (element ``j`` in the low half, ``j+1``
in the high half), ``p2`` the scale ``2**-k`` as bfloat16 in both halves. Per half, ``y = |x| *
2**-k`` is exact (a power of two; a product below bfloat16's normal range lies below 2**-126,
where every element code is +-0), ``eb`` is the exponent field of ``y`` clamped below to the
format's minimum binade, and ``y + M`` with ``M = 2**(eb - mb + 7)`` (bfloat16 ulp of ``M`` =
the quantum ``2**(eb - mb)``) rounds ``y`` to ``n`` quanta with ties to even, exactly, because
``y < 2**(eb + 1) <= 2 M`` for ``mb <= 6``. The code is ``((eb - emin) << mb) + n``, clamped to
the code of max; the sign is moved from bit 15 to the format's sign bit. It applies where
``cupy_core.nearest_params(spec, True, "nearest_even", bounded=...)`` does and ``mb <= 6``;
bounded (MX elements after the scale: finite, ``|y| < 2**(emax + 2)``), or with the binade
clamped at ``emax + 1`` so that any ``y``, Inf included, saturates (NVFP4).
``tests/test_kernels_bf16x2.py`` emulates every step in NumPy against the reference (every
bfloat16 input at many scales, whole MX and NVFP4 blocks); ``bench/gpu_check.py`` runs it.
"""

from __future__ import annotations

from lowbit.numerics.formats import ElementFormat

from .cupy_core import nearest_params

PTX_SRC = r"""
__device__ __forceinline__ u32 u16x2_max(u32 a, u32 b) {
    u32 d; asm("max.u16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
}
__device__ __forceinline__ u32 u16x2_min(u32 a, u32 b) {
    u32 d; asm("min.u16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
}
__device__ __forceinline__ u32 bf16x2_mul(u32 a, u32 b) {
    u32 d; asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
}
__device__ __forceinline__ u32 bf16x2_add(u32 a, u32 b) {
    u32 d; asm("add.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
}
"""

NEAR2_TEMPLATE = r"""
/* {name}_near2: two codes (low and high half) of two bfloat16 inputs{scaled_doc}, round to
   nearest even, saturating{bound_doc}. See kernels/cupy_bf16x2.py. */
__device__ __forceinline__ u32 {name}_near2(u32 w{p2_arg}) {{
    u32 y = {y};
    u32 eb = {eb};
    u32 mbits = eb + {moff2}u;
    u32 n = bf16x2_add(y, mbits) - mbits;
    u32 code = u16x2_min(n + ((eb - {emin2}u) >> {shift}), {maxc2}u);
    return code | (({sign_src} >> {sign_down}) & {sign2}u);
}}
"""

ODD_SRC = r"""
/* The magnitudes of two float32 values (bits lo, hi) as a bfloat16 pair rounded to odd
   (truncated, the last bit set where inexact: min(dropped half, 1) per half; one LOP3 ORs it in
   and clears the signs): rounding it to at most 6 significant bits equals rounding the float32
   values themselves. */
__device__ __forceinline__ u32 bf16x2_odd(u32 lo, u32 hi) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xA8;"    /* (a | b) & c */
        : "=r"(d)
        : "r"(__byte_perm(lo, hi, 0x7632)),
          "r"(u16x2_min(__byte_perm(lo, hi, 0x5410), 0x00010001u)), "r"(0x7FFF7FFFu));
    return d;
}
"""

WORDS_SRC = r"""
/* The V / 2 words (two bfloat16 each) of a lane of an aligned row. */
__device__ __forceinline__ void load_words(const in_t *__restrict__ x, const Pos &p,
                                           u32 w[V / 2]) {
    if (!p.valid) {
#pragma unroll
        for (int h = 0; h < V / 2; h++) w[h] = 0;
        return;
    }
    const uint4 *q = reinterpret_cast<const uint4 *>(x + p.blk * B + (i64)p.lane * V);
#pragma unroll
    for (int h = 0; h < V / 8; h++) {
        uint4 u = __ldcs(q + h);
        w[4 * h] = u.x; w[4 * h + 1] = u.y; w[4 * h + 2] = u.z; w[4 * h + 3] = u.w;
    }
}

/* (finite amax, amax with Inf/NaN) of a lane's words, as float32 bit patterns. */
__device__ __forceinline__ void words_amax(const u32 w[V / 2], u32 &amax, u32 &big) {
    u32 m = 0;
#pragma unroll
    for (int h = 0; h < V / 2; h++) m = u16x2_max(m, w[h] & 0x7FFF7FFFu);
    u32 b = max(m >> 16, m & 0xFFFFu);
    u32 a = b;
    if (b >= 0x7F80u) {
        a = 0;
#pragma unroll
        for (int h = 0; h < V / 2; h++) {
            u32 lo = w[h] & 0x7FFFu, hi = (w[h] >> 16) & 0x7FFFu;
            a = max(a, lo < 0x7F80u ? lo : 0u);
            a = max(a, hi < 0x7F80u ? hi : 0u);
        }
    }
    amax = a << 16;
    big = b << 16;
}

/* Stores the code words of a lane (V = 16; code j in the low half of word j / 2 for even j,
   the high half for odd j): PACK 0 bytes, PACK 4 nibbles (element j in the low nibble for even
   j, as numerics.packing). */
__device__ __forceinline__ void store_code_words(unsigned char *__restrict__ out, const Pos &p,
                                                 const u32 cw[V / 2]) {
    if (!p.valid) return;
#if PACK == 0
    u32 b[V / 4];
#pragma unroll
    for (int h = 0; h < V / 4; h++) b[h] = __byte_perm(cw[2 * h], cw[2 * h + 1], 0x6420);
    *reinterpret_cast<uint4 *>(out + p.blk * B + (i64)p.lane * V) =
        make_uint4(b[0], b[1], b[2], b[3]);
#else
    u32 t[V / 2];
#pragma unroll
    for (int h = 0; h < V / 2; h++) t[h] = cw[h] | (cw[h] >> 12);
    u32 b[V / 8];
#pragma unroll
    for (int h = 0; h < V / 8; h++)
        b[h] = __byte_perm(__byte_perm(t[4 * h], t[4 * h + 1], 0x0040),
                           __byte_perm(t[4 * h + 2], t[4 * h + 3], 0x0040), 0x5410);
    *reinterpret_cast<uint2 *>(out + (p.blk * B + (i64)p.lane * V) / 2) = make_uint2(b[0], b[1]);
#endif
}
"""


def words_source() -> str:
    """CUDA source of the pair instructions and the word helpers alone (``load_words``,
    ``words_amax``, ``store_code_words``), for kernels with their own element step."""
    return PTX_SRC + WORDS_SRC


def near2_params(spec: ElementFormat, bounded: bool = True) -> dict | None:
    """Constants of ``NEAR2_TEMPLATE`` for ``spec`` (RNE, saturating), or None. ``bounded``:
    inputs are finite with ``|y| < 2**(emax + 2)`` (no upper clamp of the binade); otherwise
    the binade is clamped at ``emax + 1`` and every finite or infinite ``y`` saturates."""
    p = nearest_params(spec, True, "nearest_even", bounded=bounded)
    if p is None or p["mb"] > 6 or p["sign_shift"] is None:
        return None

    def pair(v: int) -> int:
        return v | (v << 16)

    return dict(emin2=pair(p["emin_b"] << 7), moff2=pair((7 - p["mb"]) << 7), shift=7 - p["mb"],
                maxc2=pair(p["maxc"]), sign_down=15 - p["sign_shift"],
                sign2=pair(1 << p["sign_shift"]),
                eclamp2=None if bounded else pair(p["eclamp_b"] << 7))


def near2_source(name: str, spec: ElementFormat, scaled: bool = True,
                 bounded: bool = True) -> str | None:
    """CUDA source of ``<name>_near2`` and the word helpers, or None where it does not apply.
    ``scaled``: ``<name>_near2(w, p2)`` multiplies by ``p2`` (a power of two per half, MX);
    otherwise ``<name>_near2(w, sw)`` encodes the magnitudes ``w`` as they are (a pair from
    ``bf16x2_odd``, sign bits clear) with the signs of ``sw`` (bits 15 and 31: the input word)."""
    p = near2_params(spec, bounded)
    if p is None:
        return None
    eb = f"u16x2_max(y & 0x7F807F80u, {p['emin2']}u)"
    if p["eclamp2"] is not None:
        eb = f"u16x2_min({eb}, {p['eclamp2']}u)"
    fields = dict(
        name=name, eb=eb, p2_arg=", u32 p2" if scaled else ", u32 sw",
        sign_src="w" if scaled else "sw",
        y="bf16x2_mul(w & 0x7FFF7FFFu, p2)" if scaled else "w",
        scaled_doc=" times p2 = 2**-k (both halves)" if scaled else "",
        bound_doc="; inputs finite with |y| < 2**(emax + 2)" if bounded else "",
        **{k: v for k, v in p.items() if k != "eclamp2"})
    return PTX_SRC + NEAR2_TEMPLATE.format(**fields) + ODD_SRC + WORDS_SRC
