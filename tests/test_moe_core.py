"""CMoE building blocks: configuration, profiling, partition, router, the exact MoE block."""

import itertools

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from lowbit.moe.config import MoEConfig, parse_config
from lowbit.moe.modules import CMoEBlock
from lowbit.moe.partition import balanced_assignment, l1_to_binary, partition_neurons
from lowbit.moe.profile import hidden_states, profile_ffn
from lowbit.moe.router import CMoERouter

D, DH = 32, 64


def _mlp(seed: int = 0, dtype=torch.float32) -> LlamaMLP:
    torch.manual_seed(seed)
    mlp = LlamaMLP(LlamaConfig(hidden_size=D, intermediate_size=DH))
    for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        torch.nn.init.normal_(lin.weight, std=0.3)
    return mlp.to(dtype)


def _block(config: str, seed: int = 0, dtype=torch.float32, k_act: int = 4):
    mlp = _mlp(seed, dtype)
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    prof = profile_ffn(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn, k_act=k_act)
    cfg = parse_config(config)
    part = partition_neurons(prof, cfg)
    return mlp, CMoEBlock.from_dense(mlp, part, cfg), part, x


# -- configuration -------------------------------------------------------------------------------


def test_parse_config():
    c = parse_config("S3A3E8")
    assert (c.shared, c.active, c.experts, c.routed) == (3, 3, 8, 5)
    assert c.name == "S3A3E8" and c.active_fraction == 0.75 and c.sparsity == 0.25
    assert parse_config("s1a5e8") == MoEConfig(1, 5, 8)
    assert c.expert_size(1536) == 192
    with pytest.raises(ValueError):
        c.expert_size(1001)
    for bad in ("S3A6E8", "S1A0E8", "3-3-8", "S3A3"):
        with pytest.raises(ValueError):
            parse_config(bad)
    assert parse_config("S8A0E8").routed == 0


# -- profiling -----------------------------------------------------------------------------------


def test_profile_markers_and_rates():
    mlp = _mlp()
    x = torch.randn(100, D)
    p = profile_ffn(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn, k_act=5, chunk=7)
    assert p.markers.shape == (100, DH) and (p.markers.sum(1) == 5).all()
    assert p.rates.sum().item() == pytest.approx(5.0)
    h = hidden_states(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn).abs()
    assert torch.equal(p.markers, torch.zeros_like(p.markers).scatter_(1, h.topk(5).indices, True))
    # normalised profiling ignores token scale and per-neuron weight scale
    scaled = profile_ffn(3.0 * x, 2.0 * mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn,
                         k_act=5)
    assert torch.equal(scaled.markers, p.markers)


# -- partition -----------------------------------------------------------------------------------


def test_l1_to_binary():
    cols = torch.rand(50, 6) < 0.3
    centers = torch.rand(50, 3)
    ref = (cols.double()[:, :, None] - centers.double()[:, None, :]).abs().sum(0)
    assert torch.allclose(l1_to_binary(cols, centers), ref)


def test_balanced_assignment_is_optimal():
    rng = np.random.default_rng(0)
    cost = torch.from_numpy(rng.random((6, 3)))
    label = balanced_assignment(cost, 2)
    assert torch.equal(torch.bincount(label), torch.tensor([2, 2, 2]))
    best = min(sum(cost[i, lab].item() for i, lab in enumerate(p))
               for p in set(itertools.permutations([0, 0, 1, 1, 2, 2])))
    assert sum(cost[i, lab].item() for i, lab in enumerate(label.tolist())) == pytest.approx(best)


@pytest.mark.parametrize("config", ["S3A3E8", "S1A5E8", "S0A2E4", "S8A0E8"])
def test_partition_covers_and_balances(config):
    _, _, part, _ = _block(config)
    cfg = parse_config(config)
    part.check(DH)
    m = DH // cfg.experts
    assert part.shared.numel() == cfg.shared * m
    assert part.experts.shape == (cfg.routed, m)


def test_shared_neurons_have_top_rates():
    mlp = _mlp()
    x = torch.randn(300, D)
    prof = profile_ffn(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn, k_act=6)
    part = partition_neurons(prof, parse_config("S2A2E8"))
    rest = torch.ones(DH, dtype=torch.bool)
    rest[part.shared] = False
    assert prof.rates[part.shared].min() >= prof.rates[rest].max()


# -- exact block ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["S3A5E8", "S0A4E4", "S1A7E8", "S8A0E8"])
def test_all_experts_active_equals_dense(config):
    mlp, block, _, x = _block(config)
    with torch.no_grad():
        dense, moe = mlp(x), block(x)
    assert torch.allclose(moe, dense, rtol=1e-5, atol=1e-5 * dense.abs().max().item())
    mlp64, block64, _, x64 = _block(config, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(block64(x64), mlp64(x64), rtol=1e-12, atol=1e-12)


def test_all_active_by_top_k_override():
    mlp, block, _, x = _block("S3A3E8")
    with torch.no_grad():
        sparse = block(x)
        block.top_k = 5
        full = block(x)
        dense = mlp(x)
    assert torch.allclose(full, dense, rtol=1e-5, atol=1e-5 * dense.abs().max().item())
    assert not torch.allclose(sparse, dense, atol=1e-3)
    with pytest.raises(ValueError):
        block.top_k = 6


def test_routed_output_matches_token_by_token_reference():
    mlp, block, part, x = _block("S2A3E8", seed=3)
    with torch.no_grad():
        block.gate.scale.copy_(torch.linspace(-1, 1, 6))
        block.gate.e_score_correction_bias.copy_(torch.linspace(0, 0.01, 6))
        y = block(x[:20])
        wg, wu, wd = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight

        def sub(t, idx):
            return wd[:, idx] @ (torch.nn.functional.silu(wg[idx] @ t) * (wu[idx] @ t))

        s = block.gate.scores(x[:20])
        for t in range(20):
            chosen = (s[t] + block.gate.e_score_correction_bias).topk(3).indices
            ref = sub(x[t], part.shared)
            for j in chosen.tolist():
                ref = ref + (1 + s[t, j] * block.gate.scale[j]) * sub(x[t], part.experts[j])
            assert torch.allclose(y[t], ref, atol=1e-5)


def test_router_scores_from_representatives():
    mlp, block, part, x = _block("S2A2E8")
    r = part.representatives
    g = torch.nn.functional.normalize(mlp.gate_proj.weight[r], dim=-1)
    u = torch.nn.functional.normalize(mlp.up_proj.weight[r], dim=-1)
    with torch.no_grad():
        raw = ((x @ u.T) * torch.nn.functional.silu(x @ g.T)).abs()
        assert torch.allclose(block.gate.scores(x), raw.softmax(-1), atol=1e-6)
        idx, gates = block.gate(x)
    assert torch.equal(gates, torch.ones_like(gates))  # training-free gates are exactly 1
    assert torch.equal(idx.sort(-1).values, raw.topk(2).indices.sort(-1).values)


def test_balancing_bias_evens_the_load_in_training_only():
    torch.manual_seed(0)
    router = CMoERouter(D, 4, 1, bias_update_rate=0.02)
    with torch.no_grad():
        router.weight.copy_(torch.randn(4, D))
        router.up_weight.copy_(torch.randn(4, D))
    x = torch.randn(256, D)
    router.eval()
    before = torch.bincount(router(x)[0].flatten(), minlength=4)
    assert torch.equal(router.e_score_correction_bias, torch.zeros(4))
    router.train()
    for _ in range(60):
        router(x)
    router.eval()
    after = torch.bincount(router(x)[0].flatten(), minlength=4)
    assert after.max() - after.min() < (before.max() - before.min()) / 2
    bias = router.e_score_correction_bias
    assert bias[before.argmax()] < 0 < bias[before.argmin()]
    assert "e_score_correction_bias" in router.state_dict()


def test_bfloat16_block_keeps_float32_router():
    mlp, block, _, x = _block("S3A3E8", dtype=torch.bfloat16)
    assert block.experts.gate_up_proj.dtype == torch.bfloat16
    assert block.gate.weight.dtype == torch.float32
    with torch.no_grad():
        assert block(x).dtype == torch.bfloat16


def test_grouped_mm_matches_eager():
    mlp, block, _, x = _block("S2A3E8", seed=5)
    with torch.no_grad():
        eager = block(x)
        block.experts.impl = "grouped_mm"
        grouped = block(x)
        block.top_k = 6
        full = block(x)
    assert torch.allclose(grouped, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
    dense = mlp(x).detach()
    assert torch.allclose(full, dense, rtol=1e-5, atol=1e-5 * dense.abs().max().item())
