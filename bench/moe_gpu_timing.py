"""Time one restructured (CMoE) FFN layer against the dense SwiGLU FFN on a CUDA GPU.

    python bench/moe_gpu_timing.py --out bench/results/moe_gpu_timing.json
        [--shapes llama2-7b,qwen2.5-72b] [--configs S3A3E8,S1A5E8,S2A2E8,S1A1E8]
        [--tokens 1,8,64,512,2048,4096,8192] [--iters 30] [--no-eager] [--dry-run]

Self-contained (needs only torch >= 2.9 with ``torch.nn.functional.grouped_mm``, or
``torch._grouped_mm``; bfloat16, SM80+). ``--dry-run`` runs the same code on the CPU in float32
with a tiny shape (d = 256, d_h = 1024), token counts 1, 8, 64 and 2 iterations, to check the
script without a GPU (its times mean nothing). Random bfloat16 weights of the real FFN shapes;
the CMoE layer is carved from the same dense weights (neuron order is irrelevant for timing: the
shared part is the first S*m neurons, expert j the next m, its representative its first neuron).

Timed paths, per token count T (CUDA events, median of ``--iters`` after warm-up):
* ``dense``: ``down(silu(x Wg^T) * (x Wu^T))`` with gate and up fused in one matmul;
* ``cmoe``: analytic router (two N_r x d matmuls, |.|, softmax, top-k on score + bias), shared
  SwiGLU, routed experts through two grouped GEMMs (tokens sorted by expert, no host sync), gates,
  per-token sum of the k slots -- the grouped-GEMM path that makes sparsity pay;
* ``eager``: the same with a Python loop over experts (HF "eager" backend; skipped with
  ``--no-eager`` or T > 4096);
* ``ideal``: a dense SwiGLU of the active width (S + A) m, the FLOP-ratio bound.
Before timing, each configuration is checked: cmoe vs eager, and cmoe with every routed expert
active vs dense (relative error, at most ``TOLERANCE[dtype]``; the exit status is 1 otherwise).
S3A3E8 and S1A5E8 are the 25 % routed-sparsity configurations. Prints a table; writes JSON to
``--out`` and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {"llama2-7b": (4096, 11008), "qwen2.5-72b": (8192, 29568)}
"""(d, d_h) of the real FFNs."""
DRY_SHAPES = {"tiny": (256, 1024)}
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    fn = getattr(F, "grouped_mm", None) or torch._grouped_mm
    return fn(a, b, offs=offs)


def parse(config: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"S(\d+)A(\d+)E(\d+)", config)
    if m is None:
        raise SystemExit(f"bad config {config!r} (want SxAyEz)")
    return tuple(int(g) for g in m.groups())


class Layer:
    """Dense weights and the CMoE layer carved from them."""

    def __init__(self, d: int, dh: int, config: str, device: str, dtype: torch.dtype, seed: int):
        g = torch.Generator(device=device).manual_seed(seed)
        self.s, self.a, e = parse(config)
        if dh % e:
            raise SystemExit(f"{config}: {e} experts do not divide {dh}")
        m = dh // e
        self.nr, self.m = e - self.s, m
        wg, wu = (torch.randn(dh, d, generator=g, device=device, dtype=dtype) * d**-0.5
                  for _ in range(2))
        wd = torch.randn(d, dh, generator=g, device=device, dtype=dtype) * dh**-0.5
        self.dense_gu = torch.cat([wg, wu]).contiguous()  # (2 dh, d)
        self.dense_d = wd
        sm = self.s * m
        self.shared_gu = torch.cat([wg[:sm], wu[:sm]]).contiguous()
        self.shared_d = wd[:, :sm].contiguous()
        eg = wg[sm:].reshape(self.nr, m, d)
        eu = wu[sm:].reshape(self.nr, m, d)
        self.exp_gu = torch.cat([eg, eu], dim=1).contiguous()  # (N_r, 2m, d)
        self.exp_d = wd[:, sm:].reshape(d, self.nr, m).permute(1, 0, 2).contiguous()  # (N_r, d, m)
        self.exp_gu_t = self.exp_gu.transpose(-2, -1)  # (N_r, d, 2m) views for grouped_mm
        self.exp_d_t = self.exp_d.transpose(-2, -1)  # (N_r, m, d)
        self.router_g = F.normalize(eg[:, 0].float(), dim=-1)
        self.router_u = F.normalize(eu[:, 0].float(), dim=-1)
        self.bias = torch.zeros(self.nr, device=device)
        self.scale = torch.zeros(self.nr, device=device)
        ideal = (self.s + self.a) * m
        self.ideal_gu = torch.cat([wg[:ideal], wu[:ideal]]).contiguous()
        self.ideal_d = wd[:, :ideal].contiguous()

    @staticmethod
    def swiglu(x, gu, down):
        g, u = (x @ gu.T).chunk(2, dim=-1)
        return (F.silu(g) * u) @ down.T

    def dense(self, x):
        return self.swiglu(x, self.dense_gu, self.dense_d)

    def ideal(self, x):
        return self.swiglu(x, self.ideal_gu, self.ideal_d)

    def route(self, x, k):
        xf = x.float()
        s = ((xf @ self.router_u.T) * F.silu(xf @ self.router_g.T)).abs().softmax(-1)
        idx = (s + self.bias).topk(k, dim=-1).indices
        return idx, 1.0 + s.gather(1, idx) * self.scale[idx]

    def _dispatch(self, x, idx):
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        counts = torch.zeros(self.nr, dtype=torch.int32, device=x.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        return order, counts, x[order // idx.shape[1]]

    def _combine(self, ys, order, gates, t, k):
        y = torch.empty_like(ys)
        y[order] = ys * gates.flatten()[order, None].to(ys.dtype)
        return y.view(t, k, -1).sum(dim=1)

    def cmoe(self, x, k=None):
        k = k or self.a
        out = self.swiglu(x, self.shared_gu, self.shared_d) if self.s else 0
        idx, gates = self.route(x, k)
        order, counts, xs = self._dispatch(x, idx)
        offs = counts.cumsum(0, dtype=torch.int32)
        g, u = grouped_mm(xs, self.exp_gu_t, offs).chunk(2, dim=-1)
        ys = grouped_mm(F.silu(g) * u, self.exp_d_t, offs)
        return out + self._combine(ys, order, gates, x.shape[0], k)

    def eager(self, x, k=None):
        k = k or self.a
        out = self.swiglu(x, self.shared_gu, self.shared_d) if self.s else 0
        idx, gates = self.route(x, k)
        order, counts, xs = self._dispatch(x, idx)
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n:
                ys[start:start + n] = self.swiglu(xs[start:start + n], self.exp_gu[e],
                                                  self.exp_d[e])
            start += n
        return out + self._combine(ys, order, gates, x.shape[0], k)


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def time_ms(fn, x, iters: int) -> float:
    """Median milliseconds of ``fn(x)`` after 3 warm-up calls (CUDA events on a GPU)."""
    cuda = x.is_cuda
    for _ in range(3):
        fn(x)
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = (torch.cuda.Event(enable_timing=True),
                          torch.cuda.Event(enable_timing=True))
            start.record()
            fn(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def write_markdown(path: pathlib.Path, meta: dict, checks: list[dict], rows: list[dict]) -> None:
    lines = [f"CMoE FFN layer vs dense SwiGLU on {meta['device']} ({meta['dtype']}, torch "
             f"{meta['torch']}, median of {meta['iters']}), {meta['date']}.", "",
             f"Command: `{meta['command']}`", "",
             "| shape | config | tokens | dense ms | cmoe ms | eager ms | ideal ms | speedup | "
             "ideal speedup | FLOP ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        eager = "-" if r["eager_ms"] is None else f"{r['eager_ms']:.3f}"
        lines.append(f"| {r['shape']} | {r['config']} | {r['tokens']} | {r['dense_ms']:.3f} | "
                     f"{r['cmoe_ms']:.3f} | {eager} | {r['ideal_ms']:.3f} | {r['speedup']:.3f} | "
                     f"{r['ideal_speedup']:.3f} | {r['flop_ratio']:.3f} |")
    lines += ["", "Checks (relative error): " + "; ".join(
        f"{c['shape']} {c['config']}: cmoe vs eager {c['cmoe_vs_eager']:.1e}, all active vs "
        f"dense {c['all_active_vs_dense']:.1e}" for c in checks)]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--shapes", default="llama2-7b,qwen2.5-72b")
    ap.add_argument("--configs", default="S3A3E8,S1A5E8,S2A2E8,S1A1E8")
    ap.add_argument("--tokens", default="1,8,64,512,2048,4096,8192")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, float32, tiny shape, tokens 1,8,64, 2 iterations")
    args = ap.parse_args()
    shapes = SHAPES
    if args.dry_run:
        dev, dtype, shapes = "cpu", torch.float32, DRY_SHAPES
        args.shapes, args.tokens, args.iters = "tiny", "1,8,64", 2
    elif not torch.cuda.is_available():
        print("needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    else:
        dev, dtype = "cuda", torch.bfloat16
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    unknown = set(args.shapes.split(",")) - set(shapes)
    if unknown:
        print(f"unknown shapes {sorted(unknown)}; known: {sorted(shapes)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows, checks = [], []
    head = (f"{'shape':12} {'config':7} {'T':>6} {'dense ms':>9} {'cmoe ms':>9} {'eager ms':>9} "
            f"{'ideal ms':>9} {'speedup':>8} {'ideal x':>8} {'FLOP ratio':>10}")
    print(head)
    for shape in args.shapes.split(","):
        d, dh = shapes[shape]
        for config in args.configs.split(","):
            layer = Layer(d, dh, config, dev, dtype, args.seed)
            with torch.no_grad():
                x = torch.randn(512, d, device=dev, dtype=dtype)
                chk = {"shape": shape, "config": config,
                       "cmoe_vs_eager": rel_err(layer.cmoe(x), layer.eager(x)),
                       "all_active_vs_dense": rel_err(layer.cmoe(x, layer.nr), layer.dense(x))}
            chk["ok"] = max(chk["cmoe_vs_eager"], chk["all_active_vs_dense"]) <= TOLERANCE[dtype]
            checks.append(chk)
            print(f"# check {shape} {config}: cmoe vs eager {chk['cmoe_vs_eager']:.2e}, all "
                  f"experts active vs dense {chk['all_active_vs_dense']:.2e}")
            e = layer.s + layer.nr
            flop_ratio = ((layer.s + layer.a) / e * 3 * d * dh + 2 * layer.nr * d) / (3 * d * dh)
            for t in (int(v) for v in args.tokens.split(",")):
                x = torch.randn(t, d, device=dev, dtype=dtype)
                with torch.no_grad():
                    dense = time_ms(layer.dense, x, args.iters)
                    cmoe = time_ms(layer.cmoe, x, args.iters)
                    ideal = time_ms(layer.ideal, x, args.iters)
                    eager = (None if args.no_eager or t > 4096
                             else time_ms(layer.eager, x, args.iters))
                row = {"shape": shape, "d": d, "d_h": dh, "config": config, "tokens": t,
                       "dense_ms": dense, "cmoe_ms": cmoe, "eager_ms": eager, "ideal_ms": ideal,
                       "speedup": dense / cmoe, "ideal_speedup": dense / ideal,
                       "flop_ratio": flop_ratio,
                       "dense_tflops": 6 * t * d * dh / dense / 1e9}
                rows.append(row)
                eag = f"{eager:9.3f}" if eager is not None else f"{'-':>9}"
                print(f"{shape:12} {config:7} {t:6d} {dense:9.3f} {cmoe:9.3f} {eag} "
                      f"{ideal:9.3f} {row['speedup']:8.3f} {row['ideal_speedup']:8.3f} "
                      f"{flop_ratio:10.3f}", flush=True)
            del layer
            if dev == "cuda":
                torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name() if dev == "cuda" else
            f"CPU {platform.processor() or platform.machine()} (dry run)",
            "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
            "iters": args.iters, "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(time.perf_counter() - started, 1),
            "grouped_mm": "F.grouped_mm" if hasattr(F, "grouped_mm") else "torch._grouped_mm"}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "checks": checks, "rows": rows}, indent=1))
    write_markdown(out.with_suffix(".md"), meta, checks, rows)
    print(f"wrote {out} and {out.with_suffix('.md')} in {meta['seconds']} s")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
