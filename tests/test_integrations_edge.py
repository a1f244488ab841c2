"""Bad input and edge cases of quantize_model (tiny random models; no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from test_integrations_model import IDS, _cache_kw, logits, tiny  # noqa: E402

from lowbit import numerics as ln  # noqa: E402
from lowbit.integrations.fakequant import fake_quant, parse_spec  # noqa: E402
from lowbit.integrations.kvcache import QuantizedKVCache  # noqa: E402
from lowbit.integrations.model import (  # noqa: E402
    load_quantized,
    quant_linears,
    quantize_model,
    save_quantized,
)

CALIB = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kw,match", [
    ({"weights": "mxfp5"}, "unknown block format 'mxfp5'"),
    ({"activations": "nvfp3"}, "unknown block format 'nvfp3'"),
    ({"kv_cache": ("mxfp4", "bogus")}, "unknown block format 'bogus'"),
    ({"weights": "mxfp4:scale_rule=nearest"}, "invalid weights 'mxfp4:scale_rule=nearest'"),
    ({"activations": "mxfp4:group_size=16"}, "invalid activations"),
    ({"kv_cache": "nvfp4:colour=red"}, "invalid kv_cache keys"),
    ({"weights": "int4:group_size=0"}, "group_size must be a positive integer"),
    ({"weights": "int4:group_size=-32"}, "group_size must be a positive integer"),
    ({"weights": "int4:group_size=abc"}, "group_size must be a positive integer"),
    ({"weights": "int4:granularity=group"}, "positive group_size"),
    ({"weights": "mxfp4", "method": "bogus"}, "unknown method 'bogus'"),
    ({"weights": "mxfp4", "method": "gptq"}, "needs calibration"),
    ({"weights": "mxfp4", "rotation": "diagonal"}, "rotation must be"),
    ({"weights": "mxfp4", "exclude": ("lm_head", "[")}, "bad exclude pattern"),
    ({"weights": "mxfp4:prescale"}, "KEY=VALUE"),
])
def test_bad_input_raises_clear_error_before_changing_the_model(kw, match):
    m = tiny()
    ref = logits(m)
    with pytest.raises(ValueError, match=match):
        quantize_model(m, calibration=None, progress=False, **kw)
    assert not quant_linears(m)
    assert torch.equal(logits(m), ref)


@pytest.mark.parametrize("spec", ["int4:group_size=48", "int8:group_size=24"])
def test_group_size_not_dividing_k_pads_the_last_group(tmp_path, spec):
    """K = 64 / 128 with groups of 48 / 24: the last group is zero-padded, as ``ln.quantize``
    does; the stored weight is the reference's and survives save/load."""
    m = tiny()
    weights = {n: mod.weight.detach().clone() for n, mod in m.named_modules()
               if isinstance(mod, torch.nn.Linear)}
    quantize_model(m, weights=spec, activations=spec, progress=False)
    s = parse_spec(spec)
    for name, ql in quant_linears(m).items():
        want = ln.dequantize(ln.quantize(weights[name].numpy(), s.fmt, backend="reference",
                                         **s.options), backend="reference")
        np.testing.assert_array_equal(ql.dense_weight().numpy(), want, err_msg=name)
        assert ql.meta["pad"] == (-ql.in_features) % s.options["group_size"]
    ref = logits(m)
    save_quantized(m, str(tmp_path))
    assert torch.equal(logits(load_quantized(str(tmp_path))), ref)


def test_hidden_size_not_a_multiple_of_the_mx_block(tmp_path):
    kw = dict(vocab_size=256, hidden_size=48, intermediate_size=80, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()
    quantize_model(m, weights="mxfp4", activations="mxfp4", kv_cache="mxfp4", progress=False)
    out = logits(m)
    assert torch.isfinite(out).all()
    save_quantized(m, str(tmp_path))
    assert torch.equal(logits(load_quantized(str(tmp_path))), out)


def test_exclude_patterns():
    m = tiny()
    quantize_model(m, weights="mxfp4", exclude=None, progress=False)
    assert "lm_head" in quant_linears(m) and len(quant_linears(m)) == 15
    m = tiny()
    quantize_model(m, weights="mxfp4", exclude=r"self_attn", progress=False)  # one string
    names = set(quant_linears(m))
    assert names == {"lm_head"} | {f"model.layers.{i}.mlp.{p}" for i in range(2)
                                   for p in ("gate_proj", "up_proj", "down_proj")}
    m = tiny()
    quantize_model(m, weights="mxfp4", exclude=("lm_head", r"layers\.1\.", r"\.q_proj$"),
                   progress=False)
    names = set(quant_linears(m))
    assert names == {f"model.layers.0.{p}" for p in (
        "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")}
    assert m.lowbit_config["exclude"] == ["lm_head", r"layers\.1\.", r"\.q_proj$"]


@pytest.mark.parametrize("fmt", ["mxfp4", "int4:group_size=32", "mxfp8_e4m3", "int8"])
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_weights_on_the_grid_are_reproduced_exactly(fmt, method):
    """Weights already on the format's grid: RTN and GPTQ (zero error on every column, so no
    update) store them unchanged, and the model's logits are identical bit for bit."""
    m = tiny()
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                mod.weight.copy_(fake_quant(mod.weight, fmt))
    ref = logits(m)
    quantize_model(m, weights=fmt, method=method, calibration=CALIB, progress=False,
                   method_options={"act_order": True})
    assert len(quant_linears(m)) == 14
    assert torch.equal(logits(m), ref)


def test_keys_only_kv_quantization_leaves_the_first_position():
    """Position 0 attends only to itself: softmax over one key is 1 whatever the key, so
    quantizing keys alone cannot change its logits; later positions do change. Quantizing
    values changes position 0 too."""
    m = tiny()
    ref = logits(m)
    quantize_model(m, kv_cache=("mxfp4", None), progress=False)
    out = logits(m)
    assert torch.equal(out[:, 0], ref[:, 0])
    assert not torch.equal(out[:, 1:], ref[:, 1:])
    cache = QuantizedKVCache(m.config, "mxfp4", "none")
    with torch.no_grad():
        m(IDS, use_cache=True, **{_cache_kw(m): cache})
    k, v = cache.layers[0].keys, cache.layers[0].values
    assert torch.equal(fake_quant(k, "mxfp4"), k) and not torch.equal(fake_quant(v, "mxfp4"), v)
    m = tiny()
    quantize_model(m, kv_cache=(None, "mxfp4"), progress=False)
    assert not torch.equal(logits(m)[:, 0], ref[:, 0])


def test_shared_input_quantization_matches_per_layer_quantization():
    """q/k/v reuse one quantized input; the result equals quantizing inside each layer, also
    under ``torch.inference_mode`` (which quantizes in every layer)."""
    from lowbit.integrations import qlinear

    m = tiny()
    quantize_model(m, weights="mxfp4", activations="mxfp4", progress=False)
    ref = logits(m)
    calls = []
    orig = qlinear.fake_quant

    def counting(x, spec):
        calls.append(1)
        return orig(x, spec)

    qlinear.fake_quant = counting
    try:
        with torch.inference_mode():
            out_inf = m(IDS).logits
        n_inference = len(calls)
        calls.clear()
        assert torch.equal(logits(m), ref)
    finally:
        qlinear.fake_quant = orig
    assert torch.equal(out_inf, ref)
    assert n_inference == 14 and len(calls) == 8  # 7 per layer; shared: 4 per layer
