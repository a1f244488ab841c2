"""``QuantizedTensor``: the codes, scales and metadata that ``quantize`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class QuantizedTensor:
    """A tensor in a block format, one unpacked code per element.

    Attributes:
        fmt: block format name.
        codes: uint8, the input's shape; one element code per element in the format's low bits.
        scales: one scale per block along ``axis``: shape = input shape with ``axis`` replaced by
            the number of blocks. uint8 codes for mx (E8M0), nvfp4 (UE4M3) and hif4 (E6M2);
            float32 decode-convention scale values (x ~= code_value * scale) for absmax formats
            (None when unscaled).
        tensor_scale: float32 decode-convention tensor scale (nvfp4: global_amax / 2688), else None.
        micro: hif4 only: uint8 0/1 bits, shape ``scales.shape + (24,)``: ``[..., :8]`` is E1_8 for
            element groups of 8 (group 0 first), ``[..., 8:]`` E1_16 for groups of 4; else None.
        axis: the quantized (blocked) axis, normalised to be non-negative.
        block_size: elements per block along ``axis`` (absmax per channel: the axis length).
        pad: zeros appended along ``axis`` to complete the last block (not kept in ``codes``).
        prescale: the MX pre-scale alpha (elements were quantized from alpha * x; dequantize
            divides by alpha), else None.
        options: the resolved options that produced it (scale rule, rounding, preset, ...).
    """

    fmt: str
    codes: np.ndarray
    scales: np.ndarray | None
    axis: int
    block_size: int
    tensor_scale: np.float32 | None = None
    micro: np.ndarray | None = None
    pad: int = 0
    prescale: float | None = None
    options: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)
