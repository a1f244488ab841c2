"""FlatQuant (``ptq.flatquant``): keep-best training on the layer-output MSE, non-finite losses,
save/load of FlatQuant models, export refusal; tiny random Llama models."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from test_integrations_model import logits, tiny  # noqa: E402
from test_ptq_rotations import CALIB, varied  # noqa: E402

from lowbit.integrations.fakequant import parse_spec  # noqa: E402
from lowbit.integrations.model import (  # noqa: E402
    CONFIG_NAME,
    load_quantized,
    quant_linears,
    quantize_model,
    save_quantized,
)
from lowbit.integrations.ptq import flatquant  # noqa: E402
from lowbit.integrations.ptq.calibrate import capture_inputs, layer_forward  # noqa: E402


def setup_layer(kind: str = "kron", spec: str = "mxfp4"):
    """Layer 0 of a tiny Llama with FlatLinears installed: (flats, run, reference outputs)."""
    m = varied("llama", init=0.1)
    layer = m.model.layers[0]
    named = {f"model.layers.0.{n}": mod for n, mod in layer.named_modules()
             if isinstance(mod, torch.nn.Linear)}
    inputs = capture_inputs(m, layer, CALIB)
    with torch.no_grad():
        ref = [layer_forward(layer, it) for it in inputs]
    s = parse_spec(spec)
    flats = flatquant.wrap_layer(m, named, s, s, kind, 32)

    def run():
        return [layer_forward(layer, it) for it in inputs]

    return layer, flats, run, ref


def trained(flats) -> list:
    return [q.detach().clone() for f in flats.values() for q in f.parameters()
            if q.requires_grad]


def layer_mse(run, ref) -> float:
    with torch.no_grad():
        return flatquant._layer_loss(run(), ref).item()


@pytest.mark.parametrize("kind", ["kron", "block"])
def test_flatquant_training_reduces_layer_mse(kind):
    layer, flats, run, ref = setup_layer(kind)
    best, losses = flatquant.train_layer(layer, flats, run, ref, steps=12, lr=1e-2)
    assert min(losses[-3:]) < losses[0] and best == min(losses)


@pytest.mark.parametrize("kind", ["kron", "block"])
def test_best_loss_not_above_initial_and_restored(kind):
    layer, flats, run, ref = setup_layer(kind)
    best, losses = flatquant.train_layer(layer, flats, run, ref, steps=6, lr=1e-2)
    assert len(losses) == 7
    assert best <= losses[0]
    assert best == min(losses)
    assert layer_mse(run, ref) == best  # the best step's parameters are the ones left


@pytest.mark.parametrize("kind", ["kron", "block"])
def test_huge_lr_never_worse_than_start(kind):
    """A learning rate that wrecks the transforms: every step is worse than the start, so only
    keep-best leaves the frozen layer as good as the untrained one."""
    layer, flats, run, ref = setup_layer(kind)
    start = layer_mse(run, ref)
    best, losses = flatquant.train_layer(layer, flats, run, ref, steps=4, lr=50.0)
    assert losses[0] == start
    assert all(not (v <= start) for v in losses[1:])  # training only made it worse (or NaN)
    assert best == start
    for f in flats.values():
        f.freeze()
    _, flats0, run0, ref0 = setup_layer(kind)
    for f in flats0.values():
        f.freeze()
    assert layer_mse(run, ref) <= layer_mse(run0, ref0)


def test_non_finite_loss_stops_and_keeps_best():
    layer, flats, run, ref = setup_layer()
    calls = []

    def poisoned():
        calls.append(None)
        outs = run()
        return [o * math.nan for o in outs] if len(calls) == 3 else outs

    best, losses = flatquant.train_layer(layer, flats, poisoned, ref, steps=6, lr=1e-2)
    assert len(losses) == 3 and math.isnan(losses[-1])
    assert best == min(losses[:2])
    assert all(torch.isfinite(q).all() for q in trained(flats))
    assert layer_mse(run, ref) == best


def test_non_finite_from_the_start_keeps_the_start():
    layer, flats, run, ref = setup_layer()
    before = trained(flats)
    best, losses = flatquant.train_layer(
        layer, flats, lambda: [o * math.inf for o in run()], ref, steps=4, lr=1e-2)
    assert best == math.inf and len(losses) == 1
    for a, b in zip(before, trained(flats), strict=True):
        assert torch.equal(a, b)


def test_singular_transform_gives_non_finite_weight_not_an_error():
    t = flatquant.Transform(64, "kron")
    with torch.no_grad():
        t.p1.zero_()
    assert not torch.isfinite(t.weight(torch.ones(4, 64))).all()


def test_clip_lr_option_checked():
    with pytest.raises(ValueError, match="clip_lr"):
        quantize_model(tiny(), weights="mxfp4", method="flatquant", calibration=CALIB,
                       method_options={"clip_lr": 0}, progress=False)


@pytest.mark.parametrize("rotation,fmt", [(None, "mxfp4"), ("block", "mxfp4"),
                                          (None, "nvfp4"), (None, "mxfp8_e4m3")])
def test_flatquant_save_load_bit_identical(tmp_path, rotation, fmt):
    m = tiny()
    quantize_model(m, weights=fmt, activations=fmt, method="flatquant", calibration=CALIB,
                   rotation=rotation, method_options={"steps": 2}, progress=False)
    out = logits(m)
    save_quantized(m, str(tmp_path))
    with open(tmp_path / CONFIG_NAME) as fh:
        doc = json.load(fh)
    assert len(doc["flat"]) == 14 and not doc["modules"]
    m2 = load_quantized(str(tmp_path))
    assert torch.equal(logits(m2), out)
    attn = m2.model.layers[1].self_attn
    assert isinstance(attn.q_proj, flatquant.FlatLinear) and attn.q_proj.frozen
    assert attn.q_proj.transform is attn.v_proj.transform
    assert attn.o_proj.transform is not attn.q_proj.transform
    assert len(quant_linears(m2)) == 14


def test_unfrozen_flatlinear_is_not_saved(tmp_path):
    m = tiny()
    named = {n: mod for n, mod in m.named_modules()
             if isinstance(mod, torch.nn.Linear) and n.startswith("model.layers.0.")}
    flatquant.wrap_layer(m, named, parse_spec("mxfp4"), None, "kron", None)
    with pytest.raises(ValueError, match="freeze"):
        save_quantized(m, str(tmp_path))


def test_export_ct_refuses_flatquant(tmp_path):
    pytest.importorskip("compressed_tensors")
    from lowbit.integrations.export_ct import export_compressed_tensors

    m = quantize_model(tiny(), weights="mxfp4", method="flatquant", calibration=CALIB,
                       method_options={"steps": 1}, progress=False)
    save_quantized(m, str(tmp_path / "q"))
    for model in (m, load_quantized(str(tmp_path / "q"))):
        with pytest.raises(ValueError, match="FlatQuant"):
            export_compressed_tensors(model, str(tmp_path / "ct"), progress=False)
