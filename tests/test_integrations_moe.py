"""Fused mixture-of-experts weights (transformers 5): quantize_model, save/load, activations
(tiny random Qwen2-MoE and Mixtral models built from a config; no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from lowbit import numerics as ln  # noqa: E402
from lowbit.integrations.experts import target_experts  # noqa: E402
from lowbit.integrations.fakequant import fake_quant  # noqa: E402
from lowbit.integrations.model import (  # noqa: E402
    load_quantized,
    quant_linears,
    quantize_model,
    save_quantized,
)

IDS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
KW = dict(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def tiny_moe(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(**KW, moe_intermediate_size=32, num_experts=4,
                                          num_experts_per_tok=2,
                                          shared_expert_intermediate_size=64)
        m = transformers.Qwen2MoeForCausalLM(cfg)
    else:
        m = transformers.MixtralForCausalLM(transformers.MixtralConfig(
            **KW, num_local_experts=4, num_experts_per_tok=2))
    return m.eval()


def logits(m, ids=IDS):
    with torch.no_grad():
        return m(ids).logits


def expert_weights(m) -> dict[str, torch.Tensor]:
    names = [n for n, mod in m.named_modules() if type(mod).__name__.endswith("Experts")]
    return {f"{n}.{p}": getattr(m.get_submodule(n), p).detach().clone()
            for n in names for p in ("gate_up_proj", "down_proj")}


@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral"])
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_every_expert_weight_is_quantized_along_its_input_dim(arch, fmt):
    m = tiny_moe(arch)
    before = expert_weights(m)
    assert len(before) == 4  # 2 layers x (gate_up, down)
    assert target_experts(m) == {f"model.layers.{i}.mlp.experts": ["gate_up_proj", "down_proj"]
                                 for i in range(2)}
    quantize_model(m, weights=fmt, progress=False)
    after = expert_weights(m)
    for name, w in before.items():
        for e in range(w.shape[0]):  # one tensor per expert (own NVFP4 tensor scale)
            want = ln.dequantize(ln.quantize(w[e].numpy(), fmt, backend="reference"),
                                 backend="reference")
            np.testing.assert_array_equal(after[name][e].numpy(), want, err_msg=name)
    mod = m.model.layers[0].mlp.experts
    assert "gate_up_proj" not in dict(mod.named_parameters())
    assert mod.gate_up_proj_data.dtype == torch.uint8
    assert mod.gate_up_proj_data.numel() * 2 == mod.gate_up_proj.numel()  # packed 4-bit codes
    out = logits(m)
    assert torch.isfinite(out).all() and not torch.equal(out, logits(tiny_moe(arch)))


@pytest.mark.parametrize("arch,w,a,kv", [
    ("qwen2_moe", "mxfp4", None, None),
    ("mixtral", "nvfp4", "nvfp4", "mxfp8_e4m3"),
    ("qwen2_moe", "hif4", "mxfp8_e4m3", None),
])
def test_moe_save_load_bit_identical(tmp_path, arch, w, a, kv):
    m = tiny_moe(arch)
    quantize_model(m, weights=w, activations=a, kv_cache=kv, progress=False)
    ref = logits(m)
    save_quantized(m, str(tmp_path))
    m2 = load_quantized(str(tmp_path))
    assert torch.equal(logits(m2), ref)
    for name, wt in expert_weights(m).items():
        assert torch.equal(expert_weights(m2)[name], wt)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert "model.layers.0.mlp.experts.gate_up_proj_data" in keys
    assert "model.layers.0.mlp.experts.gate_up_proj" not in keys  # codes only, no floats


@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral"])
def test_moe_activation_quantization(arch):
    """The quantized eager expert loop equals the model's own experts without quantization,
    and with activations it feeds every expert GEMM grid values."""
    m = tiny_moe(arch)
    ref = logits(m)
    quantize_model(m, activations="fp32", progress=False)
    torch.testing.assert_close(logits(m), ref)
    m = tiny_moe(arch)
    experts = m.model.layers[0].mlp.experts
    seen = []
    orig_linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        if w._base is experts.gate_up_proj or w._base is experts.down_proj:
            seen.append(x)
        return orig_linear(x, w, b)

    quantize_model(m, activations="mxfp4", progress=False)
    torch.nn.functional.linear = spy
    try:
        out = logits(m)
    finally:
        torch.nn.functional.linear = orig_linear
    assert len(seen) >= 4 and all(torch.equal(fake_quant(x, "mxfp4"), x) for x in seen)
    assert not torch.equal(out, ref)


def test_moe_gptq_quantizes_linears_and_experts():
    m = tiny_moe("qwen2_moe")
    ref = logits(m)
    calib = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    quantize_model(m, weights="mxfp4", method="gptq", calibration=calib, progress=False)
    names = set(quant_linears(m))
    assert "model.layers.0.mlp.shared_expert.down_proj" in names
    assert "model.layers.0.self_attn.q_proj" in names
    assert m.model.layers[1].mlp.experts.lowbit_experts["params"]["down_proj"]
    out = logits(m)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_moe_experts_excluded_by_pattern():
    m = tiny_moe("mixtral")
    before = expert_weights(m)
    quantize_model(m, weights="mxfp4", exclude=("lm_head", r"experts\.down_proj"),
                   progress=False)
    after = expert_weights(m)
    for n in before:
        assert torch.equal(after[n], before[n]) == n.endswith("down_proj"), n
    m = tiny_moe("mixtral")
    before = expert_weights(m)
    quantize_model(m, weights="mxfp4", exclude=("lm_head", r"layers\.0\."), progress=False)
    after = expert_weights(m)
    for n in before:
        assert torch.equal(after[n], before[n]) == ("layers.0." in n), n
    assert not hasattr(m.model.layers[0].mlp.experts, "lowbit_experts")
