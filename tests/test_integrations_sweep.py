"""The compiled GPTQ sweep: table rounding is ``encode`` bit for bit; other rounding modes take
the ``encode`` path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from test_integrations_ptq import layer_problem  # noqa: E402

from lowbit import numerics as ln  # noqa: E402
from lowbit.integrations.fakequant import parse_spec  # noqa: E402
from lowbit.integrations.ptq.gptq import gptq_quantize  # noqa: E402
from lowbit.integrations.ptq.sweep import element_table  # noqa: E402


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "hif4", "int4", "hif8", "mxfp8_e4m3",
                                 "mxfp8_e5m2", "mxfp6_e2m3", "int8"])
def test_table_rounding_is_encode(fmt):
    elem = ln.block_format(fmt).element
    table = element_table(fmt, elem.rounding)
    assert table.exact
    top = float(np.abs(table.vals).max())
    r = np.concatenate([table.mids, -table.mids, np.random.default_rng(1).uniform(
        -2 * top, 2 * top, 20000), [0.0, -0.0, -1e-40, np.inf, -np.inf]])
    want = ln.encode(r, elem, saturate=True, backend="reference")
    np.testing.assert_array_equal(table.round_codes(r), want)


def test_directed_rounding_falls_back_to_encode():
    table = element_table("int4", "toward_zero")
    assert not table.exact
    spec = parse_spec("int4:group_size=32,rounding=toward_zero")
    w, x = layer_problem(n=8, k=64, t=128)
    h = 2.0 * x.T.double() @ x.double() / x.shape[0]
    q, vals = gptq_quantize(w, h, spec)
    np.testing.assert_allclose(ln.dequantize(q, backend="reference"), vals, rtol=1e-6)
