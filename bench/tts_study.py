"""Real TTS study on CPU: accuracy versus latency budget, predicted versus measured latency.

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

Latency is CPU time of the process (torch on one thread): the host is shared, and wall time
includes other processes' use of the cores (also reported). Writes OUT.json, OUT.md, OUT.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
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
    ap.add_argument("--out", required=True, help="output prefix (OUT.json, OUT.md, OUT.png)")
    ap.add_argument("--recompute", action="store_true", help="analysis of an existing OUT.json")
    ap.add_argument("--recalibrate", action="store_true", help="with --recompute: measure the "
                    "decode calibration again (current code, --cal-* options, the study's model) "
                    "and analyse the stored runs with it; the original and its errors are kept")
    ap.add_argument("--reading", help="a text file whose content is kept in OUT.json and shown "
                    "in OUT.md under the problems (the study's reading)")
    args = ap.parse_args()
    if args.recompute:
        with open(args.out + ".json") as fh:
            doc = json.load(fh)
        if args.recalibrate:
            recalibrate(doc, args)
    else:
        if not args.problems:
            ap.error("--problems is required (unless --recompute)")
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

    from lowbit.tts.calibrate import DecodeCalibration, time_decode
    from lowbit.tts.executors import load, run_plan, task_prompt
    from lowbit.tts.planner import Plan
    from lowbit.tts.problems import parse_spec
    from lowbit.tts.speculative import PromptLookupDrafter

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, tok = load(args.model, args.dtype)
    draft_model = load(args.draft_model, args.dtype)[0] if args.draft_model else None
    if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise ValueError("the draft model's vocabulary differs from the target's")
    tasks = parse_spec(args.problems)
    prompts = [len(task_prompt(tok, t)) for t in tasks]
    cal_rows = [int(x) for x in args.cal_rows.split(",")]
    cal_kw = _cal_kw(args, prompts)
    cal = time_decode(model, cal_rows, sorted({0, args.gamma}), **cal_kw)
    cost, draft = cal.fit(meta={"model": args.model, "clock": "process_time",
                                "threads": args.threads})
    draft_cal = DecodeCalibration((), ())
    if draft_model is not None:
        draft_cal = time_decode(draft_model, cal_rows, [0], **cal_kw)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    shapes = {"sequential": (1, 0), "branches": (args.b, 0), "speculation": (1, args.gamma),
              "both": (args.b, args.gamma)}
    runs = {c: [] for c in CONFIGS}

    def snapshot() -> dict:
        """The raw measurements so far (whole problems), written to OUT.json: an interrupted
        study can be analysed with ``--recompute``."""
        doc = {
            "command": " ".join(sys.argv), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''}, "
                       f"{torch.get_num_threads()} torch thread(s), shared 2-core host",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "model": args.model, "problems": args.problems, "b": args.b, "gamma": args.gamma,
            **({"draft_model": args.draft_model, "dtype": args.dtype,
                "draft_calibration_timings": [t.__dict__ for t in draft_cal.target]}
               if draft_model is not None else {}),
            "n_max": args.n_max, "temperature": args.temperature,
            "shapes": {c: list(v) for c, v in shapes.items()},
            "cost": {k: v for k, v in cost.to_dict().items() if k != "timings"},
            "calibration_timings": [t.__dict__ for t in cal.target],
            "lookup_points": [list(p) for p in cal.lookup], "draft": draft.to_dict(),
            "runs": runs, "seconds": time.perf_counter() - t_start}
        with open(args.out + ".json", "w") as fh:
            json.dump(doc, fh, indent=1)
        return doc

    jobs = [(i, t, c) for i, t in enumerate(tasks) for c in CONFIGS]
    for i, task, c in tqdm(jobs, desc="runs"):
        b, g = shapes[c]
        r = run_plan(model, tok, task, Plan("majority", b, g, args.n_max, 0.0, 0.0, 0.0),
                     drafter=PromptLookupDrafter() if draft_model is None else
                     CachedModelDrafter(draft_model, pad), temperature=args.temperature,
                     seed=1000 * i + CONFIGS.index(c), clock=time.process_time)
        runs[c].append({"task": task.id, "reference": task.reference, "prompt": prompts[i],
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


def _cal_kw(args: argparse.Namespace, prompts: list[int]) -> dict:
    """``time_decode`` options: prompt lengths = median prompt + each of ``--cal-offsets``."""
    med = int(statistics.median(prompts))
    return {"prompt": [med + int(o) for o in args.cal_offsets.split(",")],
            "new_tokens": args.cal_steps, "repeats": args.repeats,
            "temperature": args.temperature, "clock": time.process_time}


def recalibrate(doc: dict, args: argparse.Namespace) -> None:
    """Replace the stored decode calibration of the target by a new measurement with the
    ``--cal-*`` options; the original calibration and the latency errors it gave go to
    ``calibration_original``. The runs stay as measured."""
    import torch

    from lowbit.tts.calibrate import time_decode
    from lowbit.tts.executors import load

    if "draft_model" in doc:
        raise SystemExit("--recalibrate covers prompt-lookup studies (no --draft-model)")
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
        dcost = CostModel.fit([Timing(**t) for t in doc["draft_calibration_timings"]],
                              meta={"model": doc["draft_model"]}, per_row=True)
        doc["draft"] = {"kind": "cached model", "model": {
            k: v for k, v in dcost.to_dict().items() if k != "timings"}}

    tasks = [r["task"] for r in doc["runs"]["sequential"]]
    traced = "timeline" in doc["runs"]["sequential"][0]
    kinds = [("cpu_expected", "predicted_s", "cpu_s"),
             ("cpu_stochastic", "predicted_stochastic_s", "cpu_s"),
             ("wall_expected", "predicted_s", "wall_s")]
    if traced:
        kinds.append(("cpu_trace", "predicted_trace_s", "cpu_s"))
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
    cpu = [r["cpu_s"] for c in CONFIGS for r in doc["runs"][c]]
    budgets = np.geomspace(0.5 * min(cpu), 1.1 * max(cpu), n_budgets).tolist()
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
        "(`CachedModelDrafter` in this script; each iteration feeds the 1-2 tokens a row gained, "
        f"then gamma - 1 one-token steps), in {doc['dtype']} like the target; prompt lookup was "
        "not run for this pair. `tts.speculative.ModelDrafter` re-encodes every history at "
        "each iteration (what `DraftCost(\"model\")` models): at B=1 and the median prompt "
        f"({prompt} tokens) the calibrated costs are {again.iteration_s(1, g, prompt):.2f} s "
        f"per iteration re-encoding, {cached.iteration_s(1, g, prompt):.2f} s cached, against "
        f"{target.forward_s(1, 1, prompt):.2f} s for one decode step of the target. The cached "
        "drafter's cost model (`CachedDraftCost`) is the draft model's own decode-loop "
        "calibration (`time_decode`, gamma 0, same rows and prompt).",
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
    lines = [f"# TTS study: {doc['model']} on CPU", "",
             f"Command: `{doc['command']}`  ", f"Date: {doc['date']}; machine: {doc['machine']}; "
             f"versions: {doc['versions']}; total {doc['seconds']:.0f} s wall.", "",
             f"Problems: `{doc['problems']}`; B={doc['b']}, gamma={doc['gamma']} ({drafter}), "
             f"n_max={doc['n_max']}, temperature {doc['temperature']}"
             f"{', ' + doc['dtype'] if 'dtype' in doc else ''}.", "",
             *([doc["reading"], ""] if doc.get("reading") else []),
             "Cost model (decode-loop calibration, process CPU time, NNLS): "
             f"T = {cost['a0']:.4g} + {cost['a1']:.3g}*B*s + {cost['a2']:.3g}*B*c + "
             f"{cost['a3']:.3g}*max(0, B*s - {cost['knee']:g}) + {cost['a4']:.3g}*B + "
             f"{cost['a5']:.3g}*min(B*s, {cost['knee']:g}) s "
             f"(median rel. residual {cost['rel_residual']:.1%}); {draft_cost}", "",
             *_recalibration_note(doc),
             *_pair_notes(doc),
             "## Predicted versus measured latency", "",
             "Per run: simulated with its own branch lengths and the leave-one-problem-out "
             "acceptance table; median relative error.", "",
             "| config | B | gamma | accuracy | median CPU s | median wall s | median predicted s "
             "| error vs CPU (expected) | error vs CPU (stochastic) | error vs wall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in CONFIGS:
        x, (b, g) = lat[c], doc["shapes"][c]
        lines.append(f"| {c} | {b} | {g} | {x['accuracy']:.3f} | {x['median_cpu_s']:.2f} | "
                     f"{x['median_wall_s']:.2f} | {x['median_predicted_s']:.2f} | "
                     f"{x['cpu_expected']:.1%} | {x['cpu_stochastic']:.1%} | "
                     f"{x['wall_expected']:.1%} |")
    a = lat["all"]
    lines += ["", f"All runs: median error {a['cpu_expected']:.1%} (expected-value simulator), "
              f"{a['cpu_stochastic']:.1%} (stochastic, mean of 16 seeds) against CPU time; "
              f"{a['wall_expected']:.1%} against wall time on the shared host."]
    if "cpu_trace" in a:
        lines += ["", "Cost model fitted instead on the step times logged in the other problems' "
                  "runs (leave one problem out; same host period): median error "
                  f"{a['cpu_trace']:.1%}; per config " + ", ".join(
                      f"{c} {lat[c]['cpu_trace']:.1%}" for c in CONFIGS) + "."]
    lines += ["",
              "## Accuracy versus CPU-time budget (2-fold: planned on one half, measured on the "
              "other)", "", "| budget s | " + " | ".join(
                  f"{s} pred / meas" for s in STRATEGIES) + " | combination plans |",
              "|---|" + "---|" * (len(STRATEGIES) + 1)]
    cv = doc["curves"]
    for i, p in enumerate(cv["sequential"]["points"]):
        cells = [f"{cv[s]['points'][i]['predicted_acc']:.2f} / "
                 f"{cv[s]['points'][i]['measured_acc']:.2f}" for s in STRATEGIES]
        lines.append(f"| {p['budget_s']:.2f} | " + " | ".join(cells) + " | "
                     + ", ".join(cv["combination"]["points"][i]["plans"]) + " |")
    lines += ["", f"Plot: `{out.rsplit('/', 1)[-1]}.png`."]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    plot(doc, out + ".png")
    print("\n".join(lines))


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, cv) in enumerate(doc["curves"].items()):
        x = [p["budget_s"] for p in cv["points"]]
        ax.plot(x, [p["measured_acc"] + 0.006 * i for p in cv["points"]], "-", marker="osD^"[i],
                ms=7 - 1.2 * i, lw=2.6 - 0.5 * i, color=f"C{i}", label=f"{name} (measured)")
        ax.plot(x, [p["predicted_acc"] for p in cv["points"]], "--", color=f"C{i}", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("latency budget (CPU s)")
    ax.set_ylabel("accuracy (majority vote)")
    ax.set_title("accuracy vs budget (dashed: predicted; curves offset +0.006 each)")
    ax.legend(fontsize=7)
    for i, c in enumerate(CONFIGS):
        rows = doc["runs"][c]
        bx.scatter([r["cpu_s"] for r in rows], [r["predicted_s"] for r in rows], s=12,
                   color=f"C{i}", label=c)
    lim = max(r["cpu_s"] for c in CONFIGS for r in doc["runs"][c]) * 1.1
    bx.plot([0, lim], [0, lim], "k:", lw=1)
    bx.set_xlabel("measured CPU s")
    bx.set_ylabel("predicted s")
    bx.set_title(f"latency (median error {doc['latency']['all']['cpu_expected']:.1%})")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
