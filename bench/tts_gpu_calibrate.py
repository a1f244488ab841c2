"""GPU latency calibration for the TTS planner at real model sizes (random weights: timing only).

    python bench/tts_gpu_calibrate.py OUT.json [--models 0.5b,3b,32b] [--max-seconds 150]
    python bench/tts_gpu_calibrate.py /tmp/smoke.json --models tiny --device cpu   # smoke test

Builds Qwen2.5-shaped ``Qwen2ForCausalLM`` models with random bf16 weights on the GPU (0.5B as a
draft, 3B- and 32B-class targets), times one cached forward on a (rows, tokens per row, context)
grid with the K/V cache filled with random entries, fits ``lowbit.tts.latency.CostModel`` (NNLS)
and writes ``{model: {config, param_bytes, kv_bytes_per_token, fit, timings}}`` to OUT.json after
every model (a run cut short keeps what finished). Needs torch with CUDA and transformers.
"""

from __future__ import annotations

import argparse
import json
import time

QWEN25 = {  # hidden, intermediate, layers, heads, kv heads, vocab (Qwen2.5 model cards)
    "0.5b": (896, 4864, 24, 14, 2, 151936),
    "3b": (2048, 11008, 36, 16, 2, 151936),
    "32b": (5120, 27648, 64, 40, 8, 152064),
    "tiny": (64, 128, 2, 4, 2, 1000),  # smoke test (--device cpu)
}
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKENS = (1, 4, 16)
CONTEXTS = (512, 4096)


def build(name: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    h, i, n, a, kv, v = QWEN25[name]
    cfg = Qwen2Config(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                      num_attention_heads=a, num_key_value_heads=kv, vocab_size=v,
                      max_position_embeddings=32768, tie_word_embeddings=name == "0.5b")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def main() -> None:
    import torch

    from lowbit.tts.calibrate import kv_bytes_per_token, time_forwards
    from lowbit.tts.latency import CostModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--models", default="0.5b,3b,32b")
    ap.add_argument("--max-seconds", type=float, default=150.0, help="timing budget per model")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    result = {"device": torch.cuda.get_device_name() if cuda else args.device,
              "torch": torch.__version__}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        model = build(name, args.device)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        free = torch.cuda.mem_get_info()[0] if cuda else 4e9
        timings = time_forwards(model, ROWS, TOKENS, CONTEXTS, repeats=args.repeats, warmup=2,
                                prefill=False, max_cache_bytes=0.6 * free,
                                max_seconds=args.max_seconds)
        cost = CostModel.fit(timings, meta={"model": f"qwen2.5-{name} (random bf16)"})
        result[name] = {"config": model.config.to_dict(), "param_bytes": params,
                        "kv_bytes_per_token": kv_bytes_per_token(model),
                        "fit": {k: v for k, v in cost.to_dict().items() if k != "timings"},
                        "timings": [t.__dict__ for t in timings],
                        "seconds": time.perf_counter() - t0}
        print(f"{name}: {len(timings)} timings, T = {cost.a0:.3g} + {cost.a1:.3g}*B*s + "
              f"{cost.a2:.3g}*B*c + {cost.a3:.3g}*max(0, B*s - {cost.knee:g}); median rel. "
              f"residual {cost.rel_residual:.1%}", flush=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
        del model
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
