"""The ``lowbit`` command line (integrations.cli): conformance, verify, golden."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lowbit import numerics as ln
from lowbit.integrations.cli import main
from lowbit.numerics import conformance
from lowbit.numerics.golden import check_golden


@pytest.fixture
def mx_files(tmp_path):
    """x.npy and a correct and a corrupted foreign MXFP8 result (scale rule RCEIL)."""
    x = (np.random.default_rng(0).standard_normal((4, 64)) * 3).astype(np.float32)
    q = ln.quantize(x, "mxfp8_e4m3", scale_rule="rceil")
    bad = q.codes.copy()
    bad[2, 40] ^= 0x01
    paths = {name: tmp_path / f"{name}.npy" for name in ("x", "codes", "bad", "scales")}
    for name, arr in (("x", x), ("codes", q.codes), ("bad", bad), ("scales", q.scales)):
        np.save(paths[name], arr)
    return {k: str(v) for k, v in paths.items()}


def test_conformance_passes(capsys):
    assert main(["conformance"]) == 0
    out = capsys.readouterr().out
    for name in ln.formats():
        assert f"\n{name} " in out
    assert " 0 mismatches" in out


def test_conformance_mismatch_exits_nonzero(monkeypatch, capsys):
    monkeypatch.setitem(conformance.MX_PEERS, "REF exact FLOOR", {"scale_rule": "ceil"})
    assert main(["conformance", "--format", "mxfp4"]) == 1
    assert "FAIL mxfp4: M1 REF exact FLOOR scale" in capsys.readouterr().out


def test_conformance_reports_unimplemented_formats_as_skipped(monkeypatch):
    def placeholder(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr("lowbit.numerics.nvfp4.quantize_blocks", placeholder)
    [report] = conformance.run_conformance(["nvfp4"])
    assert report.status.startswith("skipped") and report.mismatches == 0


def test_conformance_unknown_format_is_an_error(capsys):
    assert main(["conformance", "--format", "mxfp5"]) == 2
    assert "unknown format" in capsys.readouterr().err


def test_verify_exit_codes(mx_files, tmp_path, capsys):
    args = ["verify", "--format", "mxfp8_e4m3", "--input", mx_files["x"],
            "--scales", mx_files["scales"], "--scale-rule", "rceil"]
    assert main([*args, "--codes", mx_files["codes"]]) == 0
    assert "IDENTICAL" in capsys.readouterr().out

    out_json = tmp_path / "cmp.json"
    assert main([*args, "--codes", mx_files["bad"], "--json", str(out_json),
                 "--no-candidates"]) == 1
    assert "(2, 40)" in capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert not doc["ok"] and [e["index"] for e in doc["elements"]] == [[2, 40]]

    # the default FLOOR reference disagrees; the candidates name the foreign scale rule
    assert main(["verify", "--format", "mxfp8_e4m3", "--input", mx_files["x"],
                 "--codes", mx_files["codes"], "--scales", mx_files["scales"]]) == 1
    assert "scale_rule=rceil" in capsys.readouterr().out

    assert main(["verify", "--format", "nvfp4", "--input", mx_files["x"],
                 "--codes", mx_files["codes"]]) == 2
    assert "error" in capsys.readouterr().err


def test_golden_writes_valid_json(mx_files, tmp_path, capsys):
    out = tmp_path / "vectors.json"
    assert main(["golden", "mxfp4", "--input", mx_files["x"], "--out", str(out),
                 "--scale-rule", "rceil", "-O", "inf_policy=\"max_scale\""]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "mxfp4" and doc["options"]["scale_rule"] == "rceil"
    assert doc["options"]["inf_policy"] == "max_scale" and check_golden(doc) == []

    assert main(["golden", "e4m3", "--input", mx_files["x"], "--out", str(out),
                 "-O", "saturate=true"]) == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "element" and doc["options"] == {"saturate": True}
    assert len(doc["expected"]["codes"]) == 256 and check_golden(doc) == []

    assert main(["golden", "e4m3", "--input", mx_files["x"], "--out", str(out),
                 "--axis", "0"]) == 2


def test_console_entry_point_does_not_import_torch():
    code = ("import sys; from lowbit.integrations.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "lowbit.integrations.cli", "--help"],
                         check=True, capture_output=True, text=True).stdout
    assert all(cmd in out for cmd in ("conformance", "verify", "golden"))
