r"""BN-scale criterion (group level): a channel's importance is the magnitude of its BatchNorm scale |γ|.

Z. Liu, J. Li, Z. Shen, G. Huang, S. Yan and C. Zhang, *Learning Efficient Convolutional Networks
through Network Slimming*, ICCV 2017, rank channels by |γ| after ℓ1-regularised training. A coupled
channel group (residual stream, concatenation) has one γ per BatchNorm it passes through; by default
the group channel scores the **maximum** over them,

.. math:: s_c = \max_{(c, i) \in \mathrm{pairs}(b),\ b \in \mathrm{BNs}} |\gamma_{b,i}|,

so a channel is only called unimportant when every BN that normalises it has shrunk it
(``reduction: sum`` or ``mean`` pool them instead).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from prunelab.core.criterion import ChannelGroupLike, GroupMemberLike, MemberGroupCriterion, Stats
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import UnsupportedModelError

__all__ = ["BNScale"]


@CRITERIA.register("bn_scale", help="|γ| of the group's BatchNorm layers, max over them (network slimming).")
class BNScale(MemberGroupCriterion):
    """|γ| of every BatchNorm the group passes through, reduced per channel (default: max); data-free.

    Args:
        reduction: how the |γ| of several BatchNorms on one channel combine: ``max`` (default), ``sum``
            or ``mean``.
    """

    default_reduction = "max"

    def applies_to(self, group: ChannelGroupLike) -> bool:
        """Whether ``group`` passes through a BatchNorm (only those can be scored)."""
        return bool(group.bns())

    def members(self, group: ChannelGroupLike) -> Sequence[GroupMemberLike]:
        """The group's BatchNorm members.

        Raises:
            UnsupportedModelError: the group has no BatchNorm (name it in ``exclude`` or use ``l1_filter``).
        """
        bns = group.bns()
        if not bns:
            raise UnsupportedModelError(
                f"channel group {group.name!r} has no BatchNorm, so BN-scale criteria cannot score it; "
                "use criterion l1_filter or a model with BatchNorm"
            )
        return bns

    def member_scores(self, member: GroupMemberLike, model: nn.Module, stats: Stats) -> Tensor:
        """``|γ|`` of the BatchNorm ``member``."""
        return model.get_submodule(member.name).weight.detach().abs()
