"""Storage layout (numerics/packing.py): golden packed bytes, round trips, swizzle, peers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vectors import codes_from_hex, f32_from_hex, load

from lowbit import numerics as ln
from lowbit.numerics.blocks import make_blocking
from lowbit.numerics.packing import (
    PackedTensor,
    pack,
    pack_codes,
    packed_width,
    swizzle_scales,
    unpack,
    unpack_codes,
    unswizzle_scales,
)

BLOCK_FORMATS = ln.formats("block")
SWIZZLE_SHAPES = [(1, 1), (3, 2), (128, 4), (129, 5), (256, 8), (300, 7), (33, 130)]


def _bitstream(codes, bits: int) -> bytes:
    """Independent oracle of the code layout: code i at bits [bits*i, bits*(i+1)), LSB first."""
    w = sum(int(c) << (bits * i) for i, c in enumerate(codes))
    return w.to_bytes(packed_width(len(codes), bits), "little")


def _same_array(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_identical(q: ln.QuantizedTensor, u: ln.QuantizedTensor) -> None:
    assert (u.fmt, u.axis, u.block_size, u.pad) == (q.fmt, q.axis, q.block_size, q.pad)
    assert u.prescale == q.prescale and u.options == q.options
    assert _same_array(u.codes, q.codes)
    assert _same_array(u.scales, q.scales)
    assert _same_array(u.micro, q.micro)
    ts_u = None if u.tensor_scale is None else np.float32(u.tensor_scale)
    ts_q = None if q.tensor_scale is None else np.float32(q.tensor_scale)
    assert _same_array(ts_u, ts_q)


def _hand_built(fmt: str, shape: tuple, axis: int, rng: np.random.Generator) -> ln.QuantizedTensor:
    """A QuantizedTensor of random bits in the documented shapes (nvfp4, hif4: no quantizer)."""
    spec = ln.block_format(fmt)
    b = make_blocking(shape, axis, spec.block_size)
    hif4 = spec.scheme == "hif4"
    return ln.QuantizedTensor(
        fmt=fmt,
        codes=rng.integers(0, 1 << spec.element.bits, shape, dtype=np.uint8),
        scales=rng.integers(0, 1 << spec.scale.bits, b.scale_shape, dtype=np.uint8),
        axis=b.axis,
        block_size=b.block_size,
        tensor_scale=np.float32(rng.random()) if spec.scheme == "nvfp4" else None,
        micro=rng.integers(0, 2, b.scale_shape + (24,), dtype=np.uint8) if hif4 else None,
        pad=b.pad,
        options={"hand_built": True},
    )


@st.composite
def _quantized(draw, fmt: str) -> ln.QuantizedTensor:
    spec = ln.block_format(fmt)
    other = draw(st.lists(st.integers(0, 4), max_size=2))
    length = draw(st.integers(0, 2 * (spec.block_size or 20) + 3))
    pos = draw(st.integers(0, len(other)))
    shape = tuple(other[:pos]) + (length,) + tuple(other[pos:])
    axis = draw(st.sampled_from([pos, pos - len(shape)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if spec.scheme in ("nvfp4", "hif4"):
        return _hand_built(fmt, shape, axis, rng)
    x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    if x.size and draw(st.booleans()):
        x.flat[rng.integers(x.size)] = np.nan
    if spec.scheme == "mx":
        return ln.quantize(x, fmt, axis=axis, scale_rule=draw(st.sampled_from(ln.SCALE_RULES)),
                           prescale=draw(st.booleans()))
    grans = ["channel", "group", "tensor"] + (["none"] if spec.element.encoding != "int" else [])
    gran = draw(st.sampled_from(grans))
    group = draw(st.integers(1, 9)) if gran == "group" else None
    return ln.quantize(x, fmt, axis=axis, granularity=gran, group_size=group)


# -- golden packed bytes ----------------------------------------------------------------------


def test_mx_m1_packed_bytes():
    vec = next(v for v in load("mx.json")["vectors"] if v["id"] == "M1")
    q = ln.quantize(f32_from_hex(vec["input_f32_hex"]), "mxfp4")
    p = pack(q)
    assert p.data.tobytes() == codes_from_hex(vec["expected"]["packed_bytes"]).tobytes()
    assert p.scales.tolist() == [[int(vec["expected"]["scale_e8m0"], 16)]]
    _assert_identical(q, unpack(p))


def test_nvfp4_n4_packed_bytes():
    exp = next(v for v in load("nvfp4.json")["vectors"] if v["id"] == "N4")["expected"]
    q = ln.QuantizedTensor(
        fmt="nvfp4", codes=codes_from_hex(exp["element_nibbles"]),
        scales=codes_from_hex(exp["block_scales_e4m3"]), axis=0, block_size=16,
        tensor_scale=np.float32(f32_from_hex([exp["s_global_dec_f32_hex"]])[0]),
    )
    p = pack(q)
    assert p.data.tobytes() == codes_from_hex(exp["packed_bytes"]).tobytes()
    assert p.scales.tolist() == [[0x55, 0x65]]
    assert p.nbytes == 16 + 2
    _assert_identical(q, unpack(p))


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", BLOCK_FORMATS)
@settings(max_examples=100)  # 11 formats: keeps the file near 15 s with the torchao import
@given(data=st.data())
def test_round_trip(fmt, data):
    q = data.draw(_quantized(fmt))
    spec = ln.block_format(fmt)
    b = make_blocking(q.codes.shape, q.axis, q.block_size)
    rows, n = int(np.prod(np.delete(q.codes.shape, q.axis))), b.n_blocks * b.block_size
    p = pack(q)
    _assert_identical(q, unpack(p))
    # data rows: the codes of each row, zero-padded to whole blocks, as an LSB-first bit stream
    assert p.data.shape == (rows, packed_width(n, spec.element.bits))
    moved = np.moveaxis(q.codes, q.axis, -1).reshape(rows, b.length)
    for row, packed_row in zip(moved, p.data, strict=True):
        assert packed_row.tobytes() == _bitstream(row.tolist() + [0] * (n - b.length),
                                                  spec.element.bits)
    if spec.scheme == "hif4":
        assert p.scales is None and p.meta.shape == (rows, b.n_blocks, 4)
        assert p.nbytes == p.data.nbytes + p.meta.nbytes
    elif q.scales is not None:
        expected = np.moveaxis(q.scales, q.axis, -1).reshape(rows, b.n_blocks)
        assert _same_array(p.scales, expected)
    if q.scales is not None and q.scales.dtype == np.uint8 and spec.scheme != "hif4":
        ps = pack(q, scale_layout="swizzled")
        assert _same_array(ps.scales, swizzle_scales(p.scales))
        _assert_identical(q, unpack(ps))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6_e2m3", "mxfp8_e4m3", "nvfp4", "hif4"])
def test_nbytes_matches_bits_per_element(fmt):
    spec = ln.block_format(fmt)
    q = _hand_built(fmt, (3, 2 * spec.block_size), -1, np.random.default_rng(0))
    assert pack(q).nbytes * 8 == q.codes.size * spec.bits_per_element


def test_swizzled_pack_spans_several_tiles():
    x = np.random.default_rng(7).standard_normal((3, 100, 70)).astype(np.float32)
    q = ln.quantize(x, "mxfp8_e4m3", axis=1)  # 210 rows x 4 blocks: two row tiles
    lin, swz = pack(q), pack(q, scale_layout="swizzled")
    assert lin.scales.shape == (210, 4) and swz.scales.shape == (2 * 512,)
    assert _same_array(unswizzle_scales(swz.scales, 210, 4), lin.scales)
    assert swz.nbytes == lin.nbytes + 2 * 512 - 210 * 4
    _assert_identical(q, unpack(swz))


def test_int4_odd_axis_pads_one_code():
    q = ln.quantize(np.arange(-3, 2, dtype=np.float32).reshape(1, 5), "int4")
    p = pack(q)
    assert p.data.shape == (1, 3) and p.data[0, 2] >> 4 == 0
    _assert_identical(q, unpack(p))


# -- HiF4 metadata (project-defined convention) ------------------------------------------------


def test_hif4_meta_word_layout():
    q = _hand_built("hif4", (1, 64), 1, np.random.default_rng(1))
    q.scales[:] = 0xA7
    q.micro[:] = 0
    q.micro[0, 0, [0, 7]] = 1  # E1_8 groups 0 and 7
    q.micro[0, 0, 8 + np.array([1, 9, 15])] = 1  # E1_16 groups 1, 9, 15
    assert pack(q).meta.tolist() == [[[0xA7, 0x81, 0x02, 0x82]]]


# -- element code packing ---------------------------------------------------------------------


def test_fp4_all_pairs():
    pairs = np.array([(lo, hi) for hi in range(16) for lo in range(16)], dtype=np.uint8)
    packed = pack_codes(pairs, 4)
    assert packed[:, 0].tolist() == list(range(256))
    assert _same_array(unpack_codes(packed, 4, 2), pairs)


def test_fp6_each_code_in_each_position():
    tuples = np.zeros((4 * 64, 4), dtype=np.uint8)
    for pos in range(4):
        tuples[pos * 64:(pos + 1) * 64, pos] = np.arange(64)
    packed = pack_codes(tuples, 6)
    assert packed.shape == (256, 3)
    for t, row in zip(tuples, packed, strict=True):
        assert row.tobytes() == _bitstream(t, 6)
    assert _same_array(unpack_codes(packed, 6, 4), tuples)
    # 0x3F in each position: 3F 00 00 | C0 0F 00 | 00 F0 03 | 00 00 FC
    assert packed[[63, 127, 191, 255]].tobytes().hex() == "3f0000c00f0000f0030000fc"


def test_fp6_random_tuples_and_partial_group():
    rng = np.random.default_rng(6)
    tuples = rng.integers(0, 64, (4000, 4), dtype=np.uint8)
    packed = pack_codes(tuples, 6)
    assert all(r.tobytes() == _bitstream(t, 6) for t, r in zip(tuples, packed, strict=True))
    assert _same_array(unpack_codes(packed, 6, 4), tuples)
    row = rng.integers(0, 64, (2, 7), dtype=np.uint8)  # 7 codes -> 2 groups, one zero code
    assert pack_codes(row, 6).shape == (2, 6)
    assert _same_array(unpack_codes(pack_codes(row, 6), 6, 7), row)


# -- scale swizzle ----------------------------------------------------------------------------


def test_swizzle_first_16_bytes():
    s = np.random.default_rng(2).integers(0, 256, (128, 4), dtype=np.uint8)
    out = swizzle_scales(s)
    assert out.shape == (512,)
    assert _same_array(out[:16].reshape(4, 4), s[[0, 32, 64, 96], :4])


@pytest.mark.parametrize("shape", SWIZZLE_SHAPES)
def test_swizzle_offsets_and_inverse(shape):
    rows, cols = shape
    s = np.random.default_rng(3).integers(1, 256, shape, dtype=np.uint8)
    out = swizzle_scales(s)
    n_col_tiles = -(-cols // 4)
    r, c = np.indices(shape)
    tile = (r // 128) * n_col_tiles + c // 4
    offset = tile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
    assert _same_array(out[offset], s)
    assert out.size == 512 * -(-rows // 128) * n_col_tiles
    assert np.count_nonzero(out) == s.size  # the padding is zeros
    assert _same_array(unswizzle_scales(out, rows, cols), s)


@pytest.fixture(scope="module")
def torchao_mx():
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("torchao.prototype.mx_formats.utils")
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    return torch, utils, kernels


@pytest.mark.parametrize("shape", SWIZZLE_SHAPES)
def test_swizzle_matches_torchao_to_blocked(torchao_mx, shape):
    torch, utils, _ = torchao_mx
    s = np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)
    ref = utils.to_blocked(torch.from_numpy(s)).numpy()
    assert _same_array(swizzle_scales(s), ref)
    back = utils.from_blocked(torch.from_numpy(ref), *shape).contiguous().numpy()
    assert _same_array(unswizzle_scales(ref, *shape), back)


def test_fp4_packing_matches_torchao_pack_uint4(torchao_mx):
    torch, _, kernels = torchao_mx
    codes = np.random.default_rng(5).integers(0, 16, (6, 34), dtype=np.uint8)
    assert _same_array(pack_codes(codes, 4), kernels.pack_uint4(torch.from_numpy(codes)).numpy())


# -- input validation -------------------------------------------------------------------------


def _mxfp4() -> ln.QuantizedTensor:
    return ln.quantize(np.linspace(-6, 6, 64, dtype=np.float32).reshape(2, 32), "mxfp4")


def test_pack_rejects_bad_codes():
    q = _mxfp4()
    q.codes[0, 0] = 16
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        pack(q)
    q.codes = q.codes.astype(np.int64)
    with pytest.raises(TypeError, match="must be uint8"):
        pack(q)


def test_pack_rejects_bad_layout_and_metadata():
    with pytest.raises(ValueError, match="unknown scale_layout"):
        pack(_mxfp4(), scale_layout="tiled")
    q = _mxfp4()
    q.pad = 3
    with pytest.raises(ValueError, match="needs pad=0"):
        pack(q)
    q = _mxfp4()
    q.scales = q.scales.astype(np.float32)
    with pytest.raises(TypeError, match="must be uint8"):
        pack(q)
    q = _hand_built("nvfp4", (2, 16), 1, np.random.default_rng(0))
    q.scales[0, 0] = 0x80  # UE4M3 is a 7-bit code
    with pytest.raises(ValueError, match="ue4m3 scale codes"):
        pack(q)
    q = _hand_built("hif4", (2, 64), 1, np.random.default_rng(0))
    q.micro[0, 0, 3] = 2
    with pytest.raises(ValueError, match="micro-exponent bits"):
        pack(q)


def test_swizzled_needs_uint8_scale_codes():
    q = ln.quantize(np.ones((2, 8), np.float32), "int8")
    with pytest.raises(ValueError, match="float32 scales"):
        pack(q, scale_layout="swizzled")
    q = _hand_built("hif4", (2, 64), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not defined for hif4"):
        pack(q, scale_layout="swizzled")


def test_unpack_and_low_level_validation():
    p = pack(_mxfp4())
    bad = PackedTensor(**{**vars(p), "data": p.data[:, :-1]})
    with pytest.raises(ValueError, match="data of mxfp4"):
        unpack(bad)
    with pytest.raises(ValueError, match="1-D with 512 entries"):
        unswizzle_scales(np.zeros(511, np.uint8), 2, 1)
    with pytest.raises(ValueError, match="code width"):
        pack_codes(np.zeros(4, np.uint8), 5)
    with pytest.raises(ValueError, match="take 3 bytes"):
        unpack_codes(np.zeros(4, np.uint8), 6, 4)
    with pytest.raises(ValueError, match="2-D"):
        swizzle_scales(np.zeros(4, np.uint8))
