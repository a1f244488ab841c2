"""Fixed-scale rounding for any block format: the building block of GPTQ-type algorithms.

``BlockGrid(W, spec)`` quantizes ``W (N, K)`` once (along K) to get the structure of the result
(codes, scales, micro-exponents, tensor scale). The *effective scale* of every element is read
back generically by decoding the tensor with every code set to the element format's code for
1.0: ``s_eff = dequantize(q with codes := code(1.0))``. It contains the block scale, the NVFP4
tensor scale, the HiF4 micro-exponents and the MX pre-scale 1/alpha. Then an element ``v`` of
column ``j`` rounds with its block's fixed scale as

    code = encode(v / s_eff[:, j], element, saturate=True),   value = decode(code) * s_eff[:, j],

with the format's element rounding mode. ``refresh_block`` recomputes the scales of one block
from current (error-updated) values, for the dynamic-scale variant of GPTQ; the NVFP4 tensor
scale stays the one fixed from the original ``W`` (``global_amax``). ``result()`` returns the
``QuantizedTensor`` (codes written so far), whose ``dequantize`` is the stored weight.
"""

from __future__ import annotations

import copy

import numpy as np

from ..fakequant import QuantSpec, dequantize_array, quantize_array


class BlockGrid:
    def __init__(self, w: np.ndarray, spec: QuantSpec, **extra):
        from lowbit import numerics as ln

        self.spec = spec
        self.w0 = np.asarray(w, dtype=np.float32)
        self.extra = dict(extra)
        bf = ln.block_format(spec.fmt)
        if bf.scheme == "nvfp4" and "global_amax" not in spec.options:
            self.extra["global_amax"] = float(np.max(np.abs(self.w0))) if self.w0.size else 0.0
        self.q = quantize_array(self.w0, spec, **self.extra)
        self.elem = bf.element
        self.rounding = self.q.options.get("rounding") or self.elem.rounding
        self.one = int(ln.encode(np.array([1.0], np.float64), self.elem, backend="reference")[0])
        self.block = self.q.block_size
        self.s_eff = self._effective(self.q)

    def _effective(self, q) -> np.ndarray:
        q1 = copy.copy(q)
        q1.codes = np.full_like(q.codes, self.one)
        return dequantize_array(q1, np.float64)

    def refresh_block(self, blk: int, values: np.ndarray) -> None:
        """Recompute block ``blk``'s scales from ``values`` (N, cols of that block)."""
        lo = blk * self.block
        hi = min(lo + self.block, self.w0.shape[1])
        sub = quantize_array(np.asarray(values, np.float32), self.spec, **self.extra)
        if self.q.scales is not None and sub.scales is not None and \
                self.q.scales.shape[-1] > 1:
            self.q.scales[:, blk] = sub.scales[:, 0]
        if self.q.micro is not None:
            self.q.micro[:, blk] = sub.micro[:, 0]
        self.s_eff[:, lo:hi] = self._effective(sub)

    def round_columns(self, cols, v: np.ndarray) -> np.ndarray:
        """Round ``v (N, len(cols))`` with the fixed scales of ``cols``; store and return values."""
        from lowbit import numerics as ln

        s = self.s_eff[:, cols]
        safe = np.where(s != 0, s, 1.0)
        r = np.where(s != 0, np.asarray(v, np.float64) / safe, 0.0)
        codes = ln.encode(r, self.elem, rounding=self.rounding, saturate=True,
                          backend="reference" if r.size < 4096 else None)
        self.q.codes[:, cols] = codes
        return ln.decode(codes, self.elem, dtype=np.float64) * s

    def result(self):
        return self.q
