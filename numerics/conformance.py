"""Conformance suite: every format against exact arithmetic and the shipped golden vectors.

``run_conformance()`` returns one ``FormatReport`` per name in ``formats()``:

* element formats: exhaustive decode -> encode identity of every non-NaN code, for every
  deterministic rounding mode and both overflow policies (-0 maps to itself); encode at every
  midpoint of neighbouring values and one float64 ulp either side of it, against the expected
  neighbour computed here from the rounding definitions (ties to even use the code's last
  significand bit; between two odd neighbours, or formats without mantissa bits, the larger
  magnitude); the decode tables, format constants, E2M1 midpoints and element-cast
  disagreements of ``vectors/elements.json`` (a peer's cast counts when it is one of our
  overflow policies; where the input is outside our definition, it is noted), ``hif8.json``
  and the S1P2 tables of ``hif4.json``;
* block formats: block-level identity (blocks of every code value at several scales quantize to
  themselves), every ``mx.json`` vector and each peer group of it that a preset or scale rule
  reproduces (the float32-log2 quirks of microxcaling, gfloat on float32, torchao eager RCEIL
  and ModelOpt are noted as not reproduced), ``nvfp4.json`` (per NVFP4 algorithm) and
  ``hif4.json``. Formats not implemented yet are reported as skipped.

A check is one compared value (a code, a scale, a bit pattern). Vectors are loaded from the
package data (``lowbit/numerics/vectors``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from .api import dequantize, quantize
from .codec import ROUNDING_MODES, decode, encode
from .formats import BLOCK_FORMATS, block_format, formats
from .golden import code_hex, f32_from_hex, value_hex
from .specs import ELEMENT_FORMATS, ElementFormat

VECTOR_DIR = Path(__file__).parent / "vectors"
MODES = tuple(m for m in ROUNDING_MODES if m != "stochastic")
VECTOR_ELEMENT_NAMES = {"INT8": "int8_1.6", "MXINT8": "int8_1.6"}
MX_PEERS = {
    "REF exact FLOOR": {"scale_rule": "floor"},
    "ml_dtypes": {},
    "REF exact RCEIL": {"scale_rule": "rceil"},
    "TE RCEIL bit rule": {"preset": "transformer_engine"},
    "torchao to_mx RCEIL": {"preset": "transformer_engine"},
    "torchao to_mx FLOOR": {"preset": "torchao"},
    "torchao to_mx CEIL": {"preset": "torchao", "scale_rule": "ceil"},
    "torchao to_mx EVEN": {"preset": "torchao", "scale_rule": "even"},
    "gfloat (float64 input)": {"preset": "gfloat"},
    "gfloat (float32 input)": {"preset": "gfloat"},
    "modelopt MXFP4QTensor": {"preset": "modelopt"},
    'microxcaling round="nearest"': {"preset": "microxcaling"},
    'microxcaling round="even"': {"preset": "microxcaling", "rounding": "nearest_even"},
}
"""How each peer label of mx.json is reproduced (quantize keyword arguments)."""
F32_LOG2_PEERS = {
    "gfloat (float32 input)", "torchao to_mx RCEIL", "modelopt MXFP4QTensor",
    'microxcaling round="nearest"', 'microxcaling round="even"',
}
"""Peers that compute the scale with a float32 log2 (mx.MX_PRESETS docstring)."""
NVFP4_PEERS = {
    "TE reference formula (re-implemented, FP32 torch ops)": {"algorithm": "transformer_engine"},
    "torchao nvfp4_quantize": {"algorithm": "torchao"},
    "modelopt NVFP4QTensor.quantize": {"algorithm": "modelopt"},
}
QUIRK = "not reproduced: float32-log2 peer quirk"


@dataclass
class FormatReport:
    """Checks of one format: counts, failure details, notes and skipped parts."""

    name: str
    kind: str
    checks: int = 0
    mismatches: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.mismatches:
            return "FAIL"
        if self.skipped and not self.checks:
            return "skipped: " + "; ".join(sorted(set(self.skipped)))
        return "ok"

    def check(self, what: str, expected, got) -> None:
        """Compare two sequences value by value; record a failure line if any differ."""
        expected, got = list(expected), list(got)
        if len(expected) != len(got):
            self.checks += 1
            self.mismatches += 1
            self.failures.append(f"{what}: expected {len(expected)} values, got {len(got)}")
            return
        bad = [i for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g]
        self.checks += len(expected)
        self.mismatches += len(bad)
        if bad:
            shown = ", ".join(f"[{i}] expected {expected[i]} got {got[i]}" for i in bad[:4])
            self.failures.append(f"{what}: {len(bad)} of {len(expected)} differ: {shown}")


def run_conformance(names: list[str] | None = None) -> list[FormatReport]:
    """Run every check on ``names`` (default: every name in ``formats()``)."""
    unknown = sorted(set(names or ()) - set(formats()))
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; formats: {', '.join(formats())}")
    reports = {}
    for name in names or formats():
        kinds = [k for k, reg in (("element", ELEMENT_FORMATS), ("block", BLOCK_FORMATS))
                 if name in reg]
        reports[name] = FormatReport(name, "+".join(kinds))
    for name, rep in reports.items():
        if name in ELEMENT_FORMATS:
            _element_identity(rep, ELEMENT_FORMATS[name])
            _element_midpoints(rep, ELEMENT_FORMATS[name])
        if name in BLOCK_FORMATS:
            _guard(rep, _block_identity, rep, name)
    for vector_checks in (_elements_json, _hif8_json, _hif4_json, _mx_json, _nvfp4_json):
        vector_checks(reports)
    return list(reports.values())


def _guard(rep: FormatReport, fn, *args) -> None:
    """Run ``fn``; a format that is not implemented yet marks the report skipped."""
    try:
        fn(*args)
    except NotImplementedError:
        rep.skipped.append(f"{rep.name} not implemented yet")


def _run(reports: dict[str, FormatReport], name: str, fn, *args) -> None:
    """``fn(report, *args)`` for the report of format ``name``, if that format was selected."""
    if name in reports:
        _guard(reports[name], fn, reports[name], *args)


@cache
def load_vectors(name: str) -> dict:
    """The parsed vector file ``name`` (e.g. "mx.json") from the package data."""
    return json.loads((VECTOR_DIR / name).read_text())


# -- element formats: exhaustive checks ----------------------------------------------------------


def _policies(spec: ElementFormat) -> tuple[bool, ...]:
    return (True, False) if spec.overflow_code is not None else (True,)


def _element_identity(rep: FormatReport, spec: ElementFormat) -> None:
    codes = np.arange(spec.n_codes)
    vals = spec.values
    for saturate in _policies(spec):
        keep = ~np.isnan(vals) & (np.isfinite(vals) | (not saturate))
        for mode in MODES:
            got = encode(vals[keep], spec, rounding=mode, saturate=saturate)
            rep.check(f"{spec.name} decode->encode identity ({mode}, saturate={saturate})",
                      codes[keep], got.astype(int))


def _is_even(spec: ElementFormat, code: int, value: float) -> bool:
    """Whether the significand of ``code`` ends in a 0 bit, read from the code's bits."""
    if value == 0:
        return True
    if spec.encoding == "hif8":
        return (code & 0x7F) >= 8 and not code & 1  # denormals: only the implicit 1
    if spec.encoding == "float" and spec.man_bits == 0:
        return False
    return not code & 1


def _grid(spec: ElementFormat, saturate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted finite values (+-0 once) and their codes, with the virtual overflow points."""
    vals = spec.values
    table = {}
    for c in np.flatnonzero(np.isfinite(vals))[::-1]:  # lowest code wins: +0 over -0
        table[float(vals[c])] = int(c)
    if not saturate:
        table[spec.overflow_value] = spec.overflow_code
        if spec.sign_bit:
            table[-spec.overflow_value] = spec.overflow_code | spec.sign_bit
    grid = np.array(sorted(table))
    return grid, np.array([table[v] for v in grid])


def _expected_between(spec, mode, lo, hi, clo, chi, x) -> int:
    """Expected code for ``lo < x < hi`` or the tie ``x == (lo + hi) / 2``."""
    small, big = ((lo, clo), (hi, chi)) if abs(lo) <= abs(hi) else ((hi, chi), (lo, clo))
    mid = (lo + hi) / 2
    if mode == "toward_zero":
        pick = small
    elif x != mid:
        pick = (lo, clo) if x < mid else (hi, chi)
    elif mode == "nearest_away":
        pick = big
    elif mode == "nearest_zero":
        pick = small
    else:  # nearest_even
        even_small, even_big = _is_even(spec, small[1], small[0]), _is_even(spec, big[1], big[0])
        pick = small if even_small and not even_big else big
    if pick[0] == 0 and x < 0 and spec.negative_zero_code is not None:
        return spec.negative_zero_code
    return pick[1]


def _element_midpoints(rep: FormatReport, spec: ElementFormat) -> None:
    for saturate in _policies(spec):
        grid, gcodes = _grid(spec, saturate)
        lo, hi = grid[:-1], grid[1:]
        mids = (lo + hi) / 2
        for label, xs in (("midpoint", mids), ("ulp below midpoint", np.nextafter(mids, -np.inf)),
                          ("ulp above midpoint", np.nextafter(mids, np.inf))):
            for mode in MODES:
                want = [_expected_between(spec, mode, a, b, ca, cb, v)
                        for a, b, ca, cb, v in zip(lo, hi, gcodes[:-1], gcodes[1:], xs,
                                                   strict=True)]
                got = encode(xs, spec, rounding=mode, saturate=saturate)
                rep.check(f"{spec.name} {label} ({mode}, saturate={saturate})", want,
                          got.astype(int).tolist())


# -- block formats: identity ---------------------------------------------------------------------


def _block_identity(rep: FormatReport, name: str) -> None:
    """Blocks made of every code value (and the largest one) times a power of two."""
    spec = block_format(name)
    elem = spec.element
    vals = elem.values
    keep = np.isfinite(vals) & ((vals != elem.min) | (elem.encoding != "int"))
    codes = np.flatnonzero(keep)
    top = int(np.flatnonzero(vals == elem.max)[0])
    if spec.scheme == "mx":
        exps = (-127, -1, 0, 1, 127)
    elif spec.scheme == "absmax":
        exps = (-20, 0, 20)
    else:
        return  # nvfp4 / hif4: the golden vectors cover them
    width = spec.block_size or len(codes) + 1
    per_row = width - 1
    n_rows = -(-len(codes) // per_row)
    body = np.resize(codes, n_rows * per_row).reshape(n_rows, per_row)
    block_codes = np.concatenate([np.full((n_rows, 1), top), body], axis=1)
    for k in exps:
        x = np.ldexp(vals[block_codes], k)
        q = quantize(x, name)
        if q.scales is None and q.tensor_scale is None and k != 0:
            continue  # unscaled: only the element grid itself
        rep.check(f"{name} block identity 2^{k}: codes", block_codes.reshape(-1).tolist(),
                  q.codes.astype(int).reshape(-1).tolist())
        rep.check(f"{name} block identity 2^{k}: values", [v.hex() for v in x.reshape(-1)],
                  [v.hex() for v in dequantize(q, dtype=np.float64).reshape(-1)])


# -- vectors: elements.json, hif8.json, hif4.json ------------------------------------------------


def _element_name(label: str) -> str:
    return VECTOR_ELEMENT_NAMES.get(label, label.lower())


def _elements_json(reports: dict[str, FormatReport]) -> None:
    doc = load_vectors("elements.json")
    for label, table in doc["decode_tables"].items():
        _run(reports, _element_name(label), _decode_table, table["codes"])
    for label, const in doc["format_constants"].items():
        if "max_normal" in const:
            _run(reports, _element_name(label), _constants, const)
    _run(reports, "e2m1", _encode_vectors, doc["e2m1_rne_midpoints"]["vectors"], "input",
         "expected_code", {})
    for vec in doc["element_cast_disagreements"]["vectors"]:
        _run(reports, _element_name(vec["target"]), _cast_disagreement, vec)


def _decode_table(rep: FormatReport, rows: list[dict]) -> None:
    spec = ELEMENT_FORMATS[rep.name]
    codes = np.array([int(r["code"], 16) for r in rows])
    rep.check(f"{rep.name} decode table", [r["value_f32_hex"] for r in rows],
              value_hex(decode(codes, spec)))


def _constants(rep: FormatReport, const: dict) -> None:
    spec = ELEMENT_FORMATS[rep.name]
    rep.check(f"{rep.name} format constants (max, smallest subnormal, emax, bias)",
              [float(const["max_normal"]), float(const["min_subnormal"]), const["emax_elem"],
               const["bias"]],
              [spec.max, spec.smallest_positive, spec.emax, spec.bias])


def _encode_vectors(rep: FormatReport, vectors: list[dict], key_in: str, key_out: str,
                    options: dict) -> None:
    spec = ELEMENT_FORMATS[rep.name]
    x = np.array([float(v[key_in]) for v in vectors])
    want = [int(v[key_out], 16) for v in vectors]
    rep.check(f"{rep.name} encode vectors", want,
              encode(x, spec, **options).astype(int).tolist())


def _cast_disagreement(rep: FormatReport, vec: dict) -> None:
    """A peer's cast counts where it is one of our overflow policies; else it is noted."""
    spec = ELEMENT_FORMATS[rep.name]
    x = f32_from_hex([vec["input_f32_hex"]])
    for peer in ("ml_dtypes", "torch"):
        res = vec["results"].get(peer, {})
        if "code" not in res:
            continue
        want = int(res["code"], 16)
        ours = []
        for saturate in _policies(spec):
            try:
                ours.append(int(encode(x, spec, saturate=saturate)[0]))
            except ValueError as err:
                ours.append(f"ValueError: {err}")
        what = f"{rep.name} cast of {vec['input_f32']} like {peer} ({want:#04x})"
        undefined = (not spec.signed and x[0] < 0) or (not spec.has_zero and x[0] == 0)
        if want in ours:
            rep.check(what, [want], [want])
        elif undefined or all(isinstance(o, str) for o in ours):
            rep.notes.append(f"{what}: not one of ours (lowbit gives {ours})")
        else:
            rep.check(what, [want], [ours[0]])


def _hif8_json(reports: dict[str, FormatReport]) -> None:
    doc = load_vectors("hif8.json")
    _run(reports, "hif8", _hif8_vectors, doc)


def _hif8_vectors(rep: FormatReport, doc: dict) -> None:
    spec = ELEMENT_FORMATS["hif8"]
    vecs = doc["vectors"]
    x = f32_from_hex([v["input_f32_hex"] for v in vecs])
    codes = encode(x, spec)
    rep.check("hif8 encode vectors", [int(v["expected_code"], 16) for v in vecs],
              codes.astype(int).tolist())
    rep.check("hif8 decode of the vectors", [v["expected_decoded_f32_hex"] for v in vecs],
              value_hex(decode(codes, spec)))
    _decode_table(rep, doc["decode_table"])


def _hif4_json(reports: dict[str, FormatReport]) -> None:
    doc = load_vectors("hif4.json")
    _run(reports, "e1m2", _decode_table, doc["element_code_table"]["codes"])
    examples = doc["float4_e1m2_cast_is_not_hif4_rounding"]["examples"]
    _run(reports, "e1m2", _encode_vectors, examples, "input", "float4_e1m2_code",
         {"rounding": "nearest_even"})
    for vec in doc["vectors"]:
        _run(reports, "hif4", _hif4_vector, vec)


def _hif4_vector(rep: FormatReport, vec: dict) -> None:
    bits = np.array([int(h, 16) << 16 for h in vec["input_bf16_hex"]], dtype=np.uint32)
    q = quantize(bits.view(np.float32), "hif4")
    exp = vec["expected"]
    micro = "".join(str(int(b)) for b in q.micro.reshape(-1))
    got = {
        "e6m2_code": code_hex(q.scales, 8),
        "e1_8_bits": [micro[:8]],
        "e1_16_bits": [micro[8:]],
        "nibbles": ["".join(f"{int(c):X}" for c in q.codes)],
        "dequantized_f32_hex": value_hex(dequantize(q)),
    }
    for key, val in got.items():
        want = exp[key] if isinstance(exp[key], list) else [exp[key]]
        rep.check(f"hif4 {vec['id']} {key}", want, val)


# -- vectors: mx.json, nvfp4.json ----------------------------------------------------------------


def _mx_name(element_label: str) -> str:
    elem = _element_name(element_label)
    return next(n for n, f in BLOCK_FORMATS.items() if f.scheme == "mx" and f.element.name == elem)


def _mx_json(reports: dict[str, FormatReport]) -> None:
    for vec in load_vectors("mx.json")["vectors"]:
        _run(reports, _mx_name(vec["element_format"]), _mx_vector, vec)


def _mx_vector(rep: FormatReport, vec: dict) -> None:
    x = f32_from_hex(vec["input_f32_hex"])
    exp = vec["expected"]
    _mx_output(rep, f"{vec['id']} expected", x, {"scale_rule": vec["scale_rule"].lower()}, exp,
               full=True)
    groups = [(vec["verified_by"] + vec.get("other_rules_with_identical_output", []), exp)]
    groups += [(dev["peers"], dev) for dev in vec.get("peer_deviations", [])]
    for peers, out in groups:
        seen = []
        for peer in peers:
            opts = MX_PEERS.get(peer)
            if opts is None:
                rep.notes.append(f"{vec['id']} {peer}: no preset for this peer")
            elif opts not in seen:
                seen.append(opts)
                _mx_peer(rep, vec["id"], peer, x, opts, out)


def _mx_peer(rep: FormatReport, vid: str, peer: str, x: np.ndarray, opts: dict,
             out: dict) -> None:
    """Check a peer group's output with the peer's preset; float32-log2 peers may be noted."""
    if peer in F32_LOG2_PEERS:
        probe = FormatReport(rep.name, rep.kind)
        _mx_output(probe, f"{vid} {peer}", x, opts, out, full=False)
        if probe.mismatches:
            rep.notes.append(f"{vid} {peer}: {QUIRK}")
            return
    _mx_output(rep, f"{vid} {peer}", x, opts, out, full=False)


def _mx_output(rep: FormatReport, what: str, x: np.ndarray, opts: dict, out: dict,
               full: bool) -> None:
    q = quantize(x, rep.name, **opts)
    rep.check(f"{what} scale ({opts})", [int(out["scale_e8m0"], 16)], [int(q.scales[0])])
    if out.get("element_codes") is not None:
        rep.check(f"{what} element codes ({opts})", [int(c, 16) for c in out["element_codes"]],
                  q.codes.astype(int).tolist())
    if full and "dequantized_f32_hex" in out:
        want = out["dequantized_f32_hex"]
        got = [g if (g, w) != ("0x80000000", "0x00000000") else w  # vectors write -0 as +0.0
               for g, w in zip(value_hex(dequantize(q)), want, strict=True)]
        rep.check(f"{what} dequantized", want, got)
    if full and "packed_bytes" in out:
        _packed(rep, what, q, out["packed_bytes"])


def _packed(rep: FormatReport, what: str, q, want: list[str]) -> None:
    try:
        from .packing import pack
    except ImportError:
        rep.notes.append(f"{what}: packed bytes not checked (numerics.packing not available)")
        return
    got = np.asarray(pack(q).data, dtype=np.uint8).reshape(-1).tolist()
    rep.check(f"{what} packed bytes", [int(h, 16) for h in want], got)


def _nvfp4_json(reports: dict[str, FormatReport]) -> None:
    for vec in load_vectors("nvfp4.json")["vectors"]:
        _run(reports, "nvfp4", _nvfp4_vector, vec)


def _nvfp4_vector(rep: FormatReport, vec: dict) -> None:
    """Expected output by every verified peer with an algorithm; deviations by theirs."""
    x = f32_from_hex(vec["input_f32_hex"])
    exp = vec["expected"]
    amax = {} if vec["global_amax"] is None else {"global_amax": float(vec["global_amax"])}
    groups = [(peer, exp) for peer in vec["verified_by"]]
    groups += [(dev["peer"], {**exp, **dev}) for dev in vec.get("peer_deviations", [])]
    full = True
    for peer, out in groups:
        if peer not in NVFP4_PEERS:
            rep.notes.append(f"{vec['id']} {peer}: no algorithm for this peer")
            continue
        _nvfp4_output(rep, f"{vec['id']} {peer}", x, {**amax, **NVFP4_PEERS[peer]}, out, full)
        full = False


def _nvfp4_output(rep: FormatReport, what: str, x: np.ndarray, opts: dict, out: dict,
                  full: bool) -> None:
    q = quantize(x, "nvfp4", **opts)
    rep.check(f"{what} tensor scale ({opts})", [out["s_global_dec_f32_hex"]],
              value_hex([q.tensor_scale]))
    rep.check(f"{what} block scales ({opts})", [int(c, 16) for c in out["block_scales_e4m3"]],
              q.scales.astype(int).tolist())
    rep.check(f"{what} element codes ({opts})", [int(c, 16) for c in out["element_nibbles"]],
              q.codes.astype(int).tolist())
    if full and "packed_bytes" in out:
        _packed(rep, what, q, out["packed_bytes"])
