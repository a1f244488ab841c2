"""compressed-tensors export (``integrations.export_ct``): reload with the compressed-tensors
package (transformers' ``CompressedTensorsConfig(dequantize=True)`` -> ``ModelCompressor`` -> its
NVFP4 / MXFP4 / MXFP8 compressors) and compare weights bit for bit; config equal to the one
compressed-tensors writes for its presets; refusals."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest

ct = pytest.importorskip("compressed_tensors")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lowbit import numerics as ln  # noqa: E402
from lowbit.integrations import cli_export  # noqa: E402
from lowbit.integrations.export_ct import (  # noqa: E402
    EXPORT_NAME,
    export_compressed_tensors,
    global_scale,
)
from lowbit.integrations.model import quant_linears, quantize_model  # noqa: E402
from lowbit.integrations.qlinear import QuantLinear  # noqa: E402

# nvfp4 with global amax 2688 / 2**14: tensor scale 2**-14, so every weight is e2m1 * ue4m3 *
# 2**-14, exact in bfloat16 (compressed-tensors' NVFP4 decompressor returns bfloat16)
NVFP4_POW2 = "nvfp4:global_amax=0.1640625"
PRESETS = {"mxfp4": "MXFP4A16", "mxfp8_e4m3": "MXFP8A16", NVFP4_POW2: "NVFP4A16",
           "nvfp4": "NVFP4A16"}


def tiny_llama(hidden: int = 64):
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``spec -> (quantized lowbit model, export directory)``, built once per spec."""
    cache = {}

    def get(spec: str, activations=None, mode: str = "record"):
        key = (spec, activations, mode)
        if key not in cache:
            torch.set_num_threads(1)
            m = quantize_model(tiny_llama(), weights=spec, activations=activations,
                               progress=False)
            out = tmp_path_factory.mktemp("ct")
            export_compressed_tensors(m, str(out), activations=mode, progress=False)
            cache[key] = (m, out)
        return cache[key]

    return get


def reload(out):
    """The checkpoint decompressed by compressed-tensors (through transformers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(out), quantization_config=transformers.CompressedTensorsConfig(dequantize=True))


def bits(t):
    return t.detach().to(torch.float32).contiguous().view(torch.int32)


@pytest.mark.parametrize("spec", ["mxfp4", "mxfp8_e4m3", NVFP4_POW2])
def test_reload_bit_exact(exported, spec):
    m, out = exported(spec)
    m2 = reload(out)
    params = dict(m2.named_parameters())
    layers = quant_linears(m)
    assert len(layers) == 7
    for name, q in layers.items():
        assert torch.equal(bits(params[name + ".weight"]), bits(q.dense_weight())), name
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(bits(params[name]), bits(m.get_parameter(name))), name
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, m(ids).logits)


def test_nvfp4_general_tensor_scale(exported):
    """Default nvfp4 (tensor scale not a power of two): codes, block scales and 1/G bit-exact
    through compressed-tensors' own unpacking. Its decompressor computes
    ``bf16(fl32(e2m1 * fl32(S_b / G)))``, lowbit ``e2m1 * S_b * ts`` exactly: the weights agree
    within one bfloat16 ulp (all equal on this model; 0.17 % differ by one ulp on SmolLM2-135M,
    bench/results/export_ct_smollm2.md)."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from safetensors.torch import load_file

    m, out = exported("nvfp4")
    sd = load_file(str(out / "model.safetensors"))
    params = dict(reload(out).named_parameters())
    for name, q in quant_linears(m).items():
        qt = q.quantized_weight()
        n, k = qt.shape
        e2m1 = unpack_fp4_from_uint8(sd[name + ".weight_packed"], n, k, dtype=torch.float32)
        ours = torch.from_numpy(ln.decode(qt.codes, "e2m1").astype(np.float32))
        assert torch.equal(bits(e2m1), bits(ours)), name  # -0.0 included
        s = NVFP4PackedCompressor._decompress_scale(sd[name + ".weight_scale"], torch.float32)
        assert torch.equal(bits(s), bits(torch.from_numpy(
            ln.decode(qt.scales, "ue4m3").astype(np.float32)))), name
        g = sd[name + ".weight_global_scale"]
        assert g.shape == (1,) and g.dtype == torch.float32
        assert (np.float32(1) / g.numpy()[0]) == qt.tensor_scale
        assert qt.tensor_scale.view(np.uint32) & 0x7FFFFF, "tensor scale is a power of two"
        ref = bits(q.dense_weight().to(torch.bfloat16))
        got = bits(params[name + ".weight"])
        assert int((got - ref).abs().max()) <= 1 << 16, name  # one bfloat16 ulp
        assert torch.equal(got, ref), name


def ct_written_config(preset: str, tmp_path) -> dict:
    """The ``quantization_config`` compressed-tensors writes for a preset (``update_config``)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig

    scheme = ct.quantization.preset_name_to_scheme(preset, ["Linear"])
    qc = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"],
                            format=scheme.format or "", quantization_status="compressed")
    (tmp_path / "config.json").write_text("{}")
    ModelCompressor(quantization_config=qc).update_config(str(tmp_path))
    return json.loads((tmp_path / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize("spec,act,mode,preset", [
    ("mxfp4", None, "record", "MXFP4A16"),
    ("mxfp8_e4m3", None, "record", "MXFP8A16"),
    (NVFP4_POW2, None, "record", "NVFP4A16"),
    ("mxfp4", "mxfp4:scale_rule=even", "record", "MXFP4"),
    ("mxfp8_e4m3", "mxfp8_e4m3", "engine", "MXFP8"),
])
def test_config_matches_compressed_tensors(exported, tmp_path, spec, act, mode, preset):
    _, out = exported(spec, act, mode)
    ours = json.loads((out / "config.json").read_text())["quantization_config"]
    theirs = ct_written_config(preset, tmp_path)
    group = theirs["config_groups"]["group_0"]
    fmt = {"nvfp4": "nvfp4-pack-quantized", "mxfp4": "mxfp4-pack-quantized",
           "mxfp8_e4m3": "mxfp8-quantized"}[spec.split(":")[0]]
    theirs["format"] = group["format"] = fmt
    assert ours == theirs
    ct.quantization.QuantizationConfig.model_validate(ours)


def test_engine_mode_notes_the_rule(exported):
    _, out = exported("mxfp8_e4m3", "mxfp8_e4m3", "engine")
    notes = json.loads((out / EXPORT_NAME).read_text())["notes"]
    assert any("own rule" in n and "scale_rule=floor" in n for n in notes)


def test_drop_mode_writes_weight_only(exported):
    _, out = exported(NVFP4_POW2, "nvfp4", "drop")
    group = json.loads((out / "config.json").read_text())["quantization_config"]
    assert group["config_groups"]["group_0"]["input_activations"] is None
    notes = json.loads((out / EXPORT_NAME).read_text())["notes"]
    assert any("dropped" in n for n in notes)


# -- refusals (on one QuantLinear, no full model needed) -----------------------------------------


class One(torch.nn.Module):
    def __init__(self, k: int = 64, **kw):
        super().__init__()
        torch.manual_seed(1)
        self.proj = QuantLinear.from_linear(torch.nn.Linear(k, 32, bias=False), **kw)


@pytest.mark.parametrize("kw,match", [
    ({"weight_spec": "hif4"}, "no compressed-tensors layout"),
    ({"weight_spec": "mxfp8_e5m2"}, "no compressed-tensors layout"),
    ({"weight_spec": "int4:group_size=32"}, "no compressed-tensors layout"),
    ({"weight_spec": "mxfp4:prescale=0.75"}, "pre-scale"),
    ({"weight_spec": "nvfp4:algorithm=torchao,global_amax=0.15"}, "no float32 global scale"),
    ({"weight_spec": "mxfp4", "rotation": {"kind": "block", "size": 32}}, "rotation"),
    ({"weight_spec": None, "act_spec": "mxfp4"}, "activation-only"),
    ({"weight_spec": "nvfp4", "act_spec": "nvfp4"}, "input_global_scale"),
    ({"weight_spec": "mxfp4", "act_spec": "mxfp4"}, "scale_rule=floor"),
    ({"weight_spec": "mxfp8_e4m3", "act_spec": "mxfp8_e4m3:scale_rule=even"}, "engine"),
    ({"weight_spec": "mxfp4", "act_spec": "hif8"}, "cannot be expressed"),
    ({"weight_spec": "nvfp4", "act_spec": "mxfp4:scale_rule=even"}, "no compressed-tensors"),
])
def test_refusals(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        export_compressed_tensors(One(**kw), str(tmp_path), progress=False)
    assert not (tmp_path / "model.safetensors").exists()


def test_refuses_padded_k_and_empty_models(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        export_compressed_tensors(One(k=48, weight_spec="mxfp4"), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="no QuantLinear"):
        export_compressed_tensors(tiny_llama(), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="activations="):
        export_compressed_tensors(One(weight_spec="mxfp4"), str(tmp_path), activations="x")


def test_refuses_wrapped_layers(tmp_path):
    wrapper = type("Wrapper", (torch.nn.Module,), {"__module__": "lowbit.integrations.ptq.x"})
    m = torch.nn.Module()
    m.block = wrapper()
    m.block.inner = One(weight_spec="mxfp4").proj
    with pytest.raises(ValueError, match="online transform"):
        export_compressed_tensors(m, str(tmp_path), progress=False)


def test_kv_cache_refused_unless_dropped(tmp_path):
    m = One(weight_spec="mxfp4")
    m.lowbit_config = {"kv_cache": [{"format": "mxfp8_e4m3"}, None]}
    with pytest.raises(ValueError, match="drop_kv_cache"):
        export_compressed_tensors(m, str(tmp_path), progress=False)


def test_global_scale_reciprocal():
    assert global_scale(np.float32(2.0**-14)) == np.float32(2.0**14)
    s_enc = np.float32(2688 / 0.3)
    assert global_scale(np.float32(1) / s_enc) == s_enc
    with pytest.raises(ValueError):
        global_scale(np.float32(0.15) / np.float32(2688))
    with pytest.raises(ValueError):
        global_scale(0.0)


def test_cli(tmp_path, capsys):
    p = argparse.ArgumentParser()
    cli_export.add_export(p)
    out = tmp_path / "ct"
    args = p.parse_args(["--model", "tiny-llama", "--weights", "mxfp4", "--out", str(out),
                         "--dtype", "bfloat16"])
    torch.set_num_threads(1)
    assert cli_export.run_export(args) == 0
    assert "mxfp4-pack-quantized" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["format"] == "mxfp4-pack-quantized"
    assert cfg["dtype"] == "bfloat16"
    for extra in ([], ["--weights", "hif4"]):
        with pytest.raises(ValueError, match="--weights"):
            cli_export.run_export(p.parse_args(["--model", "tiny-llama", "--out", str(out)]
                                               + extra))
