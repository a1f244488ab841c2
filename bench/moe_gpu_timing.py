"""Time one restructured (CMoE) FFN layer against the dense SwiGLU FFN on a CUDA GPU.

    python bench/moe_gpu_timing.py --out bench/results/moe_gpu_timing.json
        [--shapes llama2-7b,qwen2.5-72b] [--configs S3A3E8,S1A5E8,S2A2E8]
        [--tokens 1,8,64,512,2048,4096,8192] [--iters 20]
        [--impls cmoe,eager,fused,fused_bag,compiled,library,graphed,
        compiled_graphed,padded,loop] [--no-eager]
        [--compile-backend inductor] [--compile-budget 240] [--dry-run]

Self-contained (needs only torch >= 2.9 with ``torch.nn.functional.grouped_mm``, or
``torch._grouped_mm``; bfloat16, SM80+). ``--dry-run`` runs the same code on the CPU in float32
with a tiny shape (d = 256, d_h = 1024), token counts 1, 8, 64 and 2 iterations, to check the
script without a GPU (its times mean nothing; ``graphed`` needs CUDA and ``compiled`` is skipped
because grouped_mm's fake-tensor kernel accepts only bfloat16 -- both recorded as skips).
Random bfloat16 weights of the real FFN shapes; the CMoE layer is carved from the same dense
weights (neuron order is irrelevant for timing: the shared part is the first S*m neurons, expert
j the next m, its representative its first neuron).

Timed paths, per token count T (CUDA events, median of ``--iters`` after warm-up):
* ``dense``: ``down(silu(x Wg^T) * (x Wu^T))`` with gate and up fused in one matmul;
* ``ideal``: a dense SwiGLU of the active width (S + A) m, the FLOP-ratio bound;
* the routed implementations of ``--impls`` (all by default; see ``IMPLS``): ``cmoe`` (the
  unchanged baseline: analytic router, shared SwiGLU, two grouped GEMMs on expert-sorted rows, no
  host sync), ``eager`` (Python loop over experts; T <= 4096 only), ``fused`` (one router matmul,
  gates folded into the hidden, inverse-permutation gather + k-slot sum, shared added in its GEMM
  epilogue), ``fused_bag`` (the gather + sum as one embedding_bag kernel), ``compiled`` (``fused``
  under torch.compile, compiled during warm-up), ``library`` (the library's own module,
  ``lowbit.moe.modules.CMoEBlock`` with ``experts.impl = "fused"``, carved by ``from_dense`` from
  the same weights, compiled like ``compiled``; skipped with the reason recorded when ``lowbit``
  cannot be imported, uncompiled in ``--dry-run``), ``graphed`` (``fused`` replayed from a CUDA
  graph), ``compiled_graphed`` (the compiled forward in a CUDA graph), ``padded``
  (capacity-padded torch.bmm, one host sync) and ``loop`` (``fused`` with cuBLAS per expert, one
  host sync).
Before timing, each configuration is checked for every impl: impl vs eager, and the impl with
every routed expert active vs dense (relative error, at most ``TOLERANCE[dtype]``; the exit
status is 1 otherwise). An impl that raises (e.g. a failed compile or CUDA-graph capture) is
skipped with its error recorded in the JSON, not counted as a failed check. S3A3E8 and S1A5E8 are
the 25 % routed-sparsity configurations. Prints progress lines; writes JSON to ``--out`` and a
Markdown table next to it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import pathlib
import platform
import re
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

SHAPES = {"llama2-7b": (4096, 11008), "qwen2.5-72b": (8192, 29568)}
"""(d, d_h) of the real FFNs."""
DRY_SHAPES = {"tiny": (256, 1024)}
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    fn = getattr(F, "grouped_mm", None) or torch._grouped_mm
    return fn(a, b, offs=offs)


def grouped_mm_bf16_only() -> bool:
    """Whether grouped_mm's meta kernel (used by torch.compile's tracing) rejects float32."""
    try:
        with torch.device("meta"):
            a, b = torch.empty(4, 8), torch.empty(2, 8, 8)
            grouped_mm(a, b, torch.tensor([2, 4], dtype=torch.int32))
    except RuntimeError:
        return True
    return False


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
        self.router_gu = torch.cat([self.router_g, self.router_u]).contiguous()  # (2 N_r, d)
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

    # ---- faster routed paths (same routing, same math up to bf16 rounding / summation order) ----

    def route_fused(self, x, k):
        """``route`` with the two N_r x d router matmuls as one (2 N_r) x d matmul."""
        r = x.float() @ self.router_gu.T
        s = (r[:, self.nr:] * F.silu(r[:, :self.nr])).abs().softmax(-1)
        idx = (s + self.bias).topk(k, dim=-1).indices
        return idx, 1.0 + s.gather(1, idx) * self.scale[idx]

    def _sort(self, x, k):
        """Route, sort the T k (token, slot) pairs by expert (stable), count per expert.

        Returns ``order`` (sorted position -> flat slot), ``inv`` (flat slot -> sorted position,
        an index_put of an arange, no second sort), ``counts`` (int32, no host sync), the flat
        expert ids and the gates in sorted order (x's dtype)."""
        idx, gates = self.route_fused(x, k)
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        counts = torch.zeros(self.nr, dtype=torch.int32, device=x.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel(), device=x.device)
        return order, inv, counts, flat, gates.flatten()[order].to(x.dtype)

    def _finish(self, x, ys, rows, bag):
        """Sum the k expert outputs of each token (``rows``: (T, k) row indices into ``ys``) and
        add the shared expert through the epilogue of its down-projection GEMM (addmm)."""
        if bag:  # gather + k-slot sum in one kernel (fp32 accumulation, deterministic)
            y = F.embedding_bag(rows, ys, mode="sum")
        else:
            y = ys.index_select(0, rows.flatten()).view(*rows.shape, -1).sum(dim=1)
        if self.s:
            g, u = (x @ self.shared_gu.T).chunk(2, dim=-1)
            y = torch.addmm(y, F.silu(g) * u, self.shared_d.T)
        return y

    def _fused(self, x, k, bag):
        t = x.shape[0]
        order, inv, counts, _, gs = self._sort(x, k)
        offs = counts.cumsum(0, dtype=torch.int32)
        g, u = grouped_mm(x.index_select(0, order // k), self.exp_gu_t, offs).chunk(2, dim=-1)
        h = F.silu(g) * u * gs[:, None]  # gate folded into the hidden (width m, not d)
        ys = grouped_mm(h, self.exp_d_t, offs)
        return self._finish(x, ys, inv.view(t, k), bag)

    def fused(self, x, k=None):
        return self._fused(x, k or self.a, bag=False)

    def fused_bag(self, x, k=None):
        return self._fused(x, k or self.a, bag=True)

    def padded(self, x, k=None):
        """Capacity-padded ``torch.bmm`` on (N_r, C, .) buffers; one device-to-host sync for C."""
        k = k or self.a
        t, d = x.shape
        order, inv, counts, flat, gs = self._sort(x, k)
        cap = -(-int(counts.max()) // 128) * 128  # the host sync
        fs = flat[order]
        starts = counts.cumsum(0) - counts
        rows = fs * cap + torch.arange(t * k, device=x.device) - starts[fs]  # sorted -> padded row
        src = torch.zeros(self.nr * cap, dtype=torch.long, device=x.device)  # pad rows: token 0
        src[rows] = order // k
        gp = x.new_zeros(self.nr * cap)
        gp[rows] = gs
        g, u = torch.bmm(x.index_select(0, src).view(self.nr, cap, d),
                          self.exp_gu_t).chunk(2, dim=-1)
        h = F.silu(g) * u * gp.view(self.nr, cap, 1)
        yp = torch.bmm(h, self.exp_d_t).view(self.nr * cap, d)
        return self._finish(x, yp, rows[inv].view(t, k), bag=False)

    def loop(self, x, k=None):
        """``fused`` with one cuBLAS GEMM pair per expert (one host sync for the counts)."""
        k = k or self.a
        t = x.shape[0]
        order, inv, counts, _, gs = self._sort(x, k)
        xs = x.index_select(0, order // k)
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n:
                sl = slice(start, start + n)
                g, u = (xs[sl] @ self.exp_gu[e].T).chunk(2, dim=-1)
                torch.mm(F.silu(g) * u * gs[sl, None], self.exp_d[e].T, out=ys[sl])
            start += n
        return self._finish(x, ys, inv.view(t, k), bag=False)


class Graphed:
    """A CUDA graph per (input shape, k) of ``fn`` (static input/output buffers); calling copies
    the input in and replays. The returned tensor is overwritten by the next call of that key."""

    def __init__(self, fn):
        self.fn, self.cache = fn, {}

    def __call__(self, x, k=None):
        key = (tuple(x.shape), k)
        if key not in self.cache:
            sx = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(sx, k)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                sy = self.fn(sx, k)
            self.cache[key] = (graph, sx, sy)
        graph, sx, sy = self.cache[key]
        sx.copy_(x)
        graph.replay()
        return sy


def import_lowbit_moe() -> tuple[types.ModuleType, str]:
    """``lowbit.moe`` (its ``modules``, ``config`` and ``partition`` loaded) and where it came
    from. When no ``lowbit`` package is installed at all, the repository this script lives in
    (``moe/`` next to ``bench/``) is loaded as ``lowbit.moe``; any other ImportError (e.g. a
    missing ``transformers``) propagates."""
    names = ("config", "partition", "modules")
    try:
        for n in names:
            importlib.import_module(f"lowbit.moe.{n}")
    except ModuleNotFoundError as exc:
        root = pathlib.Path(__file__).resolve().parents[1] / "moe"
        if exc.name != "lowbit" or not (root / "modules.py").is_file():
            raise
        pkg = types.ModuleType("lowbit")
        pkg.__path__ = []
        sys.modules["lowbit"] = pkg
        spec = importlib.util.spec_from_file_location(
            "lowbit.moe", root / "__init__.py", submodule_search_locations=[str(root)])
        moe = importlib.util.module_from_spec(spec)
        sys.modules["lowbit.moe"] = moe
        try:
            spec.loader.exec_module(moe)
            for n in names:
                importlib.import_module(f"lowbit.moe.{n}")
        except BaseException:
            for key in [k for k in sys.modules if k == "lowbit" or k.startswith("lowbit.")]:
                del sys.modules[key]
            raise
    moe = sys.modules["lowbit.moe"]
    return moe, str(pathlib.Path(moe.modules.__file__).resolve())


class LibraryFn:
    """The library's ``CMoEBlock`` (``experts.impl = "fused"``, eval mode) carved from ``layer``'s
    weights: shared part = the first S*m neurons, expert j the next m, its representative its
    first neuron (``Partition`` + ``CMoEBlock.from_dense``; router, balancing bias and gate scales
    copied from ``layer``, so the routing is the same). ``fn(x, k)`` sets ``top_k`` to ``k`` (or
    A) and runs the block, compiled with ``torch.compile(fullgraph=True, dynamic=False)`` when
    ``backend`` is given (``top_k`` is guarded: one compile per (T, k))."""

    def __init__(self, moe: types.ModuleType, layer: Layer, backend: str | None):
        d, dh = layer.dense_d.shape
        dev = layer.dense_d.device
        sm = layer.s * layer.m
        wg, wu = layer.dense_gu[:dh], layer.dense_gu[dh:]
        mlp = types.SimpleNamespace(**{
            n: types.SimpleNamespace(weight=w, bias=None)
            for n, w in (("gate_proj", wg), ("up_proj", wu), ("down_proj", layer.dense_d))})
        with torch.device(dev):  # the block's parameters are allocated on the GPU, not the CPU
            experts = torch.arange(sm, dh).view(layer.nr, layer.m)
            part = moe.partition.Partition(torch.arange(sm), experts, experts[:, 0].clone())
            config = moe.config.MoEConfig(layer.s, layer.a, layer.s + layer.nr)
            block = moe.modules.CMoEBlock.from_dense(mlp, part, config)
        with torch.no_grad():
            block.gate.weight.copy_(layer.router_g)  # already equal (same normalisation)
            block.gate.up_weight.copy_(layer.router_u)
            block.gate.scale.copy_(layer.scale)
            block.gate.e_score_correction_bias.copy_(layer.bias)
        block.experts.impl = "fused"
        block.requires_grad_(False)
        self.block, self.k = block.eval(), layer.a
        self.fn = block if backend is None else torch.compile(
            block, fullgraph=True, dynamic=False, backend=backend)

    def __call__(self, x, k=None):
        self.block.top_k = k or self.k
        return self.fn(x)


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


IMPLS = {
    "cmoe": "baseline: two-matmul float32 router, shared SwiGLU, x rows gathered in expert order, "
            "two grouped_mm, gate multiply over (T k, d), scatter y[order] = ..., k-slot sum, "
            "add of the shared output",
    "eager": "cmoe with a Python loop over experts (cuBLAS per expert, one host sync); timed only "
             "for T <= 4096",
    "fused": "one (2 N_r) x d float32 router matmul; gates folded into the SwiGLU hidden before "
             "the down projection (width m, not d); combine by the inverse permutation, "
             "ys.index_select(0, inv).view(T, k, d).sum(1) (gather, no scatter, deterministic); "
             "shared expert added in the epilogue of its down-projection GEMM (addmm)",
    "fused_bag": "fused with the gather + k-slot sum as one F.embedding_bag(mode='sum') kernel "
                 "(reads ys once, fp32 accumulation, deterministic)",
    "compiled": "fused under torch.compile(fullgraph=True, dynamic=False); compiled per token "
                "count during warm-up, outside the timed region",
    "library": "the library module lowbit.moe.modules.CMoEBlock (experts.impl='fused': two "
               "grouped_mm, gates folded into the hidden, inverse-permutation gather combine, "
               "shared added by addmm, loads counted on the device) carved from the same weights "
               "by CMoEBlock.from_dense, bfloat16, eval mode, under torch.compile(fullgraph=True, "
               "dynamic=False) like compiled (uncompiled in --dry-run); its router keeps two "
               "float32 matmuls and its shared gate/up are two matmuls (separate nn.Linear)",
    "graphed": "fused captured in a CUDA graph per token count (static input/output buffers; a "
               "call is a copy of x into the static input plus a replay); CUDA only",
    "compiled_graphed": "the compiled fused forward (same compiled code, no extra compile) "
                        "captured in a CUDA graph per token count, as torch.compile's "
                        "reduce-overhead mode would; CUDA only",
    "padded": "capacity-padded batched GEMM: rows gathered into (N_r, C, d), C = the largest "
              "expert count rounded up to 128 (one device-to-host sync), two torch.bmm, gates "
              "on the hidden, gather back + k-slot sum, shared added by addmm",
    "loop": "fused with one cuBLAS GEMM pair per expert instead of grouped_mm (one host sync "
            "for the counts), down projection written in place (mm out=)",
}
"""Timed routed-path implementations (``--impls``); ``dense`` and ``ideal`` are always timed."""


def _err_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 600 else text[:600] + " ..."


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def write_markdown(path: pathlib.Path, meta: dict, checks: list[dict], rows: list[dict]) -> None:
    impls = meta["impls"]
    lines = [f"CMoE FFN layer vs dense SwiGLU on {meta['device']} ({meta['dtype']}, torch "
             f"{meta['torch']}, median of {meta['iters']}), {meta['date']}.", "",
             f"Command: `{meta['command']}`", "",
             "| shape | config | tokens | dense ms | ideal ms | "
             + " | ".join(f"{n} ms" for n in impls) + " | ideal x | "
             + " | ".join(f"{n} x" for n in impls) + " | best | FLOP ratio |",
             "|---|---|---:|" + "---:|" * (2 + 2 * len(impls) + 1) + "---|---:|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['config']} | {r['tokens']} | {r['dense_ms']:.3f} | "
            f"{r['ideal_ms']:.3f} | " + " | ".join(_fmt(r.get(f"{n}_ms")) for n in impls)
            + f" | {r['ideal_speedup']:.3f} | "
            + " | ".join(_fmt(r.get(f"{n}_speedup")) for n in impls)
            + f" | {r['best_impl'] or '-'} {_fmt(r['best_speedup'])} | {r['flop_ratio']:.3f} |")
    lines += ["", "Speedups are dense ms / impl ms; best is the fastest timed impl. Impls:", ""]
    lines += [f"* `{n}`: {IMPLS[n]}" for n in impls]
    lines += ["", "Checks (relative error vs eager / with every routed expert active vs dense; "
              f"tolerance {meta['tolerance']:.0e}):", ""]
    for c in checks:
        parts = [f"{n} {_fmt(c.get(f'{n}_vs_eager'), '.1e')} / "
                 f"{_fmt(c.get(f'{n}_all_active_vs_dense'), '.1e')}"
                 for n in impls if n != "eager"]
        lines.append(f"* {c['shape']} {c['config']} ({'ok' if c['ok'] else 'FAILED'}, router "
                     f"mismatch {c['route_mismatch']:.1e}): " + "; ".join(parts))
    if meta["errors"]:
        where: dict[tuple[str, str], list[str]] = {}  # (impl, error) -> places, in order
        for e in meta["errors"]:
            place = f"{e['shape']} {e['config']}" + (f" T={e['tokens']}" if e["tokens"] else "")
            where.setdefault((e["impl"], e["error"]), []).append(place)
        lines += ["", "Errors / skipped:", ""]
        lines += [f"* `{impl}` ({', '.join(places)}): {err}"
                  for (impl, err), places in where.items()]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--shapes", default="llama2-7b,qwen2.5-72b")
    ap.add_argument("--configs", default="S3A3E8,S1A5E8,S2A2E8")
    ap.add_argument("--tokens", default="1,8,64,512,2048,4096,8192")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help=f"comma-separated subset of {','.join(IMPLS)} (cmoe is always timed)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-eager", action="store_true", help="same as leaving eager out of --impls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; eager in --dry-run, which "
                         "checks the fullgraph capture without code generation)")
    ap.add_argument("--compile-budget", type=float, default=240.0,
                    help="seconds of compilation after which `compiled`, `compiled_graphed` and "
                         "`library` are skipped (recorded)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, float32, tiny shape, tokens 1,8,64, 2 iterations")
    args = ap.parse_args()
    shapes = SHAPES
    if args.dry_run:
        dev, dtype, shapes = "cpu", torch.float32, DRY_SHAPES
        args.shapes, args.tokens, args.iters = "tiny", "1,8,64", 2
        torch.set_num_threads(1)  # a light, less noisy check run
        backend = args.compile_backend or "eager"
    elif not torch.cuda.is_available():
        print("needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    else:
        dev, dtype = "cuda", torch.bfloat16
        backend = args.compile_backend or "inductor"
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    unknown = set(args.shapes.split(",")) - set(shapes)
    if unknown:
        print(f"unknown shapes {sorted(unknown)}; known: {sorted(shapes)}", file=sys.stderr)
        return 2
    impls = ["cmoe", *(n for n in args.impls.split(",") if n and n != "cmoe")]
    if set(impls) - set(IMPLS):
        print(f"unknown impls {sorted(set(impls) - set(IMPLS))}; known: {list(IMPLS)}",
              file=sys.stderr)
        return 2
    if args.no_eager and "eager" in impls:
        impls.remove("eager")
    impls = [n for n in IMPLS if n in impls]  # canonical order
    tokens = [int(v) for v in args.tokens.split(",")]
    if {"compiled", "compiled_graphed", "library"} & set(impls):
        for name in ("recompile_limit", "cache_size_limit"):  # one compile per (T, k) per layer
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
    started = time.perf_counter()
    rows, checks, errors = [], [], []
    compile_s = 0.0
    disabled: dict[str, str] = {}  # impl -> reason, for the rest of the run
    for name in ("graphed", "compiled_graphed"):
        if dev != "cuda" and name in impls:
            disabled[name] = "skipped: CUDA graphs need a CUDA device"
    if dtype != torch.bfloat16 and grouped_mm_bf16_only():
        for name in ("compiled", "compiled_graphed"):
            disabled.setdefault(
                name, "skipped: grouped_mm's fake-tensor (meta) kernel accepts only bfloat16, "
                "so torch.compile cannot trace the float32 dry run "
                "(tests/test_moe_gpu_timing_script.py traces it in bfloat16)")
    moe, library_source = None, None
    if "library" in impls:
        try:
            moe, library_source = import_lowbit_moe()
        except Exception as exc:  # noqa: BLE001 -- ImportError and whatever the import raises
            disabled["library"] = f"skipped: lowbit.moe is not importable ({_err_text(exc)})"
    # `library` is compiled like `compiled` on the GPU, and runs uncompiled in the dry run
    library_backend = None if args.dry_run else backend
    compiling = {"compiled", "compiled_graphed"} | ({"library"} if library_backend else set())
    tol = TOLERANCE[dtype]
    print(f"# {len(args.shapes.split(','))} shapes x {len(args.configs.split(','))} configs x "
          f"tokens {tokens}, impls {impls}, {args.iters} iters, {dev} {dtype}", flush=True)
    for shape in args.shapes.split(","):
        d, dh = shapes[shape]
        for config in args.configs.split(","):
            layer = Layer(d, dh, config, dev, dtype, args.seed)
            fns = {"dense": layer.dense, "ideal": layer.ideal}
            compiled = None
            if {"compiled", "compiled_graphed"} & set(impls) - set(disabled):
                torch._dynamo.reset()
                compiled = torch.compile(layer.fused, fullgraph=True, dynamic=False,
                                         backend=backend)
            for name in impls:
                if name in disabled:
                    errors.append({"shape": shape, "config": config, "tokens": None,
                                   "impl": name, "error": disabled[name]})
                elif name == "compiled":
                    fns[name] = compiled
                elif name == "graphed":
                    fns[name] = Graphed(layer.fused)
                elif name == "compiled_graphed":
                    fns[name] = Graphed(compiled)
                elif name == "library":
                    if compiled is None and library_backend is not None:
                        torch._dynamo.reset()
                    try:
                        fns[name] = LibraryFn(moe, layer, library_backend)
                    except Exception as exc:  # noqa: BLE001 -- record and go on
                        errors.append({"shape": shape, "config": config, "tokens": None,
                                       "impl": name, "error": _err_text(exc)})
                        print(f"# {shape} {config} library failed to build: "
                              f"{_err_text(exc)[:300]}", flush=True)
                else:
                    fns[name] = getattr(layer, name)

            def call(name, x, k=None, t=None, shape=shape, config=config, fns=fns):
                """fns[name](x, k); None (and the error recorded, the impl dropped for this
                layer) if it raises; the first call of `compiled` per (T, k) is its compile."""
                nonlocal compile_s
                if name in compiling and compile_s > args.compile_budget:
                    errors.append({"shape": shape, "config": config, "tokens": t, "impl": name,
                                   "error": f"skipped: compile budget {args.compile_budget} s "
                                            f"spent"})
                    del fns[name]
                    return None
                if name == "compiled_graphed" and "compiled" in impls and "compiled" not in fns:
                    errors.append({"shape": shape, "config": config, "tokens": t, "impl": name,
                                   "error": "skipped: compiled failed or was skipped"})
                    del fns[name]
                    return None
                t0 = time.perf_counter()
                try:
                    out = fns[name](x, k)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                except Exception as exc:  # noqa: BLE001 -- record and go on
                    errors.append({"shape": shape, "config": config, "tokens": t, "impl": name,
                                   "error": _err_text(exc)})
                    print(f"# {shape} {config} T={t} {name} failed: {_err_text(exc)[:300]}",
                          flush=True)
                    del fns[name]
                    if name in ("graphed", "compiled_graphed"):  # fails once, fails everywhere
                        disabled[name] = f"disabled after an earlier failure: {_err_text(exc)}"
                    return None
                if name in compiling:
                    compile_s += time.perf_counter() - t0
                return out

            with torch.no_grad():
                x = torch.randn(512, d, device=dev, dtype=dtype)
                ref, dense_ref = layer.eager(x), layer.dense(x)
                chk = {"shape": shape, "config": config}
                idx_a = layer.route(x, layer.a)[0].sort(dim=1).values
                idx_b = layer.route_fused(x, layer.a)[0].sort(dim=1).values
                chk["route_mismatch"] = float((idx_a != idx_b).any(dim=1).float().mean())
                for name in impls:
                    if name == "eager" or name not in fns:
                        continue
                    y = call(name, x, None, 512)
                    chk[f"{name}_vs_eager"] = None if y is None else rel_err(y, ref)
                    y = call(name, x, layer.nr, 512) if name in fns else None
                    chk[f"{name}_all_active_vs_dense"] = None if y is None else rel_err(
                        y, dense_ref)
            chk["cmoe_vs_eager"] = chk.get("cmoe_vs_eager")
            chk["all_active_vs_dense"] = chk.get("cmoe_all_active_vs_dense")
            errs = [v for key, v in chk.items()
                    if key.endswith(("_vs_eager", "_vs_dense")) and v is not None]
            chk["ok"] = bool(errs) and max(errs) <= tol and chk["cmoe_vs_eager"] is not None
            checks.append(chk)
            print(f"# check {shape} {config} ({'ok' if chk['ok'] else 'FAILED'}): router "
                  f"mismatch {chk['route_mismatch']:.1e}; vs eager / all active vs dense: "
                  + ", ".join(f"{n} {_fmt(chk.get(f'{n}_vs_eager'), '.1e')}/"
                              f"{_fmt(chk.get(f'{n}_all_active_vs_dense'), '.1e')}"
                              for n in impls if n != "eager"), flush=True)
            e = layer.s + layer.nr
            flop_ratio = ((layer.s + layer.a) / e * 3 * d * dh + 2 * layer.nr * d) / (3 * d * dh)
            for t in tokens:
                x = torch.randn(t, d, device=dev, dtype=dtype)
                row = {"shape": shape, "d": d, "d_h": dh, "config": config, "tokens": t}
                with torch.no_grad():
                    for name in ("dense", "ideal", *impls):
                        ms = None
                        if name in fns and not (name == "eager" and t > 4096):
                            if name in compiling and call(name, x, None, t) is None:
                                pass  # compile/capture failed or budget spent (recorded)
                            else:
                                try:
                                    ms = time_ms(fns[name], x, args.iters)
                                except Exception as exc:  # noqa: BLE001
                                    errors.append({"shape": shape, "config": config,
                                                   "tokens": t, "impl": name,
                                                   "error": _err_text(exc)})
                        row[f"{name}_ms"] = ms
                    for name in ("graphed", "compiled_graphed"):
                        if name in fns:
                            fns[name].cache.clear()  # free the graph pools of this T
                dense = row["dense_ms"]
                for name in ("ideal", *impls):
                    ms = row[f"{name}_ms"]
                    row[f"{name}_speedup"] = None if ms is None else dense / ms
                row["speedup"] = row["cmoe_speedup"]  # the old key
                timed = {n: row[f"{n}_ms"] for n in impls if row[f"{n}_ms"] is not None}
                row["best_impl"] = min(timed, key=timed.get) if timed else None
                row["best_speedup"] = dense / timed[row["best_impl"]] if timed else None
                row["flop_ratio"] = flop_ratio
                row["dense_tflops"] = 6 * t * d * dh / dense / 1e9
                rows.append(row)
                print(f"{shape} {config} T={t}: dense {dense:.3f} ideal {row['ideal_ms']:.3f} | "
                      + " ".join(f"{n} {_fmt(row[f'{n}_ms'])}" for n in impls)
                      + f" | best {row['best_impl']} x{_fmt(row['best_speedup'])} (ideal "
                      f"x{row['ideal_speedup']:.3f}) [{time.perf_counter() - started:.0f} s, "
                      f"{compile_s:.0f} s compiling]",
                      flush=True)
            del layer, fns
            if dev == "cuda":
                torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name() if dev == "cuda" else
            f"CPU {platform.processor() or platform.machine()} (dry run)",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "dtype": str(dtype).removeprefix("torch."),
            "iters": args.iters, "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(time.perf_counter() - started, 1),
            "grouped_mm": "F.grouped_mm" if hasattr(F, "grouped_mm") else "torch._grouped_mm",
            "impls": impls, "impl_descriptions": {n: IMPLS[n] for n in impls},
            "compile_backend": backend if {"compiled", "library"} & set(impls) else None,
            "library": None if "library" not in impls else {
                "source": library_source, "compiled": "library" in compiling,
                "skipped": disabled.get("library")},
            "compile_seconds": round(compile_s, 1), "tolerance": tol, "errors": errors,
            "timing": "median of --iters CUDA-event intervals after 3 warm-up calls (the first "
                      "compiled call per token count is its compile and is not timed)"}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "checks": checks, "rows": rows}, indent=1))
    write_markdown(out.with_suffix(".md"), meta, checks, rows)
    print(f"wrote {out} and {out.with_suffix('.md')} in {meta['seconds']} s "
          f"({meta['compile_seconds']} s compiling, {len(errors)} errors/skips)", flush=True)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
