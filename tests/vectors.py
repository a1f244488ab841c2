"""The golden vectors shipped with the package (numerics/vectors/*.json), for the tests."""

from __future__ import annotations

import numpy as np

from lowbit.numerics.conformance import load_vectors as load
from lowbit.numerics.golden import f32_from_hex

__all__ = ["codes_from_hex", "f32_from_hex", "load"]


def codes_from_hex(hexes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint8)
