"""BN-scale channel criterion: a channel's importance is the magnitude of its BatchNorm scale |γ|.

Network slimming (Liu et al., ICCV 2017) ranks channels by |γ| after ℓ1-regularised training. A
coupled channel group (residual stream, concatenation) has one γ per BatchNorm it passes through;
the group channel scores the **maximum** |γ| over them, so a channel is only called unimportant when
every BN that normalises it has shrunk it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunelab.criteria.channels import CHANNEL_CRITERIA
from prunelab.errors import UnsupportedModelError
from prunelab.surgery.graph import ChannelGraph

__all__ = ["bn_scale_scores"]


@CHANNEL_CRITERIA.register("bn_scale", help="max |γ| over the group's BatchNorm layers (network slimming).")
def bn_scale_scores(model: nn.Module, graph: ChannelGraph) -> dict[str, Tensor]:
    """``{group: per-channel max |γ|}`` for every group of ``graph`` (traced on ``model``).

    Raises:
        UnsupportedModelError: a group has no BatchNorm (name it in ``exclude`` or use ``l1_filter``).
    """
    scores: dict[str, Tensor] = {}
    for group in graph.groups:
        bns = group.bns()
        if not bns:
            raise UnsupportedModelError(
                f"channel group {group.name!r} has no BatchNorm, so BN-scale criteria cannot score it; "
                "use criterion l1_filter or a model with BatchNorm"
            )
        s = torch.zeros(group.size)
        for member in bns:
            gamma = model.get_submodule(member.name).weight.detach().abs().cpu()
            for c, i in member.pairs:
                s[c] = torch.maximum(s[c], gamma[i])
        scores[group.name] = s
    return scores
