"""PTQ algorithms on small layers and tiny random models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_integrations_model import logits, tiny  # noqa: E402

from lowbit import numerics as ln  # noqa: E402
from lowbit.integrations.fakequant import fake_quant, parse_spec  # noqa: E402
from lowbit.integrations.model import quant_linears, quantize_model  # noqa: E402
from lowbit.integrations.ptq.gptq import gptq_quantize  # noqa: E402
from lowbit.integrations.ptq.grid import BlockGrid  # noqa: E402
from lowbit.integrations.ptq.hadamard import global_rotation, hadamard, rotate  # noqa: E402

FORMATS = ["mxfp4", "nvfp4", "hif4", "int4:group_size=32", "int4", "mxfp8_e4m3",
           "mxfp4:prescale=0.75", "mxfp6_e2m3:scale_rule=rceil"]


def layer_problem(n=48, k=128, t=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    # correlated inputs with a few outlier channels
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(t, k, generator=g) @ mix
    x[:, :4] *= 8
    w = torch.randn(n, k, generator=g) * 0.05
    return w, x


@pytest.mark.parametrize("fmt", FORMATS)
def test_grid_round_reproduces_rtn(fmt):
    """Fixed-scale rounding with RTN's own scales gives RTN's values."""
    spec = parse_spec(fmt)
    w, _ = layer_problem()
    grid = BlockGrid(w.numpy(), spec)
    vals = grid.round_columns(list(range(w.shape[1])), w.numpy().astype(np.float64))
    rtn = ln.dequantize(grid.result(), dtype=np.float64)
    np.testing.assert_allclose(vals, rtn, rtol=1e-6, atol=0)
    want = fake_quant(w, spec).numpy()
    assert np.mean(np.abs(rtn - want) > 1e-6 * np.abs(want).max()) < 0.01


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scales,act_order", [("dynamic", True), ("static", False),
                                              ("dynamic", False)])
def test_gptq_beats_rtn_on_layer_reconstruction(fmt, scales, act_order):
    spec = parse_spec(fmt)
    w, x = layer_problem()
    h = 2.0 * x.T.double() @ x.double() / x.shape[0]
    q, vals = gptq_quantize(w, h, spec, scales=scales, act_order=act_order)
    # the stored codes + scales dequantize to what GPTQ used
    deq = ln.dequantize(q, backend="reference")
    np.testing.assert_allclose(deq, vals, rtol=1e-6, atol=1e-12)
    rtn = fake_quant(w, spec)
    ref = x @ w.T
    e_gptq = ((x @ torch.from_numpy(deq).T - ref) ** 2).mean().item()
    e_rtn = ((x @ rtn.T - ref) ** 2).mean().item()
    assert e_gptq <= e_rtn


def test_gptq_lazy_batches_are_block_aligned_for_hif4():
    spec = parse_spec("hif4")
    w, x = layer_problem(k=192)
    h = 2.0 * x.T.double() @ x.double() / x.shape[0]
    q, vals = gptq_quantize(w, h, spec, lazy=100)  # rounded to a multiple of 64
    np.testing.assert_allclose(ln.dequantize(q, backend="reference"), vals, rtol=1e-6)


def test_gptq_nvfp4_tensor_scale_fixed_from_original_weight():
    spec = parse_spec("nvfp4")
    w, x = layer_problem()
    h = 2.0 * x.T.double() @ x.double() / x.shape[0]
    q, _ = gptq_quantize(w, h, spec)
    assert q.tensor_scale == ln.quantize(w.numpy(), "nvfp4", backend="reference").tensor_scale


def test_hadamard_orthogonal():
    for n in (16, 32, 64):
        h = hadamard(n)
        np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)
    for k in (64, 96, 576):
        r = global_rotation(k, 0)
        np.testing.assert_allclose(r @ r.T, np.eye(k), atol=1e-10)
    x = torch.randn(3, 96)
    back = rotate(rotate(x, {"kind": "block", "size": 32}), {"kind": "block", "size": 32})
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)  # H_b is symmetric: H H = I


@pytest.mark.parametrize("rotation", ["block", "global"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rotation_keeps_unquantized_model(rotation, arch):
    m = tiny(arch)
    ref = logits(m)
    quantize_model(m, rotation=rotation, progress=False)
    assert len(quant_linears(m)) == 14
    torch.testing.assert_close(logits(m), ref, atol=2e-5, rtol=1e-4)


def _kl(ref, out):
    p = torch.log_softmax(ref, -1)
    q = torch.log_softmax(out, -1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


@pytest.mark.parametrize("method,kw", [
    ("gptq", {}),
    ("mrgptq", {}),
    ("quarot", {}),
    ("rtn", {"rotation": "block"}),
])
@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=pytest.mark.slow)])
def test_methods_on_tiny_models(method, kw, arch):
    m = tiny(arch)
    ref = logits(m)
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    quantize_model(m, weights="mxfp4", activations="mxfp4", method=method, calibration=calib,
                   progress=False, **kw)
    out = logits(m)
    assert torch.isfinite(out).all()
    assert _kl(ref, out) < 0.5
    if method == "mrgptq":
        ql = m.model.layers[0].self_attn.q_proj
        assert ql.rotation == {"kind": "block", "size": 32}
        assert ql.meta["prescale"] == 0.75


@pytest.mark.slow
def test_gptq_model_better_than_rtn_on_tiny_model():
    calib = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(3))
    ref = logits(tiny())
    kls = {}
    for method in ("rtn", "gptq"):
        m = tiny()
        quantize_model(m, weights="int4", method=method, calibration=calib, progress=False)
        kls[method] = _kl(ref, logits(m))
    assert kls["gptq"] <= kls["rtn"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_smoothquant_fold_keeps_unquantized_model(arch):
    """With no quantizer the SmoothQuant folds (norm gain, up_proj rows) are exact."""
    m = tiny(arch)
    ref = logits(m)
    calib = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    quantize_model(m, activations="fp32", weights=None, method="smoothquant",
                   calibration=calib, progress=False)
    # nothing quantized: the method is skipped (no spec), so force the fold path explicitly
    from lowbit.integrations.ptq.smoothquant import fold, layer_groups, smooth_scales

    m = tiny(arch)
    for layer in m.model.layers:
        for prev, paths, kind in layer_groups(layer):
            lins = [layer.get_submodule(p) for p in paths]
            s = torch.rand(lins[0].in_features) + 0.5
            fold(prev, lins, s, kind)
            smooth_scales(torch.rand(lins[0].in_features), lins, 0.5)
    torch.testing.assert_close(logits(m), ref, atol=2e-5, rtol=1e-4)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("method,opts,fmt", [
    ("smoothquant", {}, "mxfp4"),
    ("awq", {"grid": 5, "samples": 64}, "mxfp4"),
    pytest.param("smoothquant", {"alpha": "search"}, "mxfp4", marks=SLOW),
    pytest.param("smoothquant", {}, "nvfp4", marks=SLOW),
    pytest.param("smoothquant", {}, "int4:group_size=32", marks=SLOW),
    pytest.param("awq", {"grid": 5, "samples": 64}, "nvfp4", marks=SLOW),
    pytest.param("awq", {"grid": 5, "samples": 64}, "int4:group_size=32", marks=SLOW),
])
def test_smoothquant_awq_on_tiny_model(method, opts, fmt):
    m = tiny()
    ref = logits(m)
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    quantize_model(m, weights=fmt, activations=fmt, method=method, calibration=calib,
                   method_options=opts, progress=False)
    assert len(quant_linears(m)) == 14
    out = logits(m)
    assert torch.isfinite(out).all() and _kl(ref, out) < 0.5


def test_awq_clip_search_never_worse_than_no_clip():
    from lowbit.integrations.ptq.awq import clip_search

    w, x = layer_problem()
    spec = parse_spec("mxfp4")
    wc = clip_search(w, x, spec, 32)
    ref = x @ w.T
    e_clip = ((x @ fake_quant(wc, spec).T - ref) ** 2).mean().item()
    e_rtn = ((x @ fake_quant(w, spec).T - ref) ** 2).mean().item()
    assert e_clip <= e_rtn * 1.001
