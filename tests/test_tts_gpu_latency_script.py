"""``bench/tts_gpu_latency.py`` end to end on tiny shapes (CPU; the same path again on CUDA when
there is one), and the ``tts`` pieces it added: per-row token limits, device placement, the
synchronised clock, the draft-model timing."""

import json
import re
import time
from pathlib import Path

import pytest
from _bench import load_bench

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lowbit.tts.calibrate import synced_clock, time_decode, time_model_drafter  # noqa: E402
from lowbit.tts.drafts import tiny_llama  # noqa: E402
from lowbit.tts.latency import CostModel, DraftCost  # noqa: E402
from lowbit.tts.speculative import ModelDrafter, generate  # noqa: E402

_RUNS = {"sequential", "branches", "speculation-lookup", "both-lookup", "speculation-model",
         "both-model"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def script():
    return load_bench("tts_gpu_latency")


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check(doc: dict, out: Path, device: str) -> None:
    assert set(doc["runs"]) == _RUNS
    assert doc["device"].startswith("cpu") == (device == "cpu")
    assert set(doc["versions"]) == {"python", "torch", "transformers"}
    assert doc["draft_costs"]["lookup"]["kind"] == "lookup"
    draft = DraftCost.from_dict(doc["draft_costs"]["model"])
    assert draft.kind == "model" and draft.iteration_s(2, 2, 20) > 0
    assert CostModel.from_dict(doc["cost"]).forward_s(2, 3, 20) > 0
    n = len(doc["prompts"])
    for key, rows in doc["runs"].items():
        assert [r["task"] for r in rows] == [f"p{i}" for i in range(n)], key
        for r in rows:
            b, g = doc["shapes"][r["config"]]
            assert (r["b"], r["gamma"]) == (b, g) and len(r["lengths"]) == b
            assert r["lengths"] == r["budgets"]  # no EOS: every row runs to its budget
            assert all(doc["n_max"] // 4 <= x <= doc["n_max"] for x in r["lengths"])
            assert r["wall_s"] > 0 and r["predicted_s"] > 0 and r["predicted_stochastic_s"] > 0
            assert len(r["repeats"]) == doc["run_repeats"] == 2 and r["wall_s"] == min(
                x["wall_s"] for x in r["repeats"])  # the fastest repeat is the measurement
            assert all(x["cpu_s"] >= 0 and x["gc_s"] >= 0 for x in r["repeats"])
            assert all((x["device_allocs"] is None) == (device == "cpu") for x in r["repeats"])
            assert max(r["finish_s"]) <= r["wall_s"]
            assert len(r["timeline"]) == r["forwards"]
            assert all(s[0] <= g for s in r["steps"])
    lat = doc["latency"]
    assert set(lat) == _RUNS | {"all"}
    assert all(x["abs_error"] >= 0 and x["median_wall_s"] > 0 for x in lat.values())
    md = (out.parent / (out.name + ".md")).read_text()
    for text in ("## Median relative error per configuration", "## Runs", doc["command"],
                 "| both-model |", "Target: within 15 %", "Host during the runs"):
        assert text in md
    assert len(re.findall(r"^\| p\d+ \|", md, re.M)) == 6 * n
    assert json.loads((out.parent / (out.name + ".json")).read_text())["latency"] == lat


def test_tiny_run_and_recompute(script, tmp_path, one_thread):
    out = tmp_path / "tiny"
    doc = script.main(["--tiny", "--device", "cpu", "--out", str(out)])
    _check(doc, out, "cpu")
    assert doc["dtype"] == "float32" and doc["b"] == 2
    # branch rows got different budgets somewhere, so rows left the batch at different steps
    assert any(len(set(r["lengths"])) > 1 for r in doc["runs"]["branches"])
    again = script.main(["--recompute", "--out", str(out)])
    assert again["latency"] == doc["latency"]


def test_prompt_ids_file(script, tmp_path, one_thread):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([[5, 6, 7, 5, 6], [9, 10, 11, 12]]))
    doc = script.main(["--tiny", "--device", "cpu", "--prompt-ids", str(ids), "--b", "1",
                       "--n-max", "4", "--out", str(tmp_path / "ids")])
    assert doc["prompts"] == [[5, 6, 7, 5, 6], [9, 10, 11, 12]]
    assert [r["prompt"] for r in doc["runs"]["sequential"]] == [5, 4]


def test_time_cap_keeps_two_prompts(script, tmp_path, one_thread):
    doc = script.main(["--tiny", "--device", "cpu", "--prompts", "4", "--max-seconds", "0",
                       "--out", str(tmp_path / "cap")])
    assert len(doc["prompts"]) == 2 and all(len(r) == 2 for r in doc["runs"].values())
    # no time left for a second pass: one repeat per run
    assert all(len(r["repeats"]) == 1 for rows in doc["runs"].values() for r in rows)


def test_merge_keeps_the_fastest_repeat(script):
    run = {"task": "p0"}
    for wall, n in ((2.0, 3), (1.0, 4), (1.5, 5)):
        script._merge(run, {"wall_s": wall, "forwards": n}, {"wall_s": wall, "cpu_s": wall})
    assert run["wall_s"] == 1.0 and run["forwards"] == 4 and run["task"] == "p0"
    assert script._walls(run) == [2.0, 1.0, 1.5]
    assert script._walls({"wall_s": 3.0}) == [3.0]  # files without repeats


def test_bad_arguments(script, tmp_path):
    with pytest.raises(SystemExit):
        script.main(["--tiny", "--prompts", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        script.main(["--tiny", "--models", "tiny", "--out", str(tmp_path / "x")])


@cuda
def test_tiny_run_on_cuda(script, tmp_path):
    out = tmp_path / "cuda"
    doc = script.main(["--tiny", "--device", "cuda", "--out", str(out)])
    _check(doc, out, "cuda")
    assert doc["dtype"] == "bfloat16"


def test_per_row_token_limits():
    model = tiny_llama(dtype="float32")
    prompt = [5, 6, 7, 8]
    res = generate(model, [prompt] * 3, max_new_tokens=[2, 7, 4], temperature=0.7, seed=1)
    assert [len(t) for t in res.tokens] == [2, 7, 4] and res.stop == ["length"] * 3
    assert res.finish_s[0] < res.finish_s[2] < res.finish_s[1]
    assert [t.rows for t in res.timeline] == [3, 3, 2, 2, 1, 1, 1]  # rows leave the batch
    # drafts never run past a row's own limit
    spec = generate(model, [prompt] * 3, max_new_tokens=[2, 7, 4], gamma=3,
                    drafter=ModelDrafter(model), temperature=0.0)
    assert [len(t) for t in spec.tokens] == [2, 7, 4]
    assert all(req <= 3 for req, _, _ in spec.steps)
    with pytest.raises(ValueError, match="limits"):
        generate(model, [prompt] * 2, max_new_tokens=[3])


def test_synced_clock_on_cpu_is_perf_counter():
    assert synced_clock("cpu") is time.perf_counter
    assert synced_clock(torch.device("cpu")) is time.perf_counter


@cuda
def test_synced_clock_waits_for_cuda():
    clock = synced_clock("cuda")
    x = torch.randn(2048, 2048, device="cuda")
    t0 = clock()
    for _ in range(20):
        x = x @ x / 2048
    assert clock() - t0 > 0


def test_time_decode_reduce():
    model = tiny_llama(dtype="float32")
    seen = []

    def reduce(xs):
        seen.append(len(xs))
        return max(xs)

    cal = time_decode(model, [1], [0], prompt=6, new_tokens=2, repeats=3, progress=False,
                      reduce=reduce)
    assert len(cal.target) == 3 and seen and set(seen) == {3}


def test_time_model_drafter_interleaves_repeats(monkeypatch):
    from lowbit.tts import speculative

    draft = tiny_llama(dtype="float32", seed=1)
    order = []
    propose = speculative.ModelDrafter.propose

    def spy(self, hist, gammas, *a):
        order.append((len(hist), len(hist[0]), gammas[0]))
        return propose(self, hist, gammas, *a)

    monkeypatch.setattr(speculative.ModelDrafter, "propose", spy)
    time_model_drafter(draft, [1, 2], [6], gamma=2, repeats=2, warmup=1)
    grid = [(1, 6, 1), (1, 6, 2), (2, 6, 1), (2, 6, 2)]
    assert order == grid * 3


def test_time_model_drafter_timings_fit_draft_cost():
    draft = tiny_llama(dtype="float32", seed=1)
    ts = time_model_drafter(draft, [1, 2], [6, 12], gamma=3, repeats=1, warmup=0)
    assert len(ts) == 2 * 2 * 2
    prefill = [t for t in ts if t.context == 0]
    steps = [t for t in ts if t.context > 0]
    assert {(t.rows, t.tokens) for t in prefill} == {(1, 6), (1, 12), (2, 6), (2, 12)}
    assert {(t.rows, t.tokens, t.context) for t in steps} == {
        (1, 1, 6), (1, 1, 12), (2, 1, 6), (2, 1, 12)}
    assert all(t.seconds > 0 for t in prefill)
    cost = DraftCost("model", model=CostModel.fit(ts, per_row=True))
    assert cost.iteration_s(2, 3, 12) >= cost.iteration_s(2, 1, 12) > 0  # timing noise: >=
    with pytest.raises(ValueError, match="gamma"):
        time_model_drafter(draft, [1], [6], gamma=1)


def test_model_drafter_sampled_drafts():
    draft = tiny_llama(dtype="float32", seed=1)
    d = ModelDrafter(draft).propose([[5, 6, 7], [8, 9]], [2, 1], 0.7,
                                    torch.Generator().manual_seed(0))
    assert [len(t) for t in d.tokens] == [2, 1] and d.probs[0].shape == (2, 128)


def test_time_cached_drafter_rolls_back_and_feeds_one_token(monkeypatch):
    """Each timed call extends every row by one token past the previous call's history (its
    drafts rejected), on an interleaved grid; the timings are in ``CachedDraftCost`` form."""
    from lowbit.tts import speculative
    from lowbit.tts.calibrate import time_cached_drafter
    from lowbit.tts.latency import CachedDraftCost

    draft = tiny_llama(dtype="float32", seed=1)
    calls, steps = [], []
    propose, step = speculative.CachedModelDrafter.propose, speculative.CachedModelDrafter._step

    def spy(self, hist, gammas, *a):
        calls.append((len(hist), len(hist[0]), gammas[0]))
        return propose(self, hist, gammas, *a)

    def spy_step(self, new):
        steps.append(max(len(x) for x in new))
        return step(self, new)

    monkeypatch.setattr(speculative.CachedModelDrafter, "propose", spy)
    monkeypatch.setattr(speculative.CachedModelDrafter, "_step", spy_step)
    ts = time_cached_drafter(draft, [1, 2], [6], gamma=3, iterations=2, repeats=1)
    one = [(b, n, g) for b in (1, 2) for g in (1, 3) for n in (6, 7, 8)]
    assert calls == one
    # after the prefill every forward feeds one token per row (no re-encoding): per row count,
    # gamma 1: one per timed call; gamma 3: three per timed call plus two after the prefill
    assert steps == [1] * 2 * (2 * 1 + 2 * 3 + 2)
    assert [(t.rows, t.tokens, t.context) for t in ts] == [
        (b, 1, c) for b in (1, 2) for c in (7, 7, 8, 8)]
    cost = CachedDraftCost(CostModel.fit(ts, per_row=True))
    assert cost.iteration_s(2, 3, 8) > 0
    with pytest.raises(ValueError, match="gamma"):
        time_cached_drafter(draft, [1], [6], gamma=1)
