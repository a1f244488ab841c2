"""NVFP4 (NVIDIA two-level FP4): E2M1 elements, a UE4M3 scale per 16 elements, an FP32 tensor scale.

Value of element i of block b: ``x ~= e2m1(P_i) * ue4m3(S_b) * tensor_scale``.

Conventions:

* ``tensor_scale`` (``q.tensor_scale``) is the **decode** scale, a float32 ~ global_amax / 2688
  (torchao ``per_tensor_scale``, ModelOpt ``weights_scaling_factor_2``, TE ``sg_output``). TE and
  TRT-LLM kernels take the **encode** scale ``S_enc = 2688 / global_amax`` instead. Each algorithm
  reports its own float32 decode scale: TE's ``fp32(1 / S_enc)``, which can be 1 ulp away from
  ``fp32(amax / 2688)`` (amax = 10: 0x3B73CF3E against 0x3B73CF3D, vector N4), torchao's and
  ModelOpt's ``fp32(amax / 2688)``.
* Codes are unpacked, one E2M1 code per ``uint8`` (low nibble, sign bit 0x8). Nibble order in
  packed bytes (element 2i low) is the packer's job; scale codes are UE4M3 bytes (sign bit 0).
* Arithmetic: every step is an IEEE float32 operation, emulated with numpy float32 scalars and
  arrays in each peer's op order, so the result is the peer's bit for bit. Float16, bfloat16 and
  float32 inputs convert to float32 exactly; float64 input is rounded to float32 first (RNE), as
  every peer quantizes float32 or bfloat16. Only the last two roundings go through the exact
  codec: the block scale to UE4M3 (RNE, saturating) and the scaled element to E2M1 (``rounding``,
  default RNE, saturating to +-6: the clamp of every peer).
* ``global_amax`` is max|x| over the whole tensor unless a calibrated value is given (rounded to
  float32; smaller than the data's amax saturates block scales at 448 and elements at +-6).

Algorithms (option ``algorithm``; fl = float32 rounding of one operation, amax = block amax):

* ``"transformer_engine"`` (default; TE ``quantization_nvfp4.py`` and ``core_nvfp4.cuh``)::

      S_enc = min(fl(2688 / g), FP32_MAX), 1 if g == 0;   S_dec = fl(1 / S_enc)
      S_b   = UE4M3(min(fl(amax * fl(S_enc * fl(1/6))), FP32_MAX))        # zero block: 0x00
      enc   = min(fl(1 / fl(S_b * S_dec)), FP32_MAX);       P = E2M1(fl(x * enc))

  N1's exact E2M1 midpoints stay exact after scaling and round to even, but the roundings of
  S_enc, S_dec and enc can move a midpoint by an ulp and so decide a tie (exact RNE of the exact
  quotients is the intent; they differ only within ~2**-20 of a midpoint, see the tests).
* ``"torchao"`` (``nvfp4_quantize(x, 16, per_tensor_amax_to_scale(g))``)::

      s = fl(g / 2688);  S_b = UE4M3(clamp(fl(fl(amax / 6) / s), 2**-6, 448))
      P = E2M1(fl(x * fl(fl(1 / s) / S_b)))

  Zero and tiny blocks get scale 0x08 (2**-6, N2/N3); the reciprocal product can land 1 ulp
  below an exact midpoint, which then rounds down (N1: 1.75, 0.75 and -3.5).
* ``"modelopt"`` (``NVFP4QTensor.quantize(x, 16)``)::

      s = fl(g / 2688);  t = fl(amax / fl(6 * s)), 1.0 where t == 0
      S_b = UE4M3(clamp(t, 2**-9, 448));  P = E2M1(fl(x / fl(S_b * s)))

  Zero blocks get scale 0x38 (1.0, N2). ModelOpt takes the sign bit from ``x < 0``, so a zero
  (also -0.0) encodes as 0x0; the other algorithms keep the sign of zero (-0.0 -> 0x8), as
  torchao's cast does (TE's Python reference writes 0x0: the same value).

Special cases:

* NaN or Inf in the input (or float64 beyond float32's range) raises ``ValueError``. E2M1 has no
  NaN or Inf, one non-finite value would poison the global amax and so every block's scale, and
  there is no common answer to reproduce (TE's Python reference makes every scale NaN, torchao's
  bit-trick cast turns NaN into a finite code, the hardware E2M1 cast of NaN is unspecified). A
  non-finite or negative ``global_amax`` raises too.
* ``global_amax == 0`` (all-zero or empty tensors): TE's guard ``S_enc = 1``. torchao and
  ModelOpt divide by a zero tensor scale there (NaN scales); lowbit gives them the same guard, a
  decode scale of 1.0 whenever ``fl(g / 2688)`` is 0, so all-zero input gives zero codes.
* Where torchao's or ModelOpt's float32 arithmetic still produces NaN (a zero element times an
  overflowed reciprocal or over an underflowed divisor: global amax below ~7.9e-36 for torchao,
  ~1e-39 for ModelOpt), their result is undefined and lowbit raises ``ValueError``.
  ``"transformer_engine"`` is defined for every finite input; below 2688 / FP32_MAX (~7.9e-36)
  its S_enc saturates and the result is coarse (as TE's is).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .codec import ROUNDING_MODES, _encode_f64
from .formats import BlockFormat

ALGORITHMS = ("transformer_engine", "torchao", "modelopt")
OPTION_NAMES = ("algorithm",)

_F32 = np.float32
_ONE = _F32(1)
_FP32_MAX = np.finfo(np.float32).max
_Result = tuple[np.ndarray, np.ndarray, np.float32]  # scaled float32 elements, scale codes, ts


@dataclass(frozen=True)
class NVFP4Options:
    """Options of NVFP4 quantization.

    Attributes:
        algorithm: one of ``ALGORITHMS``: whose float32 scale computation to reproduce.
        rounding: element rounding, one of ``codec.ROUNDING_MODES`` (TE uses "stochastic" for
            gradients); the block scale is always RNE.
    """

    algorithm: str = "transformer_engine"
    rounding: str = "nearest_even"

    def __post_init__(self):
        for name, allowed in (("algorithm", ALGORITHMS), ("rounding", ROUNDING_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")


NVFP4_PRESETS: dict[str, dict] = {
    "transformer_engine": {},
    "torchao": {"algorithm": "torchao"},
    "modelopt": {"algorithm": "modelopt"},
}
"""Peer presets: each selects the peer's algorithm (see the module docstring)."""


def nvfp4_options(
    preset: str | None = None, rounding: str | None = None, **overrides
) -> NVFP4Options:
    """Resolve a preset plus explicit overrides (None values are ignored) into ``NVFP4Options``."""
    if preset is not None and preset not in NVFP4_PRESETS:
        raise ValueError(f"unknown NVFP4 preset {preset!r}; presets: {sorted(NVFP4_PRESETS)}")
    base = dict(NVFP4_PRESETS[preset]) if preset else {}
    known = sorted(f.name for f in fields(NVFP4Options))
    for key, val in {**overrides, "rounding": rounding}.items():
        if key not in known:
            raise TypeError(f"unknown NVFP4 option {key!r}; options: {known}")
        if val is not None:
            base[key] = val
    return NVFP4Options(**base)


def quantize_blocks(
    blocks: np.ndarray,
    fmt: BlockFormat,
    opts: NVFP4Options,
    global_amax: float | None,
    rbits: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """Quantize float64 blocks ``(..., n_blocks, 16)``.

    Returns (E2M1 codes ``(..., n_blocks, 16)``, UE4M3 scale codes ``(..., n_blocks)``, float32
    decode tensor scale). ``global_amax`` None: max|x| of all blocks. ``rbits``: random bits of the
    blocks' shape for ``rounding="stochastic"``.
    """
    x = _as_float32(blocks)
    amax = np.max(np.abs(x), axis=-1, initial=_F32(0))
    g = _global_amax(amax, global_amax)
    with np.errstate(all="ignore"):  # IEEE overflow / underflow / division by zero are intended
        scaled, scale_codes, tensor_scale = _ALGORITHMS[opts.algorithm](x, amax, g, fmt)
    if np.isnan(scaled).any():
        raise ValueError(
            f"algorithm={opts.algorithm!r} is undefined for global amax {float(g)!r}: its float32 "
            'arithmetic meets 0 * Inf or 0 / 0 (NaN); use algorithm="transformer_engine"'
        )
    codes = _encode_f64(scaled.astype(np.float64), fmt.element, opts.rounding, True, rbits)
    if opts.algorithm == "modelopt":
        codes = np.where(scaled == 0, 0, codes)
    return codes.astype(np.uint8), scale_codes, _F32(tensor_scale)


def dequantize_blocks(
    codes: np.ndarray, scale_codes: np.ndarray, tensor_scale: np.float32, fmt: BlockFormat
) -> np.ndarray:
    """Exact float64 ``e2m1(code) * ue4m3(scale) * tensor_scale``; the NaN scale 0x7F gives NaN."""
    elem = fmt.element.values[codes.astype(np.int64)]
    block = fmt.scale.values[scale_codes.astype(np.int64)] * np.float64(tensor_scale)
    return elem * block[..., None]  # <= 2 + 4 + 24 significant bits: exact in float64


def _as_float32(blocks: np.ndarray) -> np.ndarray:
    if not np.isfinite(blocks).all():
        raise ValueError("NVFP4 input contains NaN or Inf; E2M1 cannot represent them")
    with np.errstate(over="ignore"):
        x = blocks.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("NVFP4 input has float64 values beyond the float32 range")
    return x


def _global_amax(amax: np.ndarray, given: float | None) -> np.float32:
    if given is None:
        return np.max(amax, initial=_F32(0))
    with np.errstate(over="ignore"):
        g = _F32(float(given))
    if not (np.isfinite(g) and g >= 0):
        raise ValueError(f"global_amax must be finite in float32 and >= 0, got {given!r}")
    return g


def _scale_code(s: np.ndarray, fmt: BlockFormat) -> tuple[np.ndarray, np.ndarray]:
    """UE4M3 codes (RNE, saturating) of float32 block scales, and their float32 values."""
    codes = _encode_f64(s.astype(np.float64), fmt.scale, "nearest_even", True)
    return codes, fmt.scale.values[codes].astype(np.float32)


def _transformer_engine(
    x: np.ndarray, amax: np.ndarray, g: np.float32, fmt: BlockFormat
) -> _Result:
    e_max, s_max = _F32(fmt.element.max), _F32(fmt.scale.max)
    s_enc = _ONE if g == 0 else np.minimum(s_max * e_max / g, _FP32_MAX)
    s_dec = _ONE / s_enc
    sb = np.minimum(amax * (s_enc * (_ONE / e_max)), _FP32_MAX)
    codes, sv = _scale_code(np.minimum(sb, s_max), fmt)
    enc = np.minimum(_ONE / (sv * s_dec), _FP32_MAX)
    return x * enc[..., None], codes, s_dec


def _torchao(x: np.ndarray, amax: np.ndarray, g: np.float32, fmt: BlockFormat) -> _Result:
    e_max, s_max = _F32(fmt.element.max), _F32(fmt.scale.max)
    s = _nonzero(g / (s_max * e_max))
    tiny = _F32(2.0 ** (1 - fmt.scale.bias))  # finfo(float8_e4m3fn).tiny, torchao's E4M3_EPS
    codes, sv = _scale_code(np.clip((amax / e_max) / s, tiny, s_max), fmt)
    return x * ((_ONE / s) / sv)[..., None], codes, s


def _modelopt(x: np.ndarray, amax: np.ndarray, g: np.float32, fmt: BlockFormat) -> _Result:
    e_max, s_max = _F32(fmt.element.max), _F32(fmt.scale.max)
    s = _nonzero(g / (e_max * s_max))
    t = amax / (e_max * s)
    t = np.where(t == 0, _ONE, t)
    codes, sv = _scale_code(np.clip(t, _F32(fmt.scale.smallest_positive), s_max), fmt)
    return x / (sv * s)[..., None], codes, s


def _nonzero(s: np.float32) -> np.float32:
    """lowbit's guard for a zero float32 tensor scale (the peers would divide by it)."""
    return _ONE if s == 0 else s


_ALGORITHMS = {
    "transformer_engine": _transformer_engine,
    "torchao": _torchao,
    "modelopt": _modelopt,
}
