"""``bench/moe_gpu_timing.py`` on the CPU: the timed CMoE layer is the dense FFN carved up."""

import pytest
import torch
from _bench import load_bench


@pytest.fixture(scope="module")
def timing():
    return load_bench("moe_gpu_timing")


@pytest.mark.parametrize("config", ["S3A3E8", "S1A5E8", "S0A2E4"])
def test_layer_paths_agree(timing, config):
    layer = timing.Layer(64, 256, config, "cpu", torch.float32, seed=0)
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense, grouped, eager = layer.dense(x), layer.cmoe(x), layer.eager(x)
        full = layer.cmoe(x, layer.nr)
    assert torch.allclose(grouped, eager, rtol=1e-5, atol=1e-6)
    assert torch.allclose(full, dense, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(grouped, dense, atol=1e-3)
    idx, gates = layer.route(x, layer.a)
    assert idx.shape == (40, layer.a) and torch.equal(gates, torch.ones_like(gates))


def test_dry_run_writes_json_and_markdown(timing, tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    monkeypatch.setattr("sys.argv", ["moe_gpu_timing.py", "--dry-run", "--configs", "S3A3E8",
                                     "--out", str(out)])
    assert timing.main() == 0
    assert out.is_file() and "| tiny | S3A3E8 | 64 |" in out.with_suffix(".md").read_text()


def test_layer_diag_errors():
    mod = load_bench("moe_layer_diag")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from lowbit.moe.config import parse_config
    from lowbit.moe.modules import CMoEBlock
    from lowbit.moe.partition import partition_neurons
    from lowbit.moe.profile import profile_ffn

    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=4))
    x = torch.randn(64, 16)
    prof = profile_ffn(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn, k_act=3)
    for name, exact in (("S1A3E4", True), ("S1A1E4", False)):
        cfg = parse_config(name)
        block = CMoEBlock.from_dense(mlp, partition_neurons(prof, cfg), cfg)
        err = mod.relative_errors(block, mlp, x, cfg.active)
        assert set(err) == set(mod.ROUTERS)
        if exact:
            assert max(err.values()) < 1e-5
        else:
            assert min(err.values()) > 0.01
