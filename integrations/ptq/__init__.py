"""Post-training quantization methods; each module has its math in its docstring.

``run_method`` is what ``model.quantize_model`` calls; ``METHODS`` lists the names it accepts.
``quarot`` (``fuse_rotation``), ``spinquant`` and ``flatquant`` change the model before
quantizing it: the first two fuse a residual-stream rotation into the weights (``rot`` gives
its kind, ``global`` or ``block``), FlatQuant installs learned online transforms (``block``:
block-diagonal, else Kronecker). For these three the method option ``rotation`` (``global`` /
``block``, with ``rotation_size``) overrides ``rot``, so ``lowbit study ptq -M rotation=block``
selects the block-aligned variants.
"""

from __future__ import annotations

METHODS = ("rtn", "gptq", "mrgptq", "smoothquant", "awq", "quarot", "spinquant", "flatquant")


def run_method(model, targets, method, wspec, aspec, rot, calibration, opts, progress=True):
    from importlib import import_module

    from . import gptq, rtn

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method in ("quarot", "spinquant", "flatquant") and opts.get("rotation"):
        rot = _rotation_option(opts, wspec)
    if method in ("quarot", "spinquant"):
        rot = rot or {"kind": "global", "seed": int(opts.get("seed", 0))}
        module = "fuse_rotation" if method == "quarot" else method
        import_module(f".{module}", __name__).apply(model, targets, wspec, aspec, rot,
                                                    calibration, opts, progress)
    elif method in ("smoothquant", "awq", "flatquant"):
        import_module(f".{method}", __name__).apply(model, targets, wspec, aspec, rot,
                                                    calibration, opts, progress)
    elif method in ("gptq", "mrgptq") and wspec is not None:
        gptq.apply(model, targets, wspec, aspec, rot, calibration, opts, progress)
    else:
        rtn.apply(model, targets, wspec, aspec, rot, progress)


def _rotation_option(opts: dict, wspec) -> dict:
    kind = opts["rotation"]
    if kind == "global":
        return {"kind": "global", "seed": int(opts.get("seed", 0))}
    if kind == "block":
        size = opts.get("rotation_size") or (wspec.block_size if wspec is not None else None)
        return {"kind": "block", "size": int(size or 32)}
    raise ValueError(f"method option rotation must be 'global' or 'block', got {kind!r}")
