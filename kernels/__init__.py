"""lowbit.kernels: fast backends of ``lowbit.numerics``, bit-identical to it.

``ln.quantize / ln.dequantize / ln.encode(..., backend=...)`` pick them through ``dispatch``:
"numba" (CPU, these modules), "cupy" (GPU), or "reference". The numba kernels, by concern:

* ``core``: bit casts, input loading (float16/bfloat16/float32/float64), and the two generic
  element rounders built from a format's spec: ``encode_one`` (binade table from
  ``ElementFormat.values``: every format and rounding mode) and ``encode_fast`` (arithmetic on
  exp/man bits for IEEE-like floats and integers, branch-free so loops vectorize);
* ``elementwise``: element casts; ``mx``: OCP MX; ``nvfp4``; ``hif4``; ``absmax``: INT8 / INT4 /
  HiF8; ``packing``: pack / unpack of element codes; ``fused``: quantize straight to packed
  bytes; ``layout``: blocked axis moved last.

Hot loops run one pass per block (amax, scale, codes while the block is in cache) with
constant trip counts on whole blocks, integer steps in int32 (``core.i32_*``: Numba would widen
them to int64 and halve the SIMD lanes) and no ``fastmath``.

Every kernel is ``cache=True`` (compiled once per machine into ``__pycache__``) and parallel
over blocks with ``numba.prange``. Note Numba's cache is keyed on the file that defines a
kernel, not on the helpers it inlines: after editing ``core.py``, delete
``kernels/__pycache__/*.nb[ic]`` (or set ``NUMBA_CACHE_DIR``) so the kernels recompile.
"""
