"""Real TTS study: accuracy versus latency budget, predicted versus measured latency.

    nice -n 10 python bench/tts_study.py --model smollm2 \
        --problems "rg:basic_arithmetic:8:0:$OPTS" --b 4 --gamma 3 --n-max 32 \
        --out bench/results/tts_smollm2_arith
    python bench/tts_study.py --recompute --out bench/results/tts_smollm2_arith   # analysis only
    nice -n 10 python bench/tts_study.py --model qwen2.5-coder-1.5b \
        --draft-model qwen2.5-coder-0.5b --problems ... --out bench/results/tts_qwen_pair

1. Decode calibration (``calibrate.time_decode``) on the process CPU-time clock, prompts of the
   median problem length (plus each of ``--cal-offsets``): the target cost model (with the
   per-row host term) and the prompt-lookup drafting cost; with
   ``--draft-model``, also the draft model's own decode-loop cost model.
2. Every problem runs in four configurations, sampled at ``--temperature`` with prompt-lookup
   drafts, or with ``--draft-model`` drafts from that model (``CachedModelDrafter``):
   sequential (B=1, gamma=0), branches (B, 0), speculation (1, gamma), both (B, gamma),
   each to ``--n-max`` tokens per branch; CPU time, wall time and per-branch finish times kept.
3. Latency: each run is simulated with its own branch lengths (expected-value and stochastic
   simulators) using the calibrated cost model and the acceptance table of the *other* problems'
   speculative runs (leave one problem out); median relative error per configuration.
4. Accuracy versus budget: speculation is lossless, so every run's branches are samples of the
   target; they form the pool. Problems are split in two folds; the planner, given the pool,
   cost model and acceptance of one fold, picks a plan per budget and strategy (sequential,
   branch-only, speculation-only, combination), and the plan is scored on the other fold from
   the measured runs: a branch counts if it finished within the budget and the plan's token
   budget (a deadline stop), votes by majority.

5. With ``--pool-k K``: a sample pool of K plain samples per problem of ``--pool-problems``
   (default ``--problems``; ``--pool-batch`` problems per batched call), drawn before the runs.
   Accuracy versus budget on the pool (2-fold over its problems): the planner, with the
   calibrated cost model and the acceptance measured in the runs, picks (B, gamma, n_max) per
   budget and strategy from one fold's pool; the plan is scored on the other fold's samples
   (``pool.accuracy``). This covers many more problems than the executed runs, whose own
   latencies validate the cost model.

On a CPU (``--device cpu``) latency is CPU time of the process (torch on one thread): the host
is shared, and wall time includes other processes' use of the cores (also reported). On a GPU
(``--device cuda``) it is wall-clock time read after synchronising the device. Writes OUT.json,
OUT.md, OUT.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime

from lowbit.tts.latency import CachedDraftCost, CostModel
from lowbit.tts.speculative import CachedModelDrafter

CONFIGS = ("sequential", "branches", "speculation", "both")
STRATEGIES = {"sequential": ("sequential",), "branch-only": ("sequential", "branches"),
              "speculation-only": ("sequential", "speculation"), "combination": CONFIGS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--draft-model", help="draft with this model (same vocabulary) instead of "
                                          "prompt lookup")
    ap.add_argument("--dtype", default="float32", help="torch dtype of the model(s)")
    ap.add_argument("--device", default="cpu", help="cpu (latency = process CPU time) or cuda "
                    "(latency = device-synchronised wall clock)")
    ap.add_argument("--pool-k", type=int, default=0, help="samples per problem of a sample pool "
                    "drawn before the runs (0: none)")
    ap.add_argument("--pool-problems", help="the pool's problems (default: --problems)")
    ap.add_argument("--pool-batch", type=int, default=8, help="pool problems per batched call")
    ap.add_argument("--problems")
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--gamma", type=int, default=3)
    ap.add_argument("--n-max", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cal-rows", default="1,2,4")
    ap.add_argument("--cal-steps", type=int, default=8)
    ap.add_argument("--cal-offsets", default="0", help="calibration prompt lengths: the median "
                    "prompt plus each offset (e.g. 0,128,256 to cover the contexts of long "
                    "generations)")
    ap.add_argument("--repeats", type=int, default=2, help="calibration repeats (min)")
    ap.add_argument("--run-repeats", type=int, default=1, help="run each (problem, config) this "
                    "many times with the same seed and keep the fastest (the latency of an "
                    "uncontended host, as the calibration's minimum; the repeats' times are kept)")
    ap.add_argument("--max-seconds", type=float, help="start no further problem after this many "
                    "seconds from the start (the runs keep the problems completed)")
    ap.add_argument("--out", required=True, help="output prefix (OUT.json, OUT.md, OUT.png)")
    ap.add_argument("--recompute", action="store_true", help="analysis of an existing OUT.json")
    ap.add_argument("--recalibrate", action="store_true", help="with --recompute: measure the "
                    "decode calibration again (current code, --cal-* options, the study's model) "
                    "and analyse the stored runs with it; the original and its errors are kept")
    ap.add_argument("--drafter-calibration", help="with --recompute: a JSON of "
                    "time_cached_drafter timings (bench/tts_gpu_drafter_calibrate.py) for the "
                    "draft model's cost, in place of its decode loop; the errors before are kept")
    ap.add_argument("--reading", help="a text file whose content is kept in OUT.json and shown "
                    "in OUT.md under the problems (the study's reading)")
    args = ap.parse_args()
    if args.recompute:
        with open(args.out + ".json") as fh:
            doc = json.load(fh)
        if args.recalibrate:
            recalibrate(doc, args)
        if args.drafter_calibration:
            set_drafter_calibration(doc, args.drafter_calibration)
    else:
        if not args.problems:
            ap.error("--problems is required (unless --recompute)")
        if args.run_repeats < 1 or args.pool_k < 0:
            ap.error("--run-repeats must be >= 1 and --pool-k >= 0")
        doc = measure(args)
    if args.reading:
        with open(args.reading) as fh:
            doc["reading"] = fh.read().strip()
    analyse(doc)
    write(doc, args.out)


def measure(args: argparse.Namespace) -> dict:
    import torch
    import transformers
    from tqdm import tqdm

    from lowbit.tts.calibrate import (
        DecodeCalibration,
        synced_clock,
        time_cached_drafter,
        time_decode,
    )
    from lowbit.tts.executors import load, run_plan, sample_pool, task_prompt
    from lowbit.tts.planner import Plan
    from lowbit.tts.problems import parse_spec
    from lowbit.tts.speculative import PromptLookupDrafter

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    gpu = args.device.startswith("cuda")
    clock = synced_clock(args.device) if gpu else time.process_time
    model, tok = load(args.model, args.dtype, args.device)
    draft_model = (load(args.draft_model, args.dtype, args.device)[0] if args.draft_model
                   else None)
    if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise ValueError("the draft model's vocabulary differs from the target's")
    tasks = parse_spec(args.problems)
    prompts = [len(task_prompt(tok, t)) for t in tasks]
    cal_rows = [int(x) for x in args.cal_rows.split(",")]
    cal_kw = _cal_kw(args, prompts, clock)
    pool = None
    if args.pool_k:
        pool = sample_pool(model, tok, parse_spec(args.pool_problems or args.problems),
                           args.pool_k, temperature=args.temperature, max_new_tokens=args.n_max,
                           seed=10**6, batch=args.pool_batch, progress=True,
                           meta={"model": args.model, "problems": args.pool_problems or
                                 args.problems})
    cal = time_decode(model, cal_rows, sorted({0, args.gamma}), **cal_kw)
    cost, draft = cal.fit(meta={"model": args.model, "clock": "synchronised wall clock" if gpu
                                else "process_time", "threads": args.threads})
    draft_cal = DecodeCalibration((), ())
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    drafter_timings = []
    if draft_model is not None:
        draft_cal = time_decode(draft_model, cal_rows, [0], **cal_kw)
        drafter_timings = time_cached_drafter(
            draft_model, cal_rows, cal_kw["prompt"], gamma=max(args.gamma, 2),
            iterations=args.cal_steps, repeats=args.repeats, temperature=args.temperature,
            pad_token_id=pad, clock=clock)
    shapes = {"sequential": (1, 0), "branches": (args.b, 0), "speculation": (1, args.gamma),
              "both": (args.b, args.gamma)}
    runs = {c: [] for c in CONFIGS}

    def snapshot() -> dict:
        """The raw measurements so far (whole problems), written to OUT.json: an interrupted
        study can be analysed with ``--recompute``."""
        doc = {
            "command": " ".join(sys.argv), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": (f"{torch.cuda.get_device_name()}, {platform.machine()} host" if gpu else
                        f"{platform.machine()} {platform.processor() or ''}, "
                        f"{torch.get_num_threads()} torch thread(s), shared 2-core host"),
            "clock": "wall" if gpu else "cpu",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "model": args.model, "problems": args.problems, "b": args.b, "gamma": args.gamma,
            **({"draft_model": args.draft_model, "dtype": args.dtype,
                "draft_calibration_timings": [t.__dict__ for t in draft_cal.target],
                "drafter_calibration": {"timings": [t.__dict__ for t in drafter_timings],
                                        "source": "measured with the study"}}
               if draft_model is not None else {}),
            "n_max": args.n_max, "temperature": args.temperature,
            "shapes": {c: list(v) for c, v in shapes.items()},
            "cost": {k: v for k, v in cost.to_dict().items() if k != "timings"},
            "calibration_timings": [t.__dict__ for t in cal.target],
            "lookup_points": [list(p) for p in cal.lookup], "draft": draft.to_dict(),
            "runs": runs, "seconds": time.perf_counter() - t_start,
            **({"pool": {"meta": pool.meta, "problems": [asdict(p) for p in pool.problems]}}
               if pool is not None else {})}
        with open(args.out + ".json", "w") as fh:
            json.dump(doc, fh, indent=1)
        return doc

    jobs = [(i, t, c) for i, t in enumerate(tasks) for c in CONFIGS]
    for i, task, c in tqdm(jobs, desc="runs"):
        if c == CONFIGS[0] and i >= 2 and args.max_seconds is not None and (
                time.perf_counter() - t_start > args.max_seconds):
            print(f"--max-seconds {args.max_seconds:g} reached: {i} of {len(tasks)} problems run")
            break
        b, g = shapes[c]
        reps = [run_plan(model, tok, task, Plan("majority", b, g, args.n_max, 0.0, 0.0, 0.0),
                         drafter=PromptLookupDrafter() if draft_model is None else
                         CachedModelDrafter(draft_model, pad), temperature=args.temperature,
                         seed=1000 * i + CONFIGS.index(c), clock=clock)
                for _ in range(args.run_repeats)]
        r = min(reps, key=lambda x: x.latency_s if gpu else x.cpu_s)
        runs[c].append({**({"repeats_s": [x.latency_s if gpu else x.cpu_s for x in reps],
                            "repeats_same": all(x.lengths == r.lengths and x.answers == r.answers
                                                for x in reps)}
                           if args.run_repeats > 1 else {}),
                        "task": task.id, "reference": task.reference, "prompt": prompts[i],
                        "answer": r.answer, "correct": r.correct, "cpu_s": r.cpu_s,
                        "wall_s": r.latency_s, "forwards": r.forwards,
                        "lengths": list(r.lengths), "answers": list(r.answers),
                        "finish_s": list(r.finish_s), "steps": [list(s) for s in r.steps],
                        "timeline": [[t.rows, t.width, t.context, t.draft_s, t.target_s]
                                     for t in r.timeline]})
        if c == CONFIGS[-1]:
            snapshot()
    return snapshot()


def _trace_fit(doc: dict, tasks: set[str]):
    """Cost model and lookup cost fitted on the logged step times of the runs of ``tasks``."""
    from lowbit.tts.calibrate import DecodeCalibration
    from lowbit.tts.latency import Timing

    target, lookup = [], []
    for c in CONFIGS:
        g = doc["shapes"][c][1]
        for r in doc["runs"][c]:
            if r["task"] in tasks:
                for rows, width, ctx, draft_s, target_s in r["timeline"]:
                    target.append(Timing(rows, width, ctx, target_s))
                    if ctx and g:
                        lookup.append((rows, g, ctx, draft_s))
    return DecodeCalibration(tuple(target), tuple(lookup)).fit()


def _setup(doc: dict, tasks: set[str], prompt: int, trace: bool = False):
    """Simulator setup from ``tasks``' acceptance; cost from the calibration, or (``trace``)
    fitted on the step times logged in ``tasks``' runs (a draft model's cost stays the
    calibrated one)."""
    from lowbit.tts.latency import AcceptanceTable, DraftCost
    from lowbit.tts.simulate import Setup

    steps = [s for c in ("speculation", "both") for r in doc["runs"][c] if r["task"] in tasks
             for s in r["steps"]]
    acc = AcceptanceTable.from_counts(steps)
    cost, draft = _trace_fit(doc, tasks) if trace else (CostModel.from_dict(doc["cost"]), None)
    if "draft_model" in doc:
        g = doc["gamma"]
        draft = CachedDraftCost(CostModel.from_dict(doc["draft"]["model"]),
                                acc.survival[g - 1] if len(acc.survival) >= g else 0.0)
    return Setup(cost, acc, draft or DraftCost.from_dict(doc["draft"]), prompt=prompt,
                 max_tokens=doc["n_max"])


def _rel(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas


def _cal_kw(args: argparse.Namespace, prompts: list[int], clock=time.process_time) -> dict:
    """``time_decode`` options: prompt lengths = median prompt + each of ``--cal-offsets``."""
    med = int(statistics.median(prompts))
    return {"prompt": [med + int(o) for o in args.cal_offsets.split(",")],
            "new_tokens": args.cal_steps, "repeats": args.repeats,
            "temperature": args.temperature, "clock": clock}


def _clock(doc: dict) -> tuple[str, str]:
    """``(prefix, label)`` of the study's latency clock: ``("cpu", "CPU")`` (process CPU time;
    studies before the key existed) or ``("wall", "wall-clock")`` (device-synchronised)."""
    return ("wall", "wall-clock") if doc.get("clock") == "wall" else ("cpu", "CPU")


def recalibrate(doc: dict, args: argparse.Namespace) -> None:
    """Replace the stored decode calibration of the target by a new measurement with the
    ``--cal-*`` options; the original calibration and the latency errors it gave go to
    ``calibration_original``. The runs stay as measured."""
    import torch

    from lowbit.tts.calibrate import time_decode
    from lowbit.tts.executors import load

    if "draft_model" in doc or doc.get("clock") == "wall":
        raise SystemExit("--recalibrate covers CPU prompt-lookup studies (no --draft-model)")
    if "calibration_original" not in doc:
        analyse(doc)
        doc["calibration_original"] = {
            "calibration_timings": doc["calibration_timings"],
            "lookup_points": doc["lookup_points"], "cost": doc["cost"],
            "latency": {c: {k: v for k, v in d.items() if k.startswith("cpu_")}
                        for c, d in doc["latency"].items()}}
    torch.set_num_threads(args.threads)
    model = load(doc["model"], doc.get("dtype", args.dtype))[0]
    kw = _cal_kw(args, [r["prompt"] for r in doc["runs"]["sequential"]])
    cal = time_decode(model, [int(x) for x in args.cal_rows.split(",")],
                      sorted({0, doc["gamma"]}), **kw)
    doc["calibration_timings"] = [t.__dict__ for t in cal.target]
    doc["lookup_points"] = [list(p) for p in cal.lookup]
    doc["recalibration"] = {
        "command": " ".join(sys.argv), "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompt_lengths": kw["prompt"], "new_tokens": kw["new_tokens"],
        "repeats": kw["repeats"]}


def set_drafter_calibration(doc: dict, path: str) -> None:
    """Use the drafter timings in ``path`` (``{"timings": [...], ...provenance}``) for the draft
    model's cost; the latency errors with the previous draft cost go to
    ``doc["drafter_calibration_before"]``."""
    if "draft_model" not in doc:
        raise SystemExit("--drafter-calibration needs a study with --draft-model")
    with open(path) as fh:
        cal = json.load(fh)
    analyse(doc)
    pre = _clock(doc)[0]
    doc["drafter_calibration_before"] = {
        "draft": doc["draft"],
        "latency": {c: {k: v for k, v in d.items() if k.startswith(pre)}
                    for c, d in doc["latency"].items()}}
    doc["drafter_calibration"] = {**cal, "source": path}


def _drafter_note(doc: dict) -> list[str]:
    """Lines on a drafter calibration taken from elsewhere (``--drafter-calibration``)."""
    before = doc.get("drafter_calibration_before")
    if not before:
        return []
    pre, label = _clock(doc)
    cal, lat = doc["drafter_calibration"], before["latency"]
    per = " / ".join(f"{lat[k][pre + '_expected']:.1%}" for k in CONFIGS)
    return [f"Drafter cost from `{cal['source']}` ({cal.get('note', '')}): "
            f"{len(cal['timings'])} timings of `CachedModelDrafter.propose`. With the "
            f"previous draft cost ({before['draft'].get('calibration', 'draft decode loop')}) "
            f"instead, the median error against {label} time was "
            f"{lat['all'][pre + '_expected']:.1%} (sequential / branches / speculation / both "
            f"{per}).", ""]


def _recalibration_note(doc: dict) -> list[str]:
    """Lines on a calibration measured again after the runs (``--recalibrate``)."""
    rc = doc.get("recalibration")
    if not rc:
        return []
    orig = doc["calibration_original"]
    c, lat = orig["cost"], orig["latency"]
    per = " / ".join(f"{lat[k]['cpu_expected']:.1%}" for k in CONFIGS)
    return [f"Recalibrated {rc['date']} (`{rc['command']}`): prompt lengths "
            f"{rc['prompt_lengths']}, {rc['new_tokens']} steps, minimum of {rc['repeats']} "
            "repeats; the tables below use it. The calibration measured with the runs (median "
            f"prompt only: T = {c['a0']:.4g} + {c['a1']:.3g}*B*s + {c['a2']:.3g}*B*c + "
            f"{c['a4']:.3g}*B + {c['a5']:.3g}*min(B*s, {c['knee']:g}) s) gave a median error of "
            f"{lat['all']['cpu_expected']:.1%} against CPU time (sequential / branches / "
            f"speculation / both {per}): calibrated only near the median prompt, it "
            "under-predicts the steps of long generations.", ""]


def analyse(doc: dict) -> None:
    """Latency predictions per run and accuracy-versus-budget curves (module docstring); the
    cost model is refitted from the stored calibration timings with the current code."""
    import numpy as np

    from lowbit.tts.calibrate import DecodeCalibration
    from lowbit.tts.latency import Timing
    from lowbit.tts.simulate import simulate, simulate_stochastic

    cal = DecodeCalibration(tuple(Timing(**t) for t in doc["calibration_timings"]),
                            tuple(tuple(p) for p in doc["lookup_points"]))
    cost, draft = cal.fit(meta=doc["cost"].get("meta"))
    doc["cost"] = {k: v for k, v in cost.to_dict().items() if k != "timings"}
    doc["draft"] = draft.to_dict()
    if "draft_model" in doc:
        # the drafter as executed when it was timed (time_cached_drafter), else the draft
        # model's plain decode loop
        timed = doc.get("drafter_calibration", {}).get("timings")
        src, kind = ((timed, "drafter") if timed else
                     (doc["draft_calibration_timings"], "draft decode loop"))
        dcost = CostModel.fit([Timing(**t) for t in src], meta={"model": doc["draft_model"]},
                              per_row=True)
        doc["draft"] = {"kind": "cached model", "calibration": kind, "model": {
            k: v for k, v in dcost.to_dict().items() if k != "timings"}}

    tasks = [r["task"] for r in doc["runs"]["sequential"]]
    traced = "timeline" in doc["runs"]["sequential"][0]
    pre, _ = _clock(doc)
    kinds = [(f"{pre}_expected", "predicted_s", f"{pre}_s"),
             (f"{pre}_stochastic", "predicted_stochastic_s", f"{pre}_s")]
    if pre == "cpu":
        kinds.append(("wall_expected", "predicted_s", "wall_s"))
    if traced:
        kinds.append((f"{pre}_trace", "predicted_trace_s", f"{pre}_s"))
    lat = {}
    for c in CONFIGS:
        g = doc["shapes"][c][1]
        for r in doc["runs"][c]:
            others = set(tasks) - {r["task"]}
            setup = _setup(doc, others, r["prompt"])
            r["predicted_s"] = simulate(setup, g, r["lengths"]).latency_s
            if traced:
                r["predicted_trace_s"] = simulate(_setup(doc, others, r["prompt"], True), g,
                                                  r["lengths"]).latency_s
            r["predicted_stochastic_s"] = float(np.mean(
                [simulate_stochastic(setup, g, r["lengths"], seed=s).latency_s
                 for s in range(16)]))
        rows = doc["runs"][c]
        lat[c] = {k: statistics.median(_rel(r[p], r[m]) for r in rows) for k, p, m in kinds}
        lat[c]["accuracy"] = statistics.mean(r["correct"] for r in rows)
        lat[c]["median_cpu_s"] = statistics.median(r["cpu_s"] for r in rows)
        lat[c]["median_wall_s"] = statistics.median(r["wall_s"] for r in rows)
        lat[c]["median_predicted_s"] = statistics.median(r["predicted_s"] for r in rows)
    every = [r for c in CONFIGS for r in doc["runs"][c]]
    lat["all"] = {k: statistics.median(_rel(r[p], r[m]) for r in every) for k, p, m in kinds}
    doc["latency"] = lat
    doc["curves"] = curves(doc, tasks)
    if "pool" in doc:
        doc["pool_curves"] = pool_curves(doc)


def _pool(doc: dict, tasks: set[str]):
    from lowbit.tts.pool import Problem, Sample, SamplePool

    probs = []
    for task in sorted(tasks):
        samples, ref = [], None
        for c in CONFIGS:
            for r in doc["runs"][c]:
                if r["task"] == task:
                    ref = r["reference"]
                    samples += [Sample(a, a == ref, n) for a, n in
                                zip(r["answers"], r["lengths"], strict=True)]
        probs.append(Problem(task, ref, tuple(samples)))
    return SamplePool(tuple(probs))


def _measured(doc: dict, config: str, tasks: set[str], budget: float, n_max: int) -> float:
    """Majority vote over the branches that finished within ``budget`` CPU seconds and
    ``n_max`` tokens, mean correctness over ``tasks``."""
    from lowbit.tts.answers import majority_vote

    out = []
    for r in doc["runs"][config]:
        if r["task"] in tasks:
            votes = [a for a, f, n in zip(r["answers"], r["finish_s"], r["lengths"], strict=True)
                     if f <= budget and n <= n_max]
            out.append(majority_vote(votes) == r["reference"])
    return float(sum(out) / len(out))


def curves(doc: dict, tasks: list[str], n_budgets: int = 12) -> dict:
    """Per strategy and budget: 2-fold planned configuration, predicted and measured accuracy."""
    import numpy as np

    from lowbit.tts.planner import Planner
    from lowbit.tts.pool import AccuracyTable

    folds = [set(tasks[0::2]), set(tasks[1::2])]
    m = _clock(doc)[0] + "_s"
    meas = [r[m] for c in CONFIGS for r in doc["runs"][c]]
    budgets = np.geomspace(0.5 * min(meas), 1.1 * max(meas), n_budgets).tolist()
    shapes = {c: tuple(v) for c, v in doc["shapes"].items()}
    prompt = int(statistics.median(r["prompt"] for r in doc["runs"]["sequential"]))
    out = {}
    for name, configs in STRATEGIES.items():
        b_grid = sorted({shapes[c][0] for c in configs})
        g_grid = sorted({shapes[c][1] for c in configs})
        points = []
        for budget in budgets:
            pred, meas, chosen = [], [], []
            for k, fit in enumerate(folds):
                held = folds[1 - k]
                pool = _pool(doc, fit)
                planner = Planner(_setup(doc, fit, prompt), AccuracyTable(pool), pool, draws=16)
                plans = [planner.evaluate("majority", b, g, budget) for b, g in
                         (shapes[c] for c in configs)]
                feasible = [p for p in plans if p.n_max > 0]
                plan = min(feasible or plans, key=lambda p: p.key())
                config = next(c for c in configs if shapes[c] == (plan.b, plan.gamma))
                pred.append(plan.predicted_acc)
                meas.append(_measured(doc, config, held, budget, plan.n_max)
                            if plan.n_max > 0 else 0.0)
                chosen.append(f"{config}:n{plan.n_max}")
            points.append({"budget_s": budget, "predicted_acc": float(np.mean(pred)),
                           "measured_acc": float(np.mean(meas)), "plans": chosen})
        out[name] = {"b_grid": b_grid, "gamma_grid": g_grid, "points": points}
    return out


def _stored_pool(doc: dict):
    from lowbit.tts.pool import Problem, SamplePool

    return SamplePool(tuple(Problem.from_dict(p) for p in doc["pool"]["problems"]),
                      doc["pool"]["meta"])


POOL_B = (1, 2, 4, 8, 16)
"""Branch counts the pool curves plan over (those <= the pool's K)."""


def pool_curves(doc: dict, n_budgets: int = 12) -> dict:
    """Accuracy versus budget on the sample pool (module docstring, 5): per strategy and budget,
    the plan picked on one fold of the pool's problems and its accuracy on the other (2-fold,
    mean), with the calibrated cost model and the acceptance of all executed speculative runs.
    Grids: B in ``POOL_B`` up to K, gamma in {0, the study's gamma}; token budgets snap down to
    64 length quantiles of the planning fold (``AccuracyTable(grid=64)``)."""
    import numpy as np

    from lowbit.tts.planner import Planner
    from lowbit.tts.pool import AccuracyTable, SamplePool, accuracy

    pool = _stored_pool(doc)
    folds = [SamplePool(pool.problems[k::2], pool.meta) for k in (0, 1)]
    tasks = {r["task"] for r in doc["runs"]["sequential"]}
    prompt = int(doc["pool"]["meta"]["prompt_tokens"])
    setup = _setup(doc, tasks, prompt)
    bs = [b for b in POOL_B if b <= pool.k]
    grids = {"sequential": ([1], [0]), "branch-only": (bs, [0]),
             "speculation-only": ([1], [0, doc["gamma"]]),
             "combination": (bs, [0, doc["gamma"]])}
    m = _clock(doc)[0] + "_s"
    meas = [r[m] for c in CONFIGS for r in doc["runs"][c]]
    budgets = np.geomspace(0.25 * min(meas), 2 * max(meas), n_budgets).tolist()
    planners = [Planner(setup, AccuracyTable(f, grid=64), f, draws=16) for f in folds]
    out = {}
    for name, (b_grid, g_grid) in grids.items():
        points = []
        for budget in budgets:
            pred, held, chosen = [], [], []
            for k, planner in enumerate(planners):
                plan = planner.plan_exhaustive(budget, b_grid=b_grid, gamma_grid=g_grid)
                pred.append(plan.predicted_acc)
                held.append(accuracy(folds[1 - k], "majority", plan.b, plan.n_max)
                            if plan.n_max > 0 else 0.0)
                chosen.append(f"B{plan.b} g{plan.gamma} n{plan.n_max}")
            points.append({"budget_s": budget, "predicted_acc": float(np.mean(pred)),
                           "heldout_acc": float(np.mean(held)), "plans": chosen})
        out[name] = {"b_grid": b_grid, "gamma_grid": g_grid, "points": points}
    return out


def _pair_notes(doc: dict) -> list[str]:
    """Markdown paragraphs on the draft model (none for prompt-lookup studies)."""
    if "draft_model" not in doc:
        return []
    from lowbit.tts.latency import AcceptanceTable, DraftCost

    g = doc["gamma"]
    acc = AcceptanceTable.from_counts([s for c in ("speculation", "both")
                                       for r in doc["runs"][c] for s in r["steps"]])
    target, dmodel = CostModel.from_dict(doc["cost"]), CostModel.from_dict(doc["draft"]["model"])
    prompt = int(statistics.median(r["prompt"] for r in doc["runs"]["sequential"]))
    cached = CachedDraftCost(dmodel, acc.survival[g - 1] if len(acc.survival) >= g else 0.0)
    again = DraftCost("model", model=dmodel)
    tasks = [r["task"] for r in doc["runs"]["sequential"]]
    return [
        f"Problems run: {len(tasks)} ({', '.join(tasks)}); OUT.json is rewritten after each "
        "problem, so a study stopped early is analysed on the problems it completed.", "",
        f"Drafter: {doc['draft_model']} with a KV cache kept across iterations "
        "(`tts.speculative.CachedModelDrafter`; each iteration feeds the 1-2 tokens a row gained, "
        f"then gamma - 1 one-token steps), in {doc['dtype']} like the target; prompt lookup was "
        "not run for this pair. `tts.speculative.ModelDrafter` re-encodes every history at "
        "each iteration (what `DraftCost(\"model\")` models): at B=1 and the median prompt "
        f"({prompt} tokens) the calibrated costs are {again.iteration_s(1, g, prompt):.2f} s "
        f"per iteration re-encoding, {cached.iteration_s(1, g, prompt):.2f} s cached, against "
        f"{target.forward_s(1, 1, prompt):.2f} s for one decode step of the target. The cached "
        "drafter's cost model (`CachedDraftCost`) is fitted on "
        + ("timings of the drafter itself (`calibrate.time_cached_drafter`: its cache "
           "bookkeeping, rollback and sampling included)."
           if doc["draft"].get("calibration") == "drafter" else
           "the draft model's own decode-loop calibration (`time_decode`, gamma 0, same rows "
           "and prompt)."),
        "",
        f"Measured acceptance (all speculative runs): tau({g}) = {acc.tau(g):.2f} tokens per "
        "verify step; P(first j drafts accepted) = "
        + ", ".join(f"{x:.2f}" for x in acc.survival[:g]) + ".", ""]


def write(doc: dict, out: str) -> None:
    with open(out + ".json", "w") as fh:
        json.dump(doc, fh, indent=1)
    lat = doc["latency"]
    cost = doc["cost"]
    if "draft_model" in doc:
        d = doc["draft"]["model"]
        drafter = f"draft model {doc['draft_model']}, KV-cached (`CachedModelDrafter`)"
        draft_cost = (f"draft model {d['a0']:.3g} + {d['a1']:.3g}*B*s + {d['a2']:.3g}*B*c + "
                      f"{d['a3']:.3g}*max(0, B*s - {d['knee']:g}) + {d['a4']:.3g}*B + "
                      f"{d['a5']:.3g}*min(B*s, {d['knee']:g}) s per forward "
                      f"(median rel. residual {d['rel_residual']:.1%}).")
    else:
        drafter = "prompt lookup"
        draft_cost = (f"lookup drafting {doc['draft']['per_token_s']:.3g} s/token + "
                      f"{doc['draft']['per_ctx_s']:.3g} s/context token per row.")
    pre, label = _clock(doc)
    where = doc["machine"].split(",")[0] if pre == "wall" else "CPU"
    clock_text = ("device-synchronised wall clock" if pre == "wall" else "process CPU time")
    lines = [f"# TTS study: {doc['model']} on {where}", "",
             f"Command: `{doc['command']}`  ", f"Date: {doc['date']}; machine: {doc['machine']}; "
             f"versions: {doc['versions']}; total {doc['seconds']:.0f} s wall.", "",
             f"Problems: `{doc['problems']}` ({len(doc['runs']['sequential'])} run); "
             f"B={doc['b']}, gamma={doc['gamma']} ({drafter}), "
             f"n_max={doc['n_max']}, temperature {doc['temperature']}"
             f"{', ' + doc['dtype'] if 'dtype' in doc else ''}.", "",
             *([doc["reading"], ""] if doc.get("reading") else []),
             f"Cost model (decode-loop calibration, {clock_text}, NNLS): "
             f"T = {cost['a0']:.4g} + {cost['a1']:.3g}*B*s + {cost['a2']:.3g}*B*c + "
             f"{cost['a3']:.3g}*max(0, B*s - {cost['knee']:g}) + {cost['a4']:.3g}*B + "
             f"{cost['a5']:.3g}*min(B*s, {cost['knee']:g}) s "
             f"(median rel. residual {cost['rel_residual']:.1%}); {draft_cost}", "",
             *_recalibration_note(doc),
             *_drafter_note(doc),
             *_pair_notes(doc),
             "## Predicted versus measured latency", "",
             "Per run: simulated with its own branch lengths and the leave-one-problem-out "
             "acceptance table; median relative error.", "",
             "| config | B | gamma | accuracy | median CPU s | median wall s | median predicted s "
             f"| error vs {label} (expected) | error vs {label} (stochastic) |"
             + (" error vs wall |" if pre == "cpu" else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if pre == "cpu" else "")]
    for c in CONFIGS:
        x, (b, g) = lat[c], doc["shapes"][c]
        lines.append(f"| {c} | {b} | {g} | {x['accuracy']:.3f} | {x['median_cpu_s']:.2f} | "
                     f"{x['median_wall_s']:.2f} | {x['median_predicted_s']:.2f} | "
                     f"{x[pre + '_expected']:.1%} | {x[pre + '_stochastic']:.1%} |"
                     + (f" {x['wall_expected']:.1%} |" if pre == "cpu" else ""))
    a = lat["all"]
    lines += ["", f"All runs: median error {a[pre + '_expected']:.1%} (expected-value "
              f"simulator), {a[pre + '_stochastic']:.1%} (stochastic, mean of 16 seeds) against "
              f"{label} time" + (f"; {a['wall_expected']:.1%} against wall time on the shared "
                                 "host." if pre == "cpu" else ".")]
    if pre + "_trace" in a:
        lines += ["", "Cost model fitted instead on the step times logged in the other problems' "
                  "runs (leave one problem out; same host period): median error "
                  f"{a[pre + '_trace']:.1%}; per config " + ", ".join(
                      f"{c} {lat[c][pre + '_trace']:.1%}" for c in CONFIGS) + "."]
    lines += ["",
              f"## Accuracy versus {label}-time budget (2-fold: planned on one half, measured on "
              "the other)", "", "| budget s | " + " | ".join(
                  f"{s} pred / meas" for s in STRATEGIES) + " | combination plans |",
              "|---|" + "---|" * (len(STRATEGIES) + 1)]
    cv = doc["curves"]
    for i, p in enumerate(cv["sequential"]["points"]):
        cells = [f"{cv[s]['points'][i]['predicted_acc']:.2f} / "
                 f"{cv[s]['points'][i]['measured_acc']:.2f}" for s in STRATEGIES]
        lines.append(f"| {p['budget_s']:.2f} | " + " | ".join(cells) + " | "
                     + ", ".join(cv["combination"]["points"][i]["plans"]) + " |")
    lines += _pool_lines(doc, label)
    lines += ["", f"Plot: `{out.rsplit('/', 1)[-1]}.png`."]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    plot(doc, out + ".png")
    print("\n".join(lines))


def _pool_lines(doc: dict, label: str) -> list[str]:
    """The pool section of OUT.md (none without a pool)."""
    if "pool_curves" not in doc:
        return []
    from lowbit.tts.pool import accuracy

    pool = _stored_pool(doc)
    meta, cv = doc["pool"]["meta"], doc["pool_curves"]
    lens = sorted(pool.lengths().tolist())
    capped = sum(n >= doc["n_max"] for n in lens)
    maj = ", ".join(f"{b}: {accuracy(pool, 'majority', b, doc['n_max']):.3f}"
                    for b in POOL_B if b <= pool.k)
    lines = ["", f"## Accuracy versus {label}-time budget on the sample pool", "",
             f"Pool: `{meta['problems']}`, {len(pool.problems)} problems x {pool.k} samples at "
             f"temperature {meta['temperature']}, n_max {meta['max_new_tokens']} "
             f"({meta.get('batch', 1)} problems per batched call, seed {meta.get('seed', 0)}); "
             f"median length {lens[len(lens) // 2]} tokens, {capped} of {len(lens)} samples hit "
             f"the cap; majority vote of B samples (exact over subsets): {maj}.", "",
             "2-fold over the pool's problems (even / odd): the plan is picked on one fold "
             "(calibrated cost model, acceptance of the executed speculative runs) and scored on "
             "the other; mean of the two. B in "
             f"{cv['combination']['b_grid']}, gamma in {cv['combination']['gamma_grid']}.", "",
             "| budget s | " + " | ".join(f"{s} pred / held-out" for s in cv)
             + " | combination plans |", "|---|" + "---|" * (len(cv) + 1)]
    for i, p in enumerate(cv["sequential"]["points"]):
        cells = [f"{cv[s]['points'][i]['predicted_acc']:.3f} / "
                 f"{cv[s]['points'][i]['heldout_acc']:.3f}" for s in cv]
        lines.append(f"| {p['budget_s']:.3g} | " + " | ".join(cells) + " | "
                     + ", ".join(cv["combination"]["points"][i]["plans"]) + " |")
    return lines


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre, label = _clock(doc)
    m = pre + "_s"
    pooled = "pool_curves" in doc
    fig, axes = plt.subplots(1, 3 if pooled else 2, figsize=(16.5 if pooled else 11, 4.2))
    ax, bx = axes[0], axes[1]
    for i, (name, cv) in enumerate(doc["curves"].items()):
        x = [p["budget_s"] for p in cv["points"]]
        ax.plot(x, [p["measured_acc"] + 0.006 * i for p in cv["points"]], "-", marker="osD^"[i],
                ms=7 - 1.2 * i, lw=2.6 - 0.5 * i, color=f"C{i}", label=f"{name} (measured)")
        ax.plot(x, [p["predicted_acc"] for p in cv["points"]], "--", color=f"C{i}", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel(f"latency budget ({label} s)")
    ax.set_ylabel("accuracy (majority vote)")
    ax.set_title("accuracy vs budget (dashed: predicted; curves offset +0.006 each)")
    ax.legend(fontsize=7)
    for i, c in enumerate(CONFIGS):
        rows = doc["runs"][c]
        bx.scatter([r[m] for r in rows], [r["predicted_s"] for r in rows], s=12,
                   color=f"C{i}", label=c)
    lim = max(r[m] for c in CONFIGS for r in doc["runs"][c]) * 1.1
    bx.plot([0, lim], [0, lim], "k:", lw=1)
    bx.set_xlabel(f"measured {label} s")
    bx.set_ylabel("predicted s")
    bx.set_title(f"latency (median error {doc['latency']['all'][pre + '_expected']:.1%})")
    bx.legend(fontsize=7)
    if pooled:
        cx = axes[2]
        for i, (name, cv) in enumerate(doc["pool_curves"].items()):
            x = [p["budget_s"] for p in cv["points"]]
            cx.plot(x, [p["heldout_acc"] for p in cv["points"]], "-", marker="osD^"[i],
                    ms=7 - 1.2 * i, lw=2.6 - 0.5 * i, color=f"C{i}", label=f"{name} (held-out)")
            cx.plot(x, [p["predicted_acc"] for p in cv["points"]], "--", color=f"C{i}",
                    alpha=0.6)
        cx.set_xscale("log")
        cx.set_xlabel(f"latency budget ({label} s)")
        cx.set_ylabel("accuracy (majority vote)")
        n = len(doc["pool"]["problems"])
        cx.set_title(f"sample pool, {n} problems (dashed: planning fold)")
        cx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
