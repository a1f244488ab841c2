"""Training-free CMoE on the embedded SmolLM2-135M: perplexity and KL to the dense model.

    python bench/moe_smollm2.py [--configs S1A3E8,S2A2E8,S3A3E8,S1A5E8] [--samples 8]
        [--seq-len 2048] [--windows 16] [--out bench/results/moe_smollm2]

Calibration: ``--samples`` random windows of the Wikipedia train split (seed 0); evaluation:
the first ``--windows`` non-overlapping windows of the test split (``lowbit.moe.data``). Every
model sees the same windows and the dense log-probabilities are computed once per window.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lowbit.moe.config import parse_config
from lowbit.moe.convert import restructure
from lowbit.moe.data import (
    SMOLLM2,
    consecutive_windows,
    load_tokenizer,
    random_windows,
    resolve_model,
    wiki_tokens,
)
from lowbit.moe.eval import active_macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="S1A3E8,S2A2E8,S3A3E8,S1A5E8")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--k-act", type=int, default=10)
    ap.add_argument("--out", default="bench/results/moe_smollm2")
    args = ap.parse_args()

    path = resolve_model(SMOLLM2)
    tok = load_tokenizer(SMOLLM2)
    calib = random_windows(wiki_tokens(tok, "train"), args.samples, args.seq_len, seed=0)
    windows = consecutive_windows(wiki_tokens(tok, "test"), args.seq_len, args.windows)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    models, rows = {}, []
    for name in args.configs.split(","):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        rep = restructure(model, name, calib, k_act=args.k_act, progress=True)
        models[name] = model
        silent = sum(r.silent for r in rep.layers)
        rows.append({"config": name, "active_fraction": parse_config(name).active_fraction,
                     "convert_s": rep.seconds, "silent_neurons": silent})
        print(f"{name}: converted in {rep.seconds:.1f} s", flush=True)
    sums = {n: [0.0, 0.0, 0.0] for n in ["dense", *models]}  # nll, kl, top-1 agreement
    count = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for ids in windows.split(1):
            target = ids[:, 1:]
            ref = dense(ids).logits[:, :-1].float().log_softmax(-1)
            count += target.numel()
            sums["dense"][0] += float(-ref.gather(-1, target[..., None]).sum())
            for name, model in models.items():
                logp = model(ids).logits[:, :-1].float().log_softmax(-1)
                s = sums[name]
                s[0] += float(-logp.gather(-1, target[..., None]).sum())
                s[1] += float(F.kl_div(logp, ref, log_target=True, reduction="sum"))
                s[2] += float((logp.argmax(-1) == ref.argmax(-1)).sum())
    eval_s = time.perf_counter() - t0
    dense_macs = active_macs(dense)
    table = [{"config": "dense", "active_fraction": 1.0, "ppl": math.exp(sums["dense"][0] / count),
              "kl": 0.0, "top1": 1.0, "macs_ratio": 1.0, "convert_s": 0.0, "silent_neurons": 0}]
    for row in rows:
        s = sums[row["config"]]
        table.append({**row, "ppl": math.exp(s[0] / count), "kl": s[1] / count,
                      "top1": s[2] / count,
                      "macs_ratio": active_macs(models[row["config"]]) / dense_macs})
    meta = {"model": SMOLLM2, "calibration": f"{args.samples} x {args.seq_len} wiki train, seed 0",
            "evaluation": f"{windows.shape[0]} x {args.seq_len} wiki test ({count} predicted)",
            "k_act": args.k_act, "eval_s": round(eval_s, 1), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": table}, indent=1))
    lines = [f"SmolLM2-135M, training-free CMoE. Calibration {meta['calibration']}; "
             f"evaluation {meta['evaluation']}; K_a = {args.k_act}.", "",
             "| config | FFN active | ppl | KL to dense | top-1 agree | active MACs/token | "
             "convert s | never-marked neurons |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['config']} | {r['active_fraction']:.0%} | {r['ppl']:.3f} | "
                     f"{r['kl']:.4f} | {r['top1']:.3f} | {r['macs_ratio']:.3f} | "
                     f"{r['convert_s']:.0f} | {r['silent_neurons']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
