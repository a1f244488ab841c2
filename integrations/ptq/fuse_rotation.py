"""QuaRot: a rotation of the residual stream fused into the weights (Ashkboos et al. 2024).

Decoder ``h_{l+1} = h_l + o(attn(norm_1(h_l))) + down(act(gate(u)) * up(u))``, ``u = norm_2(.)``,
with ``norm(x) = x / rms(x) * diag(g)``, logits ``norm_f(h_L) W_lm^T``, ``h_0 = E[ids]``.
Linear ``y = x W^T``, ``W (N, K)``. Steps (all exact in real arithmetic):

1. Fold: ``W <- W diag(g)`` for each linear reading a norm's output (q/k/v after ``norm_1``,
   gate/up after ``norm_2``, lm_head after ``norm_f``), then ``g <- 1``.
2. Rotate the residual stream by an orthogonal ``Q (d, d)``: ``E <- E Q``; readers
   ``W <- W Q`` (q, k, v, gate, up, lm_head); writers ``W <- Q^T W``, ``b <- b Q`` (o, down).
   Since ``rms(x Q) = rms(x)``, every norm output is ``norm(h) Q`` and every reader sees
   ``norm(h) Q Q^T W^T = norm(h) W^T``; writers add ``y Q`` to the rotated stream, so
   ``h_l -> h_l Q`` everywhere and the logits are unchanged. Tied embeddings are untied (the
   lm_head gets ``diag(g_f) Q``, the embedding only ``Q``) and ``config.tie_word_embeddings`` is
   set to False so that a saved model reloads untied.
3. R2 (option ``r2``, default on): per attention head an orthogonal ``R2 (h, h)`` on the value
   and o_proj input: ``W_v[head] <- R2^T W_v[head]``, ``b_v[head] <- b_v[head] R2``,
   ``W_o[:, head] <- W_o[:, head] R2``. Attention mixes tokens, not head channels, so each head's
   output is ``o_h R2`` and ``o_proj`` is unchanged; the o_proj input is quantized rotated.
4. R4: the down-projection input gets an online rotation ``x -> x R4`` with ``W_down <- W_down
   R4`` (the ``QuantLinear`` rotation of ``hadamard``), so its activations are quantized rotated.

Kinds (``rot["kind"]``): ``global``: ``Q = hadamard.global_rotation(d, seed)`` (randomised Hadamard
of the whole hidden size; R2 and R4 the same of the head / intermediate size); ``block``: ``Q =
I_{d/b} (x) H_b`` with ``b`` the format block size (R2, R4 likewise), so no rotation crosses a
32/16-element scale block. Any orthogonal ``Q`` (SpinQuant's learned one) can be fused with
``fuse_residual``.

Supported: Llama / Mistral / Qwen2 / Qwen3-style decoders (pre-norm RMSNorm with weight ``g``,
``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``). Gemma-style sandwich norms (a norm on
the block output, before the residual add) do not commute with the rotation and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .calibrate import decoder_layers
from .hadamard import global_rotation, hadamard

READ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
READ_MLP = ("mlp.gate_proj", "mlp.up_proj")
WRITE = ("self_attn.o_proj", "mlp.down_proj")
SANDWICH = ("pre_feedforward_layernorm", "post_feedforward_layernorm")


@dataclass
class Plan:
    """Qualified module names touched by the fused rotation."""

    embed: str
    lm_head: str
    final_norm: str
    norms: list[tuple[str, list[str]]] = field(default_factory=list)  # norm -> its readers
    readers: list[str] = field(default_factory=list)  # W <- W Q
    writers: list[str] = field(default_factory=list)  # W <- Q^T W
    downs: list[str] = field(default_factory=list)  # online R4
    heads: list[tuple[str, str]] = field(default_factory=list)  # (v_proj, o_proj): R2
    head_dim: int = 0


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n
    raise ValueError(f"module {type(module).__name__} is not part of the model")


def _check_norm(model: nn.Module, name: str) -> None:
    norm = model.get_submodule(name)
    if "rmsnorm" not in type(norm).__name__.lower() or getattr(norm, "bias", None) is not None:
        raise NotImplementedError(f"{name}: only RMSNorm commutes with a rotation, got "
                                  f"{type(norm).__name__}")
    if "gemma" in type(norm).__name__.lower():
        raise NotImplementedError("Gemma RMSNorm (1 + weight) and sandwich norms are not "
                                  "supported by the fused residual rotation")


def plan(model: nn.Module) -> Plan:
    """Find the embedding, norms, readers and writers of a Llama-style decoder."""
    prefix, layers = decoder_layers(model)
    base = prefix.rpartition(".")[0]
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embed is None or head is None:
        raise ValueError(f"{type(model).__name__} has no input/output embeddings")
    final = f"{base}.norm" if base else "norm"
    p = Plan(_name_of(model, embed), _name_of(model, head), final)
    for i, layer in enumerate(layers):
        lp = f"{prefix}.{i}"
        if any(hasattr(layer, s) for s in SANDWICH):
            raise NotImplementedError(f"{lp}: sandwich norms (Gemma) do not commute with a "
                                      "residual rotation")
        for part in READ + READ_MLP + WRITE + ("input_layernorm", "post_attention_layernorm"):
            try:
                layer.get_submodule(part)
            except AttributeError as e:
                raise NotImplementedError(f"{lp} has no {part}: not a Llama-style decoder") from e
        p.norms.append((f"{lp}.input_layernorm", [f"{lp}.{r}" for r in READ]))
        p.norms.append((f"{lp}.post_attention_layernorm", [f"{lp}.{r}" for r in READ_MLP]))
        p.readers += [f"{lp}.{r}" for r in READ + READ_MLP]
        p.writers += [f"{lp}.{w}" for w in WRITE]
        p.downs.append(f"{lp}.mlp.down_proj")
        p.heads.append((f"{lp}.self_attn.v_proj", f"{lp}.self_attn.o_proj"))
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    p.head_dim = int(getattr(cfg, "head_dim", None) or
                     cfg.hidden_size // cfg.num_attention_heads)
    p.norms.append((final, [p.lm_head]))
    p.readers.append(p.lm_head)
    for name, _ in p.norms:
        _check_norm(model, name)
    return p


def untie(model: nn.Module, p: Plan) -> None:
    """Give the lm_head its own weight if it shares the embedding's."""
    head, embed = model.get_submodule(p.lm_head), model.get_submodule(p.embed)
    if head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr():
        head.weight = nn.Parameter(embed.weight.detach().clone(),
                                   requires_grad=embed.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text = getattr(model.config, "get_text_config", None)
    if text is not None:
        text().tie_word_embeddings = False


@torch.no_grad()
def fold_norms(model: nn.Module, p: Plan) -> None:
    """Step 1: ``W <- W diag(g)`` for each norm's readers, then ``g <- 1`` (float64 math)."""
    untie(model, p)
    for norm_name, readers in p.norms:
        norm = model.get_submodule(norm_name)
        g = norm.weight.detach().double()
        for r in readers:
            lin = model.get_submodule(r)
            lin.weight.copy_((lin.weight.double() * g).to(lin.weight.dtype))
        norm.weight.fill_(1.0)


def rotated_params(model: nn.Module, p: Plan, q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step 2 as a dict ``parameter name -> rotated tensor`` (differentiable in ``q``; the
    result has ``q``'s dtype). Norms must already be folded."""
    out = {}
    e = model.get_submodule(p.embed).weight
    out[f"{p.embed}.weight"] = e.to(q.dtype) @ q
    for r in p.readers:
        out[f"{r}.weight"] = model.get_submodule(r).weight.to(q.dtype) @ q
    for w in p.writers:
        lin = model.get_submodule(w)
        out[f"{w}.weight"] = q.T @ lin.weight.to(q.dtype)
        if lin.bias is not None:
            out[f"{w}.bias"] = lin.bias.to(q.dtype) @ q
    return out


@torch.no_grad()
def fuse_residual(model: nn.Module, p: Plan, q: torch.Tensor) -> None:
    """Write ``rotated_params(model, p, q)`` into the model in place (``q`` orthogonal)."""
    new = rotated_params(model, p, q.double())
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in new.items():
        params[name].copy_(value.to(params[name].dtype))


@torch.no_grad()
def fuse_heads(model: nn.Module, p: Plan, r2: torch.Tensor) -> None:
    """Step 3: fuse the per-head ``R2 (head_dim, head_dim)`` into v_proj and o_proj."""
    h = p.head_dim
    r2 = r2.double()
    for v_name, o_name in p.heads:
        v, o = model.get_submodule(v_name), model.get_submodule(o_name)
        if v.out_features % h or o.in_features % h:
            raise ValueError(f"{v_name}/{o_name}: sizes are not multiples of head_dim {h}")
        wv = v.weight.double().reshape(-1, h, v.in_features)
        v.weight.copy_((r2.T @ wv).reshape(v.weight.shape).to(v.weight.dtype))
        if v.bias is not None:
            v.bias.copy_((v.bias.double().reshape(-1, h) @ r2).reshape(-1).to(v.bias.dtype))
        wo = o.weight.double().reshape(o.out_features, -1, h)
        o.weight.copy_((wo @ r2).reshape(o.weight.shape).to(o.weight.dtype))


def residual_matrix(rot: dict, d: int) -> torch.Tensor:
    """The dense ``Q (d, d)`` (float64) of a rotation spec (module docstring)."""
    if rot["kind"] == "global":
        return torch.from_numpy(global_rotation(d, int(rot.get("seed", 0))).copy())
    if rot["kind"] == "block":
        b = int(rot["size"])
        if d % b:
            raise ValueError(f"block rotation size {b} does not divide the size {d}")
        return torch.block_diag(*[torch.from_numpy(hadamard(b))] * (d // b))
    raise ValueError(f"unknown rotation kind {rot['kind']!r}")


def head_matrix(rot: dict, head_dim: int) -> torch.Tensor:
    """R2 (float64): like ``residual_matrix`` on ``head_dim``; a block rotation is capped at the
    head size (a head inside one scale block is rotated whole)."""
    if rot["kind"] == "block":
        rot = {**rot, "size": min(int(rot["size"]), head_dim)}
    return residual_matrix(rot, head_dim)


def down_rotation(rot: dict, model: nn.Module, p: Plan) -> dict:
    """The online R4 spec for the down projections (checked against their input size)."""
    k = model.get_submodule(p.downs[0]).in_features
    if rot["kind"] == "block" and k % int(rot["size"]):
        raise ValueError(f"block rotation size {rot['size']} does not divide {k}")
    return dict(rot)


def prepare(model: nn.Module) -> Plan:
    """Plan, untie and fold the norms (steps 1 and the untying of step 2)."""
    p = plan(model)
    fold_norms(model, p)
    return p


def quantize_rotated(model, targets: dict, downs: set[str], wspec, aspec, r4: dict, calibration,
                     opts: dict, progress: bool = True) -> None:
    """Quantize a residual-rotated model: RTN, or GPTQ with ``opts["gptq"]``; the linears named
    in ``downs`` get the online rotation ``r4``, every other linear none."""
    from . import gptq, rtn
    from .calibrate import sequential

    if opts.get("gptq") and wspec is not None:
        if calibration is None:
            raise ValueError("GPTQ needs calibration token ids")

        def fn(layer, named, run):
            gptq.apply_layer(model, layer, {n: m for n, m in named.items() if n not in downs},
                             run, wspec, aspec, None, opts)
            gptq.apply_layer(model, layer, {n: m for n, m in named.items() if n in downs},
                             run, wspec, aspec, r4, opts)

        seen = sequential(model, calibration, targets, fn, progress, opts.get("batch_size", 4))
        targets = {n: m for n, m in targets.items() if n not in seen}
    rtn.apply(model, {n: m for n, m in targets.items() if n not in downs}, wspec, aspec, None,
              progress)
    rtn.apply(model, {n: m for n, m in targets.items() if n in downs}, wspec, aspec, r4, progress)


def apply(model, targets: dict, wspec, aspec, rot: dict, calibration, opts: dict,
          progress: bool = True) -> None:
    """QuaRot: fuse the residual rotation of kind ``rot`` (and R2 unless ``opts["r2"]`` is
    false), then quantize (``quantize_rotated``)."""
    p = prepare(model)
    d = model.get_submodule(p.embed).weight.shape[1]
    fuse_residual(model, p, residual_matrix(rot, d))
    if opts.get("r2", True):
        fuse_heads(model, p, head_matrix(rot, p.head_dim))
    quantize_rotated(model, targets, set(p.downs), wspec, aspec, down_rotation(rot, model, p),
                     calibration, opts, progress)
