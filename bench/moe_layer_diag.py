"""Where CMoE's error comes from on SmolLM2-135M: the analytic router against an oracle and a
random router, per layer, for several profiling choices.

    nice -n 10 python bench/moe_layer_diag.py [--layers 3,15,27] [--configs S3A3E8,S1A3E8]
        [--variants 10:code,154:code,10:plain,50:code] [--calib 4x512] [--held 2x512]
        [--out bench/results/moe_layer_diag]

The FFN inputs of ``--layers`` are taken from the *dense* model on ``--calib`` (profiling) and
``--held`` (measurement) windows of the Wikipedia train split (seeds 0 and 7). For each layer,
configuration and variant ``K_a:profile`` (``code``: L2-normalised h, the released code;
``plain``: raw h, the paper's eq. 3) the FFN is carved and the relative error
``||y_moe - y_dense|| / ||y_dense||`` on the held-out tokens is measured with three routers over
the same partition: the analytic CMoE router, the oracle (the top-k experts by output norm
``||E_j(x)||``, the best any router can do for this partition and gate convention) and a
seeded random choice of k experts. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys

import torch
from tqdm.auto import tqdm

from lowbit.integrations.data import SMOLLM2, load_model
from lowbit.moe.config import parse_config
from lowbit.moe.data import random_windows, wiki_tokens
from lowbit.moe.modules import CMoEBlock
from lowbit.moe.partition import partition_neurons
from lowbit.moe.profile import profile_ffn

ROUTERS = ("router", "oracle", "random")


@torch.no_grad()
def relative_errors(block: CMoEBlock, mlp, x: torch.Tensor, k: int) -> dict[str, float]:
    """Relative FFN output error of ``block`` on ``x`` with each router of ``ROUTERS``."""
    y = mlp(x)
    outs = torch.stack([block.experts.expert(e, x) for e in range(block.experts.num_experts)], 1)
    choice = {"router": block.gate(x)[0],
              "oracle": outs.norm(dim=-1).topk(k, dim=-1).indices,
              "random": torch.rand(outs.shape[:2], generator=torch.Generator().manual_seed(0))
              .topk(k, dim=-1).indices}
    shared = block.shared_experts(x) if block.shared_experts is not None else 0
    res = {}
    for name, idx in choice.items():
        z = shared + outs.gather(1, idx[..., None].expand(-1, -1, x.shape[1])).sum(1)
        res[name] = float((z - y).norm() / y.norm())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="3,15,27")
    ap.add_argument("--configs", default="S3A3E8,S1A3E8")
    ap.add_argument("--variants", default="10:code,154:code,10:plain,50:code")
    ap.add_argument("--calib", default="4x512")
    ap.add_argument("--held", default="2x512")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/moe_layer_diag")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(SMOLLM2)
    train = wiki_tokens(tok, "train")
    shape = {k: tuple(int(v) for v in getattr(args, k).split("x")) for k in ("calib", "held")}
    layers = [int(v) for v in args.layers.split(",")]
    caps: dict[int, list[torch.Tensor]] = {}
    hooks = [model.model.layers[i].mlp.register_forward_pre_hook(
        lambda _, a, i=i: caps.setdefault(i, []).append(a[0].reshape(-1, a[0].shape[-1])))
        for i in layers]
    with torch.no_grad():
        model(random_windows(train, *shape["calib"], seed=0))
        model(random_windows(train, *shape["held"], seed=7))
    for h in hooks:
        h.remove()
    rows = []
    jobs = [(i, c, v) for i in layers for c in args.configs.split(",")
            for v in args.variants.split(",")]
    for i, name, variant in tqdm(jobs, desc="layer diagnostics"):
        k_act, mode = variant.split(":")
        x_cal, x_held = caps[i]
        mlp = model.model.layers[i].mlp
        cfg = parse_config(name)
        prof = profile_ffn(x_cal, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn,
                           k_act=int(k_act), normalize=mode == "code")
        block = CMoEBlock.from_dense(mlp, partition_neurons(prof, cfg), cfg)
        rows.append({"layer": i, "config": name, "k_act": int(k_act), "profile": mode,
                     "silent": prof.silent, **relative_errors(block, mlp, x_held, cfg.active)})
    meta = {"model": SMOLLM2, "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.machine(), "torch": torch.__version__,
            "calibration": f"{args.calib} train seed 0", "held_out": f"{args.held} train seed 7"}
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Relative FFN output error of CMoE layers of SmolLM2-135M ({meta['date']}); FFN "
             f"inputs from the dense model, profiling on {meta['calibration']}, error on "
             f"{meta['held_out']}.", "", f"Command: `{meta['command']}`", "",
             "| layer | config | K_a | profile | never-marked | analytic router | oracle | "
             "random |", "|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['config']} | {r['k_act']} | {r['profile']} | "
                     f"{r['silent']} | {r['router']:.3f} | {r['oracle']:.3f} | "
                     f"{r['random']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
