"""Layer-by-layer restructuring of tiny random Llama / Qwen2 models, save / load, FLOPs."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lowbit.moe.convert import _capture, _ffn_inputs, _run_layer, load_restructured, restructure
from lowbit.moe.eval import active_macs, evaluate, routing_load
from lowbit.moe.modules import CMoEBlock

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _model(kind: str = "llama", **extra):
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SMALL, **extra))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**SMALL, **extra))
    return model.eval()


def _ids(n: int = 4, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 96, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_all_active_model_equals_dense(kind):
    model = _model(kind)
    ids = _ids()
    dense = _logits(model, ids)
    report = restructure(model, "S2A6E8", _ids(4, 32, seed=2), k_act=4)
    assert [r.layer for r in report.layers] == [0, 1, 2]
    blocks = [m for m in model.modules() if isinstance(m, CMoEBlock)]
    assert len(blocks) == 3
    assert torch.allclose(_logits(model, ids), dense, atol=1e-5)
    for b in blocks:
        b.top_k = 2
    assert not torch.allclose(_logits(model, ids), dense, atol=1e-3)


def test_each_restructured_layer_feeds_the_next():
    calib = _ids(3, 32, seed=2)
    once = _model()
    restructure(once, "S1A2E4", calib, k_act=4)
    stepwise = _model()
    restructure(stepwise, "S1A2E4", calib, k_act=4, layers=[0])
    restructure(stepwise, "S1A2E4", calib, k_act=4, layers=[1, 2])
    a, b = once.state_dict(), stepwise.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # profiling layer 1 on the dense model's activations gives another result
    dense_inputs = _model()
    restructure(dense_inputs, "S1A2E4", calib, k_act=4, layers=[1])
    restructure(dense_inputs, "S1A2E4", calib, k_act=4, layers=[0])
    c = dense_inputs.state_dict()
    key = "model.layers.1.mlp.gate.weight"
    assert torch.equal(a["model.layers.0.mlp.gate.weight"], c["model.layers.0.mlp.gate.weight"])
    assert not torch.equal(a[key], c[key])


@pytest.mark.parametrize("tied", [False, True])
def test_save_load_round_trip(tmp_path, tied):
    model = _model(tie_word_embeddings=tied)
    restructure(model, "S1A2E4", _ids(3, 32, seed=2), k_act=4, layers=[0, 2])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CMoEBlock):
                m.gate.e_score_correction_bias.copy_(torch.tensor([0.3, -0.1, 0.0]))
                m.gate.scale.copy_(torch.tensor([0.5, 0.0, -0.25]))
    ids = _ids()
    ref = _logits(model, ids)
    model.save_pretrained(tmp_path)
    loaded = load_restructured(tmp_path)
    assert loaded.config.cmoe["config"] == "S1A2E4" and loaded.config.cmoe["layers"] == [0, 2]
    assert not isinstance(loaded.model.layers[1].mlp, CMoEBlock)
    assert torch.equal(loaded.model.layers[2].mlp.gate.e_score_correction_bias,
                       torch.tensor([0.3, -0.1, 0.0]))
    assert torch.equal(_logits(loaded, ids), ref)


def test_load_rejects_dense(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cmoe"):
        load_restructured(tmp_path)


def test_active_macs_and_evaluation():
    model = _model()
    dense = _model()
    d, dh, layers = 32, 64, 3
    before = active_macs(model)
    restructure(model, "S1A1E4", _ids(3, 32, seed=2), k_act=4)
    saved = layers * (2 * 3 * d * dh // 4) - layers * 2 * 3 * d  # 2 of 4 experts off, router on
    assert before - active_macs(model) == saved
    ev = evaluate(model, _ids(2, 16), dense)
    assert ev.tokens == 30 and ev.kl > 0 and 0 <= ev.top1 <= 1 and ev.ppl > 1
    assert evaluate(dense, _ids(2, 16), dense).kl == pytest.approx(0, abs=1e-6)
    assert [sum(load) for load in routing_load(model)] == [16] * 3  # last window, top-1


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_layer_output_is_residual_plus_ffn(kind):
    model = _model(kind)
    hidden, kwargs = _capture(model, list(_ids(4, 24).split(2)))
    layer = model.model.layers[0]
    inputs, residuals = _ffn_inputs(layer, hidden, kwargs[0])
    with torch.no_grad():
        for h, kw, x, r in zip(hidden, kwargs[0], inputs, residuals, strict=True):
            assert torch.equal(r + layer.mlp(x), _run_layer(layer, h, kw))
