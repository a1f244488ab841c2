import itertools
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lowbit.tts.drafts import tiny_llama  # noqa: E402
from lowbit.tts.speculative import (  # noqa: E402
    Drafts,
    ModelDrafter,
    PromptLookupDrafter,
    generate,
    left_pad,
)

PROMPTS = [[5, 6, 7, 8, 9, 5, 6], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11, 3, 4], [20]]
N_NEW = 16


@pytest.fixture(scope="module")
def target():
    return tiny_llama(seed=0)


def _greedy_reference(model, prompts, n_new, eos=None):
    out = []
    for p in prompts:
        o = model.generate(torch.tensor([p]), attention_mask=torch.ones_like(torch.tensor([p])),
                           max_new_tokens=n_new, do_sample=False, eos_token_id=eos,
                           pad_token_id=0)
        out.append(o[0, len(p):].tolist())
    return out


class OracleDrafter:
    """Proposes the true greedy continuation, corrupting each token with probability ``p_bad``
    (forces long accepted runs, rejections in the middle, and ragged draft lengths)."""

    def __init__(self, prompts, reference, p_bad, seed=0):
        self.ref = {tuple(p): r for p, r in zip(prompts, reference, strict=True)}
        self.p_bad, self.rng = p_bad, np.random.default_rng(seed)

    def propose(self, histories, gammas, temperature=0.0, generator=None):
        out = []
        for h, g in zip(histories, gammas, strict=True):
            for p, r in self.ref.items():
                if tuple(h[:len(p)]) == p:
                    done = len(h) - len(p)
                    d = list(r[done:done + int(self.rng.integers(0, g + 1))])
                    out.append([t if self.rng.random() > self.p_bad else (t + 1) % 128 for t in d])
        return Drafts(out)


@pytest.fixture(scope="module")
def reference(target):
    return _greedy_reference(target, PROMPTS, N_NEW)


def test_left_pad():
    ids, mask = left_pad([[1, 2], [3]], 0)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]


def test_prompt_lookup_proposals():
    d = PromptLookupDrafter(max_ngram=2)
    assert d.propose([[1, 2, 3, 4, 1, 2]], [3]).tokens == [[3, 4, 1]]
    assert d.propose([[1, 2, 3, 9]], [2]).tokens == [[]]
    assert d.propose([[7, 1, 7]], [0]).tokens == [[]]


@pytest.mark.parametrize("gamma", [0, 1, 4])
def test_batched_speculative_greedy_equals_greedy(target, reference, gamma):
    for drafter in (PromptLookupDrafter(), OracleDrafter(PROMPTS, reference, 0.2, seed=gamma)):
        res = generate(target, PROMPTS, max_new_tokens=N_NEW, gamma=gamma, drafter=drafter)
        assert res.tokens == reference
        assert all(s == "length" for s in res.stop)
        if gamma:
            assert res.forwards < N_NEW
            assert any(a < p for _, p, a in res.steps)  # rejected slots were masked


def test_oracle_drafts_are_mostly_accepted(target, reference):
    res = generate(target, PROMPTS, max_new_tokens=N_NEW, gamma=4,
                   drafter=OracleDrafter(PROMPTS, reference, 0.0))
    assert res.tokens == reference
    assert all(a == p for _, p, a in res.steps)


def test_steps_and_timeline_describe_every_forward(target, reference):
    res = generate(target, PROMPTS, max_new_tokens=N_NEW, gamma=3,
                   drafter=OracleDrafter(PROMPTS, reference, 0.3, seed=4))
    assert res.tokens == reference
    tl = res.timeline
    assert len(tl) == res.forwards and tl[0].context == 0 and tl[0].rows == len(PROMPTS)
    assert tl[0].width == max(len(p) for p in PROMPTS)
    for prev, cur in zip(tl[1:], tl[2:], strict=False):  # holes stay: context grows by width
        assert cur.context == prev.context + prev.width and cur.rows <= prev.rows
    assert all(t.draft_s >= 0 and t.target_s > 0 for t in tl)
    assert sum(t.rows for t in tl[1:]) == len(res.steps)
    assert all(0 <= a <= p <= r <= 3 for r, p, a in res.steps)
    assert any(p < r for r, p, _ in res.steps)  # ragged proposals are logged as such


def test_draft_model_and_self_draft_are_lossless(target, reference):
    for drafter, fewer in ((ModelDrafter(tiny_llama(seed=1)), False), (ModelDrafter(target), True)):
        res = generate(target, PROMPTS, max_new_tokens=N_NEW, gamma=3, drafter=drafter)
        assert res.tokens == reference
        if fewer:
            assert res.forwards <= N_NEW // 3 + 2


def test_eos_stops_rows_and_batch_shrinks(target, reference):
    eos = reference[1][4]
    want = _greedy_reference(target, PROMPTS, N_NEW, eos=eos)
    res = generate(target, PROMPTS, max_new_tokens=N_NEW, gamma=3, drafter=PromptLookupDrafter(),
                   eos_token_id=eos)
    want = [w[:w.index(eos) + 1] if eos in w else w for w in want]
    assert res.tokens == want
    assert res.stop[1] == "eos" and len(res.tokens[1]) == reference[1].index(eos) + 1


def test_deadline_stops_everything(target):
    res = generate(target, PROMPTS, max_new_tokens=N_NEW, deadline_s=0.0)
    assert res.stop == ["deadline"] * len(PROMPTS)
    assert all(len(t) == 1 for t in res.tokens)


def test_logprob_matches_target(target, reference):
    res = generate(target, PROMPTS[:1], max_new_tokens=8, gamma=3, drafter=PromptLookupDrafter())
    p = PROMPTS[0]
    ids = torch.tensor([p + reference[0][:8]])
    with torch.no_grad():
        logp = torch.log_softmax(target(ids).logits[0].double(), -1)
    want = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(reference[0][:8]))
    assert want < 0
    assert res.logprob[0] == pytest.approx(want, abs=1e-6)


# -- speculative sampling preserves the target distribution ------------------------------------


def _peaky(seed, vocab=6):
    m = tiny_llama(vocab=vocab, hidden=16, layers=1, seed=seed)
    with torch.no_grad():
        m.lm_head.weight.mul_(60.0)
    return m


def _exact_joint(model, prompt, n, vocab):
    seqs = [list(s) for s in itertools.product(range(vocab), repeat=n)]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt + s for s in seqs])).logits.double(), -1)
    out = np.zeros(len(seqs))
    for k, s in enumerate(seqs):
        out[k] = sum(float(lp[k, len(prompt) - 1 + j, t]) for j, t in enumerate(s))
    return np.exp(out)


class ConstantDrafter:
    def propose(self, histories, gammas, temperature=0.0, generator=None):
        return Drafts([[3] * g for g in gammas])


@pytest.mark.parametrize("kind", ["model", "constant",
                                  pytest.param("lookup", marks=pytest.mark.slow)])
def test_speculative_sampling_preserves_distribution(kind):
    from scipy.stats import chisquare

    vocab, n, rows = 6, 3, 3000
    target = _peaky(0, vocab)
    with torch.no_grad():
        greedy = target.generate(torch.tensor([[1, 2]]), max_new_tokens=4, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0].tolist()
    prompt = greedy + [1, 2]  # prompt lookup then proposes the likely continuation
    drafter = {"model": ModelDrafter(_peaky(7, vocab)), "constant": ConstantDrafter(),
               "lookup": PromptLookupDrafter()}[kind]
    res = generate(target, [prompt] * rows, max_new_tokens=n, gamma=2, drafter=drafter,
                   temperature=1.0, seed=11)
    assert any(a < p for _, p, a in res.steps) and any(a > 0 for *_, a in res.steps)
    p = _exact_joint(target, prompt, n, vocab)
    codes = [int(np.ravel_multi_index(t, (vocab,) * n)) for t in res.tokens]
    obs = np.bincount(codes, minlength=vocab ** n).astype(float)
    exp = p * rows
    small = exp < 5
    obs = np.append(obs[~small], obs[small].sum())
    exp = np.append(exp[~small], exp[small].sum())
    assert chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


# -- real model (slow) ---------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_batched_speculative_equals_greedy():
    pytest.importorskip("gguf")
    if os.environ.get("LOWBIT_SKIP_SMOLLM2"):
        pytest.skip("LOWBIT_SKIP_SMOLLM2 set")
    from lowbit.tts.executors import encode_chat
    from lowbit.tts.executors import load as load_model

    try:
        model, tok = load_model("smollm2")
    except OSError as err:
        pytest.skip(str(err))
    chats = ["List the numbers from 1 to 12, separated by commas.", "What is 12 + 30?",
             "Repeat after me: the cat sat on the mat, the cat sat on the mat."]
    prompts = [encode_chat(tok, c) for c in chats]
    ref = _greedy_reference(model, prompts, 30, eos=tok.eos_token_id)
    ref = [r[:r.index(tok.eos_token_id) + 1] if tok.eos_token_id in r else r for r in ref]
    res = generate(model, prompts, max_new_tokens=30, gamma=4, drafter=PromptLookupDrafter(),
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or 0)
    assert res.tokens == ref
    assert res.forwards < 30


@pytest.mark.parametrize("make", ["mxfp4", pytest.param("nvfp4", marks=pytest.mark.slow),
                                  pytest.param("layers", marks=pytest.mark.slow)])
def test_cheap_copies_of_the_target_draft_losslessly(target, reference, make):
    from lowbit.tts.drafts import quantized_copy, truncated_copy

    draft = truncated_copy(target, 1) if make == "layers" else quantized_copy(target, make)
    res = generate(target, PROMPTS, max_new_tokens=N_NEW, gamma=3, drafter=ModelDrafter(draft))
    assert res.tokens == reference
    if make != "layers":  # a quantized copy agrees with the target on most tokens
        assert sum(a for *_, a in res.steps) > 0.5 * sum(p for _, p, _ in res.steps)
