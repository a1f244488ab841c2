"""``bench/moe_gpu_timing.py``: every routed implementation is the same layer (CPU checks)."""

import json

import pytest
import torch
from _bench import load_bench

_ROUTED = ("cmoe", "fused", "fused_bag", "padded", "loop")


@pytest.fixture(scope="module")
def timing():
    return load_bench("moe_gpu_timing")


def _layer(timing, config, dtype=torch.float32):
    layer = timing.Layer(64, 256, config, "cpu", dtype, seed=0)
    g = torch.Generator().manual_seed(2)
    layer.scale = torch.rand(layer.nr, generator=g) * 3  # non-trivial gates
    layer.bias = torch.randn(layer.nr, generator=g) * 0.05
    return layer


@pytest.mark.parametrize("config", ["S3A3E8", "S1A5E8", "S0A2E4", "S2A2E8"])
def test_routed_impls_agree(timing, config):
    layer = _layer(timing, config)
    x = torch.randn(70, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, dense = layer.eager(x), layer.dense(x)
        idx_a, gates_a = layer.route(x, layer.a)
        idx_b, gates_b = layer.route_fused(x, layer.a)
        assert torch.equal(idx_a, idx_b) and torch.allclose(gates_a, gates_b)
        assert timing.rel_err(layer.cmoe(x), dense) > 1e-2  # the routing matters
        for name in _ROUTED:
            assert timing.rel_err(getattr(layer, name)(x), ref) < 1e-6, name
        layer.scale.zero_()  # gates 1: every routed expert active is the dense FFN
        for name in _ROUTED:
            assert timing.rel_err(getattr(layer, name)(x, layer.nr), dense) < 1e-5, name


def test_fused_combine_is_the_inverse_permutation(timing):
    layer = _layer(timing, "S3A3E8")
    x = torch.randn(33, 64, generator=torch.Generator().manual_seed(3))
    k = layer.a
    order, inv, counts, flat, _ = layer._sort(x, k)
    assert torch.equal(order[inv], torch.arange(33 * k))
    assert torch.equal(flat[order], flat.sort(stable=True).values)
    assert torch.equal(counts.long(), torch.bincount(flat, minlength=layer.nr))
    ys = torch.randn(33 * k, 64)
    rows = inv.view(33, k)
    assert torch.allclose(torch.nn.functional.embedding_bag(rows, ys, mode="sum"),
                          ys[inv].view(33, k, 64).sum(1), atol=1e-6)


def test_compiled_traces_fullgraph_in_bfloat16(timing):
    layer = _layer(timing, "S1A5E8", torch.bfloat16)
    x = torch.randn(24, 64, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    fn = torch.compile(layer.fused, fullgraph=True, dynamic=False, backend="aot_eager")
    with torch.no_grad():
        assert timing.rel_err(fn(x), layer.eager(x)) < timing.TOLERANCE[torch.bfloat16]
        layer.scale.zero_()
        assert timing.rel_err(fn(x, layer.nr), layer.dense(x)) < timing.TOLERANCE[torch.bfloat16]
    torch._dynamo.reset()


def test_library_module_is_the_same_layer(timing):
    moe, source = timing.import_lowbit_moe()
    assert source.endswith("modules.py")
    for config in ("S3A3E8", "S0A2E4"):
        layer = _layer(timing, config)  # non-trivial gates and balancing bias
        lib = timing.LibraryFn(moe, layer, None)
        assert lib.block.experts.impl == "fused" and not lib.block.training
        x = torch.randn(70, 64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref, dense = layer.eager(x), layer.dense(x)
            assert timing.rel_err(lib(x), ref) < 1e-6, config
            idx, _ = layer.route(x, layer.a)
            assert lib.block.last_load.tolist() == torch.bincount(
                idx.flatten(), minlength=layer.nr).tolist()
            layer.scale.zero_()
            lib.block.gate.scale.zero_()
            assert timing.rel_err(lib(x, layer.nr), dense) < 1e-5, config
            assert lib.block.top_k == layer.nr
            lib(x)
            assert lib.block.top_k == layer.a


def test_library_compiles_fullgraph_in_bfloat16(timing):
    moe, _ = timing.import_lowbit_moe()
    layer = _layer(timing, "S3A3E8", torch.bfloat16)
    layer.scale.zero_()
    torch._dynamo.reset()
    lib = timing.LibraryFn(moe, layer, "aot_eager")
    x = torch.randn(24, 64, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(4))
    tol = timing.TOLERANCE[torch.bfloat16]
    with torch.no_grad():
        assert timing.rel_err(lib(x), layer.eager(x)) < tol
        assert timing.rel_err(lib(x, layer.nr), layer.dense(x)) < tol
    torch._dynamo.reset()


def test_library_skipped_without_lowbit(timing, tmp_path, monkeypatch):
    def missing():
        raise ModuleNotFoundError("No module named 'lowbit'", name="lowbit")

    monkeypatch.setattr(timing, "import_lowbit_moe", missing)
    out = tmp_path / "l.json"
    monkeypatch.setattr("sys.argv", ["moe_gpu_timing.py", "--dry-run", "--configs", "S3A3E8",
                                     "--tokens", "8", "--impls", "library", "--out", str(out)])
    assert timing.main() == 0
    meta = json.loads(out.read_text())["meta"]
    (err,) = meta["errors"]
    assert err["impl"] == "library" and "No module named 'lowbit'" in err["error"]
    assert meta["library"]["skipped"].startswith("skipped: lowbit.moe is not importable")


def test_dry_run_records_every_impl(timing, tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    monkeypatch.setattr("sys.argv", ["moe_gpu_timing.py", "--dry-run", "--configs", "S1A5E8",
                                     "--out", str(out)])
    assert timing.main() == 0
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["impls"] == list(timing.IMPLS)
    skipped = {e["impl"] for e in meta["errors"]}
    assert skipped == {"graphed", "compiled", "compiled_graphed"}  # CUDA / bf16-only tracing
    for row in data["rows"]:
        for name in ("cmoe", "eager", "library", *_ROUTED):
            assert row[f"{name}_ms"] > 0 and row[f"{name}_speedup"] > 0
        assert row["graphed_ms"] is None and row["best_impl"] in timing.IMPLS
    (chk,) = data["checks"]
    assert chk["ok"] and chk["route_mismatch"] == 0 and chk["padded_vs_eager"] < 1e-4
    assert chk["library_vs_eager"] < 1e-4 and chk["library_all_active_vs_dense"] < 1e-4
    assert meta["library"]["compiled"] is False and meta["library"]["skipped"] is None
    md = out.with_suffix(".md").read_text()
    assert "| tiny | S1A5E8 | 64 |" in md and "| fused_bag ms |" in md


def test_impls_subset_and_unknown(timing, tmp_path, monkeypatch):
    out = tmp_path / "s.json"
    monkeypatch.setattr("sys.argv", ["moe_gpu_timing.py", "--dry-run", "--configs", "S3A3E8",
                                     "--impls", "padded", "--out", str(out)])
    assert timing.main() == 0
    assert json.loads(out.read_text())["meta"]["impls"] == ["cmoe", "padded"]
    monkeypatch.setattr("sys.argv", ["moe_gpu_timing.py", "--dry-run", "--impls", "nope",
                                     "--out", str(out)])
    assert timing.main() == 2
