"""Block (scaled) formats: every one is a ``BlockFormat`` value that names its element format,
its scaling scheme, its block size and its scale format. Generic code in ``mx``, ``nvfp4``,
``hif4`` and ``absmax`` (one module per scaling scheme, not per format) reads these specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .specs import (
    E1M2,
    E2M1,
    E2M3,
    E3M2,
    E4M3,
    E5M2,
    E6M2,
    E8M0,
    ELEMENT_FORMATS,
    HIF8,
    INT4,
    INT8,
    INT8_1P6,
    UE4M3,
    ElementFormat,
)

Scheme = Literal["mx", "nvfp4", "hif4", "absmax"]


@dataclass(frozen=True)
class BlockFormat:
    """A scaled format.

    Attributes:
        name: registry name.
        element: element format of the codes.
        scheme: ``"mx"`` (one E8M0 power-of-two scale per block, OCP MX v1.0), ``"nvfp4"``
            (UE4M3 block scale and an FP32 tensor scale), ``"hif4"`` (E6M2 scale plus 1-bit
            micro-exponents per 8 and per 4 elements), ``"absmax"`` (float32 scale = amax / target
            per channel, per group or per tensor; INT8/INT4/HiF8).
        block_size: elements per block along the quantized axis; None: set by the granularity.
        scale: format of the per-block scale codes, or None for float32 scale values.
        description: one line for tables and docs.
    """

    name: str
    element: ElementFormat
    scheme: Scheme
    block_size: int | None
    scale: ElementFormat | None
    description: str = ""

    @property
    def bits_per_element(self) -> float:
        """Storage bits per element including block metadata (absmax: per-block scale excluded)."""
        if self.block_size is None:
            return float(self.element.bits)
        meta = {"mx": 8, "nvfp4": 8, "hif4": 32}.get(self.scheme, 0)
        return self.element.bits + meta / self.block_size


def _mx(name: str, elem: ElementFormat, desc: str) -> BlockFormat:
    return BlockFormat(name, elem, "mx", 32, E8M0, desc)


BLOCK_FORMATS: dict[str, BlockFormat] = {
    f.name: f
    for f in (
        _mx("mxfp8_e4m3", E4M3, "OCP MXFP8 (E4M3 elements, 32-blocks, E8M0 scale)"),
        _mx("mxfp8_e5m2", E5M2, "OCP MXFP8 (E5M2 elements, 32-blocks, E8M0 scale)"),
        _mx("mxfp6_e3m2", E3M2, "OCP MXFP6 (E3M2 elements, 32-blocks, E8M0 scale)"),
        _mx("mxfp6_e2m3", E2M3, "OCP MXFP6 (E2M3 elements, 32-blocks, E8M0 scale)"),
        _mx("mxfp4", E2M1, "OCP MXFP4 (E2M1 elements, 32-blocks, E8M0 scale)"),
        _mx("mxint8", INT8_1P6, "OCP MXINT8 (int8 / 64 elements, 32-blocks, E8M0 scale)"),
        BlockFormat(
            "nvfp4", E2M1, "nvfp4", 16, UE4M3,
            "NVIDIA NVFP4 (E2M1, 16-blocks, UE4M3 block scale, FP32 tensor scale)",
        ),
        BlockFormat(
            "hif4", E1M2, "hif4", 64, E6M2,
            "Huawei HiFloat4 (S1P2, 64-blocks, E6M2 + 8 + 16 micro-exponent bits)",
        ),
        BlockFormat("hif8", HIF8, "absmax", None, None, "HiFloat8, unscaled or float32-scaled"),
        BlockFormat("int8", INT8, "absmax", None, None, "symmetric INT8, per channel or group"),
        BlockFormat("int4", INT4, "absmax", None, None, "symmetric INT4, per channel or group"),
    )
}


def block_format(fmt: str | BlockFormat) -> BlockFormat:
    """Look up a block format by name (or pass a spec through)."""
    if isinstance(fmt, BlockFormat):
        return fmt
    try:
        return BLOCK_FORMATS[fmt]
    except KeyError:
        names = ", ".join(sorted(BLOCK_FORMATS))
        raise ValueError(f"unknown block format {fmt!r}; block formats: {names}") from None


def formats(kind: Literal["all", "element", "block"] = "all") -> list[str]:
    """Names of the element formats, the block formats, or both (sorted, each once)."""
    names: set[str] = set()
    if kind in ("all", "element"):
        names |= set(ELEMENT_FORMATS)
    if kind in ("all", "block"):
        names |= set(BLOCK_FORMATS)
    if not names:
        raise ValueError(f"kind must be 'all', 'element' or 'block', got {kind!r}")
    return sorted(names)
