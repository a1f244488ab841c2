"""lowbit.numerics: the bit-exact reference for low-precision number formats.

    from lowbit import numerics as ln
    ln.formats()                       # every element and block format name
    codes = ln.encode(x, "e4m3")       # element codes (uint8)
    vals = ln.decode(codes, "e4m3")    # float32 values
    q = ln.quantize(x, "mxfp4")        # codes, E8M0 scales, ... (QuantizedTensor)
    y = ln.dequantize(q)
    p = ln.pack(q)                     # storage bytes (FP4 two per byte, even index low nibble)
    report = ln.compare(x, their_codes, their_scales, "mxfp4")   # validate another kernel

Everything here is exact: inputs convert to float64 without rounding and every rounding decision
is an exact comparison (see ``codec``). Other backends are tested against this package.
"""

from .api import dequantize, quantize
from .blockdot import ACCUMULATIONS, dot, dot_fraction, matmul, matmul_fraction
from .codec import ROUNDING_MODES, decode, encode
from .compare import Comparison, compare
from .conformance import FormatReport, run_conformance
from .formats import BLOCK_FORMATS, BlockFormat, block_format, formats
from .golden import check_golden, golden_vectors
from .mx import MX_PRESETS, SCALE_RULES, MXOptions
from .nvfp4 import NVFP4_PRESETS
from .packing import PackedTensor, pack, swizzle_scales, unpack, unswizzle_scales
from .prescale import PrescaleSearch, search_prescale
from .specs import ELEMENT_FORMATS, ElementFormat, element_format
from .tensor import QuantizedTensor

__all__ = [
    "ACCUMULATIONS",
    "BLOCK_FORMATS",
    "ELEMENT_FORMATS",
    "MX_PRESETS",
    "NVFP4_PRESETS",
    "ROUNDING_MODES",
    "SCALE_RULES",
    "BlockFormat",
    "Comparison",
    "ElementFormat",
    "FormatReport",
    "MXOptions",
    "PackedTensor",
    "PrescaleSearch",
    "QuantizedTensor",
    "block_format",
    "check_golden",
    "compare",
    "decode",
    "dequantize",
    "dot",
    "dot_fraction",
    "element_format",
    "encode",
    "formats",
    "golden_vectors",
    "matmul",
    "matmul_fraction",
    "pack",
    "quantize",
    "run_conformance",
    "search_prescale",
    "swizzle_scales",
    "unpack",
    "unswizzle_scales",
]
