"""``lowbit study ptq``: argument parsing and action (registered in ``cli.COMMANDS``).

    lowbit study ptq [--model M] [--grid default|mxfp] [--weights W ...] [--activations A ...]
                     [--kv-cache K ...] [--methods M ...] [--seq-len L] [--eval-tokens N]
                     [--calib-segments N] [--out PREFIX] [--resume] [-M KEY=VALUE ...] [--quiet]

Specs are format names with options (``mxfp4``, ``mxfp8_e4m3:scale_rule=rceil``,
``int4:group_size=32``, ``none``); ``same`` as an activation or KV spec means the weight format.
The grid is every combination plus the unquantized baseline, or a named grid: ``--grid
default`` (also ``--default-grid``: W8A8 MXFP8/HiF8, W4A16 and W4A4 in MXFP4/NVFP4/HiF4/INT4,
RTN and GPTQ) or ``--grid mxfp`` (the MXFP PTQ benchmark: RTN, SmoothQuant, AWQ, GPTQ, MR-GPTQ,
QuaRot, SpinQuant, FlatQuant x W8A8 MXFP8, W4A8, W4A4 MXFP4, W4A4 NVFP4, each MX setting without
and with the 3/4 pre-scale; ``--methods`` restricts its methods). ``--resume`` keeps the rows
already in ``<out>.json`` and runs only the missing configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex

from .keyvalue import parse_key_values

HELP = "quantization studies on language models (lowbit study ptq ...)"


def add_study(p: argparse.ArgumentParser) -> None:
    from .cli_study_formats import add_formats

    sub = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    add_formats(sub)
    q = sub.add_parser("ptq", help="post-training quantization grid on one model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (embedded, default), qwen2.5-coder-0.5b, a local HF "
                   "directory or hub id, tiny-llama / tiny-qwen2")
    q.add_argument("--default-grid", action="store_true", help="the same as --grid default")
    q.add_argument("--grid", choices=("default", "mxfp"), help="a named grid (see above)")
    q.add_argument("--resume", action="store_true",
                   help="keep the rows of an existing <out>.json, run the missing ones")
    q.add_argument("--weights", nargs="+", default=["mxfp4"])
    q.add_argument("--activations", nargs="+", default=["none"])
    q.add_argument("--kv-cache", nargs="+", default=["none"])
    q.add_argument("--methods", nargs="+",
                   help="rtn gptq mrgptq smoothquant awq quarot spinquant flatquant (default: "
                   "rtn; with --grid mxfp: all eight)")
    # defaults None: study.SEQ_LEN / EVAL_TOKENS / CALIB_SEGMENTS (not imported here: torch)
    q.add_argument("--seq-len", type=int, help="segment length in tokens (default 256)")
    q.add_argument("--eval-tokens", type=int,
                   help="evaluation tokens, whole segments of --seq-len (default 2048)")
    q.add_argument("--calib-segments", type=int,
                   help="calibration segments of --seq-len tokens for GPTQ, AWQ, SmoothQuant "
                   "(default 8)")
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("-M", "--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (damp, act_order, scales, alpha, rotation_size, ...)")
    q.add_argument("--out", default="ptq_study", help="output prefix (.json, .md, .png)")
    q.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda); fake "
                   "quantization runs on the CPU unless a kernel is registered for the device")
    q.add_argument("--quiet", action="store_true")


def run_study_cmd(args: argparse.Namespace) -> int:
    from . import study
    from .study import build_grid, default_grid, run_study, write_outputs

    args.seq_len = args.seq_len or study.SEQ_LEN
    args.eval_tokens = args.eval_tokens or study.EVAL_TOKENS
    args.calib_segments = args.calib_segments or study.CALIB_SEGMENTS

    opts = parse_key_values(args.method_option, "--method-option")
    grid_name = "default" if args.default_grid else args.grid
    if grid_name == "mxfp":
        grid = study.mxfp_grid(args.methods or study.MXFP_METHODS)
    elif grid_name == "default":
        grid = default_grid()
    else:
        grid = build_grid(args.weights, args.activations, args.kv_cache, args.methods or ["rtn"])
    done_rows = []
    if args.resume and os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as fh:
            done_rows = json.load(fh)["rows"]
    command = "lowbit " + shlex.join(getattr(args, "argv", ["study", "ptq"]))

    def on_row(result):
        result["command"] = command
        write_outputs(result, args.out, plot=False)

    result = run_study(args.model, grid, seq_len=args.seq_len, eval_tokens=args.eval_tokens,
                       calib_segments=args.calib_segments, batch_size=args.batch_size,
                       method_options=opts, progress=not args.quiet, device=args.device,
                       on_row=on_row, done_rows=done_rows)
    result["command"] = command
    for path in write_outputs(result, args.out):
        print(f"wrote {path}")
    return 0
