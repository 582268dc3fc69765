"""Structured channel surgery: coupled channel groups, verified compaction, arch spec, prunability report.

Public interface (Torch-Pruning stays behind it):

* :class:`ChannelGraph` — the coupled channel groups of a model and :meth:`ChannelGraph.report`
  (the prunability report);
* :func:`compact` — masks → physically smaller network, verified against the masked model;
* :func:`arch_spec` / :func:`apply_arch_spec` — the versioned per-layer JSON a compacted model is
  saved with;
* :class:`ChannelMappingLayer` — the protocol a special layer (such as the option-A ResNet shortcut)
  implements to pass through the surgery (see :mod:`prunelab.surgery.layers`).
"""

from prunelab.surgery.archspec import ARCH_FORMAT, ARCH_VERSION, apply_arch_spec, arch_spec
from prunelab.surgery.compact import (
    DEFAULT_TOLERANCE,
    ChannelRemovalError,
    SurgeryMismatchError,
    SurgeryReport,
    check_equivalence,
    compact,
    find_unremovable,
    zero_channels,
)
from prunelab.surgery.graph import (
    PRODUCER_KINDS,
    ChannelGraph,
    ChannelGroup,
    CoupledShortcutPruner,
    GroupMember,
    ShortcutPruner,
)
from prunelab.surgery.layers import ChannelMappingLayer, channel_mapping_types

__all__ = [
    "ARCH_FORMAT",
    "ARCH_VERSION",
    "DEFAULT_TOLERANCE",
    "PRODUCER_KINDS",
    "ChannelGraph",
    "ChannelGroup",
    "ChannelMappingLayer",
    "ChannelRemovalError",
    "CoupledShortcutPruner",
    "GroupMember",
    "ShortcutPruner",
    "SurgeryMismatchError",
    "SurgeryReport",
    "apply_arch_spec",
    "arch_spec",
    "channel_mapping_types",
    "check_equivalence",
    "compact",
    "find_unremovable",
    "zero_channels",
]
