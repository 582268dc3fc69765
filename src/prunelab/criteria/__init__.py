"""Pruning criteria: how important each entry of a target tensor is.

Importing this package registers every built-in criterion in :data:`CRITERIA`
(``magnitude``, ``random``).
"""

from prunelab.criteria import magnitude as _magnitude  # noqa: F401  (registers "magnitude")
from prunelab.criteria import random_scores as _random_scores  # noqa: F401  (registers "random")
from prunelab.criteria.base import CRITERIA, Criterion, Stats, TargetView

__all__ = ["CRITERIA", "Criterion", "Stats", "TargetView"]
