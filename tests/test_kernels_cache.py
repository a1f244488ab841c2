"""``cache=True``: a second process start loads the compiled kernels instead of recompiling."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from lowbit import numerics as ln

SCRIPT = """
import numpy as np
from lowbit import numerics as ln
from lowbit.kernels import mx
x = np.linspace(-4, 4, 256, dtype=np.float32).reshape(4, 64)
ln.quantize(x, "mxfp4", backend="numba")
s = mx._quantize_fast32.stats
print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))
"""


def test_second_process_loads_the_cache():
    x = np.linspace(-4, 4, 256, dtype=np.float32).reshape(4, 64)
    ln.quantize(x, "mxfp4", backend="numba")  # compiled (or loaded) and cached here
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True).stdout.split()
    hits, misses = int(out[-2]), int(out[-1])
    assert hits >= 1 and misses == 0, (hits, misses)
