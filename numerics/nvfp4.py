"""NVFP4 (placeholder: being implemented)."""
OPTION_NAMES = ("algorithm",)
NVFP4_PRESETS: dict = {}


def nvfp4_options(preset=None, **kw):
    raise NotImplementedError


def quantize_blocks(blocks, fmt, opts, global_amax, rbits):
    raise NotImplementedError


def dequantize_blocks(codes, scales, tensor_scale, fmt):
    raise NotImplementedError
