"""CPU throughput of the numba backend next to numpy's copy and the fastest PyPI peer.

One run, one 2**24-element float32 input (4096 x 4096, standard normal, seed 0): for every
format, quantize and dequantize throughput in Melem/s (best of ``--repeat`` wall-clock runs
after a warm-up), as ratios to

* numpy's ``x.copy()`` of the same array (allocation included, as in quantize): the
  memory-bandwidth yardstick, timed again with every format, its runs interleaved with the
  kernel's (best of ``--repeat`` each) so that each ratio compares runs under the same load;
* the fastest peer on PyPI doing the same job on CPU: torchao ``to_mx`` / ``to_dtype`` (MX),
  ``nvfp4_quantize`` (NVFP4), numpy + ml_dtypes / en_dtypes ``astype`` (element casts), numpy
  absmax arithmetic (INT8/INT4); torch uses ``--threads`` threads like numba.

Also the peak traced memory of quantize (tracemalloc) against output + input sizes, and for
the MX 4-bit format the fused quantize-to-packed path (``kernels.fused.quantize_packed``).

    python bench/cpu_throughput.py [--repeat 5] [--threads 2] [--out bench/results/cpu_throughput]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np

N_ROWS = N_COLS = 4096
TARGETS = {"mxfp4", "nvfp4", "mxfp8_e4m3", "hif4"}
BLOCK_FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8",
                 "nvfp4", "hif4", "int8", "int4", "hif8"]
ELEMENT_CASTS = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2", "e3m2": "float6_e3m2fn",
                 "e2m3": "float6_e2m3fn", "e2m1": "float4_e2m1fn", "e8m0": "float8_e8m0fnu",
                 "hif8": "hifloat8"}


def best_time(fn, repeat: int) -> float:
    return best_times([fn], repeat)[0]


def best_times(fns, repeat: int) -> list[float]:
    """Best wall-clock seconds of each of ``fns`` after a warm-up, the runs interleaved (one of
    each per round) so that all of them see the same machine load."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for j, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - t)
    return best


def torch_peers(x: np.ndarray, threads: int) -> dict:
    """{format: (quantize fn, dequantize fn or None)} of torchao on CPU tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from torchao.prototype.mx_formats import constants
        from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import (
            nvfp4_quantize,
            per_tensor_amax_to_scale,
        )
    torch.set_num_threads(threads)
    t = torch.from_numpy(x)
    elem = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2,
            "mxfp6_e3m2": constants.DTYPE_FP6_E3M2, "mxfp6_e2m3": constants.DTYPE_FP6_E2M3,
            "mxfp4": torch.float4_e2m1fn_x2}
    peers = {}
    for fmt, dt in elem.items():
        def q(dt=dt):
            return to_mx(t, dt, 32)
        scale, data = q()

        def dq(dt=dt, scale=scale, data=data):
            return to_dtype(data, scale, dt, 32, torch.float32)
        peers[fmt] = (f"torchao {torch_version()} to_mx", q, "torchao to_dtype", dq)

    def nq():
        return nvfp4_quantize(t, 16, per_tensor_amax_to_scale(torch.max(torch.abs(t))))
    peers["nvfp4"] = (f"torchao {torch_version()} nvfp4_quantize", nq, None, None)
    return peers


def torch_version() -> str:
    import torchao

    return torchao.__version__


def numpy_peers(x: np.ndarray) -> dict:
    """numpy (+ ml_dtypes / en_dtypes) versions of the element casts and the absmax INT path."""
    import en_dtypes
    import ml_dtypes

    peers = {}
    for name, dt in ELEMENT_CASTS.items():
        dtype = getattr(en_dtypes if dt == "hifloat8" else ml_dtypes, dt)
        lib = "en_dtypes" if dt == "hifloat8" else "ml_dtypes"
        y = x.astype(dtype)
        peers[name] = (f"numpy+{lib} astype", lambda dtype=dtype: x.astype(dtype),
                       f"numpy+{lib} astype", lambda y=y: y.astype(np.float32))

    def absmax(target):
        def q():
            s = np.max(np.abs(x), axis=-1, keepdims=True) / np.float32(target)
            return np.clip(np.rint(x / s), -target, target).astype(np.int8), s
        return q
    for fmt, target in (("int8", 127), ("int4", 7)):
        codes, s = absmax(target)()
        peers[fmt] = ("numpy absmax/rint/clip", absmax(target), "numpy codes * scale",
                      lambda c=codes, s=s: c.astype(np.float32) * s)
    return peers


def peak_memory(fn) -> int:
    tracemalloc.start()
    r = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del r
    return peak


def machine() -> dict:
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict:
    import ml_dtypes
    import numba
    import torch
    import torchao

    return {"python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "ml_dtypes": ml_dtypes.__version__,
            "torch": torch.__version__, "torchao": torchao.__version__}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)

    import numba

    from lowbit import numerics as ln

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    x = np.random.default_rng(0).standard_normal((N_ROWS, N_COLS)).astype(np.float32)
    n = x.size
    load_before = os.getloadavg()
    copy_rate = n / best_time(x.copy, args.repeat) / 1e6
    from lowbit.kernels.fused import quantize_packed
    peers = {**torch_peers(x, args.threads), **numpy_peers(x)}
    rows = []
    jobs = [(f, "block") for f in BLOCK_FORMATS] + [(f, "element") for f in ELEMENT_CASTS]
    xs = x[: N_ROWS // 16]  # the reference backend runs on 1/16 of the input (it is slow)
    for fmt, kind in jobs:
        if kind == "block":
            def q(fmt=fmt):
                return ln.quantize(x, fmt, backend="numba")
            qt = q()

            def dq(qt=qt):
                return ln.dequantize(qt, backend="numba")
            out_bytes = sum(a.nbytes for a in (qt.codes, qt.scales, qt.micro) if a is not None)
        else:
            def q(fmt=fmt):
                return ln.encode(x, fmt, backend="numba")
            codes = q()
            lut = ln.element_format(fmt).values.astype(np.float32)

            def dq(codes=codes, lut=lut):
                from lowbit.kernels.elementwise import lookup
                return lookup(codes, lut, np.float32)
            out_bytes = codes.nbytes
        q_rate, dq_rate, local_copy = (n / t / 1e6 for t in best_times([q, dq, x.copy],
                                                                       args.repeat))
        packed_rate = n / best_time(lambda fmt=fmt: quantize_packed(x, fmt), args.repeat) / 1e6 \
            if fmt == "mxfp4" else None
        peak = peak_memory(q)
        ref_fn = ln.quantize if kind == "block" else ln.encode
        ref_rate = xs.size / best_time(
            lambda fmt=fmt, fn=ref_fn: fn(xs, fmt, backend="reference"), 1) / 1e6
        peer_name, peer_q, dpeer_name, peer_dq = peers.get(fmt, (None, None, None, None))
        peer_rate = n / best_time(peer_q, args.repeat) / 1e6 if peer_q else None
        dpeer_rate = n / best_time(peer_dq, args.repeat) / 1e6 if peer_dq else None
        rows.append({
            "format": fmt, "kind": kind, "quantize_melem_s": q_rate,
            "dequantize_melem_s": dq_rate, "copy_melem_s": local_copy,
            "quantize_vs_copy": q_rate / local_copy, "dequantize_vs_copy": dq_rate / local_copy,
            "quantize_packed_melem_s": packed_rate, "peer": peer_name,
            "peer_quantize_melem_s": peer_rate,
            "quantize_vs_peer": q_rate / peer_rate if peer_rate else None,
            "dequantize_peer": dpeer_name, "peer_dequantize_melem_s": dpeer_rate,
            "dequantize_vs_peer": dq_rate / dpeer_rate if dpeer_rate else None,
            "reference_quantize_melem_s": ref_rate, "peak_bytes": peak,
            "output_bytes": out_bytes, "input_bytes": x.nbytes,
            "target": fmt in TARGETS and kind == "block",
        })
        print_row(rows[-1])
    result = {
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) if argv is None
        else "cpu_throughput.main", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "elements": n, "threads": args.threads, "repeat": args.repeat,
        "numpy_copy_melem_s": copy_rate, "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "machine": machine(), "versions": versions(),
        "rows": rows,
    }
    print(f"numpy copy: {copy_rate:.0f} Melem/s; load average {load_before} -> "
          f"{result['loadavg_after']}")
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(result))
    return result


def _fmt(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_row(r: dict) -> None:
    print(f"{r['format']:>11} {r['kind']:>7}  q {r['quantize_melem_s']:7.0f} Melem/s "
          f"({r['quantize_vs_copy']:.2f}x copy, {_fmt(r['quantize_vs_peer'])}x peer)  "
          f"dq {r['dequantize_melem_s']:7.0f} ({r['dequantize_vs_copy']:.2f}x copy)  "
          f"copy {r['copy_melem_s']:5.0f}  "
          f"peak {r['peak_bytes'] / 2**20:.0f} MiB", flush=True)


def markdown(res: dict) -> str:
    m = res["machine"]
    v = res["versions"]
    lines = [
        "# CPU throughput of the numba backend",
        "",
        f"- command: `{res['command']}` (from the repository root)",
        f"- date: {res['date']}; machine: {m['cpu']}, {m['cores']} cores ({m['platform']})",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- input: {res['elements']} float32 (4096 x 4096, standard normal), {res['threads']} "
        f"threads (numba and torch), best of {res['repeat']} runs",
        f"- numpy `x.copy()`: {res['numpy_copy_melem_s']:.0f} Melem/s at the start, and timed "
        "again next to each format (column `copy`: the yardstick of that row's ratios); load "
        f"average before/after: {res['loadavg_before']} / {res['loadavg_after']}",
        "",
        "| format | copy Melem/s | quantize Melem/s | x copy | peer | peer Melem/s | x peer | "
        "dequantize Melem/s | x copy | x peer | reference backend Melem/s | peak / (out + in) | "
        "peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        name = f"**{r['format']}**" if r["target"] else r["format"]
        if r["kind"] == "element":
            name += " (cast)"
        mem = r["peak_bytes"] / (r["output_bytes"] + r["input_bytes"])
        lines.append(
            f"| {name} | {r['copy_melem_s']:.0f} | {r['quantize_melem_s']:.0f} | "
            f"{r['quantize_vs_copy']:.2f} | "
            f"{r['peer'] or 'none on PyPI'} | {_fmt(r['peer_quantize_melem_s'], '.0f')} | "
            f"{_fmt(r['quantize_vs_peer'])} | {r['dequantize_melem_s']:.0f} | "
            f"{r['dequantize_vs_copy']:.2f} | {_fmt(r['dequantize_vs_peer'])} | "
            f"{r['reference_quantize_melem_s']:.1f} | {mem:.2f} | "
            f"{r['peak_bytes'] / 2**20:.1f} |")
    lines += ["", "Targets (issue): quantize of mxfp4, nvfp4, mxfp8 and hif4 at >= 0.3x the "
              "numpy-copy element rate and >= 5x the fastest peer; dequantize >= 0.5x copy.", ""]
    for r in res["rows"]:
        if not r["target"]:
            continue
        q_copy, q_peer = r["quantize_vs_copy"], r["quantize_vs_peer"]
        dq = r["dequantize_vs_copy"]
        peer = "no PyPI peer" if q_peer is None else \
            f"{q_peer:.1f}x peer ({'met' if q_peer >= 5 else 'NOT met'})"
        lines.append(f"- {r['format']}: quantize {q_copy:.2f}x copy "
                     f"({'met' if q_copy >= 0.3 else 'NOT met'}), {peer}; dequantize "
                     f"{dq:.2f}x copy ({'met' if dq >= 0.5 else 'NOT met'})")
    for r in res["rows"]:
        if r.get("quantize_packed_melem_s"):
            lines.append(f"- {r['format']} fused quantize-to-packed: "
                         f"{r['quantize_packed_melem_s']:.0f} Melem/s "
                         f"({r['quantize_packed_melem_s'] / r['copy_melem_s']:.2f}x copy)")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--render":  # re-render OUT.md from OUT.json
        with open(sys.argv[2] + ".json") as f:
            res = json.load(f)
        with open(sys.argv[2] + ".md", "w") as f:
            f.write(markdown(res))
    else:
        main()
