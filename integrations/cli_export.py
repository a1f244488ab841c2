"""``lowbit export``: quantize a model, write it as a compressed-tensors checkpoint (``export_ct``).

    lowbit export --model M --weights nvfp4|mxfp4|mxfp8_e4m3[:options] --out DIR
                  [--method rtn] [--activations SPEC] [--act-mode record|engine|drop]
                  [--dtype float32|bfloat16|float16] [--calib-segments 16] [--seq-len 256]
                  [-M KEY=VALUE ...]

M is ``smollm2-135m`` (embedded), ``tiny-llama`` / ``tiny-qwen2`` (random test models), a local
HF directory or hub id, or a directory written by ``save_quantized`` (it has ``lowbit.json``;
then it is exported as it is and ``--weights`` / ``--method`` must be left out). Calibrated
methods take ``--calib-segments`` windows of ``--seq-len`` tokens of the Wikipedia train split.
"""

from __future__ import annotations

import argparse
import os

from .keyvalue import parse_key_values

HELP = "export a quantized model as a compressed-tensors checkpoint (vLLM)"
EXIT_OK = 0
_DTYPES = ("float32", "bfloat16", "float16")


def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="smollm2-135m, tiny-llama, an HF directory or a save_quantized directory")
    p.add_argument("--weights", help="weight spec: nvfp4, mxfp4, mxfp8_e4m3 (with :options)")
    p.add_argument("--method", help="PTQ method (default rtn)")
    p.add_argument("--activations", default="none", help="activation spec (default none)")
    p.add_argument("--act-mode", choices=("record", "engine", "drop"), default="record",
                   help="how activation quantization is written (see export_ct; default record)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", choices=_DTYPES, help="cast unquantized tensors (default: as is)")
    p.add_argument("--calib-segments", type=int, default=16, help="calibration windows (16)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window (256)")
    p.add_argument("-M", "--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, VALUE read as JSON where it parses; repeatable")


def _load(args: argparse.Namespace):
    """``(quantized model, tokenizer or None)``."""
    from .model import CONFIG_NAME, load_quantized, quantize_model
    from .study import load, segments

    if os.path.isfile(os.path.join(args.model, CONFIG_NAME)):
        if args.weights or args.method:
            raise ValueError(f"{args.model} is already quantized; drop --weights / --method")
        tok = None
        if os.path.isfile(os.path.join(args.model, "tokenizer_config.json")):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(args.model)
        return load_quantized(args.model), tok
    if not args.weights:
        raise ValueError("--weights is required unless --model is a save_quantized directory")
    from .export_ct import WEIGHT_FORMATS
    from .fakequant import parse_spec

    spec = parse_spec(args.weights)
    if spec is None or spec.fmt not in WEIGHT_FORMATS:
        raise ValueError(f"--weights {args.weights!r}: export supports {list(WEIGHT_FORMATS)}")
    method = args.method or "rtn"
    model, tok = load(args.model)
    calib = None
    if method != "rtn":
        calib = segments(tok, "train", args.seq_len, args.calib_segments)
    opts = parse_key_values(args.method_option, "--method-option")
    quantize_model(model, weights=args.weights, activations=args.activations, method=method,
                   calibration=calib, method_options=opts)
    return model, tok


def run_export(args: argparse.Namespace) -> int:
    import torch

    from .export_ct import export_compressed_tensors

    model, tok = _load(args)
    report = export_compressed_tensors(
        model, args.out, activations=args.act_mode, tokenizer=tok,
        dtype=None if args.dtype is None else getattr(torch, args.dtype))
    print(f"wrote {report.out_dir}: {report.layers} layers, {report.weights} -> "
          f"{report.ct_format}, input activations "
          f"{'none' if report.input_activations is None else report.input_activations}")
    for note in report.notes:
        print(f"note: {note}")
    return EXIT_OK
