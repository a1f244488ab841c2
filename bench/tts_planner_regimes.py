"""Planner regimes on roofline cost curves (synthetic; no model run).

    python bench/tts_planner_regimes.py bench/results/tts_planner_regimes.md

H200-like roofline (4.8 TB/s, 990 TFLOP/s bf16 dense, 2 ms launch overhead) for 3B- and
32B-class bf16 targets with Qwen2.5-shaped K/V, a synthetic pool (per-problem success rates from
a Beta(2, 2), three wrong answers, log-normal lengths around 600 tokens, K = 64), prompt lookup at
acceptance alpha, and a budget sweep: the exhaustive plan per budget, next to sequential decoding.
Replace the roofline by ``CostModel.load`` of ``bench/tts_gpu_calibrate.py`` fits when available.
"""

from __future__ import annotations

import sys

import numpy as np

from lowbit.tts.latency import AcceptanceTable, CostModel, DraftCost
from lowbit.tts.planner import Planner
from lowbit.tts.pool import AccuracyTable, Problem, Sample, SamplePool
from lowbit.tts.simulate import Memory, Setup

MODELS = {  # params, KV bytes per token (bf16)
    "3B": (3.1e9, 2 * 36 * 2 * 128 * 2),
    "32B": (32.8e9, 2 * 64 * 8 * 128 * 2),
}
BUDGETS = (5, 10, 20, 40, 60, 120)


def synthetic_pool(n=40, k=64, seed=0) -> SamplePool:
    rng = np.random.default_rng(seed)
    probs = []
    for i in range(n):
        p = rng.beta(2, 2)
        ss = []
        for _ in range(k):
            ok = rng.random() < p
            ss.append(Sample("0" if ok else str(rng.integers(1, 4)), ok,
                             int(np.clip(rng.lognormal(np.log(600), 0.5), 50, 4000))))
        probs.append(Problem(str(i), "0", tuple(ss)))
    return SamplePool(tuple(probs))


def main(out: str) -> None:
    pool = synthetic_pool()
    acc = AccuracyTable(pool, grid=48, exact_limit=0, draws=400)
    lines = ["# Planner regimes on H200-like roofline curves (synthetic pool, K=64)", "",
             "| model | alpha | budget s | B | gamma | n_max | pred. acc | pred. s | "
             "sequential n_max | sequential acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, (params, kv) in MODELS.items():
        cost = CostModel.roofline(overhead_s=2e-3, param_bytes=2 * params,
                                  kv_bytes_per_token=kv, flops_per_token=2 * params,
                                  bandwidth=4.8e12, flops=9.9e14)
        for alpha in (0.0, 0.7):
            setup = Setup(cost, AcceptanceTable.from_alpha(alpha), DraftCost(per_token_s=2e-6),
                          prompt=200, memory=Memory(141e9, 2 * params, kv))
            planner = Planner(setup, acc, pool, draws=16)
            for budget in BUDGETS:
                p = planner.plan_exhaustive(budget, b_grid=(1, 2, 4, 8, 16, 32, 64),
                                            gamma_grid=tuple(range(9)))
                s = planner.evaluate("majority", 1, 0, budget)
                lines.append(f"| {name} | {alpha} | {budget} | {p.b} | {p.gamma} | {p.n_max} | "
                             f"{p.predicted_acc:.3f} | {p.predicted_latency_s:.1f} | {s.n_max} | "
                             f"{s.predicted_acc:.3f} |")
                print(lines[-1], flush=True)
    with open(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
