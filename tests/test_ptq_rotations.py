"""Rotations fused into the weights (QuaRot residual stream), SpinQuant and FlatQuant on tiny
random Llama / Qwen2 models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_integrations_model import logits, tiny  # noqa: E402
from test_integrations_ptq import _kl  # noqa: E402

from lowbit.integrations.fakequant import parse_spec  # noqa: E402
from lowbit.integrations.model import (  # noqa: E402
    load_quantized,
    quantize_model,
    save_quantized,
    target_linears,
)
from lowbit.integrations.ptq import flatquant, fuse_rotation, spinquant  # noqa: E402

CALIB = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))


def varied(arch="llama", tied=False, init=0.02):
    """A tiny model whose norm gains and biases are far from their defaults."""
    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              tie_word_embeddings=tied, initializer_range=init)
    torch.manual_seed(0)
    cls, cfg = ((transformers.LlamaForCausalLM, transformers.LlamaConfig) if arch == "llama"
                else (transformers.Qwen2ForCausalLM, transformers.Qwen2Config))
    m = cls(cfg(**kw)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
            elif n.endswith("bias"):
                p.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("rotation", ["global", "block"])
@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("qwen2", False)])
def test_fused_rotation_keeps_unquantized_model(rotation, arch, tied):
    m = varied(arch, tied)
    ref = logits(m)
    emb = m.get_input_embeddings().weight.detach().clone()
    quantize_model(m, method="quarot", rotation=rotation, rotation_size=16, progress=False)
    out = logits(m)
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()
    # the rotation really is in the weights
    assert not torch.allclose(m.get_input_embeddings().weight, emb, atol=1e-3)
    assert m.get_output_embeddings().weight.data_ptr() != \
        m.get_input_embeddings().weight.data_ptr()
    assert not m.config.tie_word_embeddings
    layer = m.model.layers[0]
    assert torch.equal(layer.input_layernorm.weight, torch.ones(64))
    assert torch.equal(m.model.norm.weight, torch.ones(64))
    assert layer.mlp.down_proj.rotation["kind"] == rotation
    assert layer.self_attn.q_proj.rotation is None


def test_residual_matrix_block_stays_in_blocks():
    q = fuse_rotation.residual_matrix({"kind": "block", "size": 32}, 96).numpy()
    np.testing.assert_allclose(q @ q.T, np.eye(96), atol=1e-12)
    mask = np.kron(np.eye(3), np.ones((32, 32)))
    assert np.all(q[mask == 0] == 0)
    with pytest.raises(ValueError):
        fuse_rotation.residual_matrix({"kind": "block", "size": 32}, 80)


def test_fused_rotation_save_load_roundtrip(tmp_path):
    m = varied("llama", tied=True)
    quantize_model(m, weights="mxfp4", activations="mxfp4", method="quarot", progress=False)
    out = logits(m)
    save_quantized(m, str(tmp_path))
    m2 = load_quantized(str(tmp_path))
    assert torch.equal(logits(m2), out)


def test_gemma_sandwich_norms_refused():
    cfg = transformers.Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=1, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=16)
    m = transformers.Gemma3ForCausalLM(cfg).eval()
    with pytest.raises(NotImplementedError):
        quantize_model(m, method="quarot", progress=False)


@pytest.mark.parametrize("kind", ["global", "block"])
def test_cayley_rotation_orthogonal(kind):
    r = spinquant.CayleyRotation({"kind": kind, "size": 16, "seed": 0}, 64)
    r0 = r().detach()
    ref = fuse_rotation.residual_matrix({"kind": kind, "size": 16, "seed": 0}, 64).float()
    torch.testing.assert_close(r0, ref, atol=1e-6, rtol=0)
    with torch.no_grad():
        r.x.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    q = r().detach()
    assert (q - r0).abs().max() > 0.1
    torch.testing.assert_close(q @ q.T, torch.eye(64), atol=2e-5, rtol=0)
    if kind == "block":
        assert torch.all(q[:16, 16:] == 0)


def test_spinquant_training_beats_hadamard_init():
    m = varied("llama", init=0.1)
    p = fuse_rotation.prepare(m)
    rot = {"kind": "global", "seed": 0}
    w, a = parse_spec("mxfp4"), parse_spec("mxfp4")
    q, losses = spinquant.train_rotation(m, p, target_linears(m), w, a, rot, rot, CALIB,
                                         steps=8, lr=3e-3, loss="kl", progress=False)
    torch.testing.assert_close(q @ q.T, torch.eye(64, dtype=q.dtype), atol=1e-10, rtol=0)
    with torch.no_grad(), spinquant.QuantizedLoss(m, p, target_linears(m), w, a, rot,
                                                  "kl") as fn:
        init = fn(fuse_rotation.residual_matrix(rot, 64).float(), CALIB).item()
        learned = fn(q.float(), CALIB).item()
    assert learned < init
    assert losses[0] == pytest.approx(init, rel=1e-4)


@pytest.mark.parametrize("kind", ["kron", "block"])
def test_flatquant_transform_invertible(kind):
    m = varied("qwen2")
    ref = logits(m)
    layer = m.model.layers[0]
    named = {f"model.layers.0.{n}": mod for n, mod in layer.named_modules()
             if isinstance(mod, torch.nn.Linear)}
    flats = flatquant.wrap_layer(m, named, None, None, kind, 16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for f in flats.values():
            for p in f.transform.parameters():
                if p.dim() >= 2:
                    p.add_(0.2 * torch.randn(p.shape, generator=g))
    assert flats["model.layers.0.self_attn.q_proj"].transform is \
        flats["model.layers.0.self_attn.v_proj"].transform
    torch.testing.assert_close(logits(m), ref, atol=2e-5, rtol=1e-4)
    for f in flats.values():
        f.freeze()
    torch.testing.assert_close(logits(m), ref, atol=2e-5, rtol=1e-4)


METHODS = [("quarot", {}), ("quarot", {"rotation": "block"}),
           ("quarot", {"method_options": {"gptq": True}}),
           ("spinquant", {"method_options": {"steps": 3}}),
           ("spinquant", {"rotation": "block", "method_options": {"steps": 3}}),
           ("flatquant", {"method_options": {"steps": 4}}),
           ("flatquant", {"rotation": "block", "method_options": {"steps": 4}})]


@pytest.mark.parametrize("method,kw", METHODS)
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_methods_run_on_tiny_model(method, kw, fmt):
    m = tiny()
    ref = logits(m)
    quantize_model(m, weights=fmt, activations=fmt, method=method, calibration=CALIB,
                   progress=False, **kw)
    out = logits(m)
    assert torch.isfinite(out).all()
    assert 0 < _kl(ref, out) < 0.5
    assert m.lowbit_config["method"] == method


def test_learned_methods_need_calibration():
    for method in ("spinquant", "flatquant"):
        with pytest.raises(ValueError, match="calibration"):
            quantize_model(tiny(), weights="mxfp4", method=method, progress=False)


def test_head_rotation_r2_is_fused_and_exact():
    outs = {}
    for r2 in (False, True):
        m = varied("qwen2")
        ref = logits(m)
        quantize_model(m, method="quarot", rotation="block", rotation_size=8,
                       method_options={"r2": r2}, progress=False)
        torch.testing.assert_close(logits(m), ref, atol=2e-5, rtol=1e-4)
        outs[r2] = m.model.layers[0].self_attn.o_proj.weight.detach().clone()
    assert not torch.allclose(outs[False], outs[True], atol=1e-3)
