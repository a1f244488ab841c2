#!/usr/bin/env python3
"""Compile every generated CUDA source of the CuPy kernels with NVRTC for sm_90, without a GPU.

    pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12      # no driver or device needed
    python bench/cuda_compile_check.py

Catches syntax and type errors of the generated kernels (every scheme, input and output dtype,
aligned and padded rows, packing, rounding mode and fast-encoder variant) before device time is
spent; ``bench/gpu_check.py`` on a GPU is the bit-exactness check. The compute capability is
taken as 90, so the sm_89+ FP8 conversion path is compiled too.
"""

from __future__ import annotations

import sys

from cupy_backends.cuda.libs import nvrtc

from lowbit import numerics as ln
from lowbit.kernels import cupy_absmax, cupy_core, cupy_elementwise, cupy_hif4, cupy_mx, cupy_nvfp4
from lowbit.numerics import hif4, mx, nvfp4

OPTIONS = ["--std=c++14", "-fmad=false", "-arch=compute_90", "-ftz=true"]


def compile_source(src: str) -> None:
    prog = nvrtc.createProgram(src, "k.cu", [], [])
    try:
        nvrtc.compileProgram(prog, OPTIONS)
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(nvrtc.getProgramLog(prog)) from err


def sources():
    for fmt in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"):
        spec = ln.block_format(fmt)
        pack = cupy_core.pack_bits(True, spec.element.bits)
        for kind in (0, 1, 2, 3):
            for length in (64, 100):
                for p in (0, pack):
                    for rule in ("floor", "rceil"):
                        for inf in ("nan", "max_scale"):
                            opts = mx.mx_options(scale_rule=rule, inf_policy=inf)
                            yield cupy_mx.quant_source(spec, opts, kind, length, None, p, False)
        for out in (0, 1, 2, 3):
            yield cupy_mx.dequant_source(spec, 64, out, None)
            yield cupy_mx.dequant_source(spec, 100, out, 0.75)
    spec = ln.block_format("nvfp4")
    for kind in (0, 1, 2, 3):
        for length in (64, 100):
            for p in (0, 4):
                for algo in nvfp4.ALGORITHMS:
                    opts = nvfp4.nvfp4_options(algorithm=algo)
                    yield cupy_nvfp4.quant_source(spec, opts, kind, length, p, False)
    for out in (0, 1, 2, 3):
        for length in (64, 100):
            yield cupy_nvfp4.dequant_source(spec, length, out)
    for name in ln.ELEMENT_FORMATS:
        el = ln.element_format(name)
        for kind in (0, 1, 2, 3):
            for rounding in ("nearest_even", "nearest_away"):
                yield cupy_elementwise.encode_source(el, kind, 64, rounding, el.saturate)
    for fmt in ("int8", "int4", "hif8"):
        spec = ln.block_format(fmt)
        for kind in (0, 1, 2, 3):
            for rounding in ("nearest_even", "nearest_away", "stochastic"):
                yield cupy_absmax._source(spec, spec.element, True, rounding, kind)
    for out in (0, 1, 2, 3):
        yield cupy_core.prelude(0, out) + cupy_absmax.DEQUANT_SRC + cupy_absmax.DEQUANT8_SRC
    spec = ln.block_format("hif4")
    for kind in (0, 1, 2, 3):
        for rounding in ("nearest_away", "nearest_even", "toward_zero", "stochastic"):
            for extra in ({}, {"negative_zero": False, "scale_rounding": "nearest_away"}):
                opts = hif4.hif4_options(rounding=rounding, **extra)
                for length in (128, 100):
                    for p in (False, True):
                        yield cupy_hif4.quant_source(spec, opts, kind, length, p)
    for out in (0, 1, 2, 3):
        for length in (128, 100):
            yield cupy_hif4.dequant_source(spec, length, out)


def main() -> int:
    cupy_core.compute_capability = lambda: 90
    n = 0
    for src in sources():
        compile_source(src)
        n += 1
    print(f"compiled {n} generated CUDA sources for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
