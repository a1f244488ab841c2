#!/usr/bin/env python3
"""Check the CuPy GPU kernels against the reference bit for bit, then benchmark them.

    python bench/gpu_check.py                # checks (every format and option) + benchmark
    python bench/gpu_check.py --quick        # a few checks, small benchmark (smoke test)
    python bench/gpu_check.py --no-bench     # checks only

Checks: for every block format, input dtype (float16/bfloat16/float32/float64, CuPy arrays and
torch CUDA tensors), aligned and padded shapes, axis -1 and 0, and the options (scale rules,
roundings incl. stochastic, presets, pre-scale, NVFP4 algorithms and global amax, HiF4 options,
INT/HiF8 granularities), randomized and edge-case inputs: codes, scales, micro bits, tensor
scales, dequantized values in four dtypes, packed bytes (fused and separate, linear and swizzled
scales), element casts of every element format; mismatch counts per format (must be 0).

Benchmark: 1 GiB inputs (bf16 and fp32) on the device: quantize (codes + scales), fused
quantize+pack and dequantize, as bytes read + written per second over a device-to-device copy
measured in the same run; torchao's ``to_mx`` / ``nvfp4_quantize`` eager and torch.compile'd
on the same inputs. Writes gpu_results.json / gpu_results.md to $OUT (or --out).
"""

# ruff: noqa: B023  (the timed closures run inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections import defaultdict

import ml_dtypes  # noqa: E402
import numpy as np

from lowbit import numerics as ln  # noqa: E402
from lowbit.kernels import cupy_api as ca  # noqa: E402
from lowbit.kernels import cupy_core as cc  # noqa: E402
from lowbit.numerics.specs import ELEMENT_FORMATS  # noqa: E402

BF16 = ml_dtypes.bfloat16
DTYPES = {"float32": np.float32, "bfloat16": BF16, "float16": np.float16, "float64": np.float64}

# -- helpers ---------------------------------------------------------------------------------------


def to_dev(x: np.ndarray, via: str = "cupy"):
    import cupy as cp
    import torch

    if x.dtype == BF16 or via == "torch":
        if x.dtype == BF16:
            t = torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).cuda().view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        return t
    return cp.asarray(x)


def host(a):
    if a is None:
        return None
    if cc.is_torch(a):
        import torch

        t = a.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(BF16)
        return t.numpy()
    if cc.is_cupy(a):
        return a.get()
    return np.asarray(a)


def mismatches(ref, got) -> int:
    """Elements whose bits differ (NaN equals NaN); shape mismatch counts everything."""
    if ref is None or got is None:
        return 0 if ref is None and got is None else 1
    r, g = np.asarray(ref), np.asarray(got)
    if r.dtype == BF16 and g.dtype == np.uint16:  # cupy callers get bfloat16 as uint16 bits
        g = g.view(BF16)
    if r.shape != g.shape:
        return max(r.size, g.size, 1)
    if r.dtype.kind == "f" or r.dtype == BF16:
        rf = r.astype(np.float64)
        gf = g.astype(np.float64)
        nan = np.isnan(rf) & np.isnan(gf)
        w = {2: np.uint16, 4: np.uint32, 8: np.uint64}[r.dtype.itemsize]
        same = (r.view(w) == np.asarray(g, dtype=r.dtype).view(w)) | nan
        return int((~same).sum())
    return int((r.astype(np.int64) != g.astype(np.int64)).sum())


class Tally:
    def __init__(self):
        self.checks = defaultdict(int)
        self.mism = defaultdict(int)
        self.errors = defaultdict(list)
        self.skipped = False

    def add(self, fmt, n):
        self.checks[fmt] += 1
        self.mism[fmt] += n

    def err(self, fmt, msg):
        self.checks[fmt] += 1
        self.mism[fmt] += 1
        self.errors[fmt].append(msg)


T = Tally()
T0 = time.time()


def data(rng, shape, dtype, kind="normal", fmt=None):
    """float64 test data, then cast to ``dtype``."""
    n = int(np.prod(shape))
    if kind == "normal":
        x = rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, n // 8 + 1).repeat(8)[:n])
    elif kind == "grid":  # format grid points and midpoints times a per-block power of two
        spec = ln.block_format(fmt).element
        v = spec.values[np.isfinite(spec.values)]
        pts = np.unique(np.abs(v))
        cand = np.concatenate([pts, (pts[1:] + pts[:-1]) / 2])
        x = rng.choice(cand, n) * rng.choice([-1, 1], n)
        x = x * np.exp2(rng.integers(-6, 6, n // 16 + 1).repeat(16)[:n])
        x[::16] = spec.max * np.sign(x[::16] + 0.5)
    elif kind == "edge":
        x = rng.standard_normal(n) * np.exp2(rng.integers(-140, 120, n))
        x[rng.random(n) < 0.05] = 0.0
        x[rng.random(n) < 0.02] = -0.0
        x[:: 97] = 2.0 ** -140
    else:
        raise ValueError(kind)
    x = x.reshape(shape)
    with np.errstate(over="ignore"):
        return x.astype(DTYPES[dtype]) if dtype != "bfloat16" else x.astype(BF16)


def poison_specials(x, rng, frac=0.01):
    """Sprinkle NaN / Inf into a float array (a copy)."""
    y = np.array(x, copy=True)
    flat = y.reshape(-1)
    idx = rng.choice(flat.size, max(1, int(flat.size * frac)), replace=False)
    vals = np.array([np.nan, np.inf, -np.inf], dtype=np.float64)[rng.integers(0, 3, idx.size)]
    flat[idx] = vals.astype(flat.dtype)
    return y


def run_ref(fn):
    try:
        return fn(), None
    except (ValueError, TypeError) as e:
        return None, e


# -- checks ----------------------------------------------------------------------------------------


def check_quant(fmt, x, via="cupy", axis=-1, out_dtypes=("float32",), pack=True, label="",
                **opts):
    """Quantize on both backends, compare every field, dequantize, pack; tally per format."""
    if ONLY and fmt not in ONLY:
        return
    tag = f"{fmt} {x.dtype} {x.shape} axis={axis} {via} {opts} {label}"
    qr, er = run_ref(lambda: ln.quantize(x, fmt, axis=axis, backend="reference", **opts))
    xd = to_dev(x, via)
    try:
        qg = ca.quantize(xd, fmt, axis=axis, **opts)
    except (ValueError, TypeError) as e:
        if er is not None and type(e) is type(er):
            T.add(fmt, 0)
        else:
            T.err(fmt, f"{tag}: gpu raised {e!r}, ref {er!r}")
        return
    except Exception as e:  # noqa: BLE001
        T.err(fmt, f"{tag}: gpu crashed {e!r}\n{traceback.format_exc()}")
        return
    if er is not None:
        T.err(fmt, f"{tag}: ref raised {er!r}, gpu did not")
        return
    fields = {"codes": mismatches(qr.codes, host(qg.codes)),
              "scales": mismatches(qr.scales, host(qg.scales)),
              "micro": mismatches(qr.micro, host(qg.micro)),
              "tensor_scale": (mismatches(qr.tensor_scale, qg.tensor_scale)
                               if qr.tensor_scale is not None
                               else int(qg.tensor_scale is not None)),
              "meta": int(qr.pad != qg.pad) + int(qr.axis != qg.axis)
              + int(qr.prescale != qg.prescale)}
    n = sum(fields.values())
    if n:
        T.err(fmt, f"{tag}: quantize mismatches {fields} {detail(x, qr, qg)}")
    else:
        T.add(fmt, 0)
    for od in out_dtypes:
        try:
            yr = ln.dequantize(qr, dtype=DTYPES[od], backend="reference")
            yg = host(ca.dequantize(qg, dtype=od))
            m = mismatches(yr, yg)
            (T.err(fmt, f"{tag}: dequantize {od} mismatches {m}") if m else T.add(fmt, 0))
        except Exception as e:  # noqa: BLE001
            T.err(fmt, f"{tag}: dequantize {od} crashed {e!r}\n{traceback.format_exc()}")
    if not pack:
        return
    for layout in ("linear", "swizzled"):
        spec = ln.block_format(fmt)
        if layout == "swizzled" and (spec.scale is None or spec.scheme == "hif4"):
            continue
        try:
            pr = ln.pack(qr, scale_layout=layout)
        except ValueError:
            continue
        try:
            pg = ca.pack(qg, scale_layout=layout)
            m = _packed_mism(pr, pg)
            (T.err(fmt, f"{tag}: pack {layout} mismatches {m}") if m else T.add(fmt, 0))
            if spec.scheme in ("mx", "nvfp4", "hif4") and opts.get("rounding") != "stochastic":
                kw = {k: v for k, v in opts.items()}
                pf = ca.quantize_packed(xd, fmt, axis=axis, scale_layout=layout, **kw)
                m = _packed_mism(pr, pf)
                (T.err(fmt, f"{tag}: fused pack {layout} mismatches {m}") if m else T.add(fmt, 0))
        except Exception as e:  # noqa: BLE001
            T.err(fmt, f"{tag}: pack {layout} crashed {e!r}\n{traceback.format_exc()}")


def detail(x, qr, qg) -> str:
    """A few mismatching elements: input, reference and GPU codes, and their block scales."""
    try:
        out = []
        gc, gs = host(qg.codes), host(qg.scales)
        if qr.codes.shape == gc.shape:
            bad = np.argwhere(qr.codes != gc)[:4]
            for idx in bad:
                idx = tuple(int(i) for i in idx)
                bi = list(idx)
                bi[qr.axis] //= qr.block_size
                bi = tuple(bi)
                sr = None if qr.scales is None else qr.scales[bi]
                sg = None if gs is None else gs[bi]
                out.append(f"x{idx}={float(x[idx])!r} ref={int(qr.codes[idx]):#x} "
                           f"gpu={int(gc[idx]):#x} scale ref/gpu={sr}/{sg}")
        if qr.scales is not None and gs is not None and qr.scales.shape == gs.shape:
            bad = np.argwhere(qr.scales != gs)[:3]
            for idx in bad:
                idx = tuple(int(i) for i in idx)
                sl = [slice(None)] * x.ndim
                for d, i in enumerate(idx):
                    sl[d] = slice(i * qr.block_size, (i + 1) * qr.block_size) if d == qr.axis \
                        else slice(i, i + 1)
                blk = np.asarray(x[tuple(sl)], dtype=np.float64).reshape(-1)
                out.append(f"scale{idx} ref={qr.scales[idx]} gpu={gs[idx]} amax="
                           f"{np.max(np.abs(blk))!r} block={blk[:6].tolist()}")
        if qr.tensor_scale is not None:
            out.append(f"ts ref={qr.tensor_scale!r} gpu={qg.tensor_scale!r}")
        return " | ".join(out)
    except Exception as e:  # noqa: BLE001
        return f"(detail failed {e!r})"


def _packed_mism(pr, pg) -> int:
    n = mismatches(pr.data, host(pg.data)) + mismatches(pr.scales, host(pg.scales))
    n += mismatches(pr.meta, host(pg.meta))
    if pr.tensor_scale is not None:
        n += mismatches(np.float32(pr.tensor_scale), np.float32(pg.tensor_scale))
    return n + int(pr.shape != pg.shape) + int(pr.pad != pg.pad)


def check_encode(rng, quick):
    for name, spec in ELEMENT_FORMATS.items():
        v = spec.values[np.isfinite(spec.values)]
        pts = np.unique(np.concatenate([v, -v]))
        mids = (pts[1:] + pts[:-1]) / 2
        base = np.concatenate([pts, mids, rng.standard_normal(3000) * spec.max / 2,
                               [0.0, -0.0, np.inf, -np.inf, np.nan]])
        if spec.nan_code is None:
            base = base[~np.isnan(base)]
        b32 = base.astype(np.float32)
        x = np.concatenate([b32, np.nextafter(b32, np.float32(np.inf)),
                            np.nextafter(b32, np.float32(-np.inf))])
        if not spec.signed and spec.nan_code is None:
            x = np.abs(x)
        sats = (True, False) if spec.overflow_code is not None else (True,)
        modes = ln.ROUNDING_MODES if not quick else ("nearest_even", spec.rounding)
        for dt in (("float32", "float64", "bfloat16", "float16") if not quick else ("float32",)):
            xx = x.astype(DTYPES[dt]) if dt != "bfloat16" else x.astype(BF16)
            for sat in sats:
                for mode in modes:
                    rb = rng.integers(0, 2**16, xx.shape, dtype=np.uint16) \
                        if mode == "stochastic" else None
                    tag = f"encode {name} {dt} sat={sat} {mode}"
                    r, er = run_ref(lambda: ln.encode(xx, name, rounding=mode, saturate=sat,
                                                      rbits=rb, backend="reference"))
                    try:
                        g = host(ca.encode(to_dev(xx), name, rounding=mode, saturate=sat,
                                           rbits=rb))
                    except (ValueError, TypeError) as e:
                        (T.add(f"enc:{name}", 0) if er is not None else
                         T.err(f"enc:{name}", f"{tag}: gpu raised {e!r}"))
                        continue
                    if er is not None:
                        T.err(f"enc:{name}", f"{tag}: ref raised {er!r}")
                        continue
                    m = mismatches(r, g)
                    (T.err(f"enc:{name}", f"{tag}: {m}") if m else T.add(f"enc:{name}", 0))


CHECK_DEADLINE = [1e9]
ONLY: set[str] = set()  # --formats: the block formats checked and timed (empty: all)


def _late() -> bool:
    """Past the check time budget (--check-budget): skip the remaining sweeps (reported)."""
    if time.time() - T0 > CHECK_DEADLINE[0]:
        T.skipped = True
        return True
    return False


def run_checks(quick: bool):
    rng = np.random.default_rng(2026)
    dts = ("float32", "bfloat16", "float16", "float64") if not quick else ("float32", "bfloat16")
    shapes = [((24, 128), -1), ((5, 100), -1), ((96, 6), 0)] if not quick else [((24, 128), -1),
                                                                                 ((5, 100), -1)]
    outs = ("float32", "bfloat16", "float16", "float64") if not quick else ("float32", "bfloat16")
    fmts = ["mxfp8_e4m3", "mxfp4", "nvfp4", "hif8", "hif4", "mxfp8_e5m2", "mxfp6_e3m2",
            "mxfp6_e2m3", "mxint8", "int8", "int4"]
    # every format x dtype x shape, random + grid/edge data (+ NaN/Inf where defined)
    for fmt in fmts:
        if _late():
            break
        for dt in dts:
            for shape, axis in shapes:
                for kind in ("normal", "grid", "edge"):
                    if kind == "grid" and ln.block_format(fmt).scheme == "absmax":
                        kind = "normal"
                    x = data(rng, shape, dt, kind, fmt)
                    check_quant(fmt, x, axis=axis, out_dtypes=outs if kind == "normal" else
                                ("float32",), pack=kind == "normal")
                if ln.block_format(fmt).scheme != "nvfp4":
                    x = poison_specials(data(rng, shape, dt), rng)
                    check_quant(fmt, x, axis=axis, pack=False, label="specials")
        if quick and fmt == "hif4":
            break
    # torch CUDA tensors (DLPack) for float32 too
    for fmt in ("mxfp8_e4m3", "mxfp4", "nvfp4", "hif4", "hif8"):
        check_quant(fmt, data(rng, (16, 256), "float32"), via="torch", pack=False)
    # options
    mx_opts = [dict(scale_rule=r) for r in ln.SCALE_RULES]
    mx_opts += [dict(rounding=r) for r in ln.ROUNDING_MODES if r != "stochastic"]
    mx_opts += [dict(preset=p) for p in ln.MX_PRESETS]
    mx_opts += [dict(prescale=True), dict(prescale=0.625)]
    mx_opts += [dict(scale_rule=r, preset="torchao") for r in ("rceil", "ceil", "even")]
    mx_fmts = ("mxfp8_e4m3", "mxfp4", "mxint8", "mxfp6_e2m3", "mxfp8_e5m2") if not quick else \
        ("mxfp4",)
    for fmt in mx_fmts:
        for o in mx_opts:
            if _late():
                break
            for dt in (("float32", "bfloat16") if not quick else ("float32",)):
                for kind in ("normal", "grid", "edge"):
                    check_quant(fmt, data(rng, (8, 96), dt, kind, fmt), pack=False, **o)
                x = poison_specials(data(rng, (8, 96), dt), rng, 0.02)
                check_quant(fmt, x, pack=False, label="specials", **o)
    # stochastic rounding with 8/16/32-bit random bits, every scheme
    for fmt in ("mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "hif4", "hif8", "int4"):
        if _late():
            break
        for rdt in ((np.uint8, np.uint16, np.uint32) if not quick else (np.uint8,)):
            for dt in (("float32", "bfloat16", "float64") if not quick else ("float32",)):
                x = data(rng, (8, 128), dt, "normal")
                rb = rng.integers(0, np.iinfo(rdt).max, x.shape, dtype=rdt, endpoint=True)
                check_quant(fmt, x, pack=False, rounding="stochastic", rbits=rb)
    # NVFP4 algorithms, roundings, calibrated amax, zeros
    for preset in (None, "torchao", "modelopt"):
        for dt in ("float32", "bfloat16", "float64"):
            for r in ("nearest_even", "nearest_away", "toward_zero"):
                x = data(rng, (16, 64), dt, "normal")
                check_quant("nvfp4", x, pack=False, preset=preset, rounding=r)
            x = data(rng, (16, 64), dt, "normal")
            check_quant("nvfp4", x, preset=preset, global_amax=float(np.max(np.abs(
                x.astype(np.float64)))) / 3)
            check_quant("nvfp4", np.zeros((4, 32), DTYPES[dt]), pack=False, preset=preset)
            check_quant("nvfp4", x, pack=False, preset=preset, algorithm="transformer_engine")
        check_quant("nvfp4", data(rng, (4, 32), "float32") * np.float32(1e-37), pack=False,
                    preset=preset, label="tiny global amax")
    # HiF4 options
    for o in (dict(scale_rounding="nearest_away"), dict(negative_zero=False),
              dict(rounding="nearest_even"), dict(rounding="toward_zero")):
        for dt in ("float32", "bfloat16", "float64"):
            for kind in ("normal", "edge"):
                check_quant("hif4", data(rng, (8, 192), dt, kind), pack=False, **o)
    # INT / HiF8 granularities
    for fmt in ("int8", "int4", "hif8"):
        if _late():
            break
        for o in (dict(granularity="channel"), dict(granularity="tensor"),
                  dict(group_size=32), dict(group_size=48), dict(granularity="group", group_size=7),
                  dict(target=100.0, granularity="channel"), dict(rounding="nearest_away"),
                  dict(saturate=True, granularity="channel")):
            if fmt != "hif8" and "saturate" in o:
                continue
            for dt in ("float32", "bfloat16", "float64"):
                for kind in ("normal", "edge"):
                    x = data(rng, (6, 70), dt, kind)
                    check_quant(fmt, x, pack=False, out_dtypes=("float32", "bfloat16"), **o)
                check_quant(fmt, poison_specials(data(rng, (6, 70), dt), rng), pack=False, **o)
    if not _late() and not ONLY:
        check_encode(rng, quick)
    # the fake-quant hook against the CPU path of integrations.fakequant, if present
    try:
        import torch

        from lowbit.integrations import fakequant as fq

        for spec_s in ("mxfp4", "mxfp8_e4m3:scale_rule=rceil", "nvfp4", "hif4",
                       "int4:group_size=32"):
            spec = fq.parse_spec(spec_s)
            for tdt in (torch.float32, torch.bfloat16):
                x = torch.randn(16, 128, dtype=tdt)
                ref = fq.fake_quant_array(x.float().numpy(), spec)
                ref_t = torch.from_numpy(ref).to(tdt)
                got = ca.torch_fake_quant(x.cuda(), spec).cpu()
                m = mismatches(host(ref_t), host(got))
                (T.err("fakequant", f"{spec_s} {tdt}: {m}") if m else T.add("fakequant", 0))
    except ImportError as e:
        print("fakequant hook check skipped:", e)
    except Exception as e:  # noqa: BLE001
        T.err("fakequant", f"crashed {e!r}\n{traceback.format_exc()}")


# -- benchmark -------------------------------------------------------------------------------------


def timeit(fn, reps=10, warm=2):
    import cupy as cp

    for _ in range(warm):
        fn()
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(3):  # three batches of back-to-back launches (the queue hides host overhead)
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b) / 1e3 / reps)
    return float(np.median(ts)), float(np.min(ts)), float(np.max(ts))


def run_bench(gib: float, reps: int, torchao_compile: bool, budget_s: float,
              dtypes=("bfloat16", "float32")):
    import cupy as cp
    import torch

    from lowbit.kernels import cupy_elementwise, cupy_hif4, cupy_mx, cupy_nvfp4
    from lowbit.numerics import hif4 as href
    from lowbit.numerics import mx as mref
    from lowbit.numerics import nvfp4 as nref

    t_start = T0
    nbytes = int(gib * 2**30)
    rows = 16384
    res = {"copy": {}, "ops": [], "shape": {"rows": 16384, "bytes_in": nbytes}}
    src = cp.empty(nbytes // 4, cp.float32)
    dst = cp.empty_like(src)
    src[...] = cp.random.standard_normal(src.size, dtype=cp.float32)
    t = timeit(lambda: cp.copyto(dst, src), reps)
    copy_bw = 2 * nbytes / t[0]
    res["copy"] = {"bytes_read_plus_written": 2 * nbytes, "median_s": t[0], "GBps": copy_bw / 1e9}
    print(f"copy: {copy_bw / 1e9:.0f} GB/s (read + write)")
    dst = None
    try:
        import torchao
        from torchao.prototype.mx_formats.mx_tensor import to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize

        tao_version = torchao.__version__
    except Exception as e:  # noqa: BLE001
        print("torchao unavailable:", e)
        to_mx = nvfp4_quantize = None
        tao_version = None
    res["torchao"] = tao_version
    fp4 = getattr(torch, "float4_e2m1fn_x2", None)

    def record(op, fmt, dtype, secs, moved, extra=None):
        row = {"op": op, "format": fmt, "dtype": dtype, "median_s": secs[0], "min_s": secs[1],
               "max_s": secs[2], "bytes": moved, "GBps": moved / secs[0] / 1e9,
               "frac_copy": moved / secs[0] / copy_bw}
        row.update(extra or {})
        res["ops"].append(row)
        if PARTIAL:
            PARTIAL["info"]["bench"] = res
            _dump(PARTIAL["info"], PARTIAL["out"])
        print(f"{op:18s} {fmt:11s} {dtype:8s} {secs[0] * 1e3:8.3f} ms {row['GBps']:7.0f} GB/s "
              f"{row['frac_copy']:.2f}x copy" + ("" if not extra else f"  {extra}"))
        return row

    for dtype in dtypes:
        esize = 2 if dtype == "bfloat16" else 4
        n = nbytes // esize
        cols = n // rows
        tx = torch.randn(rows, cols, device="cuda", dtype=getattr(torch, dtype))
        xin = tx
        for fmt in ("mxfp8_e4m3", "mxfp4", "nvfp4", "hif8", "hif4"):
            if ONLY and fmt not in ONLY:
                continue
            spec = ln.block_format(fmt)
            ebits = spec.element.bits
            try:
                if spec.scheme == "mx":
                    opts = mref.mx_options()
                    q = lambda: cupy_mx.quantize_dev(xin, spec, opts)  # noqa: E731
                    qp = lambda: cupy_mx.quantize_dev(xin, spec, opts, pack=True)  # noqa: E731
                    codes, scales, b = q()
                    moved_q = n * esize + n + scales.size
                    moved_p = n * esize + n * ebits // 8 + scales.size
                    dq = lambda: cupy_mx.dequantize_dev(codes, scales, spec, cols, None, dtype)  # noqa: E731,E501
                    moved_d = n + scales.size + n * esize
                elif spec.scheme == "nvfp4":
                    opts = nref.nvfp4_options()
                    g = float(tx.abs().max())
                    q = lambda: cupy_nvfp4.quantize_dev(xin, spec, opts, check=False)  # noqa: E731
                    qg = lambda: cupy_nvfp4.quantize_dev(xin, spec, opts, global_amax=g, check=False)  # noqa: E731,E501
                    qp = lambda: cupy_nvfp4.quantize_dev(xin, spec, opts, global_amax=g, pack=True, check=False)  # noqa: E731,E501
                    codes, scales, b, _, _ = qg()
                    moved_q = n * esize + n + scales.size
                    moved_p = n * esize + n // 2 + scales.size
                    ts = cupy_nvfp4.tensor_scale("transformer_engine", np.float32(g))
                    dq = lambda: cupy_nvfp4.dequantize_dev(codes, scales, np.float64(ts), spec, cols, dtype)  # noqa: E731,E501
                    moved_d = n + scales.size + n * esize
                    record("quantize+amax", fmt, dtype, timeit(q, reps), moved_q)
                    q = qg
                elif spec.scheme == "hif4":
                    opts = href.hif4_options()
                    q = lambda: cupy_hif4.quantize_dev(xin, spec, opts)  # noqa: E731
                    qp = lambda: cupy_hif4.quantize_dev(xin, spec, opts, pack=True)  # noqa: E731
                    codes, scales, micro, b = q()
                    moved_q = n * esize + n + scales.size + micro.size
                    moved_p = n * esize + n // 2 + 4 * scales.size
                    dq = lambda: cupy_hif4.dequantize_dev(codes, scales, micro, spec, cols, dtype)  # noqa: E731,E501
                    moved_d = n + scales.size + micro.size + n * esize
                else:  # hif8: element cast (granularity "none")
                    el = spec.element
                    q = lambda: cupy_elementwise.encode_dev(xin, el, el.rounding, el.saturate)  # noqa: E731,E501
                    qp = None
                    codes, _ = q()
                    moved_q = n * esize + n
                    lut = cp.asarray(el.values.astype(np.float32))
                    from lowbit.kernels import cupy_absmax

                    out = cc.alloc_out((rows, cols), dtype)
                    one = cp.ones(1, cp.float32)
                    dq = lambda: cupy_absmax.dequant_dev(codes, one, lut, 0, out, dtype, cols)  # noqa: E731,E501
                    moved_d = n + n * esize
                rq = record("quantize", fmt, dtype, timeit(q, reps), moved_q)
                rp = record("quantize+pack", fmt, dtype, timeit(qp, reps), moved_p) if qp else None
                record("dequantize", fmt, dtype, timeit(dq, reps), moved_d)
            except Exception as e:  # noqa: BLE001
                print(f"bench {fmt} {dtype} failed: {e!r}")
                traceback.print_exc()
                continue
            # torchao on the same input
            ref_row = rp or rq
            tao = None
            if fmt in ("mxfp8_e4m3", "mxfp4") and to_mx is not None:
                edt = torch.float8_e4m3fn if fmt == "mxfp8_e4m3" else (fp4 or "fp4_e2m1")
                tao = lambda: to_mx(tx, edt, 32)  # noqa: E731
            elif fmt == "nvfp4" and nvfp4_quantize is not None:
                pts = (tx.abs().max().float() / 2688.0).reshape(1)
                tao = lambda: nvfp4_quantize(tx, 16, pts)  # noqa: E731
            if tao is None:
                continue
            for mode in ("eager", "compiled"):
                if mode == "compiled" and (not torchao_compile or time.time() - t_start > budget_s):
                    continue
                try:
                    fn = tao if mode == "eager" else torch.compile(tao)
                    fn()
                    t = timeit(fn, max(3, reps // 2), warm=1)
                    record(f"torchao {mode}", fmt, dtype, t, moved_p,
                           {"lowbit_speedup": round(t[0] / ref_row["median_s"], 2)})
                except Exception as e:  # noqa: BLE001
                    print(f"torchao {mode} {fmt} {dtype} failed: {e!r}")
        tx = xin = None
        torch.cuda.empty_cache()
        cp.get_default_memory_pool().free_all_blocks()
    return res


def versions():
    import cupy as cp
    import torch

    props = cp.cuda.runtime.getDeviceProperties(0)
    return {
        "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "sm": f"{props['major']}{props['minor']}",
        "cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "driver": cp.cuda.runtime.driverGetVersion(), "nvrtc": cp.cuda.nvrtc.getVersion(),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
    }


PARTIAL: dict = {}


def _dump(info, out):
    with open(os.path.join(out, "gpu_results.json"), "w") as f:
        json.dump(info, f, indent=1, default=str)
    with open(os.path.join(out, "gpu_results.md"), "w") as f:
        f.write(markdown(info))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of torchao")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds before compiled torchao "
                    "runs are skipped")
    ap.add_argument("--check-budget", type=float, default=1e9, help="seconds after which the "
                    "remaining check sweeps are skipped (reported in the results)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--formats", nargs="*", default=[], help="only these block formats "
                    "(checks and benchmark; element-cast checks are skipped)")
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"],
                    help="benchmark input dtypes")
    args = ap.parse_args()
    ONLY.update(args.formats)
    t0 = time.time()
    info = {"command": "python " + " ".join(sys.argv), "versions": versions(),
            "env": {k: v for k, v in os.environ.items() if k.startswith("LOWBIT_")}}
    print(json.dumps(info["versions"]))
    CHECK_DEADLINE[0] = args.check_budget
    if not args.no_check:
        try:
            run_checks(args.quick)
        except Exception as e:  # noqa: BLE001
            T.err("harness", f"run_checks crashed {e!r}\n{traceback.format_exc()}")
        info["check_seconds"] = round(time.time() - t0, 1)
        info["checks"] = {f: {"checks": T.checks[f], "mismatches": T.mism[f]}
                          for f in sorted(T.checks)}
        info["errors"] = {f: v[:20] for f, v in T.errors.items()}
        info["checks_cut_short"] = T.skipped
        for v in T.errors.values():
            for line in v[:4]:
                print("MISMATCH", line[:1200])
        print(f"{'format':16s} {'checks':>7s} {'mismatches':>10s}")
        for f in sorted(T.checks):
            print(f"{f:16s} {T.checks[f]:7d} {T.mism[f]:10d}")
        print(f"checks took {info['check_seconds']} s")
    os.makedirs(args.out, exist_ok=True)
    _dump(info, args.out)
    if not args.no_bench:
        PARTIAL["info"], PARTIAL["out"] = info, args.out
        info["bench"] = run_bench(args.gib if not args.quick else 0.125, args.reps,
                                  not args.no_compile, args.budget, tuple(args.dtypes))
    info["seconds"] = round(time.time() - t0, 1)
    _dump(info, args.out)
    print(f"total {info['seconds']} s")
    return 1 if any(T.mism.values()) else 0


def markdown(info) -> str:
    v = info["versions"]
    out = [f"# GPU kernels: check and benchmark on {v['device']}\n",
           f"Command: `{info['command']}`  \nVersions: " + ", ".join(f"{k} {val}" for k, val in
                                                               v.items()) + "\n"]
    if "checks" in info:
        out.append("\n## Bit-exactness against `lowbit.numerics` (mismatching checks / checks)\n")
        out.append("| format | checks | mismatches |\n|---|---|---|")
        for f, c in info["checks"].items():
            out.append(f"| {f} | {c['checks']} | {c['mismatches']} |")
    if "bench" in info:
        b = info["bench"]
        out.append(f"\n## Throughput, {b['shape']['bytes_in'] / 2**30:g} GiB input, "
                   f"{b['shape']['rows']} rows\n")
        out.append(f"Device-to-device copy: {b['copy']['GBps']:.0f} GB/s (bytes read + written). "
                   f"torchao {b.get('torchao')}.\n")
        out.append("| op | format | dtype | median ms | GB/s | x copy | lowbit speedup |")
        out.append("|---|---|---|---|---|---|---|")
        for r in b["ops"]:
            out.append(f"| {r['op']} | {r['format']} | {r['dtype']} | {r['median_s'] * 1e3:.3f} | "
                       f"{r['GBps']:.0f} | {r['frac_copy']:.2f} | {r.get('lowbit_speedup', '')} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
