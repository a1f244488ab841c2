"""Small real TTS study: SmolLM2-135M-Instruct on GSM8K problems, CPU.

    python bench/tts_study.py --cost COST.json --problems gsm8k:0-5 --out bench/results/tts_smollm2

Builds a sample pool (K samples per problem), then runs sequential (B=1, gamma=0), branches
only (B, gamma=0), speculation only (B=1, gamma) and both (B, gamma) with prompt-lookup drafts on
every problem, and records accuracy, measured wall-clock latency and the simulator's prediction
for the same branch lengths (cost model from ``lowbit tts calibrate``, acceptance measured in the
speculative runs). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    import torch

    from lowbit.tts.executors import run_plan, sample_pool, task_prompt
    from lowbit.tts.latency import AcceptanceTable, CostModel
    from lowbit.tts.models import load_model
    from lowbit.tts.planner import Plan
    from lowbit.tts.pool import accuracy
    from lowbit.tts.problems import parse_spec
    from lowbit.tts.speculative import PromptLookupDrafter

    ap = argparse.ArgumentParser()
    ap.add_argument("--cost", required=True)
    ap.add_argument("--problems", default="gsm8k:0-5")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--b", type=int, default=8)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--n-max", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--recompute", action="store_true",
                    help="only redo the predictions of an existing OUT.json")
    args = ap.parse_args()
    if args.recompute:
        with open(args.out + ".json") as fh:
            doc = json.load(fh)
        predict(doc, CostModel.load(args.cost))
        write(doc, args.out)
        return
    torch.set_num_threads(args.threads)
    cost = CostModel.load(args.cost)
    model, tok = load_model("smollm2")
    tasks = parse_spec(args.problems)
    t0 = time.perf_counter()
    pool = sample_pool(model, tok, tasks, args.k, max_new_tokens=args.n_max,
                       meta={"model": "smollm2", "problems": args.problems})
    pool.save_jsonl(args.out + "_pool.jsonl")
    doc = {"problems": args.problems, "k": args.k, "n_max": args.n_max,
           "pool_seconds": time.perf_counter() - t0, "cost": {
               k: v for k, v in cost.to_dict().items() if k != "timings"},
           "pool_maj": {b: accuracy(pool, "majority", b, args.n_max)
                        for b in (1, 2, 4, 8) if b <= args.k}, "configs": {}}
    configs = {"sequential": (1, 0), "branches": (args.b, 0), "speculation": (1, args.gamma),
               "both": (args.b, args.gamma)}
    runs = {}
    for name, (b, g) in configs.items():
        plan = Plan("majority", b, g, args.n_max, 0.0, 0.0, 0.0)
        runs[name] = [run_plan(model, tok, t, plan, drafter=PromptLookupDrafter(), seed=100 + i)
                      for i, t in enumerate(tasks)]
        print(name, [round(r.latency_s, 2) for r in runs[name]], flush=True)
    steps = [s for name in ("speculation", "both") for r in runs[name] for s in r.steps]
    doc["acceptance_survival"] = list(AcceptanceTable.from_counts(steps).survival)
    doc["configs"] = {name: {"b": b, "gamma": g, "rows": [
        {"task": t.id, "prompt": len(task_prompt(tok, t)), "correct": r.correct,
         "measured_s": r.latency_s, "forwards": r.forwards, "lengths": list(r.lengths)}
        for t, r in zip(tasks, runs[name], strict=True)]} for name, (b, g) in configs.items()}
    predict(doc, cost)
    write(doc, args.out)


def predict(doc: dict, cost) -> None:
    """Simulated latency and target forwards for every recorded run (same branch lengths, the
    measured acceptance table), with summary statistics per configuration."""
    from lowbit.tts.latency import AcceptanceTable
    from lowbit.tts.simulate import Setup, simulate

    table = AcceptanceTable(tuple(doc["acceptance_survival"]))
    for c in doc["configs"].values():
        for x in c["rows"]:
            sim = simulate(Setup(cost, table, prompt=x["prompt"]), c["gamma"], x["lengths"])
            x["predicted_s"], x["predicted_forwards"] = sim.latency_s, sim.iterations + 1
        rows = c["rows"]
        c["accuracy"] = statistics.mean(x["correct"] for x in rows)
        c["median_measured_s"] = statistics.median(x["measured_s"] for x in rows)
        c["median_predicted_s"] = statistics.median(x["predicted_s"] for x in rows)
        c["median_rel_error"] = statistics.median(
            abs(x["predicted_s"] - x["measured_s"]) / x["measured_s"] for x in rows)
        c["median_forwards_rel_error"] = statistics.median(
            abs(x["predicted_forwards"] - x["forwards"]) / x["forwards"] for x in rows)


def write(doc: dict, out: str) -> None:
    with open(out + ".json", "w") as fh:
        json.dump(doc, fh, indent=1)
    lines = [f"# SmolLM2-135M TTS study ({doc['problems']}, K={doc['k']}, n_max={doc['n_max']}, "
             "CPU, 1 thread, shared host)", "",
             "| config | B | gamma | accuracy | median measured s | median predicted s | "
             "median rel. error | forwards measured / predicted (median rel. error) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in doc["configs"].items():
        fw = "/".join(str(x["forwards"]) for x in c["rows"])
        pf = "/".join(str(x["predicted_forwards"]) for x in c["rows"])
        lines.append(f"| {name} | {c['b']} | {c['gamma']} | {c['accuracy']:.3f} | "
                     f"{c['median_measured_s']:.2f} | {c['median_predicted_s']:.2f} | "
                     f"{c['median_rel_error']:.1%} | {fw} vs {pf} "
                     f"({c['median_forwards_rel_error']:.1%}) |")
    lines += ["", f"pool maj@B: {doc['pool_maj']}",
              "acceptance survival P(draft position j accepted), prompt lookup: "
              f"{[round(x, 3) for x in doc['acceptance_survival']]}"]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
