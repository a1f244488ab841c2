"""Real execution on a Hugging Face model: prompts, a sample pool, and running a plan (B
branches, draft length gamma, one batched speculative loop) on a problem, timed."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .answers import aggregate, extract_answer
from .planner import Plan
from .pool import Problem, Sample, SamplePool
from .problems import Task
from .speculative import ModelDrafter, PromptLookupDrafter, StepTime, generate

INSTRUCTION = ("Solve the problem. Think step by step, then give the final answer as a number "
               "on the last line in the form '#### <number>'.")


ALIASES = {"smollm2": "smollm2-135m", "qwen-0.5b": "qwen2.5-coder-0.5b",
           "qwen-1.5b": "qwen2.5-coder-1.5b"}
"""Short model names accepted by ``load`` for the names of ``lowbit.integrations.data``."""


def load(name: str, dtype: str = "float32", device: str = "cpu"):
    """``(model, tokenizer)`` through ``lowbit.integrations.data.load_model`` (offline; a local
    directory or a name of that module, or an alias of ``ALIASES``), in eval mode on ``device``."""
    import torch

    from lowbit.integrations.data import load_model

    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    model, tok = load_model(ALIASES.get(name, name), dtype=getattr(torch, dtype))
    return model.to(device).eval(), tok


def encode_chat(tok, text: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt (generation prompt appended)."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return list(tok(rendered, add_special_tokens=False)["input_ids"])


def task_prompt(tok, task: Task) -> list[int]:
    return encode_chat(tok, f"{task.question}\n\n{INSTRUCTION}")


def make_drafter(kind: str, draft_model=None):
    """``"lookup"`` (prompt lookup), ``"model"`` (``draft_model``) or ``"none"``."""
    if kind == "lookup":
        return PromptLookupDrafter()
    if kind == "model":
        if draft_model is None:
            raise ValueError("drafter 'model' needs a draft model")
        return ModelDrafter(draft_model)
    if kind == "none":
        return None
    raise ValueError(f"unknown drafter {kind!r}")


def _ids(tok) -> dict:
    eos = tok.eos_token_id
    return {"eos_token_id": eos, "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None
            else (eos or 0)}


def sample_pool(model, tok, tasks: list[Task], k: int, *, temperature: float = 0.7,
                max_new_tokens: int = 256, seed: int = 0, meta: dict | None = None,
                batch: int = 1, progress: bool = False) -> SamplePool:
    """Pre-sample ``k`` solutions per task (plain decoding) into a pool: ``batch`` tasks per
    ``generate`` call (``batch * k`` left-padded rows, seeded ``seed`` + the index of the call's
    first task), so the samples depend on ``batch``; ``batch=1`` is one call of ``k`` rows per
    task (seed ``seed + i``). Large batches keep an accelerator busy."""
    from tqdm import tqdm

    if k < 1 or batch < 1:
        raise ValueError(f"k and batch must be >= 1 (got k={k}, batch={batch})")
    prompts = [task_prompt(tok, task) for task in tasks]
    problems = []
    for i in tqdm(range(0, len(tasks), batch), desc="sample pool", disable=not progress):
        chunk = range(i, min(i + batch, len(tasks)))
        g = generate(model, [prompts[j] for j in chunk for _ in range(k)],
                     max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i,
                     **_ids(tok))
        for n, j in enumerate(chunk):
            samples = []
            for toks, lp in zip(g.tokens[n * k:(n + 1) * k], g.logprob[n * k:(n + 1) * k],
                                strict=True):
                ans = extract_answer(tok.decode(toks, skip_special_tokens=True))
                samples.append(Sample(ans, ans == tasks[j].reference, len(toks),
                                      lp / max(len(toks), 1)))
            problems.append(Problem(tasks[j].id, tasks[j].reference, tuple(samples),
                                    tasks[j].question))
    lens = sorted(len(p) for p in prompts)
    return SamplePool(tuple(problems), dict(
        meta or {}, k=k, temperature=temperature, max_new_tokens=max_new_tokens,
        prompt_tokens=int(lens[len(lens) // 2]), batch=batch, seed=seed))


@dataclass(frozen=True)
class RunResult:
    """One executed plan on one task: the voted ``answer``, ``correct``, wall-clock
    ``latency_s`` and process CPU time ``cpu_s`` (the latency on an uncontended host when torch
    runs one thread), per-branch ``lengths`` and ``answers``, target ``forwards``, logged
    ``(requested, proposed, accepted)`` verify ``steps``, the per-forward ``timeline`` and each
    branch's ``finish_s`` on the ``clock`` of ``run_plan``."""

    task_id: str
    answer: str | None
    correct: bool
    latency_s: float
    lengths: tuple[int, ...]
    answers: tuple[str | None, ...]
    forwards: int
    steps: tuple[tuple[int, int, int], ...]
    timeline: tuple[StepTime, ...] = ()
    cpu_s: float = 0.0
    finish_s: tuple[float, ...] = ()


def run_plan(model, tok, task: Task, plan: Plan, *, drafter=None, temperature: float = 0.7,
             seed: int = 0, deadline_s: float | None = None, early: bool = False,
             clock=time.perf_counter) -> RunResult:
    """Execute ``plan`` (B rows of the task prompt, draft length gamma, per-branch budget n_max)
    and vote with ``plan.method`` (reward-model methods need a reward model: not supported);
    ``clock`` times the timeline and the deadline (``speculative.generate``)."""
    if plan.method not in ("majority", "weighted"):
        raise NotImplementedError(f"executing method {plan.method!r} needs a reward model")
    prompt = task_prompt(tok, task)

    def answer_of(toks):
        return extract_answer(tok.decode(toks, skip_special_tokens=True))

    t0, c0 = time.perf_counter(), time.process_time()
    g = generate(model, [prompt] * plan.b, max_new_tokens=max(plan.n_max, 1), gamma=plan.gamma,
                 drafter=drafter if plan.gamma else None, temperature=temperature, seed=seed,
                 deadline_s=deadline_s, answer_of=answer_of if early else None, clock=clock,
                 **_ids(tok))
    latency, cpu = time.perf_counter() - t0, time.process_time() - c0
    answers = [answer_of(t) if s in ("eos", "length") else None
               for t, s in zip(g.tokens, g.stop, strict=True)]
    lens = [len(t) for t in g.tokens]
    voted = aggregate(plan.method, answers, logprobs=[lp / max(n, 1)
                                                      for lp, n in zip(g.logprob, lens,
                                                                       strict=True)])
    return RunResult(task.id, voted, voted == task.reference, latency, tuple(lens),
                     tuple(answers), g.forwards, tuple(g.steps), tuple(g.timeline), cpu,
                     tuple(g.finish_s))
