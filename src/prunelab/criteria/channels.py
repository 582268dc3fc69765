"""Channel (structured) criteria and selection over the coupled groups of a ChannelGraph.

A channel criterion is a function ``score(model, graph) -> {group name: per-channel scores}`` (higher =
keep). Built-ins: ``bn_scale`` (:mod:`prunelab.criteria.bn_scale`), ``l1_filter``
(:mod:`prunelab.criteria.l1_filter`) and ``random`` (below, the control baseline).
:func:`select_channels` turns scores into keep masks with prunelab's exact-count selector (global or per
layer, at least ``min_keep`` channels per group).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from prunelab.core.selectors import select_topk
from prunelab.registry import Registry

__all__ = ["CHANNEL_CRITERIA", "channel_scores", "random_channel_scores", "select_channels"]

#: Channel criteria by name: ``fn(model, graph) -> {group: scores}``.
CHANNEL_CRITERIA: Registry[Callable[..., dict[str, Tensor]]] = Registry("channel criterion")


def channel_scores(name: str, model: nn.Module, graph: object) -> dict[str, Tensor]:
    """Score every channel group of ``graph`` with the registered criterion ``name``."""
    # Imported here so that registering the built-ins never creates an import cycle.
    from prunelab.criteria import bn_scale, l1_filter  # noqa: F401

    return CHANNEL_CRITERIA.get(name)(model, graph)


def select_channels(
    scores: Mapping[str, Tensor], amount: float, *, scope: str = "global", min_keep: int = 1
) -> dict[str, Tensor]:
    """Keep masks removing ``round(amount · channels)`` lowest-scored channels.

    Args:
        scores: ``{group: per-channel scores}``.
        amount: share of channels removed, in [0, 1) (globally, or in every group for ``scope="layer"``).
        scope: ``"global"`` (one ranking over all groups — network slimming's global percentile
            threshold) or ``"layer"`` (the same share in every group).
        min_keep: channels every group keeps at least.
    """
    return select_topk({k: v.float() for k, v in scores.items()}, amount, scope=scope, min_keep=min_keep)


@CHANNEL_CRITERIA.register(
    "random", help="U[0, 1) per channel from a seeded CPU generator (the control baseline)."
)
def random_channel_scores(model: nn.Module, graph: object, seed: int = 0) -> dict[str, Tensor]:
    """``{group: U[0, 1) scores}`` for every group of ``graph``; data- and weight-free.

    Drawn on the CPU from one generator seeded with ``seed``, group by group in graph order, so every
    DDP rank (CPU or GPU) draws the same scores for the same seed and network.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return {g.name: torch.rand(g.size, generator=generator) for g in graph.groups}  # type: ignore[attr-defined]
