"""Cost of exporting training-free CMoE SmolLM2-135M to the standard Qwen2-MoE layout.

    python bench/moe_export_smollm2.py [--config S3A3E8] [--samples 8] [--seq-len 1024]
        [--windows 16] [--out bench/results/moe_export_smollm2]

Restructures with ``--samples`` calibration windows (Wikipedia train, seed 0), exports with the
fitted linear router (fit on the same calibration windows) and with the representative-row
router, and evaluates dense, CMoE and both exports on the first ``--windows`` test windows:
perplexity, KL to dense and KL to CMoE, and the fraction of calibration tokens whose top-k set
equals CMoE's. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from lowbit.moe.convert import restructure
from lowbit.moe.data import (
    SMOLLM2,
    consecutive_windows,
    load_tokenizer,
    random_windows,
    resolve_model,
    wiki_tokens,
)
from lowbit.moe.export import export_qwen2_moe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="S3A3E8")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--out", default="bench/results/moe_export_smollm2")
    args = ap.parse_args()
    path = resolve_model(SMOLLM2)
    tok = load_tokenizer(SMOLLM2)
    calib = random_windows(wiki_tokens(tok, "train"), args.samples, args.seq_len, seed=0)
    windows = consecutive_windows(wiki_tokens(tok, "test"), args.seq_len, args.windows)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cmoe = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    restructure(cmoe, args.config, calib, progress=True)
    models = {"dense": dense, "cmoe": cmoe}
    reports = {}
    for router in ("fit", "representative"):
        models[f"qwen2moe_{router}"], rep = export_qwen2_moe(cmoe, calib, router=router)
        reports[router] = rep.to_dict()
    sums = {n: [0.0, 0.0, 0.0] for n in models}  # nll, KL to dense, KL to CMoE
    count = 0
    with torch.no_grad():
        for ids in windows.split(1):
            target = ids[:, 1:]
            logp = {n: m(ids).logits[:, :-1].float().log_softmax(-1) for n, m in models.items()}
            count += target.numel()
            for n, lp in logp.items():
                sums[n][0] += float(-lp.gather(-1, target[..., None]).sum())
                sums[n][1] += float(F.kl_div(lp, logp["dense"], log_target=True,
                                             reduction="sum"))
                sums[n][2] += float(F.kl_div(lp, logp["cmoe"], log_target=True,
                                             reduction="sum"))
    rows = []
    for n, s in sums.items():
        r = reports.get(n.removeprefix("qwen2moe_"), {})
        agree = r.get("topk_agreement")
        rows.append({"model": n, "ppl": math.exp(s[0] / count), "kl_dense": s[1] / count,
                     "kl_cmoe": s[2] / count,
                     "topk_agreement_mean": None if not agree else sum(agree) / len(agree)})
    meta = {"config": args.config, "calibration": f"{args.samples} x {args.seq_len} wiki train",
            "evaluation": f"{windows.shape[0]} x {args.seq_len} wiki test ({count} predicted)"}
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                    "reports": reports}, indent=1))
    lines = [f"SmolLM2-135M {args.config} (training-free) exported to Qwen2MoeForCausalLM. "
             f"Calibration {meta['calibration']}; evaluation {meta['evaluation']}.", "",
             "| model | ppl | KL to dense | KL to CMoE | top-k set agreement (calibration) |",
             "|---|---|---|---|---|"]
    for r in rows:
        agree = "-" if r["topk_agreement_mean"] is None else f"{r['topk_agreement_mean']:.3f}"
        lines.append(f"| {r['model']} | {r['ppl']:.3f} | {r['kl_dense']:.4f} | "
                     f"{r['kl_cmoe']:.4f} | {agree} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
