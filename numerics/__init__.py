"""lowbit.numerics: the bit-exact reference for low-precision number formats.

    from lowbit import numerics as ln
    ln.formats()                       # every element and block format name
    codes = ln.encode(x, "e4m3")       # element codes (uint8)
    vals = ln.decode(codes, "e4m3")    # float32 values
    q = ln.quantize(x, "mxfp4")        # codes, E8M0 scales, ... (QuantizedTensor)
    y = ln.dequantize(q)

Everything here is exact: inputs convert to float64 without rounding and every rounding decision
is an exact comparison (see ``codec``). Other backends are tested against this package.
"""

from .api import dequantize, quantize
from .codec import ROUNDING_MODES, decode, encode
from .formats import BLOCK_FORMATS, BlockFormat, block_format, formats
from .mx import MX_PRESETS, SCALE_RULES, MXOptions
from .specs import ELEMENT_FORMATS, ElementFormat, element_format
from .tensor import QuantizedTensor

__all__ = [
    "BLOCK_FORMATS",
    "ELEMENT_FORMATS",
    "MX_PRESETS",
    "ROUNDING_MODES",
    "SCALE_RULES",
    "BlockFormat",
    "ElementFormat",
    "MXOptions",
    "QuantizedTensor",
    "block_format",
    "decode",
    "dequantize",
    "element_format",
    "encode",
    "formats",
    "quantize",
]
