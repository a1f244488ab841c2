"""CMoE on the embedded SmolLM2-135M: training-free, LoRA fine-tuned and Qwen2-MoE-exported rows.

    nice -n 10 python bench/moe_smollm2.py [--configs S1A3E8,S2A2E8,S3A3E8,S1A5E8]
        [--calib 8x1024] [--k-act 10] [--eval-tokens 8192] [--eval-seq-len 512]
        [--ft 128x256] [--ft-lr 3e-4] [--ft-configs ...] [--export-calib 4x512]
        [--export-configs S3A3E8] [--threads 2] [--out bench/results/moe_smollm2]

Data and evaluation are the PTQ study's (``lowbit.integrations``): the Wikipedia split of
``integrations.data`` (sha256(title) mod 10), evaluation on the first ``--eval-tokens`` tokens of
the test split in segments of ``--eval-seq-len`` (``integrations.study.segments``), perplexity,
KL to the dense model and top-1 agreement by ``integrations.evaluate``. Calibration
(``--calib NxL``) and fine-tuning sequences (``--ft NxL``) are seeded random windows of the
train split (seeds 0 and 1). Per configuration: restructure (timed), evaluate, export to
``Qwen2MoeForCausalLM`` with the least-squares linear router fitted on ``--export-calib``
train windows (seed 2) and evaluate it (KL to dense and to the exact CMoE model; configurations
of ``--export-configs``), then LoRA fine-tune (``moe.finetune``, balancing-bias update on) the
configurations of ``--ft-configs`` for one epoch over the ``--ft`` sequences, merge and
evaluate. JSON and Markdown are rewritten after every row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys
import time

import torch

from lowbit.integrations.data import SMOLLM2, load_model
from lowbit.integrations.evaluate import evaluate, reference_logprobs
from lowbit.integrations.study import segments
from lowbit.moe.config import parse_config
from lowbit.moe.convert import restructure
from lowbit.moe.data import random_windows, wiki_tokens
from lowbit.moe.eval import active_macs
from lowbit.moe.export import export_qwen2_moe
from lowbit.moe.finetune import FinetuneConfig, finetune, merge_lora


def _shape(text: str) -> tuple[int, int]:
    n, length = (int(v) for v in text.lower().split("x"))
    return n, length


def _row(config: str, variant: str, res: dict, **extra) -> dict:
    return {"config": config, "variant": variant, "ppl": res["ppl"], "kl": res.get("kl", 0.0),
            "top1": res.get("top1", 1.0), **extra}


def _export_row(name: str, model, args, train, ev, ref, base: dict) -> dict:
    """The Qwen2-MoE export of the training-free ``model``: quality vs dense and vs CMoE."""
    t0 = time.perf_counter()
    calib = random_windows(train, *_shape(args.export_calib), seed=2)
    exported, erep = export_qwen2_moe(model, calib)
    export_s = time.perf_counter() - t0
    to_cmoe = evaluate(exported, ev, reference_logprobs(model, ev))
    agree = [a for a in erep.topk_agreement if a is not None]
    return _row(name, "Qwen2-MoE export (fitted linear router)", evaluate(exported, ev, ref),
                **base, export_s=round(export_s, 1), kl_to_cmoe=to_cmoe["kl"],
                top1_to_cmoe=to_cmoe["top1"], topk_set_agreement=sum(agree) / len(agree))


def convert_row(name: str, args, train, ev, ref, dense_macs: int, save) -> tuple:
    """Restructure a fresh model; its training-free row and (if listed) its export row."""
    cfg = parse_config(name)
    model, _ = load_model(SMOLLM2)
    calib = random_windows(train, *_shape(args.calib), seed=0)
    rep = restructure(model, cfg, calib, k_act=args.k_act, progress=True)
    base = {"active_fraction": cfg.active_fraction,
            "macs_ratio": active_macs(model) / dense_macs}
    save(_row(name, "training-free", evaluate(model, ev, ref), **base, convert_s=rep.seconds,
              silent_neurons=sum(r.silent for r in rep.layers)))
    if name in args.export_configs.split(","):
        save(_export_row(name, model, args, train, ev, ref, base))
    return model, base


def finetune_row(name: str, model, base: dict, args, train, ev, ref) -> dict:
    """LoRA fine-tune (balancing update on) of a restructured model, merge, evaluate."""
    seqs = random_windows(train, *_shape(args.ft), seed=1)
    ft_cfg = FinetuneConfig(lr=args.ft_lr, batch_size=args.ft_batch)
    t0 = time.perf_counter()
    losses = finetune(model, seqs, ft_cfg, seed=0, progress=True)
    merge_lora(model)
    bias = max(float(b.abs().max()) for n, b in model.named_buffers()
               if n.endswith("e_score_correction_bias"))
    tail = losses[-8:]
    return _row(name, f"LoRA fine-tuned ({args.ft} tokens)", evaluate(model, ev, ref), **base,
                finetune_s=round(time.perf_counter() - t0, 1), first_loss=losses[0],
                last_loss=sum(tail) / len(tail), max_abs_bias=bias)


def write_markdown(path: pathlib.Path, result: dict) -> None:
    meta = result["meta"]
    note = ("" if meta["evaluation"].startswith("8192 ") else
            "; its table uses the first 8192 tokens, so the dense ppl differs")
    lines = [f"# CMoE on SmolLM2-135M ({meta['date']})", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}, torch "
             f"{meta['torch']}, transformers {meta['transformers']}, {meta['threads']} threads "
             f"(shared 2-core machine: times are upper bounds).", "",
             f"Evaluation: {meta['evaluation']} (the PTQ study's split, segments and metrics"
             f"{note}); calibration "
             f"{meta['calibration']}; K_a = {meta['k_act']}; fine-tuning {meta['finetune']}; "
             f"export router fitted on {meta['export_calibration']}.", "",
             "| config | variant | FFN active | ppl | KL to dense | top-1 agree | active MACs "
             "| convert s | notes |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        notes = []
        if "silent_neurons" in r:
            notes.append(f"{r['silent_neurons']} never-marked neurons")
        if "kl_to_cmoe" in r:
            notes.append(f"KL to CMoE {r['kl_to_cmoe']:.4f}, top-1 vs CMoE {r['top1_to_cmoe']:.3f}"
                         f", top-k sets = CMoE's on {r['topk_set_agreement']:.1%} of calib tokens")
        if "finetune_s" in r:
            notes.append(f"{r['finetune_s']:.0f} s, loss {r['first_loss']:.2f} -> "
                         f"{r['last_loss']:.2f}, max abs bias {r['max_abs_bias']:.3f}")
        conv = f"{r['convert_s']:.0f}" if "convert_s" in r else ""
        lines.append(f"| {r['config']} | {r['variant']} | {r['active_fraction']:.0%} | "
                     f"{r['ppl']:.3f} | {r['kl']:.4f} | {r['top1']:.3f} | {r['macs_ratio']:.3f} | "
                     f"{conv} | {'; '.join(notes)} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="S1A3E8,S2A2E8,S3A3E8,S1A5E8")
    ap.add_argument("--calib", default="8x1024", help="calibration windows NxL (8x1024)")
    ap.add_argument("--k-act", type=int, default=10)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--ft", default="128x256", help="fine-tuning windows NxL (128x256)")
    ap.add_argument("--ft-lr", type=float, default=3e-4)
    ap.add_argument("--ft-batch", type=int, default=2)
    ap.add_argument("--export-calib", default="4x512", help="router-fit windows NxL (4x512)")
    ap.add_argument("--export-configs", default="S3A3E8", help="configurations exported")
    ap.add_argument("--ft-configs", default="S1A3E8,S2A2E8,S3A3E8,S1A5E8",
                    help="configurations fine-tuned")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/moe_smollm2")
    args = ap.parse_args()
    for text in (args.calib, args.ft, args.export_calib):
        _shape(text)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    dense, tok = load_model(SMOLLM2)
    ev = segments(tok, "test", args.eval_seq_len, args.eval_tokens // args.eval_seq_len)
    ref = reference_logprobs(dense, ev)
    dense_macs = active_macs(dense)
    rows = [_row("dense", "", evaluate(dense, ev, ref), active_fraction=1.0, macs_ratio=1.0)]
    del dense
    meta = {"model": SMOLLM2, "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": args.threads,
            "evaluation": f"{ev.numel()} tokens ({ev.shape[0]} x {ev.shape[1]}) of the "
                          "Wikipedia test split", "calibration": f"{args.calib} train, seed 0",
            "k_act": args.k_act, "finetune": f"{args.ft} train (seed 1), LoRA r8/alpha32, "
            f"lr {args.ft_lr}, batch {args.ft_batch}, 1 epoch, balancing gamma 1e-3",
            "export_calibration": f"{args.export_calib} train, seed 2"}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(row: dict) -> None:
        rows.append(row)
        print(row, flush=True)
        meta["total_s"] = round(time.perf_counter() - started, 1)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        write_markdown(out.with_suffix(".md"), {"meta": meta, "rows": rows})

    train = wiki_tokens(tok, "train")
    for name in args.configs.split(","):
        model, base = convert_row(name, args, train, ev, ref, dense_macs, save)
        if name in args.ft_configs.split(","):
            save(finetune_row(name, model, base, args, train, ev, ref))
        del model
    print(out.with_suffix(".md").read_text())


def rewrite_markdown(prefix: str) -> None:
    """Regenerate PREFIX.md from PREFIX.json (``python -c`` after editing the layout)."""
    out = pathlib.Path(prefix)
    write_markdown(out.with_suffix(".md"), json.loads(out.with_suffix(".json").read_text()))


if __name__ == "__main__":
    main()
