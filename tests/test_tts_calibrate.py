import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lowbit.tts.calibrate import DecodeCalibration, time_decode  # noqa: E402
from lowbit.tts.drafts import tiny_llama  # noqa: E402
from lowbit.tts.latency import CostModel, Timing  # noqa: E402


def test_time_decode_records_full_width_steps():
    model = tiny_llama(dtype="float32")
    cal = time_decode(model, [1, 3], [0, 2], prompt=12, new_tokens=3, repeats=2,
                      progress=False, clock=time.process_time)
    by = {}
    for t in cal.target:
        by.setdefault(t.rows, []).append(t)
    assert sorted(by) == [1, 3] and len(cal.target) == 2 * 2 * 4  # prefill + 3 steps each
    prefill = [t for t in cal.target if t.context == 0]
    assert len(prefill) == 4 and all(t.tokens == 12 for t in prefill)
    steps = [t for t in cal.target if t.context > 0]
    assert {t.tokens for t in steps} == {1, 3}  # every verify forward has width gamma + 1
    # contexts grow by the width: 12, 12 + w, 12 + 2w
    for w in (1, 3):
        ctx = sorted({t.context for t in steps if t.tokens == w})
        assert ctx == [12, 12 + w, 12 + 2 * w]
    assert all(t.seconds > 0 for t in cal.target)
    assert {(p[0], p[1]) for p in cal.lookup} == {(1, 0), (1, 2), (3, 0), (3, 2)}
    cost, draft = cal.fit()
    assert isinstance(cost, CostModel) and min(cost.a0, cost.a1, cost.a2, cost.a4) >= 0
    assert draft.kind == "lookup" and draft.per_token_s >= 0 and draft.per_ctx_s >= 0


def test_time_decode_runs_only_the_timed_iterations(monkeypatch):
    """Each calibration run stops after the prefill and new_tokens iterations (max_forwards),
    not at its token room (up to 2 * new_tokens + gamma + 1 tokens)."""
    import lowbit.tts.calibrate as cal_mod
    from lowbit.tts.speculative import generate

    model = tiny_llama(dtype="float32")
    results = []

    def spy(model, prompts, **kw):
        res = generate(model, prompts, **kw)
        results.append(res)
        return res

    monkeypatch.setattr(cal_mod, "generate", spy)
    time_decode(model, [2], [0, 3], prompt=6, new_tokens=4, repeats=1, progress=False)
    assert [len(r.timeline) for r in results] == [5, 5]
    assert set(results[1].stop) == {"forwards"}  # gamma 3: token room left, stopped by count


def test_time_decode_several_prompt_lengths():
    """Several prompt lengths: every (length, rows, gamma) point is timed, so the contexts of
    the fit span the lengths (the context term of the cost model becomes identifiable)."""
    model = tiny_llama(dtype="float32")
    cal = time_decode(model, [1, 2], [0], prompt=[6, 40], new_tokens=2, repeats=1,
                      progress=False)
    prefill = sorted((t.rows, t.tokens) for t in cal.target if t.context == 0)
    assert prefill == [(1, 6), (1, 40), (2, 6), (2, 40)]
    assert {t.context for t in cal.target if t.context} == {6, 7, 40, 41}


def test_generate_max_forwards():
    model = tiny_llama(dtype="float32")
    from lowbit.tts.speculative import generate

    res = generate(model, [[5, 6, 7]] * 2, max_new_tokens=50, max_forwards=3)
    assert len(res.timeline) == 3 and res.stop == ["forwards", "forwards"]
    assert all(len(t) == 3 for t in res.tokens)  # one token from the prefill, one per step
    full = generate(model, [[5, 6, 7]] * 2, max_new_tokens=3)
    assert full.tokens == res.tokens and full.stop == ["length", "length"]


def test_time_decode_interleaves_repeats_and_keeps_the_minimum(monkeypatch):
    """A slow spell of the host (here: the first three calls, ten times slower) hits one repeat
    of every grid point, not all repeats of one point: the minima are the fast times."""
    import lowbit.tts.calibrate as cal_mod
    from lowbit.tts.speculative import generate

    model = tiny_llama(dtype="float32")
    order, calls = [], [0]

    def clock():
        calls[0] += 1
        return calls[0] * (10.0 if len(order) <= 3 else 1.0)

    def spy(model, prompts, **kw):
        order.append((len(prompts), kw["gamma"]))
        return generate(model, prompts, **kw)

    monkeypatch.setattr(cal_mod, "generate", spy)
    cal = time_decode(model, [1, 2], [0, 1], prompt=5, new_tokens=2, repeats=2,
                      progress=False, clock=clock)
    grid = [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert order == grid + grid
    assert max(t.seconds for t in cal.target) < 10.0


def test_decode_fit_recovers_per_row_overhead_and_lookup_cost():
    true = CostModel(a0=0.02, a1=1e-3, a2=1e-5, a4=4e-3)
    target = tuple(Timing(b, s, c, true.forward_s(b, s, c))
                   for b in (1, 2, 4, 8) for s in (1, 3, 5) for c in (30, 90))
    lookup = tuple((b, g, c, b * (2e-5 * g + 3e-7 * c))
                   for b in (1, 4) for g in (0, 2, 4) for c in (30, 90))
    cost, draft = DecodeCalibration(target, lookup).fit()
    np.testing.assert_allclose([cost.a0, cost.a1, cost.a2, cost.a4],
                               [0.02, 1e-3, 1e-5, 4e-3], rtol=1e-6, atol=1e-12)
    assert draft.per_token_s == pytest.approx(2e-5) and draft.per_ctx_s == pytest.approx(3e-7)
    # without the per-row term the same data fits worse
    assert CostModel.fit(target).rel_residual > cost.rel_residual


def test_gpu_calibration_script_tiny(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import tts_gpu_calibrate
    finally:
        sys.path.pop(0)
    tts_gpu_calibrate.main(["--out-dir", str(tmp_path), "--tiny", "--repeats", "1"])
    doc = json.loads((tmp_path / "tts_gpu_calibrate.json").read_text())
    tiny = doc["models"]["tiny"]
    assert len(tiny["timings"]) == 4 * 2 * 2 and tiny["param_bytes"] > 0
    assert CostModel.from_dict(dict(tiny["fit"], timings=tiny["timings"])).forward_s(2, 1, 16) > 0
