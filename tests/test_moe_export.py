"""Export of restructured tiny Llama / Qwen2 models to the standard Qwen2-MoE layout."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lowbit.moe.convert import restructure
from lowbit.moe.export import export_qwen2_moe

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)


def _ids(n, length, seed):
    return torch.randint(0, 96, (n, length), generator=torch.Generator().manual_seed(seed))


def _model(kind):
    torch.manual_seed(0)
    model = (LlamaForCausalLM(LlamaConfig(**SMALL)) if kind == "llama"
             else Qwen2ForCausalLM(Qwen2Config(**SMALL)))
    return model.eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_all_active_export_equals_dense(kind, tmp_path):
    model = _model(kind)
    ids = _ids(2, 20, 1)
    with torch.no_grad():
        dense = model(ids).logits
    restructure(model, "S2A6E8", _ids(3, 32, 2), k_act=4)
    exported, report = export_qwen2_moe(model, _ids(3, 32, 3))
    assert report.topk_agreement == [1.0, 1.0]
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, dense, atol=1e-4)
    exported.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2MoeForCausalLM"
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, exported(ids).logits)


@pytest.mark.slow
def test_sparse_export_fitted_router_beats_representatives():
    model = _model("llama")
    restructure(model, "S2A2E8", _ids(4, 32, 2), k_act=4, layers=[1])
    calib = _ids(8, 32, 3)
    fit, rep_fit = export_qwen2_moe(model, calib)
    rep, rep_rep = export_qwen2_moe(model, calib, router="representative")
    assert rep_fit.topk_agreement[0] > rep_rep.topk_agreement[0]
    assert fit.config.mlp_only_layers == [0] and fit.config.num_experts == 6
    with pytest.raises(ValueError):
        export_qwen2_moe(model)  # the fitted router needs calibration
