"""``bench/tts_study.py`` end to end on a tiny random model (CPU): runs, calibration, sample
pool, the analysis and the report; the wall-clock (GPU) report path on the same runs."""

import json
import sys
from pathlib import Path

import pytest
from _bench import load_bench

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("reasoning_gym")

_PROBLEMS = "rg:basic_arithmetic:4:0:min_terms=2,max_terms=2,max_digits=1,operators=+"


@pytest.fixture(scope="module")
def script():
    return load_bench("tts_study")


def _main(script, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["tts_study.py", *argv])
    script.main()


def test_study_with_pool_then_recompute(script, model_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "s")
    _main(script, monkeypatch, "--model", model_dir, "--problems", _PROBLEMS, "--b", "2",
          "--gamma", "2", "--n-max", "6", "--cal-rows", "1,2", "--cal-steps", "3",
          "--repeats", "1", "--pool-k", "4", "--pool-batch", "3", "--out", out)
    doc = json.loads(Path(out + ".json").read_text())
    assert doc["clock"] == "cpu" and len(doc["runs"]["both"]) == 4
    pool = doc["pool"]
    assert [len(p["samples"]) for p in pool["problems"]] == [4] * 4
    assert pool["meta"]["batch"] == 3 and pool["meta"]["max_new_tokens"] == 6
    assert set(doc["pool_curves"]) == set(script.STRATEGIES)
    comb = doc["pool_curves"]["combination"]
    assert comb["b_grid"] == [1, 2, 4] and comb["gamma_grid"] == [0, 2]
    for cv in doc["pool_curves"].values():
        for p in cv["points"]:
            assert 0 <= p["predicted_acc"] <= 1 and 0 <= p["heldout_acc"] <= 1
    assert {"cpu_expected", "cpu_stochastic", "wall_expected"} <= set(doc["latency"]["all"])
    md = Path(out + ".md").read_text()
    assert "on the sample pool" in md and "4 problems x 4 samples" in md
    assert Path(out + ".png").stat().st_size > 0
    _main(script, monkeypatch, "--recompute", "--out", out)
    again = json.loads(Path(out + ".json").read_text())
    assert again["pool_curves"] == doc["pool_curves"]


def test_wall_clock_report(script, model_dir, tmp_path, monkeypatch):
    """Repeated runs keep the fastest; a study timed on the device-synchronised wall clock is
    scored against ``wall_s``."""
    out = str(tmp_path / "w")
    _main(script, monkeypatch, "--model", model_dir, "--problems", _PROBLEMS, "--b", "2",
          "--gamma", "2", "--n-max", "4", "--cal-rows", "1,2", "--cal-steps", "2",
          "--repeats", "1", "--run-repeats", "2", "--out", out)
    doc = json.loads(Path(out + ".json").read_text())
    for c in script.CONFIGS:  # the same seed: the same tokens; the faster repeat kept
        for r in doc["runs"][c]:
            assert r["repeats_same"] and r["cpu_s"] == min(r["repeats_s"])
    doc["clock"] = "wall"
    for c in script.CONFIGS:
        for r in doc["runs"][c]:
            r["wall_s"] = 1000.0 + r["cpu_s"]
    script.analyse(doc)
    assert set(doc["latency"]["all"]) == {"wall_expected", "wall_stochastic", "wall_trace"}
    assert doc["latency"]["all"]["wall_expected"] > 0.9  # predictions of seconds vs 1000 s
    script.write(doc, out)
    md = Path(out + ".md").read_text()
    assert "error vs wall-clock (expected)" in md and "device-synchronised wall clock" in md
    assert "pool" not in md


def test_pair_study_drafter_calibration(script, model_dir, tmp_path, monkeypatch):
    """With a draft model the study times the cached drafter itself; ``--recompute
    --drafter-calibration`` swaps in timings from ``bench/tts_gpu_drafter_calibrate.py`` and
    keeps the errors before."""
    out = str(tmp_path / "p")
    _main(script, monkeypatch, "--model", model_dir, "--draft-model", model_dir, "--problems",
          _PROBLEMS.replace(":4:", ":3:"), "--b", "2", "--gamma", "2", "--n-max", "4",
          "--cal-rows", "1,2", "--cal-steps", "2", "--repeats", "1", "--out", out)
    doc = json.loads(Path(out + ".json").read_text())
    assert doc["drafter_calibration"]["source"] == "measured with the study"
    assert len(doc["drafter_calibration"]["timings"]) == 2 * 2 * 2  # rows x steps x (feed, step)
    assert doc["draft"]["calibration"] == "drafter"
    cal_script = load_bench("tts_gpu_drafter_calibrate")
    cal = tmp_path / "drafter.json"
    cal_script.main(["--tiny", "--out", str(cal), "--rows", "1,2", "--contexts", "8",
                     "--iterations", "2", "--repeats", "1"])
    assert len(json.loads(cal.read_text())["timings"]) == 8
    _main(script, monkeypatch, "--recompute", "--drafter-calibration", str(cal), "--out", out)
    again = json.loads(Path(out + ".json").read_text())
    assert again["drafter_calibration"]["source"] == str(cal)
    assert set(again["drafter_calibration_before"]["latency"]["all"]) >= {"cpu_expected"}
    assert f"Drafter cost from `{cal}`" in Path(out + ".md").read_text()
