"""Kernel validation (numerics.compare) and golden-vector export (numerics.golden)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from vectors import load

from lowbit import numerics as ln
from lowbit.numerics.compare import compare
from lowbit.numerics.golden import check_golden, f32_from_hex, golden_vectors

MX_DEFAULT = {"preset": "ocp", "scale_rule": "floor", "rounding": "nearest_even"}


def _data(shape, seed=0) -> np.ndarray:
    """Normal data over a spread of magnitudes (row-wise), float32."""
    rng = np.random.default_rng(seed)
    mag = np.exp2(rng.integers(-6, 7, size=shape[:-1] + (1,)))
    return (rng.standard_normal(shape) * mag).astype(np.float32)


def _require(fmt: str) -> None:
    """Skip while a block format is still a placeholder."""
    try:
        ln.quantize(np.ones((1, 64), np.float32), fmt)
    except NotImplementedError:
        pytest.skip(f"{fmt} is not implemented yet (ln.quantize raises NotImplementedError)")


def _foreign(q) -> dict:
    return {"codes": q.codes, "scales": q.scales, "tensor_scale": q.tensor_scale,
            "micro": q.micro}


def _call(x, fmt, f: dict, **options):
    return compare(x, f["codes"], f["scales"], fmt, tensor_scale=f["tensor_scale"],
                   micro=f["micro"], **options)


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_e4m3", "mxfp6_e2m3", "mxint8", "int8", "hif8",
                                 "nvfp4", "hif4"])
def test_correct_result_has_no_mismatch(fmt):
    _require(fmt)
    x = _data((4, 128))
    q = ln.quantize(x, fmt)
    c = _call(x, fmt, _foreign(q))
    assert c.ok and c.elements == [] and c.scales == []
    assert "IDENTICAL" in c.summary()
    exact = [k.options for k in c.candidates if k.mismatches == 0]
    assert exact, "the default configuration must reproduce its own output"
    if fmt.startswith("mx"):
        assert MX_DEFAULT in exact
    elif fmt != "nvfp4":
        assert {"rounding": ln.block_format(fmt).element.rounding} in exact


def test_corrupted_codes_reported_at_their_indices():
    x = _data((40, 3, 2), seed=1)  # axis 0: one full block of 32 and a padded one
    q = ln.quantize(x, "mxfp8_e4m3", axis=0)
    codes = q.codes.copy()
    bad = [(0, 0, 0), (33, 2, 1), (39, 1, 0)]
    for i in bad:
        codes[i] ^= 0x01
    c = compare(x, codes, q.scales, "mxfp8_e4m3", axis=0)
    assert not c.ok and c.scales == []
    assert [e.index for e in c.elements] == bad
    assert [e.block for e in c.elements] == [(0, 0, 0), (1, 2, 1), (1, 1, 0)]
    deq = ln.dequantize(q, dtype=np.float64)
    for e in c.elements:
        assert e.expected_code == q.codes[e.index] and e.got_code == codes[e.index]
        assert e.expected_value == deq[e.index] and not e.consequential
        k = int(q.scales[e.block]) - 127
        assert e.scaled == np.ldexp(float(x[e.index]), -k)  # exact x / 2**k
    assert len(c.to_dict()["elements"]) == 3


def test_tie_reports_zero_distance_and_rounding_candidate():
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = [6.0, 0.75, 2.5]  # scale 2**0: 0.75 and 2.5 are E2M1 ties
    q = ln.quantize(x, "mxfp4")
    codes = q.codes.copy()
    codes[0, 1], codes[0, 2] = 0x1, 0x4  # 0.5 and 2.0: ties toward zero
    c = compare(x, codes, q.scales, "mxfp4")
    ties = {e.index[1]: e for e in c.elements}
    assert sorted(ties) == [1]  # 2.5 -> 2.0 is also what RNE does
    assert (ties[1].scaled, ties[1].boundary, ties[1].distance) == (0.75, 0.75, 0.0)
    exact = [k.options for k in c.candidates]
    assert {"preset": "ocp", "scale_rule": "floor", "rounding": "nearest_zero"} in exact
    assert MX_DEFAULT not in exact


def test_corrupted_scale_makes_block_mismatches_consequential():
    x = _data((2, 96), seed=2)
    q = ln.quantize(x, "mxfp4")
    scales, codes = q.scales.copy(), q.codes.copy()
    scales[1, 2] += 1  # the foreign kernel picked twice the scale for block (1, 2) ...
    k = int(scales[1, 2]) - 127
    codes[1, 64:96] = ln.encode(np.ldexp(x[1, 64:96].astype(np.float64), -k), "e2m1")  # ... and
    c = compare(x, codes, scales, "mxfp4")  # encoded that block with it
    assert [(s.block, s.expected, s.got, s.field) for s in c.scales] == [
        ((1, 2), int(q.scales[1, 2]), int(scales[1, 2]), "scale")
    ]
    assert c.elements and all(e.block == (1, 2) and e.consequential for e in c.elements)
    assert "consequential" in c.summary()


def test_foreign_rceil_nearest_away_found_among_candidates():
    x = _data((64, 160), seed=3)  # 320 blocks: the candidate search screens a sample first
    x[0, :8] = np.array([7.0, 0.5, 2.5, 5.0, 10.0, -2.5, 0.5, 1.5]) * 2  # ties under rceil
    foreign = ln.quantize(x, "mxfp4", scale_rule="rceil", rounding="nearest_away")
    c = compare(x, foreign.codes, foreign.scales, "mxfp4")
    assert not c.ok and c.scales
    found = [k.options for k in c.candidates]
    assert all(k.mismatches == 0 for k in c.candidates)
    assert {"preset": "ocp", "scale_rule": "rceil", "rounding": "nearest_away"} in found
    assert not any(o["rounding"] == "nearest_even" or o["scale_rule"] == "floor" for o in found)


def test_closest_candidates_when_nothing_reproduces():
    x = _data((64, 160), seed=4)
    q = ln.quantize(x, "mxfp4")
    codes = q.codes.copy()
    codes[5, 7] ^= 0x2
    codes[60, 150] ^= 0x1
    c = compare(x, codes, q.scales, "mxfp4")
    assert {k.mismatches for k in c.candidates} == {2}
    assert MX_DEFAULT in [k.options for k in c.candidates]
    assert "closest (2 mismatches)" in c.summary()


def test_validation_errors():
    x = _data((2, 64))
    q = ln.quantize(x, "mxfp4")
    with pytest.raises(ValueError, match="shape"):
        compare(x, q.codes[:, :32], q.scales, "mxfp4")
    with pytest.raises(ValueError, match="unpacked"):
        compare(x, q.codes | 0x10, q.scales, "mxfp4")
    with pytest.raises(ValueError, match="shape"):
        compare(x, q.codes, q.scales[:, :1], "mxfp4")


def test_torchao_to_mx_floor_reproduced_with_torchao_preset():
    pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
        config = pytest.importorskip("torchao.prototype.mx_formats.config")
    import torch

    x = _data((16, 128), seed=5)
    for dtype, fmt in ((torch.float8_e4m3fn, "mxfp8_e4m3"), (torch.float8_e5m2, "mxfp8_e5m2"),
                       (torch.float4_e2m1fn_x2, "mxfp4")):
        s, d = mx_tensor.to_mx(torch.from_numpy(x), dtype, 32,
                               config.ScaleCalculationMode.FLOOR)
        scales = s.view(torch.uint8).numpy()
        data = d.view(torch.uint8).numpy()
        if fmt == "mxfp4":  # two codes per byte, element 2i in the low nibble
            data = np.stack([data & 0xF, data >> 4], axis=-1).reshape(x.shape)
        c = compare(x, data, scales, fmt, preset="torchao")
        assert c.ok, c.summary()
        assert {"preset": "torchao", "scale_rule": "floor", "rounding": "nearest_even"} in [
            k.options for k in c.candidates
        ]


def test_nvfp4_torchao_ties_and_tensor_scale():
    _require("nvfp4")
    vec = next(v for v in load("nvfp4.json")["vectors"]
               if v["id"] == "N1")
    x = f32_from_hex(vec["input_f32_hex"])
    foreign = ln.quantize(x, "nvfp4", algorithm="torchao")
    c = _call(x, "nvfp4", _foreign(foreign))  # reference: the default algorithm
    assert [e.index for e in c.elements] == [(5,), (7,), (10,)]  # 1.75, 0.75, -3.5
    assert all(abs(e.distance) < 1e-5 for e in c.elements)  # ties
    found = [k.options for k in c.candidates]
    assert {"algorithm": "torchao", "rounding": "nearest_even"} in found
    assert {"algorithm": "transformer_engine", "rounding": "nearest_even"} not in found
    off = _foreign(foreign)
    off["tensor_scale"] = np.nextafter(foreign.tensor_scale, np.float32(1))
    c = _call(x, "nvfp4", off, algorithm="torchao")
    assert [(s.field, s.block) for s in c.scales] == [("tensor_scale", ())]


def test_hif4_micro_mismatch():
    _require("hif4")
    x = _data((2, 128), seed=6)
    q = ln.quantize(x, "hif4")
    f = _foreign(q)
    f["micro"] = q.micro.copy()
    f["micro"][1, 0, 9] ^= 1
    c = _call(x, "hif4", f)
    assert [(s.field, s.block) for s in c.scales] == [("micro", (1, 0))]


# -- golden vectors -----------------------------------------------------------------------------


def test_golden_round_trip_and_recheck_with_compare():
    x = _data((3, 80), seed=7)
    x[1, 5] = np.nan  # a NaN block: its element codes are don't-care (null)
    doc = json.loads(json.dumps(golden_vectors(x, "mxfp4", scale_rule="rceil")))
    assert check_golden(doc) == []
    exp = doc["expected"]
    assert exp["scale_shape"] == [3, 3] and len(exp["element_codes"]) == x.size
    assert exp["element_codes"][80] is None and exp["scale_e8m0"][3] == "0xFF"
    back = f32_from_hex(doc["input_f32_hex"]).reshape(doc["shape"])
    np.testing.assert_array_equal(back.view(np.uint32), x.view(np.uint32))
    codes = np.array([0 if c is None else int(c, 16) for c in exp["element_codes"]])
    scales = np.array([int(s, 16) for s in exp["scale_e8m0"]]).reshape(exp["scale_shape"])
    assert compare(back, codes.reshape(x.shape), scales, "mxfp4", **doc["options"]).ok
    exp["element_codes"][0] = "0xF" if exp["element_codes"][0] != "0xF" else "0x0"
    assert any("element_codes" in line for line in check_golden(doc))


def test_golden_matches_mx_json_conventions():
    vec = load("mx.json")["vectors"][0]  # M1, MXFP4
    doc = golden_vectors(f32_from_hex(vec["input_f32_hex"]), "mxfp4")
    exp = doc["expected"]
    assert doc["input_f32_hex"] == vec["input_f32_hex"] and doc["input_f32"] == vec["input_f32"]
    assert exp["scale_e8m0"] == [vec["expected"]["scale_e8m0"]]
    assert exp["element_codes"] == vec["expected"]["element_codes"]
    if "packed_bytes" in exp:
        assert exp["packed_bytes"] == vec["expected"]["packed_bytes"]


def test_golden_element_format_and_decode_table():
    x = np.array([1.0, 464.0, 465.0, -0.0, 1e-3], np.float32)
    doc = json.loads(json.dumps(golden_vectors(x, "e4m3", saturate=True)))
    assert doc["kind"] == "element" and check_golden(doc) == []
    assert doc["expected"]["codes"] == ["0x38", "0x7E", "0x7E", "0x80", "0x01"]
    table = load("elements.json")["decode_tables"]["E4M3"]["codes"]
    assert [(r["code"], r["value_f32_hex"]) for r in doc["decode_table"]] == [
        (r["code"], r["value_f32_hex"]) for r in table
    ]
    assert golden_vectors(x, "int8", kind="element")["kind"] == "element"
    assert golden_vectors(x[None], "int8")["kind"] == "block"


def test_golden_stochastic_rounding_keeps_rbits():
    x = _data((2, 64), seed=8)
    rbits = np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)
    doc = json.loads(json.dumps(golden_vectors(x, "mxfp6_e3m2", rounding="stochastic",
                                               rbits=rbits)))
    assert doc["options"]["rbits"]["dtype"] == "uint8"
    assert check_golden(doc) == []
