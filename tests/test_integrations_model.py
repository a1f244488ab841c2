"""Model integration: fake quant, QuantLinear, the quantized KV cache, save/load (tiny random
Llama / Qwen2 models built from a config; no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from lowbit import numerics as ln  # noqa: E402
from lowbit.integrations.fakequant import fake_quant, parse_spec  # noqa: E402
from lowbit.integrations.kvcache import QuantizedKVCache  # noqa: E402
from lowbit.integrations.model import (  # noqa: E402
    load_quantized,
    quant_linears,
    quantize_model,
    save_quantized,
)
from lowbit.integrations.qlinear import QuantLinear  # noqa: E402


def tiny(arch: str = "llama", seed: int = 0):
    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    if arch == "llama":
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    elif arch == "mistral":
        m = transformers.MistralForCausalLM(transformers.MistralConfig(**kw))
    elif arch == "gemma3":  # sliding-window and global layers, q/k norms, four norms per layer
        m = transformers.Gemma3ForCausalLM(
            transformers.Gemma3TextConfig(head_dim=16, sliding_window=8, **kw))
    else:
        m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
    return m.eval()


IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def logits(m, ids=IDS, **kw):
    with torch.no_grad():
        return m(ids, **kw).logits


def test_spec_parsing():
    s = parse_spec("mxfp4:scale_rule=rceil,prescale=0.75")
    assert s.fmt == "mxfp4" and s.options == {"scale_rule": "rceil", "prescale": 0.75}
    assert str(s) == "mxfp4:scale_rule=rceil,prescale=0.75"
    assert parse_spec("int4:group_size=32").block_size == 32
    assert parse_spec("nvfp4").block_size == 16
    for none in (None, "none", "bf16", "fp32", {"format": None}):
        assert parse_spec(none) is None
    with pytest.raises(ValueError):
        parse_spec("mxfp5")


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "hif4", "mxfp8_e4m3", "int4:group_size=32",
                                 "hif8", "mxfp6_e2m3"])
def test_fake_quant_matches_reference(fmt):
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(2))
    spec = parse_spec(fmt)
    want = ln.dequantize(ln.quantize(x.numpy(), spec.fmt, backend="reference",
                                     **spec.options), backend="reference")
    got = fake_quant(x, spec)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(got.numpy(), want)
    # bf16 in, bf16 out; values of a 4/8-bit grid survive the cast back
    xb = x.to(torch.bfloat16)
    assert fake_quant(xb, spec).dtype == torch.bfloat16


def test_fake_quant_straight_through_gradient():
    x = torch.randn(4, 64, requires_grad=True)
    y = fake_quant(x, "mxfp4")
    (y * torch.arange(64.0)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(64.0).expand(4, 64))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma3"])
def test_no_quantization_is_exact(arch):
    m = tiny(arch)
    ref = logits(m)
    quantize_model(m, progress=False)
    assert torch.equal(logits(m), ref)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma3"])
def test_identity_format_reproduces_model(arch):
    """Weights already on the MXFP4 grid: quantize_model(weights="mxfp4") changes nothing, bit
    for bit (RTN of an MXFP4 value is itself; the block exponent cannot change)."""
    m = tiny(arch)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                mod.weight.copy_(fake_quant(mod.weight, "mxfp4"))
    ref = logits(m)
    quantize_model(m, weights="mxfp4", progress=False)
    assert len(quant_linears(m)) == 14
    assert torch.equal(logits(m), ref)


def test_lm_head_excluded_by_default_and_patterns():
    m = tiny()
    quantize_model(m, weights="mxfp4", exclude=("lm_head", r"\.mlp\.down_proj"), progress=False)
    names = set(quant_linears(m))
    assert not any("lm_head" in n or "down_proj" in n for n in names)
    assert len(names) == 12
    assert isinstance(m.model.layers[0].self_attn.q_proj, QuantLinear)


def test_quantlinear_packs_weights():
    lin = torch.nn.Linear(64, 8)
    q = QuantLinear.from_linear(lin, "mxfp4")
    assert q.w_data.dtype == torch.uint8 and tuple(q.w_data.shape) == (8, 32)
    assert tuple(q.w_scales.shape) == (8, 2)
    want = ln.dequantize(ln.quantize(lin.weight.detach().numpy(), "mxfp4",
                                     backend="reference"), backend="reference")
    np.testing.assert_array_equal(q.dense_weight().numpy(), want)


@pytest.mark.parametrize("arch,w,a,kv", [
    ("llama", "mxfp4", "mxfp4", "mxfp8_e4m3"),
    ("qwen2", "nvfp4", "nvfp4", None),
    ("llama", "hif4", "hif8", "hif4"),
    ("qwen2", "int4:group_size=32", "int8", "int8"),
    ("llama", "mxfp6_e3m2:scale_rule=rceil", None, None),
    ("mistral", "mxfp4", "mxfp4", "mxfp8_e4m3"),
    ("gemma3", "nvfp4", "mxfp8_e4m3", "mxfp8_e4m3"),
])
def test_save_load_bit_identical(tmp_path, arch, w, a, kv):
    m = tiny(arch)
    quantize_model(m, weights=w, activations=a, kv_cache=kv, progress=False)
    ref = logits(m)
    save_quantized(m, str(tmp_path))
    m2 = load_quantized(str(tmp_path))
    assert torch.equal(logits(m2), ref)
    assert torch.equal(logits(m2, use_cache=False), logits(m, use_cache=False))
    for name, ql in quant_linears(m).items():
        ql2 = m2.get_submodule(name)
        assert torch.equal(ql.w_data, ql2.w_data)
    # 4-bit formats really are stored packed
    if w.startswith(("mxfp4", "nvfp4", "hif4", "int4")):
        q = m2.model.layers[0].mlp.gate_proj
        assert q.w_data.numel() * 2 == q.in_features * q.out_features


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_kv_cache_changes_logits_only_through_cache(arch):
    m = tiny(arch)
    ref_cached, ref_plain = logits(m), logits(m, use_cache=False)
    params = {k: v.clone() for k, v in m.state_dict().items()}
    quantize_model(m, kv_cache="mxfp4", progress=False)
    # no parameter changed, no module was replaced
    assert not quant_linears(m)
    assert all(torch.equal(v, params[k]) for k, v in m.state_dict().items())
    # without a cache the model is the unquantized one, bit for bit
    assert torch.equal(logits(m, use_cache=False), ref_plain)
    # with the (quantized) cache the logits move
    out = logits(m)
    assert not torch.equal(out, ref_cached)
    # the first position attends only to itself; keys and values stored are on the grid
    cache = QuantizedKVCache(m.config, "mxfp4")
    with torch.no_grad():
        m(IDS, use_cache=True, **{_cache_kw(m): cache})
    k = cache.layers[0].keys
    assert torch.equal(fake_quant(k, "mxfp4"), k)
    # an identity spec gives the plain cache's logits exactly
    cache = QuantizedKVCache(m.config, None)
    with torch.no_grad():
        out_none = m(IDS, use_cache=True, **{_cache_kw(m): cache}).logits
    assert torch.equal(out_none, ref_cached)


def _cache_kw(m):
    import inspect

    fwd = getattr(m, "_lowbit_orig_forward", m.forward)
    return "cache" if "cache" in inspect.signature(fwd).parameters else "past_key_values"


def test_generate_uses_quantized_cache():
    kw = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    ref = tiny().generate(IDS[:1, :8], **kw)
    m = tiny()
    quantize_model(m, kv_cache="mxfp4", progress=False)
    out = m.generate(IDS[:1, :8], **kw)
    assert out.sequences.shape == (1, 12)
    assert not torch.equal(out.scores[0], ref.scores[0])
