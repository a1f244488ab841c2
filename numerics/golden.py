"""Golden-vector export: the exact codes, scales and values of one quantization, as JSON.

``golden_vectors(x, fmt, **options)`` returns a JSON-serialisable dict in the conventions of
``numerics/vectors/mx.json`` (``GOLDEN_CONVENTIONS`` is written into every export), for kernel
teams to diff against. Inputs are rounded to float32 first (the vectors describe float32
inputs); arrays are flattened in C order next to their shapes. ``check_golden(doc)`` re-runs an
export and lists every field that no longer matches.

    doc = golden_vectors(x, "mxfp4", scale_rule="rceil")
    json.dump(doc, open("vectors.json", "w"), indent=1)
    assert check_golden(doc) == []
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal

import numpy as np

from .api import dequantize, quantize
from .codec import as_float64, decode, encode
from .formats import BLOCK_FORMATS, block_format
from .specs import ElementFormat, element_format

Kind = Literal["block", "element"]

GOLDEN_CONVENTIONS = {
    "input_f32_hex": 'inputs as IEEE-754 binary32 bit patterns, "0x" + 8 hex digits, flattened '
    "in C order (shape in \"shape\"); authoritative",
    "input_f32": 'the same inputs as shortest round-trip decimal strings; "nan", "inf", "-inf"; '
    '"-0.0" is negative zero',
    "codes": 'element codes, "0x" + 1 hex digit for 4-bit formats, else 2 (FP6 in the low 6 '
    "bits), unpacked, one per element; null where the block scale is NaN (don't-care)",
    "scale_<format>": 'per-block scale codes ("0x" + 2 hex digits), flattened in C order over '
    '"scale_shape" (the input shape with the quantized axis replaced by the block count); '
    '"scale_f32_hex" for float32 scale values (absmax formats)',
    "tensor_scale_f32_hex": "per-tensor decode scale (NVFP4 global_amax / 2688, absmax per-tensor "
    "scale) as a binary32 bit pattern",
    "e1_8_bits, e1_16_bits": 'HiF4 micro-exponent bits per block, one "0"/"1" character per group '
    "(group 0 first)",
    "packed_bytes, packed_meta": "storage bytes of lowbit.numerics.packing.pack(q): the element "
    "data (FP4: element 2i in the low nibble of byte i) and the HiF4 metadata words, flattened; "
    "absent when the packing module is not available",
    "decoded_f32_hex, dequantized_f32_hex": 'values as binary32 bit patterns; "nan", "+inf", '
    '"-inf" for specials; a -0 code gives -0.0 (0x80000000; mx.json writes +0.0 there)',
    "options": "keyword arguments that reproduce the vectors: quantize(x, format, **options) for "
    "block formats, encode(x, format, **options) for element formats",
    "resolved_options": "every option the library resolved (defaults filled in), for reading",
}


def golden_vectors(x, fmt: str, *, kind: Kind | None = None, **options) -> dict:
    """Golden vectors of ``x`` in ``fmt`` (JSON-serialisable; module docstring).

    Args:
        x: input array of any real float dtype; rounded to float32 first.
        fmt: block format (quantized with ``quantize``) or element format (``encode``, plus the
            format's complete decode table).
        kind: ``"block"`` or ``"element"`` for names that are both (hif8, int8, int4); default
            block when ``fmt`` is a block format.
        **options: passed to ``quantize`` (``axis``, ``scale_rule``, ``preset``, ...) or to
            ``encode`` (``rounding``, ``saturate``, ``rbits``).
    """
    x32 = as_float64(x).astype(np.float32)
    kind = kind or ("block" if fmt in BLOCK_FORMATS else "element")
    doc = {
        "format": fmt,
        "kind": kind,
        "generator": f"lowbit {_version()} numerics.golden",
        "conventions": GOLDEN_CONVENTIONS,
        "options": {k: _plain(v) for k, v in options.items()},
        "shape": list(x32.shape),
        "input_f32_hex": f32_hex(x32),
        "input_f32": [repr(float(v)) for v in x32.reshape(-1)],
    }
    if kind == "block":
        doc.update(_block_vectors(x32, fmt, options))
    elif kind == "element":
        doc.update(_element_vectors(x32, element_format(fmt), options))
    else:
        raise ValueError(f"kind must be 'block' or 'element', got {kind!r}")
    return doc


def check_golden(doc: dict) -> list[str]:
    """Re-export ``doc``'s inputs with its options; one line per field that differs (empty: ok).

    Fields the fresh export lacks (packed bytes without the packing module) are not compared.
    """
    x = f32_from_hex(doc["input_f32_hex"]).reshape(doc["shape"])
    options = {k: _restore(v) for k, v in doc["options"].items()}
    fresh = golden_vectors(x, doc["format"], kind=doc["kind"], **options)
    problems = []
    for section in ("expected", "decode_table"):
        old, new = doc.get(section), fresh.get(section)
        if isinstance(old, dict):
            problems += [
                _diff(f"{section}.{key}", old[key], new[key]) for key in old if key in new
            ]
        elif old is not None:
            problems.append(_diff(section, old, new))
    return [p for p in problems if p]


# -- hex helpers (shared with conformance) ------------------------------------------------------


def f32_hex(values) -> list[str]:
    """binary32 bit patterns ("0x" + 8 upper-case hex digits) of float32-representable values."""
    bits = np.asarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    return [f"0x{int(b):08X}" for b in bits]


def value_hex(values) -> list[str]:
    """Like ``f32_hex`` but "nan", "+inf", "-inf" for specials (decoded-value convention)."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    out = f32_hex(v)
    for i in np.flatnonzero(~np.isfinite(v)):
        out[i] = "nan" if np.isnan(v[i]) else ("+inf" if v[i] > 0 else "-inf")
    return out


def f32_from_hex(items) -> np.ndarray:
    """float32 array from bit patterns ("0x3F800000") or "nan", "inf", "+inf", "-inf"."""
    special = {"nan": 0x7FC00000, "inf": 0x7F800000, "+inf": 0x7F800000, "-inf": 0xFF800000}
    bits = [special[s.lower()] if s.lower() in special else int(s, 16) for s in items]
    return np.array(bits, dtype=np.uint32).view(np.float32)


def code_hex(codes, bits: int) -> list[str]:
    """Codes as "0x" + 1 hex digit (formats of <= 4 bits) or 2 hex digits."""
    width = 1 if bits <= 4 else 2
    return [f"0x{int(c):0{width}X}" for c in np.asarray(codes).reshape(-1)]


# -- exports ------------------------------------------------------------------------------------


def _block_vectors(x32: np.ndarray, fmt: str, options: dict) -> dict:
    spec = block_format(fmt)
    q = quantize(x32, spec, **options)
    expected: dict = {}
    codes = code_hex(q.codes, spec.element.bits)
    if q.scales is not None:
        expected["scale_shape"] = list(q.scales.shape)
        if spec.scale is None:
            expected["scale_f32_hex"] = value_hex(q.scales)
            nan_scale = np.isnan(q.scales)
        else:
            expected[f"scale_{spec.scale.name}"] = code_hex(q.scales, 8)
            nan_scale = np.isnan(spec.scale.values[q.scales.astype(np.int64)])
        dont_care = np.repeat(nan_scale, q.block_size, axis=q.axis)
        dont_care = np.take(dont_care, np.arange(q.codes.shape[q.axis]), axis=q.axis)
        codes = [None if d else c for c, d in zip(codes, dont_care.reshape(-1), strict=True)]
    if q.tensor_scale is not None:
        expected["tensor_scale_f32_hex"] = f32_hex([q.tensor_scale])[0]
    if q.micro is not None:
        micro = q.micro.reshape(-1, q.micro.shape[-1])
        expected["e1_8_bits"] = ["".join(map(str, m[:8])) for m in micro]
        expected["e1_16_bits"] = ["".join(map(str, m[8:])) for m in micro]
    expected["element_codes"] = codes
    expected.update(_packed(q))
    expected["dequantized_f32_hex"] = value_hex(dequantize(q))
    resolved = {
        "axis": q.axis, "block_size": q.block_size, "pad": q.pad, "prescale": q.prescale,
        **q.options,
    }
    return {"resolved_options": {k: _plain(v) for k, v in resolved.items()}, "expected": expected}


def _packed(q) -> dict:
    """Packed storage bytes, or nothing while the packing module is not available."""
    try:
        from .packing import pack
    except ImportError:
        return {}
    p = pack(q)
    out = {"packed_bytes": code_hex(np.asarray(p.data, dtype=np.uint8), 8)}
    if p.meta is not None:
        out["packed_meta"] = code_hex(np.asarray(p.meta, dtype=np.uint8), 8)
    return out


def _element_vectors(x32: np.ndarray, spec: ElementFormat, options: dict) -> dict:
    codes = encode(x32, spec, **options)
    table = np.arange(spec.n_codes)
    table_values = decode(table, spec)
    resolved = {
        "rounding": options.get("rounding") or spec.rounding,
        "saturate": spec.saturate if options.get("saturate") is None else options["saturate"],
    }
    return {
        "resolved_options": resolved,
        "expected": {
            "codes": code_hex(codes, spec.bits),
            "decoded_f32_hex": value_hex(decode(codes, spec)),
        },
        "decode_table": [
            {"code": c, "value_f32_hex": h, "value": repr(float(v))}
            for c, h, v in zip(code_hex(table, spec.bits), value_hex(table_values),
                               table_values, strict=True)
        ],
    }


def _plain(v):
    """A JSON-serialisable form of an option value (arrays such as ``rbits`` keep their dtype)."""
    if isinstance(v, np.ndarray):
        return {"dtype": v.dtype.name, "shape": list(v.shape), "values": v.reshape(-1).tolist()}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def _restore(v):
    """Inverse of ``_plain`` for arrays."""
    if isinstance(v, dict) and set(v) == {"dtype", "shape", "values"}:
        return np.array(v["values"], dtype=v["dtype"]).reshape(v["shape"])
    return v


def _diff(name: str, old, new) -> str:
    if old == new:
        return ""
    if not (isinstance(old, list) and isinstance(new, list)) or len(old) != len(new):
        return f"{name}: stored {_short(old)}, now {_short(new)}"
    bad = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    shown = ", ".join(f"[{i}] {old[i]} -> {new[i]}" for i in bad[:5])
    return f"{name}: {len(bad)} of {len(old)} differ: {shown}" + (" ..." if len(bad) > 5 else "")


def _short(v) -> str:
    s = repr(v)
    return s if len(s) < 80 else s[:77] + "..."


def _version() -> str:
    try:
        return metadata.version("lowbit")
    except metadata.PackageNotFoundError:
        return "unknown"
