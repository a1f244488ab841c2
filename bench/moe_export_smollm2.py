"""Router choices of the Qwen2-MoE export of training-free CMoE SmolLM2-135M.

    nice -n 10 python bench/moe_export_smollm2.py [--config S3A3E8] [--calib 8x1024]
        [--export-calib 4x512] [--eval-tokens 8192] [--eval-seq-len 512] [--threads 2]
        [--out bench/results/moe_export_smollm2]

Restructures with ``--calib`` windows of the Wikipedia train split (seed 0), exports to
``Qwen2MoeForCausalLM`` with the least-squares linear router fitted on ``--export-calib`` train
windows (seed 2) and with the representative-row router, and evaluates both as the PTQ study
does (``integrations.study.segments`` of the test split, ``integrations.evaluate``): perplexity,
KL / top-1 to the dense model and to the exact CMoE model, and the fraction of router-fit tokens
whose top-k set equals CMoE's. ``bench/moe_smollm2.py`` records the fitted export of each
configuration next to its CMoE rows; this script compares the two routers. Writes OUT.json/.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys

import torch

from lowbit.integrations.data import SMOLLM2, load_model
from lowbit.integrations.evaluate import evaluate, reference_logprobs
from lowbit.integrations.study import segments
from lowbit.moe.convert import restructure
from lowbit.moe.data import random_windows, wiki_tokens
from lowbit.moe.export import export_qwen2_moe


def _shape(text: str) -> tuple[int, int]:
    n, length = (int(v) for v in text.lower().split("x"))
    return n, length


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="S3A3E8")
    ap.add_argument("--calib", default="8x1024")
    ap.add_argument("--export-calib", default="4x512")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/moe_export_smollm2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense, tok = load_model(SMOLLM2)
    train = wiki_tokens(tok, "train")
    ev = segments(tok, "test", args.eval_seq_len, args.eval_tokens // args.eval_seq_len)
    ref_dense = reference_logprobs(dense, ev)
    del dense
    cmoe, _ = load_model(SMOLLM2)
    restructure(cmoe, args.config, random_windows(train, *_shape(args.calib), seed=0),
                progress=True)
    ref_cmoe = reference_logprobs(cmoe, ev)
    rows = [{"model": "cmoe", **evaluate(cmoe, ev, ref_dense)}]
    fit_calib = random_windows(train, *_shape(args.export_calib), seed=2)
    for router in ("fit", "representative"):
        model, rep = export_qwen2_moe(cmoe, fit_calib, router=router)
        agree = [a for a in rep.topk_agreement if a is not None]
        to_cmoe = evaluate(model, ev, ref_cmoe)
        rows.append({"model": f"qwen2moe_{router}", **evaluate(model, ev, ref_dense),
                     "kl_cmoe": to_cmoe["kl"], "top1_cmoe": to_cmoe["top1"],
                     "topk_agreement": sum(agree) / len(agree)})
        print(rows[-1], flush=True)
    meta = {"config": args.config, "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(), "torch": torch.__version__, "threads": args.threads,
            "calibration": f"{args.calib} train", "router_fit": f"{args.export_calib} train",
            "evaluation": f"{ev.numel()} tokens ({ev.shape[0]} x {ev.shape[1]}) wiki test"}
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"SmolLM2-135M {args.config} (training-free) exported to Qwen2MoeForCausalLM, "
             f"{meta['date']}. Calibration {meta['calibration']}; router fit "
             f"{meta['router_fit']}; evaluation {meta['evaluation']}.", "",
             f"Command: `{meta['command']}`", "",
             "| model | ppl | KL to dense | top-1 vs dense | KL to CMoE | top-1 vs CMoE | "
             "top-k sets = CMoE's |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = ("- | - | -" if "kl_cmoe" not in r else
                 f"{r['kl_cmoe']:.4f} | {r['top1_cmoe']:.3f} | {r['topk_agreement']:.3f}")
        lines.append(f"| {r['model']} | {r['ppl']:.3f} | {r['kl']:.4f} | {r['top1']:.3f} | "
                     f"{extra} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
