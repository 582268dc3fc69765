"""L1-norm filter criterion (H. Li, A. Kadav, I. Durdanovic, H. Samet and H. P. Graf, *Pruning Filters
for Efficient ConvNets*, ICLR 2017): a filter's importance is ``Σ |W|`` over its weights.

For a coupled group (several producers summed into one residual stream) the channel scores the sum
of the L1 norms of all its producer filters; a depthwise filter on the group's path is added too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunelab.criteria.channels import CHANNEL_CRITERIA
from prunelab.surgery.graph import ChannelGraph

__all__ = ["l1_filter_scores"]


@CHANNEL_CRITERIA.register("l1_filter", help="Σ|W| of the group's producer filters (Li et al. 2017).")
def l1_filter_scores(model: nn.Module, graph: ChannelGraph) -> dict[str, Tensor]:
    """``{group: per-channel L1 norm of the producing filters}`` for every group of ``graph``."""
    scores: dict[str, Tensor] = {}
    for group in graph.groups:
        s = torch.zeros(group.size)
        for member in group.members:
            if member.role != "out" or member.kind not in ("Conv2d", "Linear", "DepthwiseConv2d"):
                continue
            w = model.get_submodule(member.name).weight.detach().cpu()
            norms = w.abs().reshape(w.shape[0], -1).sum(dim=1)
            for c, i in member.pairs:
                s[c] += norms[i]
        scores[group.name] = s
    return scores
