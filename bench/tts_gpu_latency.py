"""Predicted versus measured wall-clock latency of TTS runs on a GPU (issue 8: within 15 % median
relative error), with a random-weight Qwen2.5-Coder 1.5B target and 0.5B draft (same vocabulary).

    python3 bench/tts_gpu_latency.py --out $OUT/tts_gpu_latency       # one H200, < 5 min
    python bench/tts_gpu_latency.py --tiny --out /tmp/tts_gpu_latency  # smoke test, seconds
    python bench/tts_gpu_latency.py --recompute --out bench/results/tts_gpu_latency  # analysis

1. Builds the target and the draft (Qwen2 architecture, tied embeddings, seeded random weights;
   bf16 on CUDA, float32 on a CPU) directly on the device (``--device``: CUDA when available).
   Random weights need no tokenizer: the prompts are seeded random token ids of ``--prompt-len``
   tokens (or ``--prompt-ids FILE``, a JSON list of token-id lists).
2. Calibrates on the wall clock, synchronised with the device (``calibrate.synced_clock``): the
   target's decode loop (``calibrate.time_decode``: rows 1, 2, 4, ..., B; gamma 0 and
   ``--gamma``) gives the cost model (with its per-row term) and the prompt-lookup drafting
   cost; ``calibrate.time_model_drafter`` gives the draft model's ``DraftCost("model")``; both
   keep the minimum over ``--repeats`` interleaved repeats.
3. Runs ``speculative.generate`` on every prompt in six configurations: sequential (1, 0),
   branches (B, 0), speculation (1, gamma) and both (B, gamma), the last two with prompt-lookup
   drafts and with the draft model, sampled at ``--temperature``. Random models do not stop by
   themselves (no EOS), so each prompt gets B seeded per-row token budgets, uniform in
   [n_max / 4, n_max]: branch rows finish at different lengths and leave the batch (the B = 1
   configurations use the first budget). Latency: synchronised wall clock around the call,
   after one warm-up call per configuration; ``--run-repeats`` passes over the prompts (the
   same seeded runs each pass, the configurations in a rotated order) and the fastest pass of
   each run is the measurement, as the calibration keeps minima. In the first H200 run (one
   pass, median calibration) the same 1-row, 1-token decode step took 21 ms in some stretches
   and 60-115 ms in others, within one run (a step costs about the same at 1 or 8 rows, 1 or
   5 tokens: per-step overheads bound the loop, not the GPU's arithmetic), and single runs
   were up to 2-5 times slower than predicted. Per repeat the run also logs this process's CPU
   seconds, the other processes' busy and the stolen (hypervisor) CPU seconds from
   ``/proc/stat``, the garbage collector's seconds and the ``cudaMalloc`` calls, to tell
   the causes of such slow stretches apart.
4. Predicts each run with the simulator from the calibrated cost models and the acceptance table
   of the *other* prompts' runs with the same drafter (leave one prompt out; the setup of
   ``bench/tts_study.py``), expected-value and stochastic (mean of 16 seeds), and reports the
   median relative error per configuration and overall.
5. Writes OUT.json (the raw measurements first, then with the analysis) and OUT.md.

``--max-seconds`` (default 240, from the start) bounds the runs: the first pass starts no further
prompt once ``--run-repeats`` times its time so far plus the previous prompt's would pass it (at
least two prompts run, for leave one out); a later pass skips the prompts that would end past
it.

With random weights the target's next-token distribution is nearly flat: at temperature 0.7
prompt lookup almost never finds a match, and the draft model's tokens (from a flat distribution
too) are accepted about half the time (tau about 1.9 at gamma 4) but cost more than they save,
so speculation costs time here; its latency is what is predicted. Needs torch, transformers,
scipy and tqdm; ``lowbit`` need not be installed (``tts/`` is loaded from this checkout).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab (Qwen2.5-Coder model cards)
    "1.5b": (1536, 8960, 28, 12, 2, 151936),
    "0.5b": (896, 4864, 24, 14, 2, 151936),
    "tiny": (64, 128, 2, 4, 2, 512),
    "tiny-draft": (32, 64, 1, 2, 1, 512),
}
PRESETS = {  # defaults of the full run and of --tiny
    "full": {"models": "1.5b,0.5b", "prompts": 8, "b": 8, "gamma": 4, "n_max": 48,
             "prompt_len": "96,256", "cal_steps": 12, "repeats": 4, "run_repeats": 3},
    "tiny": {"models": "tiny,tiny-draft", "prompts": 3, "b": 2, "gamma": 2, "n_max": 8,
             "prompt_len": "8,24", "cal_steps": 3, "repeats": 1, "run_repeats": 2},
}
RUNS = (("sequential", "none"), ("branches", "none"), ("speculation", "lookup"),
        ("both", "lookup"), ("speculation", "model"), ("both", "model"))
"""(configuration, drafter) of every run of a prompt, in the order of the first pass."""


def run_key(config: str, drafter: str) -> str:
    return config if drafter == "none" else f"{config}-{drafter}"


def _sibling(name: str) -> ModuleType:
    """A script of this folder (``bench/`` is no package), loaded once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _tts() -> None:
    """Make ``lowbit.tts`` importable (installed, or from this checkout)."""
    _sibling("tts_gpu_calibrate")._tts()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output prefix (OUT.json, OUT.md)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and sizes (smoke test)")
    ap.add_argument("--models", help=f"target,draft shapes ({', '.join(SHAPES)})")
    ap.add_argument("--prompts", type=int, help="number of prompts")
    ap.add_argument("--prompt-ids", help="JSON file: a list of token-id lists (the prompts)")
    ap.add_argument("--prompt-len", help="min,max prompt tokens (random prompts)")
    ap.add_argument("--b", type=int, help="branches")
    ap.add_argument("--gamma", type=int, help="draft tokens per verify step (>= 1)")
    ap.add_argument("--n-max", type=int, help="largest per-row token budget")
    ap.add_argument("--cal-steps", type=int, help="decode steps per calibration run")
    ap.add_argument("--repeats", type=int, help="calibration repeats (minimum)")
    ap.add_argument("--run-repeats", type=int, help="passes over the prompts (minimum)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=240.0,
                    help="start no further prompt (after two) once the runs would end later")
    ap.add_argument("--device", help="default: cuda when available, else cpu")
    ap.add_argument("--dtype", help="default: bfloat16 on CUDA, float32 on a CPU")
    ap.add_argument("--recompute", action="store_true", help="analysis of an existing OUT.json")
    args = ap.parse_args(argv)
    if args.recompute:
        doc = json.loads(Path(args.out + ".json").read_text())
    else:
        for k, v in PRESETS["tiny" if args.tiny else "full"].items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if args.prompts < 2 or args.b < 1 or args.gamma < 1 or args.n_max < 4 \
                or args.run_repeats < 1:
            ap.error("need --prompts >= 2 (leave one out), --b >= 1, --gamma >= 1, --n-max >= 4,"
                     " --run-repeats >= 1")
        if not set(args.models.split(",")) <= set(SHAPES) or args.models.count(",") != 1:
            ap.error(f"--models: target,draft from {sorted(SHAPES)}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        doc = measure(args, " ".join(["python", *sys.argv] if argv is None else
                                     ["python", "bench/tts_gpu_latency.py", *argv]))
        Path(args.out + ".json").write_text(json.dumps(doc, indent=1))  # raw measurements first
    analyse(doc)
    write(doc, args.out)
    return doc


def build(name: str, device: str, dtype: str, seed: int):
    """A Qwen2.5-Coder-shaped causal LM (tied embeddings) with seeded random weights, made on
    ``device`` (no CPU initialisation, no copy)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    h, i, n, a, kv, v = SHAPES[name]
    cfg = Qwen2Config(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                      num_attention_heads=a, num_key_value_heads=kv, vocab_size=v,
                      max_position_embeddings=32768, tie_word_embeddings=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    return model.eval()


def make_prompts(args: argparse.Namespace, vocab: int, rng) -> list[list[int]]:
    """``--prompt-ids`` if given, else ``--prompts`` seeded random prompts (ids 3..vocab-1) of
    uniform random length in ``--prompt-len``."""
    if args.prompt_ids:
        prompts = [[int(t) for t in p] for p in json.loads(Path(args.prompt_ids).read_text())]
        if len(prompts) < 2 or not all(prompts) or max(max(p) for p in prompts) >= vocab:
            raise SystemExit(f"--prompt-ids: >= 2 non-empty prompts of ids below {vocab}")
        return prompts
    lo, hi = (int(x) for x in args.prompt_len.split(","))
    return [rng.integers(3, vocab, size=int(rng.integers(lo, hi + 1))).tolist()
            for _ in range(args.prompts)]


def measure(args: argparse.Namespace, command: str) -> dict:
    import numpy as np
    import torch
    import transformers

    _tts()
    from lowbit.tts.calibrate import synced_clock, time_decode, time_model_drafter
    from lowbit.tts.latency import CostModel, DraftCost
    from lowbit.tts.speculative import ModelDrafter, PromptLookupDrafter, generate

    t_start = time.perf_counter()
    if _gc_timer not in gc.callbacks:
        gc.callbacks.append(_gc_timer)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    names = args.models.split(",")
    target, draft = (build(n, device, dtype, args.seed + k) for k, n in enumerate(names))
    if target.config.vocab_size != draft.config.vocab_size:
        raise SystemExit("target and draft need the same vocabulary")
    log(f"built {names[0]} target and {names[1]} draft ({dtype}, {device})")
    clock = synced_clock(device)
    rng = np.random.default_rng(args.seed)
    prompts = make_prompts(args, target.config.vocab_size, rng)
    lens = [len(p) for p in prompts]
    budgets = [rng.integers(max(1, args.n_max // 4), args.n_max + 1, size=args.b).tolist()
               for _ in prompts]
    rows = sorted({args.b} | {2 ** k for k in range(args.b.bit_length()) if 2 ** k < args.b})

    cal = time_decode(target, rows, [0, args.gamma], prompt=int(statistics.median(lens)),
                      new_tokens=args.cal_steps, repeats=args.repeats,
                      temperature=args.temperature, seed=args.seed, progress=False,
                      clock=clock)
    meta = {"clock": "perf_counter" + (", CUDA-synchronised" if device.startswith("cuda")
                                       else ""), "device": device, "dtype": dtype}
    cost, lookup = cal.fit(meta=dict(meta, model=names[0]))
    log(f"target decode calibration: {len(cal.target)} step times, rows {rows}; "
        f"T = {formula(cost.to_dict())} (median rel. residual {cost.rel_residual:.1%})")
    contexts = sorted({min(lens), (min(lens) + max(lens) + args.n_max) // 2,
                       max(lens) + args.n_max})
    draft_timings = time_model_drafter(draft, rows, contexts, gamma=max(args.gamma, 2),
                                       repeats=args.repeats, temperature=args.temperature,
                                       seed=args.seed, clock=clock)
    draft_model = CostModel.fit(draft_timings, meta=dict(meta, model=names[1]), per_row=True)
    log(f"draft model calibration: {len(draft_timings)} points, contexts {contexts}; "
        f"T = {formula(draft_model.to_dict())} "
        f"(median rel. residual {draft_model.rel_residual:.1%})")

    drafters = {"none": None, "lookup": PromptLookupDrafter(), "model": ModelDrafter(draft)}
    shapes = {"sequential": (1, 0), "branches": (args.b, 0), "speculation": (1, args.gamma),
              "both": (args.b, args.gamma)}
    for config, d in RUNS:  # warm-up: every configuration once, short
        b, g = shapes[config]
        generate(target, [prompts[0]] * b, max_new_tokens=4, gamma=g, drafter=drafters[d],
                 temperature=args.temperature, seed=args.seed, clock=clock)
    log("warm-up done")
    runs: dict[str, list[dict]] = {run_key(c, d): [] for c, d in RUNS}
    t_runs, spent = time.perf_counter(), []  # spent[i]: seconds of prompt i's first pass
    for rep in range(args.run_repeats):
        for i, prompt in enumerate(prompts):
            now = time.perf_counter()
            if rep == 0 and i >= 2 and t_runs + args.run_repeats * (
                    now - t_runs + spent[-1]) > t_start + args.max_seconds:
                log(f"{i} prompts: more would carry the runs past --max-seconds")
                prompts = prompts[:i]
                break
            if rep and now + spent[i] > t_start + args.max_seconds:
                log(f"pass {rep + 1}: skipping prompts {i + 1}-{len(prompts)} (--max-seconds)")
                break
            shift = rep * len(RUNS) // args.run_repeats  # each pass another order
            for k in [*range(shift, len(RUNS)), *range(shift)]:
                config, d = RUNS[k]
                b, g = shapes[config]
                r, x = _run(generate, clock, target, prompt, budgets[i][:b], g, drafters[d],
                            args.temperature, 1000 * i + k)
                key = run_key(config, d)
                if rep == 0:
                    runs[key].append({"task": f"p{i}", "config": config, "drafter": d, "b": b,
                                      "gamma": g, "prompt": len(prompt),
                                      "budgets": budgets[i][:b]})
                _merge(runs[key][i], r, x)
                log(f"pass {rep + 1}, prompt {i + 1}/{len(prompts)} {key}: "
                    f"{r['wall_s']:.3f} s ({x['cpu_s']:.3f} s CPU, {x['gc_s']:.3f} s GC), "
                    f"{r['forwards']} forwards, {sum(r['lengths'])} tokens")
            if rep == 0:
                spent.append(time.perf_counter() - now)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    return {"command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda")
            else f"cpu ({platform.machine()})",
            "versions": versions, "models": {"target": names[0], "draft": names[1]},
            "dtype": dtype, "seed": args.seed, "b": args.b, "gamma": args.gamma,
            "n_max": args.n_max, "temperature": args.temperature, "prompts": prompts,
            "run_repeats": args.run_repeats,
            "shapes": {c: list(v) for c, v in shapes.items()},
            "cost": {k: v for k, v in cost.to_dict().items() if k != "timings"},
            "calibration_timings": [t.__dict__ for t in cal.target],
            "lookup_points": [list(p) for p in cal.lookup],
            "draft_costs": {"lookup": lookup.to_dict(),
                            "model": DraftCost("model", model=draft_model).to_dict()},
            "runs": runs, "seconds": time.perf_counter() - t_start}


_GC = {"s": 0.0, "t0": 0.0}


def _gc_timer(phase: str, info: dict) -> None:
    """``gc.callbacks`` hook: seconds spent in Python's garbage collector, in ``_GC["s"]``."""
    if phase == "start":
        _GC["t0"] = time.perf_counter()
    else:
        _GC["s"] += time.perf_counter() - _GC["t0"]


def _host(device) -> dict:
    """Counters for ``_run``: this process's CPU seconds, the host's busy and stolen CPU seconds
    (all CPUs, ``/proc/stat``; ``None`` without it), garbage-collector seconds (``_gc_timer``),
    CUDA allocator ``cudaMalloc`` calls (``None`` on a CPU)."""
    import torch

    out = {"cpu": time.process_time(), "busy": None, "steal": None, "gc": _GC["s"],
           "allocs": torch.cuda.memory_stats(device).get("num_device_alloc", 0)
           if device.type == "cuda" else None}
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return out
    hz = os.sysconf("SC_CLK_TCK")
    out["busy"] = (f[0] + f[1] + f[2] + f[5] + f[6]) / hz  # user nice system irq softirq
    out["steal"] = (f[7] if len(f) > 7 else 0) / hz
    return out


def _run(generate, clock, target, prompt: list[int], budgets: list[int], gamma: int, drafter,
         temperature: float, seed: int) -> tuple[dict, dict]:
    """One timed ``generate`` call: its record, and the repeat's measurements: the synchronised
    wall clock around it, this process's CPU seconds, the other processes' busy CPU seconds,
    the stolen seconds, the garbage collector's seconds and the ``cudaMalloc`` calls."""
    device = next(target.parameters()).device
    h0, t0 = _host(device), clock()
    res = generate(target, [prompt] * len(budgets), max_new_tokens=budgets, gamma=gamma,
                   drafter=drafter, temperature=temperature, seed=seed, clock=clock)
    wall, h1 = clock() - t0, _host(device)
    d = {k: None if h0[k] is None else h1[k] - h0[k] for k in h0}
    rep = {"wall_s": wall, "cpu_s": d["cpu"],
           "other_s": None if d["busy"] is None else d["busy"] - d["cpu"],
           "steal_s": d["steal"], "gc_s": d["gc"], "device_allocs": d["allocs"]}
    return {"wall_s": wall, "lengths": [len(t) for t in res.tokens], "forwards": res.forwards,
            "finish_s": list(res.finish_s), "steps": [list(s) for s in res.steps],
            "timeline": [[t.rows, t.width, t.context, t.draft_s, t.target_s]
                         for t in res.timeline]}, rep


def _merge(run: dict, record: dict, rep: dict) -> None:
    """Add one repeat to ``run``: its measurements to ``repeats``; ``record`` (``wall_s``,
    lengths, steps, timeline) if it is the fastest so far. The runs are seeded, so the repeats
    do the same work: the fastest is the one least slowed by the host or by the state earlier
    runs left (allocator, clocks)."""
    run.setdefault("repeats", []).append(rep)
    if record["wall_s"] <= min(_walls(run)):
        run.update(record)


def _walls(run: dict) -> list[float]:
    """Wall clock of every repeat of a run (files without repeats: the one ``wall_s``)."""
    return [x["wall_s"] for x in run.get("repeats", [run])]


def formula(cost: dict) -> str:
    """The fitted cost model as a formula (seconds; B rows, s tokens per row, c context)."""
    return (f"{cost['a0']:.4g} + {cost['a1']:.3g}*B*s + {cost['a2']:.3g}*B*c + "
            f"{cost['a3']:.3g}*max(0, B*s - {cost['knee']:g}) + {cost['a4']:.3g}*B + "
            f"{cost['a5']:.3g}*min(B*s, {cost['knee']:g})")


def _view(doc: dict, drafter: str) -> dict:
    """The part of ``doc`` that ``tts_study._setup`` reads, for one drafter's runs."""
    return {"cost": doc["cost"], "draft": doc["draft_costs"][drafter], "n_max": doc["n_max"],
            "runs": {c: doc["runs"][run_key(c, drafter)] for c in ("speculation", "both")}}


def analyse(doc: dict) -> None:
    """Per run: expected-value and stochastic (mean of 16 seeds) simulated latency with its own
    branch lengths, the calibrated cost models and the leave-one-prompt-out acceptance table of
    its drafter (gamma 0 runs: prompt lookup's, unused); errors against the wall clock."""
    import numpy as np

    _tts()
    from lowbit.tts.simulate import simulate, simulate_stochastic

    study = _sibling("tts_study")
    tasks = {r["task"] for r in doc["runs"]["sequential"]}
    lat = {}
    for key, rows in doc["runs"].items():
        for r in rows:
            view = _view(doc, "lookup" if r["drafter"] == "none" else r["drafter"])
            setup = study._setup(view, tasks - {r["task"]}, r["prompt"])
            r["predicted_s"] = simulate(setup, r["gamma"], r["lengths"]).latency_s
            r["predicted_stochastic_s"] = float(np.mean(
                [simulate_stochastic(setup, r["gamma"], r["lengths"], seed=s).latency_s
                 for s in range(16)]))
        lat[key] = _summary(rows, study._rel)
    lat["all"] = _summary([r for rows in doc["runs"].values() for r in rows], study._rel)
    doc["latency"] = lat


def _summary(rows: list[dict], rel) -> dict:
    """Median errors against the fastest repeat (signed, absolute, stochastic absolute) and
    against the median repeat (absolute), times, measured acceptance."""
    steps = [s for r in rows for s in r["steps"]]
    return {"error": statistics.median((r["predicted_s"] - r["wall_s"]) / r["wall_s"]
                                       for r in rows),
            "abs_error": statistics.median(rel(r["predicted_s"], r["wall_s"]) for r in rows),
            "abs_error_stochastic": statistics.median(
                rel(r["predicted_stochastic_s"], r["wall_s"]) for r in rows),
            "abs_error_median_repeat": statistics.median(
                rel(r["predicted_s"], statistics.median(_walls(r))) for r in rows),
            "median_wall_s": statistics.median(r["wall_s"] for r in rows),
            "median_predicted_s": statistics.median(r["predicted_s"] for r in rows),
            "tau": 1.0 + statistics.mean(s[2] for s in steps) if steps else 1.0,
            "proposed": statistics.mean(s[1] for s in steps) if steps else 0.0}


def _host_line(doc: dict) -> list[str]:
    """The host during the runs (files with repeats): totals over every repeat of the wall
    clock, this process's CPU time, the other processes' busy CPU time, stolen time, garbage
    collection and ``cudaMalloc`` calls; the median of slowest over fastest repeat of a run."""
    runs = [r for rows in doc["runs"].values() for r in rows if "repeats" in r]
    if not runs:
        return []
    total = {k: sum(x[k] or 0 for r in runs for x in r["repeats"])
             for k in ("wall_s", "cpu_s", "other_s", "steal_s", "gc_s", "device_allocs")}
    spread = statistics.median(max(_walls(r)) / min(_walls(r)) for r in runs)
    return ["", f"Host during the runs (all repeats): {total['wall_s']:.1f} s wall, "
            f"{total['cpu_s']:.1f} s CPU of this process, {total['other_s']:.1f} CPU s of "
            f"other processes, {total['steal_s']:.1f} s stolen (hypervisor), "
            f"{total['gc_s']:.2f} s garbage collection, {total['device_allocs']} cudaMalloc "
            f"calls; slowest over fastest repeat of a run: median {spread:.2f}."]


def _joined(xs) -> str:
    return " ".join(f"{x:.3f}" for x in xs)


def write(doc: dict, out: str) -> None:
    Path(out + ".json").write_text(json.dumps(doc, indent=1))
    lat, m = doc["latency"], doc["models"]
    dm = doc["draft_costs"]["model"]["model"]
    lk = doc["draft_costs"]["lookup"]
    lens = [r["prompt"] for r in doc["runs"]["sequential"]]
    lines = [f"# TTS latency on {doc['device']}: predicted versus measured", "",
             f"Command: `{doc['command']}`  ", f"Date: {doc['date']}; versions: "
             f"{doc['versions']}; total {doc['seconds']:.0f} s.", "",
             f"Models: random-weight Qwen2.5-Coder-shaped {m['target']} target, {m['draft']} "
             f"draft ({doc['dtype']}, seed {doc['seed']}). {len(lens)} prompts of "
             f"{min(lens)}-{max(lens)} random token ids; B={doc['b']}, gamma={doc['gamma']}, "
             f"per-row budgets uniform in [{max(1, doc['n_max'] // 4)}, {doc['n_max']}] "
             f"tokens, temperature {doc['temperature']}; "
             f"{doc.get('run_repeats', 1)} passes over the prompts.", "",
             "Latency: wall clock synchronised with the device, around each "
             "`speculative.generate` call; measured: the fastest of a run's repeats (seeded: "
             "the same work each time; interleaved passes over the prompts), the latency of "
             "an uncontended host, which the calibration (minima over interleaved repeats) "
             "also measures. Cost models (NNLS, seconds; B rows, s tokens per row, "
             "c cached slots per row):", "",
             f"* target decode loop: T = {formula(doc['cost'])} (median rel. residual "
             f"{doc['cost']['rel_residual']:.1%})",
             f"* prompt lookup: {lk['per_token_s']:.3g} s/token + {lk['per_ctx_s']:.3g} "
             "s/context token per row",
             f"* draft model (re-encode c tokens, then gamma - 1 steps): T = {formula(dm)} "
             f"(median rel. residual {dm['rel_residual']:.1%})", "",
             "## Median relative error per configuration", "",
             "Each run simulated with its own branch lengths and the acceptance table of the "
             "other prompts' runs with the same drafter (leave one prompt out).", "",
             "| run | B | gamma | measured tau | proposed / step | median measured s | "
             "median predicted s | median error | median abs. error | abs. error "
             "(stochastic) | abs. error vs median repeat |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, rows in doc["runs"].items():
        x = lat[key]
        lines.append(f"| {key} | {rows[0]['b']} | {rows[0]['gamma']} | {x['tau']:.2f} | "
                     f"{x['proposed']:.2f} | {x['median_wall_s']:.3f} | "
                     f"{x['median_predicted_s']:.3f} | {x['error']:+.1%} | "
                     f"{x['abs_error']:.1%} | {x['abs_error_stochastic']:.1%} | "
                     f"{x['abs_error_median_repeat']:.1%} |")
    a = lat["all"]
    lines += ["", f"All {sum(len(r) for r in doc['runs'].values())} runs: median absolute "
              f"error {a['abs_error']:.1%} (expected-value simulator), "
              f"{a['abs_error_stochastic']:.1%} (stochastic); median signed error "
              f"{a['error']:+.1%}. Target: within 15 %. Against the median repeat: "
              f"{a['abs_error_median_repeat']:.1%}.", *_host_line(doc), "", "## Runs", "",
              "| prompt | run | prompt tokens | lengths | forwards | measured s | predicted s | "
              "error | stochastic s | repeats s | repeats CPU s | repeats cudaMalloc |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rows in doc["runs"].values():
        for r in rows:
            ln = r["lengths"]
            lines.append(f"| {r['task']} | {run_key(r['config'], r['drafter'])} | "
                         f"{r['prompt']} | {min(ln)}-{max(ln)} | {r['forwards']} | "
                         f"{r['wall_s']:.3f} | {r['predicted_s']:.3f} | "
                         f"{(r['predicted_s'] - r['wall_s']) / r['wall_s']:+.1%} | "
                         f"{r['predicted_stochastic_s']:.3f} | "
                         f"{_joined(_walls(r))} | "
                         f"{_joined(x['cpu_s'] for x in r.get('repeats', []))} | "
                         f"{' '.join(str(x['device_allocs']) for x in r.get('repeats', []))} |")
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:lines.index("## Runs")]), flush=True)


if __name__ == "__main__":
    main()
