"""``lowbit study formats``: argument parsing and action (``add_formats`` registers it under
``lowbit study``; ``study_formats`` has the method).

    lowbit study formats [--models M ...] [--formats8 F ...] [--formats4 F ...]
                         [--settings wa kv] [--alpha A] [--seq-len L] [--eval-tokens N]
                         [--calib-segments N] [--stat-segments N] [--max-rows N]
                         [--no-stats | --stats-only]
                         [--append] [--notes FILE] [--out PREFIX] [--quiet]

Runs, per model, W8A8 / W4A4 with SmoothQuant (``wa``) and KV-cache-only quantization (``kv``)
in every format, then the per-tensor statistics and SQNR of each format. ``--append`` keeps the
other models of an earlier ``<out>.json`` (same formats), so models can run one at a time.
"""

from __future__ import annotations

import argparse
import json
import os

HELP = "INT vs MXFP vs NVFP4 vs HiFloat at equal bits (W/A and KV cache, tensor statistics)"


def _alpha(text: str):
    return text if text == "search" else float(text)


def add_formats(subparsers) -> None:
    """Add the ``formats`` parser to ``lowbit study``'s subparsers (imports nothing heavy:
    defaults left as None are ``study_formats.FORMATS8`` / ``FORMATS4`` / ``SETTINGS``)."""
    q = subparsers.add_parser("formats", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--models", nargs="+", default=["smollm2-135m"],
                   help="smollm2-135m, qwen2.5-coder-0.5b, a local HF directory or hub id, "
                   "tiny-llama / tiny-qwen2")
    q.add_argument("--formats8", nargs="*", help="8-bit format specs (default: int8, "
                   "mxfp8_e4m3:scale_rule=rceil, hif8:granularity=channel,target=15)")
    q.add_argument("--formats4", nargs="*", help="4-bit format specs (default: "
                   "int4:group_size=32, mxfp4, nvfp4, hif4)")
    q.add_argument("--settings", nargs="+", help="wa (W8A8/W4A4 + SmoothQuant) and/or kv "
                   "(KV cache only); default both")
    q.add_argument("--alpha", type=_alpha, default=0.5,
                   help="SmoothQuant migration strength in [0, 1], or 'search'")
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--eval-tokens", type=int, default=4096)
    q.add_argument("--calib-segments", type=int, default=8)
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("--stat-segments", type=int, default=2,
                   help="train segments whose tensors are measured")
    q.add_argument("--max-rows", type=int, default=256, help="rows sampled per tensor")
    q.add_argument("--no-stats", action="store_true", help="skip the per-tensor statistics")
    q.add_argument("--stats-only", action="store_true",
                   help="only the per-tensor statistics (no model evaluation)")
    q.add_argument("--append", action="store_true",
                   help="keep the other models of an existing <out>.json")
    q.add_argument("--notes", help="a Markdown file appended to the report (its reading)")
    q.add_argument("--out", default="study_formats", help="output prefix (.json, .md, .png)")
    q.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(run=run_formats)


def command_line(args: argparse.Namespace) -> str:
    flags = ("no_stats", "stats_only", "append")
    skip = ("run", "command", "study", "quiet", "notes", "argv", *flags)
    parts = ["lowbit study formats"]
    for k, v in vars(args).items():
        if k not in skip:
            parts.append(f"--{k.replace('_', '-')} "
                         + (" ".join(map(str, v)) if isinstance(v, list) else str(v)))
    parts += [f"--{k.replace('_', '-')}" for k in flags if getattr(args, k)]
    return " ".join(parts)


def run_formats(args: argparse.Namespace) -> int:
    from . import study_formats as sf

    for key, default in (("formats8", sf.FORMATS8), ("formats4", sf.FORMATS4),
                         ("settings", sf.SETTINGS)):
        if getattr(args, key) is None:
            setattr(args, key, list(default))
    if not args.formats8 and not args.formats4:
        raise ValueError("give at least one format (--formats8 / --formats4)")
    previous = None
    if args.append and os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as fh:
            previous = json.load(fh)
    result = sf.new_result(args.formats8, args.formats4, command_line(args), previous)
    if args.notes:
        with open(args.notes) as fh:
            result["notes"] = fh.read()
    for model in args.models:
        def on_row(entry):
            sf.add_model(result, entry)
            sf.write_report(result, args.out, plot_png=False)

        entry = sf.run_formats_study(
            model, args.formats8, args.formats4, () if args.stats_only else args.settings,
            alpha=args.alpha,
            seq_len=args.seq_len, eval_tokens=args.eval_tokens,
            calib_segments=args.calib_segments, batch_size=args.batch_size,
            stat_segments=args.stat_segments, max_rows=args.max_rows, stats=not args.no_stats,
            progress=not args.quiet, device=args.device, on_row=on_row)
        sf.add_model(result, entry)
    for path in sf.write_report(result, args.out):
        print(f"wrote {path}")
    return 0
