r"""L1-norm filter criterion (group level): a filter's importance is ``Σ |W|`` over its weights.

H. Li, A. Kadav, I. Durdanovic, H. Samet and H. P. Graf, *Pruning Filters for Efficient ConvNets*,
ICLR 2017. For a coupled group (several producers summed into one residual stream) the channel scores,
by default, the **sum** of the norms of all its producer filters; a depthwise filter on the group's
path is added too:

.. math:: s_c = \sum_{m \in \mathrm{producers}} \sum_{(c, i) \in \mathrm{pairs}(m)} \lVert W_{m,i} \rVert_p^p,

with ``p = 1`` (the paper) or ``p = 2`` (the squared L2 norm ``Σ W²``, which ranks a single filter like
its L2 norm).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from prunelab.core.criterion import ChannelGroupLike, GroupMemberLike, MemberGroupCriterion, Reduction, Stats
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import ConfigError

__all__ = ["L1Filter"]

#: Member kinds whose output filters are scored.
_FILTER_KINDS = ("Conv2d", "Linear", "DepthwiseConv2d")


@CRITERIA.register(
    "l1_filter", help="Σ|W| of the group's producer filters, summed over them (Li et al. 2017)."
)
class L1Filter(MemberGroupCriterion):
    """``Σ |W|^p`` of each producer filter (depthwise ones included), reduced per channel (default: sum).

    Args:
        p: the exponent, 1 (L1 norm, default) or 2 (squared L2 norm).
        reduction: how the norms of several producers of one channel combine: ``sum`` (default),
            ``mean`` or ``max``.
    """

    default_reduction = "sum"

    def __init__(self, p: int = 1, reduction: Reduction | None = None) -> None:
        if p not in (1, 2) or isinstance(p, bool):
            raise ConfigError(f"l1_filter criterion: p must be 1 or 2, got {p!r}")
        super().__init__(reduction)
        self.p = int(p)

    def members(self, group: ChannelGroupLike) -> Sequence[GroupMemberLike]:
        """The members whose output filters are the group's channels (conv, depthwise conv, linear)."""
        return [m for m in group.members if m.role == "out" and m.kind in _FILTER_KINDS]

    def member_scores(self, member: GroupMemberLike, model: nn.Module, stats: Stats) -> Tensor:
        """``Σ |W|^p`` over each output filter of ``member``."""
        w = model.get_submodule(member.name).weight.detach().cpu()
        magnitude = w.abs() if self.p == 1 else w.square()
        return magnitude.reshape(w.shape[0], -1).sum(dim=1)

    def __repr__(self) -> str:
        return f"L1Filter(p={self.p}, reduction={self.reduction!r})"
