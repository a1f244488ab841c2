"""Recursive CMoE on tiny random Qwen2-MoE / Mixtral models."""

import pytest
import torch
from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from lowbit.moe.modules import CMoEBlock
from lowbit.moe.recursive import (
    HierarchicalExperts,
    load_recursive,
    restructure_experts,
    save_recursive,
)

COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, num_experts_per_tok=2)


def _model(kind):
    torch.manual_seed(0)
    if kind == "qwen2_moe":
        cfg = Qwen2MoeConfig(**COMMON, num_experts=4, moe_intermediate_size=32,
                             shared_expert_intermediate_size=32, intermediate_size=64)
        model = Qwen2MoeForCausalLM(cfg)
    else:
        model = MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4,
                                                 intermediate_size=32))
    for name, p in model.named_parameters():
        if "experts" in name:  # fused expert weights are created uninitialised
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _ids(n, length, seed):
    return torch.randint(0, 96, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["qwen2_moe", pytest.param("mixtral", marks=pytest.mark.slow)])
def test_all_sub_experts_active_equals_original(kind, tmp_path):
    model = _model(kind)
    ids = _ids(2, 20, 1)
    with torch.no_grad():
        ref = model(ids).logits
    restructure_experts(model, "S1A3E4", _ids(3, 32, 2), k_act=4)
    blocks = [m for m in model.modules() if isinstance(m, CMoEBlock)]
    assert len(blocks) == 2 * 4
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref, atol=1e-5)
        for b in blocks:
            b.top_k = 1
        sparse = model(ids).logits
    assert not torch.allclose(sparse, ref, atol=1e-3)
    save_recursive(model, tmp_path)
    loaded = load_recursive(tmp_path)
    assert isinstance(loaded.model.layers[1].mlp.experts, HierarchicalExperts)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, ref, atol=1e-5)  # saved config: all active
