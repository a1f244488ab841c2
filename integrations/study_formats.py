"""``lowbit study formats``: INT vs MX vs NVFP4 vs HiFloat at equal bits (hifloat.md §3, PE).

Two parts per model.

1. Model quality (``study.run_study``: perplexity, KL and top-1 agreement against the
   unquantized model) for each format of each bit width in two settings:

   * ``wa``: weight-activation quantization, W8A8 / W4A4 in one format, with SmoothQuant
     (``method``, migration strength ``alpha``) as the plug-in PTQ method;
   * ``kv``: KV-cache-only quantization (keys and values in the format, blocks along head_dim;
     weights and activations unquantized; no PTQ method applies, so RTN).

2. Per-tensor statistics (``tensor_stats``) of the unquantized model's weights (every quantized
   linear), linear inputs, keys and values (the cache contents, after RoPE), and the SQNR of
   each format on those tensors (quantized along the last axis, as in the model). For each bit
   width with an INT format, the INT margin of a tensor is

       margin = SQNR(INT) - max over the floating-point formats of SQNR(format)   (dB)

   (> 0: INT wins). The claim "INT suits narrow-range data, floating point suits high-variance
   data" predicts a negative Spearman correlation between the margin and the kurtosis / range;
   the report gives those correlations and the INT win rate below and above the median
   kurtosis. Statistics use at most ``max_rows`` rows (evenly spaced) of each tensor, so the
   NVFP4 tensor scale is that of the sample.

Default formats (``FORMATS8`` / ``FORMATS4``): INT8 symmetric per channel (per output channel
for weights, per token for activations, per token and head for K/V), MXFP8 E4M3 with the RCEIL
scale rule, HiF8 with a float32 scale per channel mapping the channel max to 15 (the top of
HiF8's 3-bit-mantissa range; the default target 2^15 puts the max in the 1-bit-mantissa range
and loses about 12 dB); INT4 symmetric with a float32 scale per 32 elements, MXFP4, NVFP4, HiF4.
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import replace

import numpy as np
import torch

from . import tensor_stats as ts
from .fakequant import fake_quant_array, parse_spec
from .study import BASELINE, Config, build_grid, load, run_study, segments, write_json_markdown

FORMATS8 = ("int8", "mxfp8_e4m3:scale_rule=rceil", "hif8:granularity=channel,target=15")
FORMATS4 = ("int4:group_size=32", "mxfp4", "nvfp4", "hif4")
SETTINGS = ("wa", "kv")
KINDS = ("weight", "activation", "key", "value")


def spec_bits(spec: str) -> int:
    from lowbit import numerics as ln

    return ln.block_format(parse_spec(spec).fmt).element.bits


def spec_family(spec: str) -> str:
    """``"int"`` for integer elements, ``"float"`` for MX/NVFP4/HiFloat elements."""
    from lowbit import numerics as ln

    enc = ln.block_format(parse_spec(spec).fmt).element.encoding
    return "int" if enc == "int" else "float"


def _norm(specs) -> list[str]:
    out = []
    for s in specs:
        p = parse_spec(s)
        if p is None:
            raise ValueError(f"{s!r} is not a quantization format")
        out.append(str(p))
    return out


def formats_grid(formats8=FORMATS8, formats4=FORMATS4, settings=SETTINGS,
                 method: str = "smoothquant", alpha=0.5) -> list[Config]:
    """The baseline, then ``wa`` rows (weights = activations = format, ``method``; SmoothQuant
    gets ``alpha``), then ``kv`` rows (KV cache only, RTN), 8-bit formats first."""
    bad = set(settings) - set(SETTINGS)
    if bad or not settings:
        raise ValueError(f"settings must be a non-empty subset of {SETTINGS}, got {settings}")
    if method == "smoothquant" and alpha != "search" and not 0 <= float(alpha) <= 1:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1] or 'search', got {alpha!r}")
    fmts = _norm(formats8) + _norm(formats4)
    grid = [BASELINE]
    if "wa" in settings:
        opts = (("alpha", alpha),) if method == "smoothquant" else ()
        grid += [replace(c, options=opts) for c in
                 build_grid(fmts, ("same",), methods=(method,), baseline=False)]
    if "kv" in settings:
        grid += build_grid(("none",), kv_caches=fmts, methods=("rtn",), baseline=False)
    return grid


def setting_of(row: dict) -> str:
    if row["weights"] is None and row["activations"] is None and row["kv_cache"] is None:
        return "none"
    return "kv" if row["weights"] is None and row["activations"] is None else "wa"


# -- tensors and statistics ---------------------------------------------------------------------


def _rows(x: torch.Tensor, max_rows: int) -> np.ndarray:
    x = x.detach().float().reshape(-1, x.shape[-1])
    if x.shape[0] > max_rows:
        x = x[torch.linspace(0, x.shape[0] - 1, max_rows).round().long()]
    return x.cpu().numpy()


@torch.no_grad()
def collect_tensors(model, ids: torch.Tensor, max_rows: int = 256,
                    exclude=("lm_head",)) -> list[tuple[str, str, np.ndarray]]:
    """``(name, kind, rows x last-axis array)`` for every target linear's weight and input and
    every layer's keys and values, from one forward pass over ``ids`` (caching on)."""
    from .model import target_linears

    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    linears = target_linears(model, exclude)
    acts: dict[str, list] = {n: [] for n in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: acts[n].append(args[0]))
             for n, m in linears.items()]
    try:
        device = next(model.parameters()).device
        out = model(input_ids=ids.to(device), use_cache=True)
    finally:
        for h in hooks:
            h.remove()
    cache = getattr(out, "cache", None) or out.past_key_values
    items = [(n, "weight", _rows(m.weight, max_rows)) for n, m in linears.items()]
    items += [(n, "activation", _rows(torch.cat([a.reshape(-1, a.shape[-1]) for a in v]),
                                      max_rows)) for n, v in acts.items() if v]
    for i, layer in enumerate(cache.layers):
        items.append((f"layer{i}.k", "key", _rows(layer.keys, max_rows)))
        items.append((f"layer{i}.v", "value", _rows(layer.values, max_rows)))
    return items


def tensor_records(items, specs, progress: bool = True) -> list[dict]:
    """Statistics and per-format SQNR (dB) of each ``(name, kind, array)``."""
    parsed = [(s, parse_spec(s)) for s in specs]
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="tensor statistics", leave=False)
    out = []
    for name, kind, x in items:
        x = np.ascontiguousarray(x, dtype=np.float32)
        sq = {s: ts.sqnr_db(x, fake_quant_array(x, p)) for s, p in parsed}
        out.append({"name": name, "kind": kind, "shape": list(x.shape), **ts.tensor_stats(x),
                    "sqnr_db": sq})
    return out


def _median(v) -> float:
    v = [x for x in v if np.isfinite(x)]
    return float(np.median(v)) if v else float("nan")


def distinct(records: list[dict]) -> list[dict]:
    """The records without repeats: an input read by several linears (q/k/v, gate/up) is
    recorded once per linear with identical numbers; keep the first."""
    seen, out = set(), []
    for r in records:
        key = (r["kind"], tuple(r["shape"]), r["absmax"], r["kurtosis"],
               tuple(sorted(r["sqnr_db"].items())))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def analyse(records: list[dict], formats8=FORMATS8, formats4=FORMATS4) -> dict:
    """Per kind: medians of the statistics and of each format's SQNR, win counts per bit width;
    per bit width: INT-margin correlations (module docstring), over all tensors and per kind.
    Shared inputs count once (``distinct``)."""
    groups = {8: _norm(formats8), 4: _norm(formats4)}
    records = distinct(records)
    summary = {}
    for kind in (*KINDS, "all"):
        recs = [r for r in records if kind == "all" or r["kind"] == kind]
        if not recs:
            continue
        summary[kind] = {
            "n": len(recs),
            **{k: _median([r[k] for r in recs]) for k in
               ("kurtosis", "range_binades", "row_range_binades", "outlier_fraction")},
            "sqnr_median": {s: _median([r["sqnr_db"][s] for r in recs])
                            for g in groups.values() for s in g},
            "wins": {bits: {s: sum(max(g, key=lambda f: r["sqnr_db"][f]) == s for r in recs)
                            for s in g} for bits, g in groups.items() if g},
        }
    corr = {}
    for bits, g in groups.items():
        ints = [s for s in g if spec_family(s) == "int"]
        floats = [s for s in g if spec_family(s) == "float"]
        if not ints or not floats:
            continue
        for kind in ("all", *KINDS):
            recs = [r for r in records if kind == "all" or r["kind"] == kind]
            if len(recs) < 3:
                continue
            margin = np.array([r["sqnr_db"][ints[0]] - max(r["sqnr_db"][f] for f in floats)
                               for r in recs])
            kurt = np.array([r["kurtosis"] for r in recs])
            wins = margin > 0
            low = kurt <= np.median(kurt)
            corr[f"{bits}/{kind}"] = {
                "bits": bits, "kind": kind, "int": ints[0], "floats": floats, "n": len(recs),
                "int_wins": int(wins.sum()),
                "margin_median_db": float(np.median(margin)),
                **{f"rho_{k}": ts.spearman([r[k] for r in recs], margin) for k in
                   ("kurtosis", "range_binades", "row_range_binades", "outlier_fraction")},
                "int_win_rate_low_kurtosis": float(wins[low].mean()) if low.any() else None,
                "int_win_rate_high_kurtosis": float(wins[~low].mean()) if (~low).any() else None,
            }
    return {"summary": summary, "correlation": corr}


def run_tensor_study(model: str, formats8=FORMATS8, formats4=FORMATS4, *, seq_len: int = 256,
                     segments_n: int = 2, max_rows: int = 256, progress: bool = True) -> dict:
    """Statistics of ``model``'s tensors on ``segments_n`` train segments (see ``analyse``)."""
    m, tok = load(model)
    ids = segments(tok, "train", seq_len, segments_n)
    items = collect_tensors(m, ids, max_rows)
    del m
    recs = tensor_records(items, _norm(formats8) + _norm(formats4), progress)
    return {"segments": int(ids.shape[0]), "seq_len": seq_len, "max_rows": max_rows,
            "outlier_k": ts.OUTLIER_K, **analyse(recs, formats8, formats4), "tensors": recs}


# -- the study and its report -------------------------------------------------------------------


def environment() -> dict:
    import importlib.metadata

    import transformers

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "lowbit": importlib.metadata.version("lowbit"), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }


def run_formats_study(model: str, formats8=FORMATS8, formats4=FORMATS4, settings=SETTINGS, *,
                      method: str = "smoothquant", alpha=0.5, seq_len: int = 256,
                      eval_tokens: int = 4096, calib_segments: int = 8, batch_size: int = 4,
                      stat_segments: int = 2, max_rows: int = 256, stats: bool = True,
                      progress: bool = True, device: str = "cpu", log=print,
                      on_row=None) -> dict:
    """One model's entry: the ``run_study`` result (rows gain ``setting`` and ``bits``) plus
    ``tensor_stats`` (``run_tensor_study``; None with ``stats=False``). Empty ``settings``: the
    statistics only (no rows)."""
    if not settings and not stats:
        raise ValueError("nothing to do: no settings and no statistics")
    entry: dict = {"model": model, "rows": [], "method": method, "alpha": alpha,
                   "settings": list(settings), "tensor_stats": None}

    def row_done(res):
        for r in res["rows"]:
            r["setting"] = setting_of(r)
            spec = r["kv_cache"] if r["setting"] == "kv" else r["weights"]
            r["bits"] = spec_bits(spec) if spec else 16
        entry.update(res)
        if on_row is not None:
            on_row(entry)

    if settings:
        run_study(model, formats_grid(formats8, formats4, settings, method, alpha),
                  seq_len=seq_len, eval_tokens=eval_tokens, calib_segments=calib_segments,
                  batch_size=batch_size, progress=progress, log=log, device=device,
                  on_row=row_done)
    if stats:
        entry["tensor_stats"] = run_tensor_study(model, formats8, formats4, seq_len=seq_len,
                                                 segments_n=stat_segments, max_rows=max_rows,
                                                 progress=progress)
    return entry


def _setting_name(row: dict) -> str:
    b = row["bits"]
    return {"wa": f"W{b}A{b}", "kv": f"KV{b}"}.get(row["setting"], "unquantized")


def _f(v, spec=".2f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def markdown(result: dict) -> str:
    f8, f4 = result["formats8"], result["formats4"]
    env = result["environment"]
    lines = [
        "# Format study at equal bits: INT vs MXFP vs NVFP4 vs HiFloat",
        "",
        f"{env['date']}; lowbit {env['lowbit']}, torch "
        f"{env['torch']}, transformers {env['transformers']}, numpy {env['numpy']}, Python "
        f"{env['python']}; {env['machine']}, {env['cpus']} CPUs, {env['torch_threads']} torch "
        "thread(s).",
        "",
        f"8-bit formats: {', '.join(f'`{s}`' for s in f8)}. 4-bit formats: "
        f"{', '.join(f'`{s}`' for s in f4)}.",
        "", "```bash", *result.get("commands", [result.get("command", "")]), "```",
    ]
    for e in result["models"]:
        lines += ["", f"## {e['model']}"]
        if e["rows"]:
            lines += _quality_table(e)
        st = e.get("tensor_stats")
        if st:
            lines += _stats_tables(st, f8 + f4)
    if result.get("notes"):
        lines += ["", result["notes"].rstrip()]
    return "\n".join(lines) + "\n"


def _quality_table(e: dict) -> list[str]:
    lines = [
        "",
        f"Evaluation: {e['eval_tokens']} tokens ({e['eval_segments']} x {e['seq_len']}) of "
        f"the Wikipedia test split; SmoothQuant calibration: {e['calib_segments']} train "
        f"segments; W/A method `{e.get('method', '')}` alpha={e.get('alpha', '')}; KV rows "
        f"quantize only the cache. {e['total_s']} s in all.",
        "",
        "| setting | bits | format | perplexity | KL (nats) | top-1 agree | quantize s "
        "| eval s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in e["rows"]:
        fmt = r["kv_cache"] if r["setting"] == "kv" else (r["weights"] or "fp32")
        lines.append(f"| {_setting_name(r)} | {r['bits']} | {fmt} | {r['ppl']:.3f} | "
                     f"{r['kl']:.5f} | "
                     f"{100 * r['top1']:.2f} % | {r['quantize_s']} | {r['eval_s']} |")
    return lines


def _stats_tables(st: dict, fmts: list[str]) -> list[str]:
    lines = [
        "", f"### Per-tensor statistics ({st['segments']} train segments of {st['seq_len']}"
        f" tokens; at most {st['max_rows']} rows per tensor)", "",
        "Medians over the tensors of each kind; range = log2(max|x| / median|x|) in binades, "
        "row range = median over rows; outliers = fraction beyond "
        f"{st['outlier_k']:g} sigma. SQNR in dB; wins = tensors where the format has the "
        "best SQNR of its bit width.",
        "",
        "| kind | n | kurtosis | range | row range | outliers | "
        + " | ".join(f"SQNR {s}" for s in fmts) + " | wins 8-bit | wins 4-bit |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(fmts) + "---|---|",
    ]
    for kind, s in st["summary"].items():
        wins = {int(k): v for k, v in s["wins"].items()}
        w = [", ".join(f"{f.split(':')[0]} {n}" for f, n in wins.get(b, {}).items())
             for b in (8, 4)]
        lines.append(
            f"| {kind} | {s['n']} | {_f(s['kurtosis'], '.1f')} | {_f(s['range_binades'])} | "
            f"{_f(s['row_range_binades'])} | {_f(s['outlier_fraction'], '.2e')} | "
            + " | ".join(_f(s["sqnr_median"][f], ".1f") for f in fmts)
            + f" | {w[0]} | {w[1]} |")
    lines += [
        "", "### Does kurtosis / range predict the INT vs floating-point winner?", "",
        "margin = SQNR(INT) - best floating-point SQNR of the same bit width (dB; > 0: INT "
        "wins). rho = Spearman correlation of the statistic with the margin (the claim "
        "predicts rho < 0). Win rates split the tensors at the median kurtosis.",
        "",
        "| bits | tensors | n | INT wins | median margin dB | rho kurtosis | rho range | "
        "rho row range | rho outliers | INT win rate, low kurtosis | INT win rate, high "
        "kurtosis |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in st["correlation"].values():
        lines.append(
            f"| {c['bits']} | {c['kind']} | {c['n']} | {c['int_wins']} | "
            f"{_f(c['margin_median_db'])} | {_f(c['rho_kurtosis'])} | "
            f"{_f(c['rho_range_binades'])} | {_f(c['rho_row_range_binades'])} | "
            f"{_f(c['rho_outlier_fraction'])} | {_f(c['int_win_rate_low_kurtosis'])} | "
            f"{_f(c['int_win_rate_high_kurtosis'])} |")
    return lines


def plot(result: dict, path: str) -> str | None:
    """KL per configuration and kurtosis vs INT margin, one row of panels per model (None if
    matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = result["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 4.5 * len(models)), squeeze=False)
    colors = {"weight": "tab:blue", "activation": "tab:orange", "key": "tab:green",
              "value": "tab:red"}
    for (ax, bx), e in zip(axes, models, strict=True):
        rows = [r for r in e["rows"] if r["setting"] != "none"]
        if not rows:
            ax.axis("off")
        labels = [f"{_setting_name(r)} {(r['weights'] or r['kv_cache']).split(':')[0]}"
                  for r in rows]
        ax.barh(labels, [max(r["kl"], 1e-6) for r in rows],
                color=["tab:purple" if r["setting"] == "wa" else "tab:gray" for r in rows])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("KL(unquantized || quantized), nats/token")
        ax.set_title(f"{e['model']}: model quality")
        st = e.get("tensor_stats")
        if not st:
            bx.axis("off")
            continue
        ints = {c["bits"]: c for c in st["correlation"].values() if c["kind"] == "all"}
        for bits, marker in ((8, "o"), (4, "^")):
            c = ints.get(bits)
            if c is None:
                continue
            for kind, col in colors.items():
                recs = [r for r in st["tensors"] if r["kind"] == kind]
                if not recs:
                    continue
                bx.scatter([r["kurtosis"] for r in recs],
                           [r["sqnr_db"][c["int"]] - max(r["sqnr_db"][f] for f in c["floats"])
                            for r in recs], s=10, marker=marker, color=col, alpha=0.6,
                           label=f"{kind}, {bits}-bit")
        bx.axhline(0, color="k", lw=0.8)
        bx.set_xscale("log")
        bx.set_xlabel("kurtosis (Pearson, normal = 3)")
        bx.set_ylabel("SQNR(INT) - best FP SQNR, dB")
        bx.set_title(f"{e['model']}: per-tensor INT margin (o 8-bit, ^ 4-bit)")
        bx.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: dict, out: str, plot_png: bool = True) -> list[str]:
    """``<out>.json``, ``<out>.md`` and (``plot_png``) ``<out>.png``."""
    paths = write_json_markdown(result, out, markdown(result))
    if plot_png and result["models"] and plot(result, out + ".png"):
        paths.append(out + ".png")
    return paths


def new_result(formats8=FORMATS8, formats4=FORMATS4, command: str = "",
               previous: dict | None = None) -> dict:
    """An empty study result; ``previous`` (an earlier result with the same formats) keeps its
    model entries, so models can be run one invocation at a time."""
    f8, f4 = _norm(formats8), _norm(formats4)
    res = {"study": "formats", "command": command, "environment": environment(),
           "formats8": f8, "formats4": f4, "models": []}
    if previous is not None:
        if previous.get("formats8") != f8 or previous.get("formats4") != f4:
            raise ValueError("cannot append: the earlier result used other formats")
        res["models"] = list(previous["models"])
        res["commands"] = previous.get("commands", [previous.get("command", "")])
        res["commands"].append(command)
        res["notes"] = previous.get("notes")
    return res


def add_model(result: dict, entry: dict) -> None:
    """Put ``entry`` in ``result["models"]``, replacing an earlier entry of the same model."""
    result["models"] = [e for e in result["models"] if e["model"] != entry["model"]] + [entry]
