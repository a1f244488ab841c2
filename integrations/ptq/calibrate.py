"""Layer-by-layer calibration over the decoder layers of a transformers causal LM.

``sequential(model, calibration, targets, fn)`` captures the inputs of the first decoder layer
for every calibration batch (a forward pre-hook stops the model there), then for each layer in
turn calls ``fn(layer, named_targets, run)`` (``run()`` replays the layer on the stored inputs,
so hooks installed by ``fn`` see its linear layers' inputs), lets ``fn`` replace modules, and
replays the layer once more to produce the next layer's inputs. So layer ``i`` is calibrated on
what the already-quantized layers ``< i`` produce, and the model exists once in memory.
"""

from __future__ import annotations

import torch
from torch import nn


class _Stop(Exception):
    pass


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for path in ("model.layers", "model.language_model.layers", "model.decoder.layers",
                 "transformer.h", "layers"):
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return path, mod
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def batches(calibration, batch_size: int = 4):
    ids = calibration if torch.is_tensor(calibration) else torch.as_tensor(calibration)
    if ids.dim() == 1:
        ids = ids[None]
    for i in range(0, ids.shape[0], batch_size):
        yield ids[i:i + batch_size]


@torch.no_grad()
def capture_inputs(model, layer: nn.Module, calibration, batch_size: int = 4):
    store = []

    def hook(mod, args, kwargs):
        if args:
            h, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            h, rest = kwargs.pop("hidden_states"), ()
        store.append([h, rest, dict(kwargs)])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for ids in batches(calibration, batch_size):
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return store


def layer_forward(layer, item):
    h, rest, kwargs = item
    out = layer(h, *rest, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def sequential(model, calibration, targets: dict, fn, progress: bool = True,
               batch_size: int = 4) -> set[str]:
    """Run ``fn`` layer by layer (module docstring); return the target names it was offered."""
    prefix, layers = decoder_layers(model)
    inputs = capture_inputs(model, layers[0], calibration, batch_size)
    seen: set[str] = set()
    it = range(len(layers))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="calibrating layers", leave=False)
    for i in it:
        layer = layers[i]
        lp = f"{prefix}.{i}."
        named = {n: m for n, m in targets.items() if n.startswith(lp)}
        seen |= set(named)

        def run(layer=layer):
            return [layer_forward(layer, item) for item in inputs]

        fn(layer, named, run)
        outs = run()
        for item, o in zip(inputs, outs, strict=True):
            item[0] = o
    return seen


class InputStats:
    """Forward hooks accumulating per-linear input statistics: the Gram matrix ``sum x^T x``
    (GPTQ's Hessian up to 2/n; float32 matmuls, so ``gram`` is float32), per-channel ``max |x|``
    and ``sum |x|`` (``channel``), and a token sample (``sample`` tokens).

    Linears called one after another on the same input tensor with the same rotation (q/k/v,
    gate/up) share one ``gram`` tensor object, computed once.
    """

    def __init__(self, modules: dict, rotations: dict | None = None, gram: bool = True,
                 sample: int = 0, channel: bool = True):
        from .hadamard import rotate

        self.stats = {n: {"n": 0} for n in modules}
        self.handles = []
        self._last = None  # (input tensor, rotation, name) of the latest hook call
        for name, mod in modules.items():
            rot = (rotations or {}).get(name)

            def hook(m, args, out, name=name, rot=rot):
                raw = args[0]
                x = raw.detach().reshape(-1, raw.shape[-1]).float()
                if rot:
                    x = rotate(x, rot)
                s = self.stats[name]
                s["n"] += x.shape[0]
                last = self._last
                shared = last is not None and last[0] is raw and last[1] == rot
                if gram:
                    owner = last[2] if shared else name
                    if s.setdefault("owner", owner) != owner:
                        raise RuntimeError(f"{name}: input shared inconsistently across calls")
                    if owner != name:
                        s["gram"] = self.stats[owner]["gram"]
                    else:
                        g = x.T @ x
                        s["gram"] = g if "gram" not in s else s["gram"].add_(g)
                self._last = (raw, rot, s.get("owner", name))
                if channel:
                    a = x.abs()
                    s["max"] = a.amax(0) if "max" not in s else torch.maximum(s["max"], a.amax(0))
                    s["sum"] = a.sum(0) if "sum" not in s else s["sum"] + a.sum(0)
                if sample:
                    have = s.get("x")
                    if have is None or have.shape[0] < sample:
                        take = x[: sample - (0 if have is None else have.shape[0])]
                        s["x"] = take if have is None else torch.cat([have, take])

            self.handles.append(mod.register_forward_hook(hook))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        self._last = None
