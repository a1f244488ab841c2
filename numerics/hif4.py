"""HiF4 (placeholder: being implemented)."""
OPTION_NAMES = ()


def hif4_options(**kw):
    raise NotImplementedError


def quantize_blocks(blocks, fmt, opts, rbits):
    raise NotImplementedError


def dequantize_blocks(codes, scales, micro, fmt):
    raise NotImplementedError
