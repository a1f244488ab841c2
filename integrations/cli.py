"""The ``lowbit`` command line: one ``_add_<name>`` (arguments) and ``_run_<name>`` (action) pair
per subcommand, registered in ``COMMANDS``; add a subcommand by adding a pair there.

    lowbit conformance [--format F ...] [--verbose]
    lowbit verify --format F --input x.npy --codes c.npy [--scales s.npy] [--tensor-scale T]
                  [--micro m.npy] [--axis A] [--scale-rule R] [--rounding R] [--preset P]
                  [-O KEY=VALUE ...] [--max-report N] [--json out.json]
    lowbit golden FORMAT --input x.npy --out vectors.json [--kind block|element] [--axis A]
                  [--scale-rule R] [--rounding R] [--preset P] [-O KEY=VALUE ...]
    lowbit moe convert|finetune|eval ...  (dense -> MoE restructuring, ``cli_moe``)
    lowbit study ptq ...           (PTQ grid on a language model, ``cli_study``)
    lowbit study formats ...       (equal-bits format comparison, ``cli_study_formats``)
    lowbit tts calibrate|pool|plan|run ...  (latency-aware test-time scaling, ``cli_tts``)
    lowbit export ...              (compressed-tensors checkpoint, ``cli_export``)

Imports of the library happen inside the commands, so ``lowbit --help`` stays fast and no
command pulls in torch or transformers unless it needs them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from . import cli_export, cli_moe, cli_study, cli_tts
from .keyvalue import parse_key_values

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, recorded by the studies
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        print(f"lowbit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Bit-exact low-precision number formats: tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(run=run)
    return parser


# -- shared arguments ---------------------------------------------------------------------------


def _add_quantize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axis", type=int, default=None, help="quantized axis (default -1)")
    p.add_argument("--scale-rule", help="MX scale rule (floor, ceil, rceil, even, ...)")
    p.add_argument("--rounding", help="element rounding (nearest_even, nearest_away, ...)")
    p.add_argument("--preset", help="peer preset (MX: torchao, transformer_engine, ...)")
    p.add_argument(
        "-O", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="any other option, VALUE read as JSON where it parses (e.g. -O global_amax=10.0 "
        "-O granularity=group -O group_size=32 -O saturate=true); repeatable",
    )


def _quantize_options(args: argparse.Namespace) -> dict:
    opts = {"axis": args.axis, "scale_rule": args.scale_rule, "rounding": args.rounding,
            "preset": args.preset}
    opts.update(parse_key_values(args.option, "--option"))
    return {k: v for k, v in opts.items() if v is not None}


def _load(path: str):
    import numpy as np

    return np.load(path, allow_pickle=False)


# -- conformance ---------------------------------------------------------------------------------


def _add_conformance(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", action="append", dest="formats", metavar="F",
                   help="check only this format (repeatable; default: every format)")
    p.add_argument("--verbose", "-v", action="store_true", help="print every note")


def _run_conformance(args: argparse.Namespace) -> int:
    from lowbit.numerics.conformance import run_conformance

    reports = run_conformance(args.formats)
    rows = [("format", "kind", "checks", "mismatches", "status")]
    rows += [(r.name, r.kind, str(r.checks), str(r.mismatches), r.status) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 row[3].rjust(widths[3]), row[4]]
        print("  ".join(cells))
    for r in reports:
        for line in r.failures:
            print(f"FAIL {r.name}: {line}")
    notes = [(r.name, n) for r in reports for n in r.notes]
    if args.verbose:
        for name, note in notes:
            print(f"note {name}: {note}")
    elif notes:
        print(f"{len(notes)} note(s) (peer results outside our definitions); -v lists them")
    failed = sum(r.mismatches for r in reports)
    print(f"{sum(r.checks for r in reports)} checks, {failed} mismatches")
    return EXIT_MISMATCH if failed else EXIT_OK


# -- verify --------------------------------------------------------------------------------------


def _add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, help="block format name")
    p.add_argument("--input", required=True, help="the input x (.npy)")
    p.add_argument("--codes", required=True, help="foreign element codes, unpacked (.npy)")
    p.add_argument("--scales", help="foreign per-block scales (.npy)")
    p.add_argument("--tensor-scale", help="foreign tensor (decode) scale: a number, a float32 "
                   "bit pattern 0x..., or a .npy file")
    p.add_argument("--micro", help="foreign HiF4 micro-exponent bits (.npy)")
    _add_quantize_options(p)
    p.add_argument("--max-report", type=int, default=20, metavar="N",
                   help="mismatches listed per kind (default 20)")
    p.add_argument("--json", metavar="OUT", help="also write the full comparison as JSON")
    p.add_argument("--no-candidates", action="store_true",
                   help="skip the search for configurations that reproduce the foreign bits")


def _tensor_scale(text: str | None):
    if text is None:
        return None
    import numpy as np

    if text.lower().startswith("0x"):
        return float(np.array([int(text, 16)], dtype=np.uint32).view(np.float32)[0])
    if text.endswith(".npy"):
        return float(_load(text))
    return float(text)


def _run_verify(args: argparse.Namespace) -> int:
    from lowbit.numerics.compare import compare

    c = compare(
        _load(args.input), _load(args.codes), None if args.scales is None else _load(args.scales),
        args.format, tensor_scale=_tensor_scale(args.tensor_scale),
        micro=None if args.micro is None else _load(args.micro), **_quantize_options(args),
    )
    print(c.summary(max_report=args.max_report, candidates=not args.no_candidates))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(c.to_dict(candidates=not args.no_candidates), fh, indent=1)
    return EXIT_OK if c.ok else EXIT_MISMATCH


# -- golden --------------------------------------------------------------------------------------


def _add_golden(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", metavar="FORMAT", help="block or element format name")
    p.add_argument("--input", required=True, help="the input x (.npy)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--kind", choices=("block", "element"),
                   help="for names that are both (hif8, int8, int4); default block")
    _add_quantize_options(p)


def _run_golden(args: argparse.Namespace) -> int:
    from lowbit.numerics.golden import golden_vectors

    doc = golden_vectors(_load(args.input), args.format, kind=args.kind,
                         **_quantize_options(args))
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1)
    n = len(doc["input_f32_hex"])
    print(f"wrote {args.out}: {doc['kind']} format {args.format}, {n} input values")
    return EXIT_OK


Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {
    "conformance": (_add_conformance, _run_conformance,
                    "check every format against exact arithmetic and the golden vectors"),
    "verify": (_add_verify, _run_verify,
               "compare a foreign kernel's codes and scales with the reference"),
    "golden": (_add_golden, _run_golden, "export golden vectors (JSON) for an input"),
    "moe": (cli_moe.add_moe, cli_moe.run_moe, cli_moe.HELP),
    "study": (cli_study.add_study, cli_study.run_study_cmd, cli_study.HELP),
    "tts": (cli_tts.add_tts, cli_tts.run_tts, cli_tts.HELP),
    "export": (cli_export.add_export, cli_export.run_export, cli_export.HELP),
}

if __name__ == "__main__":
    sys.exit(main())
