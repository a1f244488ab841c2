"""Shared / routed split of FFN neurons and balanced clustering (CMoE sections 1.4-1.6 of moe.md).

* Shared: the ``S * m`` neurons with the highest activation rate (ties to the lower index).
* Routed: the remaining n = N_r * m neurons clustered into N_r experts of exactly m neurons. One
  pass, as the released code: centroids = marker columns of the N_r remaining neurons with the
  highest rate; cost = L1 (Hamming) distance between a neuron's marker column and a centroid;
  the balanced assignment is the linear assignment problem on the n x n matrix that repeats each
  centroid's column m times (``scipy.optimize.linear_sum_assignment``, exact optimum).
* Representative of an expert: the member whose marker column is closest in L1 to the cluster
  mean column (the code's choice; the paper says L2); ties to the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import MoEConfig
from .profile import Profile


@dataclass(frozen=True)
class Partition:
    """Neuron indices of the restructured FFN: ``shared`` (S*m,), ascending; ``experts``
    (N_r, m), each row ascending; ``representatives`` (N_r,), one member of each row."""

    shared: torch.Tensor
    experts: torch.Tensor
    representatives: torch.Tensor

    def check(self, intermediate_size: int) -> None:
        """Raise unless the parts are disjoint and cover ``range(intermediate_size)``."""
        every = torch.cat([self.shared, self.experts.flatten()])
        if every.numel() != intermediate_size or not torch.equal(
                every.sort().values, torch.arange(intermediate_size)):
            raise ValueError("partition does not cover every neuron exactly once")
        for row, rep in zip(self.experts, self.representatives, strict=True):
            if rep not in row:
                raise ValueError("representative outside its expert")


def _by_rate(rates: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``idx`` ordered by decreasing rate, ties to the lower index."""
    r = rates[idx].numpy()
    return idx[torch.from_numpy(np.lexsort((idx.numpy(), -r)))]


def l1_to_binary(columns: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """L1 distances (n, c) between binary columns (q, n) and arbitrary columns (q, c) in [0, 1]:
    ``sum(centers) + columns.T @ (1 - 2 centers)``, exact in float64 for q < 2**53."""
    columns, centers = columns.double(), centers.double()
    return centers.sum(dim=0)[None, :] + columns.T @ (1.0 - 2.0 * centers)


def balanced_assignment(cost: torch.Tensor, size: int) -> torch.Tensor:
    """Cluster of each of n items (n, c cost matrix, n = c * size) with exactly ``size`` items per
    cluster minimising the total cost."""
    from scipy.optimize import linear_sum_assignment

    n, c = cost.shape
    if n != c * size:
        raise ValueError(f"{n} items do not fill {c} clusters of {size}")
    rows, cols = linear_sum_assignment(np.repeat(cost.numpy(), size, axis=1))
    out = np.empty(n, dtype=np.int64)
    out[rows] = cols // size
    return torch.from_numpy(out)


def partition_neurons(profile: Profile, config: MoEConfig) -> Partition:
    """Shared neurons, balanced routed experts and their representatives from a profile."""
    d_h = profile.rates.numel()
    m = config.expert_size(d_h)
    order = _by_rate(profile.rates, torch.arange(d_h))
    shared = order[: config.shared * m].sort().values
    rest = order[config.shared * m:].sort().values
    n_r = config.routed
    if n_r == 0:
        empty = torch.zeros(0, m, dtype=torch.int64)
        return Partition(shared, empty, torch.zeros(0, dtype=torch.int64))
    cols = profile.markers[:, rest]
    seeds = _by_rate(profile.rates, rest)[:n_r]
    cost = l1_to_binary(cols, profile.markers[:, seeds])
    label = balanced_assignment(cost, m)
    experts, reps = [], []
    for j in range(n_r):
        members = (label == j).nonzero().flatten()
        center = cols[:, members].double().mean(dim=1, keepdim=True)
        dist = l1_to_binary(cols[:, members], center).flatten()
        experts.append(rest[members])
        reps.append(rest[members[int(dist.argmin())]])
    return Partition(shared, torch.stack(experts), torch.stack(reps))
