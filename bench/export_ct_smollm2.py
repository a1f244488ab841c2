"""Export SmolLM2-135M (RTN, weights only) in nvfp4 / mxfp4 / mxfp8_e4m3 as compressed-tensors
checkpoints, reload each with compressed-tensors (transformers ``CompressedTensorsConfig(
dequantize=True)``) and count weights that differ from lowbit's, bit for bit.

compressed-tensors' NVFP4 and MX decompressors return bfloat16, so lowbit's float32 weights are
compared after rounding to bfloat16 (exact for MX: e2m1/e4m3 times a power of two fits).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/export_ct_smollm2.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import warnings
from datetime import datetime, timezone

import torch
import transformers

from lowbit.integrations.data import load_model
from lowbit.integrations.export_ct import export_compressed_tensors
from lowbit.integrations.model import quant_linears, quantize_model

FORMATS = ("nvfp4", "mxfp4", "mxfp8_e4m3")
OUT = os.path.join(os.path.dirname(__file__), "results", "export_ct_smollm2")
READING = (
    "Reading: the stored codes, block scales and global scales are lowbit's bit for bit "
    "(tests/test_export_ct.py). MX weights decode to e2m1/e4m3 times a power of two, exact in "
    "bfloat16, so compressed-tensors reproduces every lowbit weight. NVFP4 decodes to "
    "``bf16(fl32(e2m1 * fl32(S_b / G)))`` in compressed-tensors against lowbit's exact "
    "``e2m1 * S_b * ts``: with a tensor scale that is not a power of two, the float32 rounding "
    "of ``S_b / G`` moves a few products across a bfloat16 rounding boundary (one ulp; the same "
    "(code, scale) pairs in a whole tensor, hence 0.17 % rather than ~2^-15). With a power-of-two "
    "tensor scale (``nvfp4:global_amax=2688*2**k``) the chain is exact (tested).")


def measure(fmt: str) -> dict:
    model, _ = load_model()
    t0 = time.time()
    quantize_model(model, weights=fmt, progress=True)
    t1 = time.time()
    with tempfile.TemporaryDirectory() as d:
        export_compressed_tensors(model, d, progress=True)
        t2 = time.time()
        size = os.path.getsize(os.path.join(d, "model.safetensors"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ct = transformers.AutoModelForCausalLM.from_pretrained(
                d, quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
        t3 = time.time()
    params = dict(ct.named_parameters())
    n = exact_f32 = exact_bf16 = 0
    for name, q in quant_linears(model).items():
        ours = q.dense_weight()
        theirs = params[name + ".weight"].detach().float()
        n += ours.numel()
        exact_f32 += int((ours.view(torch.int32) == theirs.view(torch.int32)).sum())
        ours16 = ours.to(torch.bfloat16).float()
        exact_bf16 += int((ours16.view(torch.int32) == theirs.view(torch.int32)).sum())
    return {"format": fmt, "weights": n, "bit_exact_vs_lowbit_f32": exact_f32,
            "bit_exact_vs_lowbit_bf16": exact_bf16, "checkpoint_bytes": size,
            "quantize_s": round(t1 - t0, 1), "export_s": round(t2 - t1, 1),
            "ct_reload_s": round(t3 - t2, 1)}


def main() -> None:
    torch.set_num_threads(1)
    rows = [measure(f) for f in FORMATS]
    import compressed_tensors

    doc = {"command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/export_ct_smollm2.py",
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), "
                      f"{platform.platform()}",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "compressed_tensors": compressed_tensors.__version__,
                        "python": platform.python_version()},
           "rows": rows}
    with open(OUT + ".json", "w") as fh:
        json.dump(doc, fh, indent=1)
    lines = ["# compressed-tensors export of SmolLM2-135M (RTN, weights only)", "",
             f"`{doc['command']}`; {doc['date']}; {doc['machine']}; {doc['versions']}.", "",
             "Reloaded with compressed-tensors' own decompression (bfloat16 output); counts of "
             "quantized-linear weights equal bit for bit to lowbit's.", "",
             "| format | weights | = lowbit f32 | = lowbit bf16 | checkpoint MB | quantize s |"
             " export s | CT reload s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['weights']} | {r['bit_exact_vs_lowbit_f32']} | "
                     f"{r['bit_exact_vs_lowbit_bf16']} | {r['checkpoint_bytes'] / 1e6:.1f} | "
                     f"{r['quantize_s']} | {r['export_s']} | {r['ct_reload_s']} |")
    lines += ["", READING]
    with open(OUT + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
