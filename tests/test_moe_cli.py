"""``lowbit moe convert`` / ``lowbit moe eval`` on a tiny random model directory."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lowbit.integrations.cli import main


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path_factory.mktemp("dense")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _convert(dense_dir, out, config):
    return main(["moe", "convert", "--model", str(dense_dir), "--config", config, "--out",
                 str(out), "--data", "random", "--samples", "2", "--seq-len", "32",
                 "--k-act", "4"])


def test_convert_then_eval(dense_dir, tmp_path, capsys):
    out = tmp_path / "moe"
    assert _convert(dense_dir, out, "S2A2E8") == 0
    report = json.loads((out / "cmoe_conversion.json").read_text())
    assert report["config"] == "S2A2E8" and len(report["layers"]) == 2
    assert "S2A2E8: 2 layers restructured" in capsys.readouterr().out
    res = tmp_path / "eval.json"
    args = ["moe", "eval", str(out), "--data", "random", "--seq-len", "16", "--windows", "3"]
    assert main(args + ["--json", str(res)]) == 0
    sparse = json.loads(res.read_text())
    assert sparse["tokens"] == 45 and sparse["kl"] > 0
    assert sparse["active_macs_per_token"] < sparse["dense_macs_per_token"]
    assert main(args + ["--top-k", "6", "--json", str(res)]) == 0  # every routed expert
    full = json.loads(res.read_text())
    assert full["kl"] == pytest.approx(0, abs=1e-8)
    assert full["ppl"] == pytest.approx(full["dense_ppl"], rel=1e-5)


@pytest.mark.slow
def test_finetune_then_eval(dense_dir, tmp_path):
    out = tmp_path / "moe"
    assert _convert(dense_dir, out, "S2A2E8") == 0
    ft = tmp_path / "ft"
    assert main(["moe", "finetune", str(out), "--out", str(ft), "--data", "random", "--samples",
                 "4", "--seq-len", "16", "--lr", "1e-3"]) == 0
    assert (ft / "finetune_state.pt").is_file()
    assert json.loads((ft / "config.json").read_text())["cmoe"]["finetuned"]["samples"] == 4
    assert main(["moe", "eval", str(ft), "--data", "random", "--seq-len", "16", "--windows",
                 "2"]) == 0


def test_errors_exit_2(dense_dir, tmp_path, capsys):
    assert _convert(dense_dir, tmp_path / "x", "S3A3E7") == 2  # 7 does not divide 64
    assert "do not divide" in capsys.readouterr().err
    assert main(["moe", "eval", str(dense_dir), "--data", "random"]) == 2
    assert main(["moe", "convert", "--model", str(dense_dir), "--config", "S2A2E8", "--out",
                 str(tmp_path / "y")]) == 2  # no tokenizer for wiki text
