"""Drafter and decode-loop calibration on a GPU at Qwen2.5 sizes (random weights: timing only).

    python3 bench/tts_gpu_drafter_calibrate.py --out $OUT/drafter.json          # one H200, ~2 min
    python bench/tts_gpu_drafter_calibrate.py --out /tmp/d.json --tiny          # CPU smoke test

Times ``speculative.CachedModelDrafter.propose`` (``calibrate.time_cached_drafter``) with a
random-weight Qwen2.5-0.5B-shaped draft model, and the plain decode loop (``time_decode``) of
the draft and of a 1.5B-shaped target, on a (rows, history length) grid, in bfloat16 with the
device-synchronised clock. The drafter timings are what ``bench/tts_study.py --recompute
--drafter-calibration OUT`` uses for a study's draft cost; the decode loops show how far this
machine's per-step times are from those measured with the study. Writes
``{device, versions, gamma, rows, contexts, timings, decode: {name: timings}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tts_gpu_calibrate import _tts, build  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", default="1,4,8,16")
    ap.add_argument("--contexts", default="100,356,612", help="history lengths (tokens)")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny shape")
    args = ap.parse_args(argv)

    import torch
    import transformers

    _tts()
    from lowbit.tts.calibrate import synced_clock, time_cached_drafter, time_decode

    if args.tiny:
        device, dtype, draft, target = "cpu", torch.float32, "tiny", "tiny"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device (use --tiny for a CPU smoke test)")
        device, dtype, draft, target = "cuda", torch.bfloat16, "0.5b", "1.5b"
    clock = synced_clock(device)
    rows = [int(x) for x in args.rows.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    t0 = time.perf_counter()
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (--tiny)",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "command": " ".join(sys.argv), "gamma": args.gamma, "rows": rows,
           "contexts": contexts, "draft": f"qwen2.5-{draft} shape, random {dtype}",
           "note": f"random-weight Qwen2.5-{draft}-shaped drafter on {device}", "decode": {}}
    model = build(draft, device, dtype)
    timings = time_cached_drafter(model, rows, contexts, gamma=args.gamma,
                                  iterations=args.iterations, repeats=args.repeats, clock=clock)
    out["timings"] = [t.__dict__ for t in timings]

    def decode(m) -> list[dict]:
        cal = time_decode(m, rows, [0], prompt=contexts, new_tokens=args.iterations,
                          repeats=args.repeats, clock=clock, progress=False)
        return [t.__dict__ for t in cal.target]

    out["decode"][draft] = decode(model)
    del model
    out["decode"][target] = decode(build(target, device, dtype))
    out["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{len(timings)} drafter timings in {out['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
