"""Post-training quantization methods; each module has its math in its docstring.

``run_method`` is what ``model.quantize_model`` calls.
"""

from __future__ import annotations


def run_method(model, targets, method, wspec, aspec, rot, calibration, opts, progress=True):
    from . import gptq, rtn

    use_gptq = method in ("gptq", "mrgptq") or (method == "quarot" and opts.get("gptq"))
    if method in ("smoothquant", "awq"):
        from importlib import import_module

        import_module(f".{method}", __name__).apply(model, targets, wspec, aspec, rot,
                                                    calibration, opts, progress)
    elif use_gptq and wspec is not None:
        gptq.apply(model, targets, wspec, aspec, rot, calibration, opts, progress)
    else:
        rtn.apply(model, targets, wspec, aspec, rot, progress)
