"""Magnitude criterion: ``S = |W|^p``.

The oldest and still the strongest data-free baseline (Han et al. 2015, "Learning both Weights and
Connections for Efficient Neural Networks"). Summed over a unit by the ``filter`` granularity, ``p=1``
gives each filter's L1 norm ``Σ|W|`` (Li et al. 2017, "Pruning Filters for Efficient ConvNets") and
``p=2`` its squared L2 norm ``Σ W²`` (which ranks filters exactly like the L2 norm).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunelab.core.criterion import Stats, TargetView
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import ConfigError


@CRITERIA.register("magnitude", help="Weight magnitude |w|^p (p = 1 or 2); data-free.")
class Magnitude:
    """Weight magnitude ``|w|^p`` (p = 1 or 2); data-free.

    Args:
        p: the exponent, 1 (L1) or 2 (squared L2).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.core.targets import find_targets
        >>> layer = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[-3.0, 0.5]]))
        >>> target = find_targets(layer)[0]
        >>> view = TargetView(target, layer.weight.detach(), torch.ones(1, 2, dtype=torch.bool))
        >>> Magnitude(p=2).score(view, {}).tolist()
        [[9.0, 0.25]]
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, p: int = 1) -> None:
        if p not in (1, 2) or isinstance(p, bool):
            raise ConfigError(f"magnitude criterion: p must be 1 or 2, got {p!r}")
        self.p = int(p)

    def score(self, view: TargetView, stats: Stats) -> Tensor:
        """Return ``|view.value|^p`` (float32 or wider, same shape as the tensor)."""
        magnitude = view.value.detach().abs()
        if not magnitude.is_floating_point() or magnitude.dtype in (torch.float16, torch.bfloat16):
            # Half precision loses ties between small weights; rank in float32.
            magnitude = magnitude.float()
        return magnitude if self.p == 1 else magnitude.square()

    def __repr__(self) -> str:
        return f"Magnitude(p={self.p})"
