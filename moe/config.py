"""The ``SxAyEz`` configuration of a restructured FFN (CMoE paper notation).

``S3A3E8``: the FFN's d_h neurons are cut into E = 8 experts of m = d_h / 8 neurons; the S = 3 with
the highest activation rates form the always-on shared part, the other E - S = 5 are routed and
each token activates A = 3 of them. Active fraction of the FFN: (S + A) / E; routed sparsity (the
ACL paper's "sparsity"): (E - S - A) / E.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"S(\d+)A(\d+)E(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class MoEConfig:
    """``shared`` always-on experts, ``active`` routed experts per token out of ``experts``
    experts in all (``experts - shared`` of them routed)."""

    shared: int
    active: int
    experts: int

    def __post_init__(self) -> None:
        if self.experts < 1 or self.shared < 0 or self.active < 0:
            raise ValueError(f"invalid MoE configuration {self}")
        if self.shared + self.active > self.experts:
            raise ValueError(f"{self.name}: shared + active exceeds the number of experts")
        if self.active == 0 and self.routed > 0:
            raise ValueError(f"{self.name}: routed experts but none active")

    @property
    def routed(self) -> int:
        return self.experts - self.shared

    @property
    def name(self) -> str:
        return f"S{self.shared}A{self.active}E{self.experts}"

    @property
    def active_fraction(self) -> float:
        """Fraction of FFN neurons a token uses."""
        return (self.shared + self.active) / self.experts

    @property
    def sparsity(self) -> float:
        """Fraction of FFN neurons a token skips."""
        return 1.0 - self.active_fraction

    def expert_size(self, intermediate_size: int) -> int:
        """m = d_h / E; raises unless E divides d_h."""
        if intermediate_size % self.experts:
            raise ValueError(f"{self.name}: {self.experts} experts do not divide the FFN width "
                             f"{intermediate_size}")
        return intermediate_size // self.experts


def parse_config(text: str | MoEConfig) -> MoEConfig:
    """``"S3A3E8"`` (case-insensitive) to ``MoEConfig(3, 3, 8)``; a ``MoEConfig`` passes through."""
    if isinstance(text, MoEConfig):
        return text
    m = _PATTERN.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"MoE configuration must look like S3A3E8, got {text!r}")
    return MoEConfig(*(int(g) for g in m.groups()))
