"""RTN: round to nearest, block by block, with the format's own scale rule.

For ``W (N, K)`` cut into blocks of ``B`` along K (the reduction dim), each block gets the scale
its format's rule gives from the block maximum (MX: E8M0 ``2^(floor(log2 amax) - emax_elem)``
under the OCP floor rule, or ceil/rceil/even; NVFP4: the TE two-level FP32 tensor scale and
UE4M3 block scale; HiF4: E6M2 plus micro-exponents; INT/HiF8: float32 ``amax / target`` per
channel, group or tensor) and every element is rounded to the nearest grid value:

    W_q = dequantize(quantize(W R)),   R = I or a rotation (``hadamard``).

The MX pre-scale is an option of the spec (``prescale=0.75``, or ``prescale_search=true`` for a
per-tensor search of alpha by weight MSE). Activations are quantized on the fly per token, in
blocks along K, by ``QuantLinear``. No calibration data is used.
"""

from __future__ import annotations

from ..qlinear import QuantLinear


def apply(model, targets: dict, wspec, aspec, rot, progress: bool = True) -> None:
    from ..model import set_module

    items = list(targets.items())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="RTN", leave=False)
    for name, lin in items:
        set_module(model, name, QuantLinear.from_linear(lin, wspec, aspec, rot))
