"""Pruning criteria: how important each entry of a target tensor is.

Importing this package registers every built-in criterion in :data:`CRITERIA`
(``magnitude``, ``random``, ``snip``, ``grasp``, ``synflow``).
"""

from prunelab.core.criterion import CRITERIA, Criterion, Stats, TargetView
from prunelab.criteria import magnitude as _magnitude  # noqa: F401  (registers "magnitude")
from prunelab.criteria import random_scores as _random_scores  # noqa: F401  (registers "random")
from prunelab.criteria import saliency as _saliency  # noqa: F401  (registers "snip", "grasp", "synflow")

__all__ = ["CRITERIA", "Criterion", "Stats", "TargetView"]
