"""The pruner that composes the core axes with criteria and reparametrizations.

:class:`~prunelab.pruning.pruner.Pruner` (score → reduce → select → expand → mask),
:class:`~prunelab.pruning.pruner.GradualPruningHook` (the same step on a schedule inside a training loop)
and :func:`~prunelab.pruning.pruner.prune` (the one-shot convenience exported as ``prunelab.prune``).
It sits above :mod:`prunelab.core`, :mod:`prunelab.criteria` and :mod:`prunelab.reparam`, which never
import it.
"""

from prunelab.pruning.pruner import GradualPruningHook, Pruner, PruneReport, prune

__all__ = ["GradualPruningHook", "PruneReport", "Pruner", "prune"]
