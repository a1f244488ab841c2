"""Orthogonal rotations for QuaRot-style and block-wise (MR-GPTQ) Hadamard transforms.

For an orthogonal ``R`` (``R R^T = I``) a linear layer is unchanged by rotating both operands:

    y = x W^T = (x R)(W R)^T,

so the weight is stored as ``W R`` (fused offline) and the input is rotated online as ``x R`` just
before activation quantization. Rotation spreads an outlier channel's energy over the channels it
mixes, which flattens block maxima (good for per-tensor / per-channel scales, mixed for
power-of-two block scales).

* ``block``: ``R = I_{K/b} (x) H_b``, ``H_b`` the normalised Sylvester Hadamard matrix of size ``b``
  (a power of two, usually the format's block size: 32 for MX, 16 for NVFP4, 64 for HiF4). It
  mixes channels only inside a scale block, so it never moves energy between blocks (MR-GPTQ's
  micro-rotation; "Block Rotation is All You Need for MXFP4", arXiv:2511.04214).
* ``global``: a model-wide rotation of the whole input dimension K (QuaRot): ``R = H_p (x) Q_m``
  with ``p`` the largest power of two dividing K and ``Q_m`` a seeded random orthogonal ``m x m``
  (``m = K / p``; ``Q_1 = [1]``), times a seeded random sign diagonal, so every output channel mixes
  every input channel. With K a power of two it is a randomised Hadamard transform.

Used two ways: per linear layer (``QuantLinear``'s online ``x R``, the ``rotation=`` option of any
method, and MR-GPTQ), and by ``fuse_rotation`` (QuaRot), which rotates the residual stream with
the same matrices fused into the weights and keeps only the down projection's rotation online.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=32)
def hadamard(n: int) -> np.ndarray:
    """Normalised Sylvester Hadamard matrix (float64, ``n`` a power of two); ``H H^T = I``."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


@functools.lru_cache(maxsize=32)
def global_rotation(k: int, seed: int = 0) -> np.ndarray:
    """The ``K x K`` model-wide rotation of the module docstring (float64, orthogonal)."""
    p = k & -k
    m = k // p
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((m, m)))[0] if m > 1 else np.ones((1, 1))
    signs = rng.choice([-1.0, 1.0], size=k)
    return signs[:, None] * np.kron(hadamard(p), q)


def rotation_matrix(kind: str, k: int, size: int | None = None, seed: int = 0) -> np.ndarray:
    """Dense ``K x K`` matrix of a rotation (for tests and small layers)."""
    if kind == "global":
        return global_rotation(k, seed)
    if kind == "block":
        if k % size:
            raise ValueError(f"block rotation size {size} does not divide K={k}")
        return np.kron(np.eye(k // size), hadamard(size))
    raise ValueError(f"unknown rotation kind {kind!r}")


def rotate(x, rot: dict | None):
    """``x R`` for a torch tensor ``x (..., K)``; ``rot`` = ``{"kind", "size", "seed"}``."""
    import torch

    if not rot:
        return x
    k = x.shape[-1]
    if rot["kind"] == "block":
        b = int(rot["size"])
        h = torch.from_numpy(hadamard(b)).to(dtype=torch.float32, device=x.device)
        y = (x.float().reshape(*x.shape[:-1], k // b, b) @ h).reshape(x.shape)
        return y.to(x.dtype)
    r = torch.from_numpy(global_rotation(k, int(rot.get("seed", 0)))).to(torch.float32)
    return (x.float() @ r.to(x.device)).to(x.dtype)
