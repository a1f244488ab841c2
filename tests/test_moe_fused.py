"""``CMoEExperts(impl="fused")``: the same layer as ``eager`` (CPU, float32; bfloat16 tracing)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.moe.config import parse_config
from lowbit.moe.modules import CMoEBlock, SwiGLU
from lowbit.moe.partition import Partition

D, DH = 32, 128


def _block(config: str, seed: int = 0, dtype=torch.float32):
    """A block carved from a random SwiGLU by a random partition, with non-zero gate scales
    (gates != 1) and a random balancing bias; returns (dense mlp, block)."""
    g = torch.Generator().manual_seed(seed)
    cfg = parse_config(config)
    mlp = SwiGLU(D, DH)
    with torch.no_grad():
        for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
    m = cfg.expert_size(DH)
    perm = torch.randperm(DH, generator=g)
    shared = perm[: cfg.shared * m].sort().values
    experts = perm[cfg.shared * m:].view(cfg.routed, m).sort(dim=1).values
    part = Partition(shared, experts, experts[:, 0].clone())
    mlp = mlp.to(dtype)
    block = CMoEBlock.from_dense(mlp, part, cfg)
    with torch.no_grad():
        block.gate.scale.copy_(torch.rand(cfg.routed, generator=g) * 4)
        block.gate.e_score_correction_bias.copy_(torch.randn(cfg.routed, generator=g) * 0.02)
    return mlp, block


def _x(t=70, seed=1, dtype=torch.float32):
    return torch.randn(t, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("config", ["S3A3E8", "S1A5E8", "S0A2E4", "S2A2E8", "S1A1E4"])
def test_fused_matches_eager(config):
    mlp, block = _block(config)
    x = _x()
    with torch.no_grad():
        eager = block(x)
        load = block.last_load.clone()
        idx, gates = block.gate(x)
        assert (gates != 1).any()  # the gates matter
        assert len(set(idx.flatten().tolist())) > 1  # so does the routing
        block.experts.impl = "fused"
        fused = block(x)
        assert torch.equal(block.last_load, load)
        assert _rel(eager, mlp(x)) > 1e-2  # routing drops experts: not the dense FFN
    assert fused.shape == eager.shape
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())


@pytest.mark.parametrize("config", ["S3A3E8", "S0A2E4"])
def test_fused_every_expert_active_is_dense(config):
    mlp, block = _block(config, seed=3)
    block.experts.impl = "fused"
    block.top_k = block.moe_config.routed
    with torch.no_grad():
        block.gate.scale.zero_()  # training-free gates: exactly 1
        x = _x(33, seed=4)
        dense = mlp(x)
        torch.testing.assert_close(block(x), dense, rtol=1e-5,
                                   atol=1e-5 * dense.abs().max().item())
        assert block.last_load.tolist() == [33] * block.moe_config.routed


def test_fused_3d_input_and_load_on_device():
    _, block = _block("S3A3E8")
    block.experts.impl = "fused"
    x = _x(24).view(2, 12, D)
    with torch.no_grad():
        y = block(x)
        block.experts.impl = "eager"
        torch.testing.assert_close(y, block(x), rtol=1e-5, atol=1e-6)
    assert y.shape == x.shape
    load = block.last_load
    assert load.dtype == torch.int64 and load.device == x.device
    assert sum(load.tolist()) == 24 * block.top_k


def test_fused_gradients_match_eager():
    grads = {}
    for impl in ("eager", "fused"):
        _, block = _block("S2A3E8", seed=5)
        block.train()
        block.gate.bias_update_rate = 0.0  # same routing in both runs
        block.experts.impl = impl
        x = _x(40, seed=6).requires_grad_(True)
        w = torch.randn(40, D, generator=torch.Generator().manual_seed(7))
        (block(x) * w).sum().backward()
        grads[impl] = {"x": x.grad, **{n: p.grad for n, p in block.named_parameters()}}
    for name, ref in grads["eager"].items():
        got = grads["fused"][name]
        if ref is None:  # the router's G / U: top-k and |.| softmax, no gradient path
            assert got is None, name
            continue
        assert got is not None, name
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item() + 1e-7,
                                   msg=name)
    assert grads["fused"]["gate.scale"].abs().sum() > 0  # gates are trained through the hidden


def test_fused_shared_addmm_and_lora_gradients():
    from lowbit.moe.finetune import add_lora

    _, block = _block("S3A3E8", seed=8)
    block.experts.impl = "fused"
    assert block._shared_addmm()
    holder = nn.Module()
    holder.layers = nn.ModuleList([nn.Module()])
    holder.layers[0].mlp = block
    params = add_lora(holder, rank=2, alpha=4.0)
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.1)  # B != 0: the parametrized weights differ from the raw ones
    assert block._shared_addmm()  # a parametrized nn.Linear still qualifies
    x = _x(30, seed=9)
    out = {}
    for impl in ("eager", "fused"):
        block.experts.impl = impl
        for p in params:
            p.grad = None
        y = block(x)
        y.square().sum().backward()
        out[impl] = (y.detach(), [p.grad.clone() for p in params])
    torch.testing.assert_close(out["fused"][0], out["eager"][0], rtol=1e-5, atol=1e-5)
    for gf, ge in zip(out["fused"][1], out["eager"][1], strict=True):
        torch.testing.assert_close(gf, ge, rtol=1e-4, atol=1e-4 * ge.abs().max().item() + 1e-7)
    # a forward hook on the shared down projection disables the addmm shortcut (hook honoured)
    block.shared_experts.down_proj.register_forward_hook(lambda mod, inp, o: o * 0)
    assert not block._shared_addmm()


def test_fused_state_dict_names_and_balancing_update():
    _, block = _block("S3A3E8")
    names = set(block.state_dict())
    block.experts.impl = "fused"
    assert set(block.state_dict()) == names == {
        "shared_experts.gate_proj.weight", "shared_experts.up_proj.weight",
        "shared_experts.down_proj.weight", "gate.weight", "gate.up_weight", "gate.scale",
        "gate.e_score_correction_bias", "experts.gate_up_proj", "experts.down_proj"}
    block.train()
    x = _x(64)
    bias0 = block.gate.e_score_correction_bias.clone()
    with torch.no_grad():
        idx, _ = block.gate(x)  # one update, from the selections of the first call
    load = torch.bincount(idx.flatten(), minlength=block.gate.num_experts).float()
    expect = bias0 + block.gate.bias_update_rate * torch.sign(load.mean() - load)
    assert torch.equal(block.gate.e_score_correction_bias, expect)
    block(x)
    assert not torch.equal(block.gate.e_score_correction_bias, expect)  # moved again


def test_router_concat_matmul_is_not_bit_identical_here():
    """Why the router keeps its two matmuls: on this CPU one matmul on ``cat([G, U])`` rounds
    differently (informational; skipped where the BLAS happens to agree)."""
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(5, 256, generator=g), torch.randn(5, 256, generator=g)
    x = torch.randn(64, 256, generator=g)
    r = x @ torch.cat([w, u]).T
    if torch.equal(r[:, :5], x @ w.T) and torch.equal(r[:, 5:], x @ u.T):
        pytest.skip("the BLAS gives bit-identical results for this shape")


def test_fused_forward_never_syncs(monkeypatch):
    """No ``.cpu()`` / ``.item()`` / ``.tolist()`` / ``bincount`` in the fused forward."""
    _, block = _block("S3A3E8")
    block.experts.impl = "fused"
    x = _x()
    with torch.no_grad():
        ref = block(x)

    def boom(*args, **kwargs):
        raise AssertionError("host sync in forward")

    for name in ("cpu", "item", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "bincount", boom)
    with torch.no_grad():
        y = block(x)
        block.train()
        block(x)  # the balancing update too
    monkeypatch.undo()
    assert torch.equal(y, ref)


def _grouped_mm_available() -> bool:
    return hasattr(F, "grouped_mm") or hasattr(torch, "_grouped_mm")


@pytest.mark.skipif(not _grouped_mm_available(), reason="no F.grouped_mm / torch._grouped_mm")
@pytest.mark.parametrize("config", ["S3A3E8", "S0A2E4"])
def test_fused_block_compiles_fullgraph_in_bfloat16(config):
    if not hasattr(F, "grouped_mm"):
        pytest.skip("the module calls F.grouped_mm")
    mlp, block = _block(config, seed=11, dtype=torch.bfloat16)
    assert block.gate.weight.dtype == torch.float32
    x = _x(48, seed=12, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = block(x)  # eager impl
        block.experts.impl = "fused"
        torch._dynamo.reset()
        try:
            fn = torch.compile(block, fullgraph=True, dynamic=False, backend="aot_eager")
            y = fn(x)  # a graph break (host sync, data-dependent shape) raises here
            assert _rel(y, ref) < 2e-2
            assert block.last_load.sum().item() == 48 * block.top_k
            block.top_k = block.moe_config.routed  # recompiles (top_k is guarded)
            block.gate.scale.zero_()
            assert _rel(fn(x), mlp(x)) < 2e-2
        finally:
            torch._dynamo.reset()
