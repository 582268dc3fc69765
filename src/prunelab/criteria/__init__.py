"""Pruning criteria, one module per criterion, all registered in :data:`CRITERIA` by importing this package.

Entry level (score a tensor's entries, for the :class:`~prunelab.pruning.Pruner`): ``magnitude``,
``relief``, ``snip``, ``grasp``, ``synflow``. Group level (score the channels of a coupled channel
group, for structured pruning): ``bn_scale``, ``l1_filter``, ``pls_vip``. Both levels: ``random``.
``prunelab list criteria`` shows each with its level(s); the protocol is
:mod:`prunelab.core.criterion`. Installed plugins (entry-point group ``prunelab.criteria``) are loaded
last, so their criteria are registered too.
"""

# Every built-in criterion module, explicitly: importing the package is what registers them (each module
# imports the registry it fills, so the order does not matter).
from prunelab.criteria import bn_scale, l1_filter, magnitude, pls_vip, random_scores, relief, saliency
from prunelab.criteria.registry import (
    CRITERIA,
    build_criterion,
    check_criterion,
    check_level,
    describe_criteria,
    levels_of,
    names_at,
)
from prunelab.registry import load_plugins

load_plugins("prunelab.criteria")

__all__ = [
    "CRITERIA",
    "bn_scale",
    "build_criterion",
    "check_criterion",
    "check_level",
    "describe_criteria",
    "l1_filter",
    "levels_of",
    "magnitude",
    "names_at",
    "pls_vip",
    "random_scores",
    "relief",
    "saliency",
]
