"""Recursive CMoE on tiny random Qwen2-MoE / Mixtral / DeepSeek-V3 models."""

import pytest
import torch
from transformers import (
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

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
    elif kind == "deepseek_v3":  # MLA attention, one dense layer first, group-limited routing
        cfg = DeepseekV3Config(**{**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4},
                               n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=32,
                               intermediate_size=64, n_group=2, topk_group=1,
                               first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
                               qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8,
                               routed_scaling_factor=2.5)
        model = DeepseekV3ForCausalLM(cfg)
    else:
        model = MixtralForCausalLM(MixtralConfig(**COMMON, num_local_experts=4,
                                                 intermediate_size=32))
    for name, p in model.named_parameters():
        if "experts" in name or name.endswith("mlp.gate.weight"):  # created uninitialised / 0
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _ids(n, length, seed):
    return torch.randint(0, 96, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["qwen2_moe", "deepseek_v3",
                                  pytest.param("mixtral", marks=pytest.mark.slow)])
def test_all_sub_experts_active_equals_original(kind, tmp_path):
    model = _model(kind)
    ids = _ids(2, 20, 1)
    with torch.no_grad():
        ref = model(ids).logits
    restructure_experts(model, "S1A3E4", _ids(3, 32, 2), k_act=4)
    moe_layers = [1, 2] if kind == "deepseek_v3" else [0, 1]
    assert model.config.cmoe_recursive["layers"] == moe_layers
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
    assert isinstance(loaded.model.layers[moe_layers[-1]].mlp.experts, HierarchicalExperts)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, ref, atol=1e-5)  # saved config: all active
