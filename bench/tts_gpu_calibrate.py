"""GPU latency calibration for the TTS planner at real model sizes (random weights: timing only).

    python3 bench/tts_gpu_calibrate.py --out-dir $OUT                 # one H200, < 5 min
    python bench/tts_gpu_calibrate.py --out-dir /tmp/cal --tiny       # CPU smoke test

Builds Qwen2.5-shaped ``Qwen2ForCausalLM`` models with random bf16 weights directly on the GPU
(``torch.device("cuda")`` context: no CPU init, no copy): 0.5B (a draft), 3B and 32B (targets).
Times one cached forward of ``tokens`` new tokens per row on a (rows, tokens, context) grid with
the K/V cache filled with random entries (``lowbit.tts.calibrate.time_forwards``; CUDA-synchronised
medians of repeats after warm-up; points whose cache would not fit in 60 % of free memory are
skipped), fits ``lowbit.tts.latency.CostModel`` (NNLS):

    T = a0 + a1*B*s + a2*B*c + a3*max(0, B*s - knee)

and writes ``OUT_DIR/tts_gpu_calibrate.json`` = ``{device, torch, transformers, models: {name:
{shape, param_bytes, kv_bytes_per_token, fit, timings, seconds}}}`` after every model, so a run
cut short keeps what finished. The grid visits rows in an interleaved order (1, 256, 16, 4, ...),
so a per-model time cap (``--max-seconds``) still leaves both ends of the curve. ``--tiny`` runs a
two-layer shape on the CPU in float32 with a small grid (its times mean nothing). Needs torch and
transformers; ``lowbit`` need not be installed (its ``tts`` package is loaded from this checkout).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

QWEN25 = {  # hidden, intermediate, layers, heads, kv heads, vocab (Qwen2.5 model cards)
    "0.5b": (896, 4864, 24, 14, 2, 151936),
    "1.5b": (1536, 8960, 28, 12, 2, 151936),
    "3b": (2048, 11008, 36, 16, 2, 151936),
    "32b": (5120, 27648, 64, 40, 8, 152064),
    "tiny": (64, 128, 2, 4, 2, 1000),
}
ROWS = (1, 256, 16, 4, 64, 2, 128, 8, 32)
TOKENS = (1, 4, 16)
CONTEXTS = (512, 4096)
TINY_GRID = ((1, 8, 2, 4), (1, 4), (16, 64))


def _tts():
    """``lowbit.tts`` (installed, or loaded from this checkout's ``tts/`` without installing)."""
    try:
        import lowbit.tts as tts
        return tts
    except ImportError:
        root = Path(__file__).resolve().parents[1]
        pkg = types.ModuleType("lowbit")
        pkg.__path__ = []
        if sys.modules.get("lowbit") is None:
            sys.modules["lowbit"] = pkg
        spec = importlib.util.spec_from_file_location(
            "lowbit.tts", root / "tts" / "__init__.py",
            submodule_search_locations=[str(root / "tts")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["lowbit.tts"] = mod
        spec.loader.exec_module(mod)
        return mod


def build(name: str, device: str, dtype):
    """A random-weight Qwen2.5-shaped causal LM, initialised on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    h, i, n, a, kv, v = QWEN25[name]
    cfg = Qwen2Config(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                      num_attention_heads=a, num_key_value_heads=kv, vocab_size=v,
                      max_position_embeddings=32768, tie_word_embeddings=name == "0.5b")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True, help="writes tts_gpu_calibrate.json here")
    ap.add_argument("--models", default="0.5b,3b,32b")
    ap.add_argument("--max-seconds", type=float, default=70.0, help="timing cap per model")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny shape")
    args = ap.parse_args(argv)

    import torch
    import transformers

    tts = _tts()
    from lowbit.tts.calibrate import kv_bytes_per_token, time_forwards

    if args.tiny:
        device, dtype, models, (rows, tokens, contexts) = "cpu", torch.float32, ["tiny"], \
            TINY_GRID
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device (use --tiny for a CPU smoke test)")
        device, dtype, models = "cuda", torch.bfloat16, args.models.split(",")
        rows, tokens, contexts = ROWS, TOKENS, CONTEXTS
    unknown = set(models) - set(QWEN25)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {sorted(QWEN25)}")
    out = Path(args.out_dir) / "tts_gpu_calibrate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (--tiny)",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "grid": {"rows": rows, "tokens": tokens, "contexts": contexts}, "models": {}}
    for name in models:
        t0 = time.perf_counter()
        model = build(name, device, dtype)
        t_build = time.perf_counter() - t0
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        free = torch.cuda.mem_get_info()[0] if device == "cuda" else 4e9
        timings = time_forwards(model, rows, tokens, contexts, repeats=args.repeats, warmup=2,
                                prefill=False, max_cache_bytes=0.6 * free,
                                max_seconds=args.max_seconds)
        cost = tts.CostModel.fit(timings, meta={"model": f"qwen2.5-{name} (random {dtype})"})
        result["models"][name] = {
            "shape": dict(zip(("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab"),
                              QWEN25[name], strict=True)),
            "param_bytes": params, "kv_bytes_per_token": kv_bytes_per_token(model),
            "fit": {k: v for k, v in cost.to_dict().items() if k != "timings"},
            "timings": [t.__dict__ for t in timings], "build_s": t_build,
            "seconds": time.perf_counter() - t0}
        print(f"{name}: built in {t_build:.1f} s, {len(timings)} timings; T = {cost.a0:.3g} + "
              f"{cost.a1:.3g}*B*s + {cost.a2:.3g}*B*c + {cost.a3:.3g}*max(0, B*s - "
              f"{cost.knee:g}); median rel. residual {cost.rel_residual:.1%}", flush=True)
        out.write_text(json.dumps(result, indent=1))
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
