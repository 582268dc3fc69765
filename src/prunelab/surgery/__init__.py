"""Structured channel surgery: coupled channel groups, verified compaction, arch spec, prunability report.

Public interface (Torch-Pruning stays behind it):

* :class:`ChannelGraph` — the coupled channel groups of a model and :meth:`ChannelGraph.report`
  (the prunability report);
* :func:`compact` — masks → physically smaller network, verified against the masked model;
* :func:`arch_spec` / :func:`apply_arch_spec` — the versioned per-layer JSON a compacted model is
  saved with.
"""

from prunelab.surgery.archspec import ARCH_FORMAT, ARCH_VERSION, apply_arch_spec, arch_spec
from prunelab.surgery.compact import (
    DEFAULT_TOLERANCE,
    SurgeryMismatchError,
    SurgeryReport,
    check_equivalence,
    compact,
    zero_channels,
)
from prunelab.surgery.graph import ChannelGraph, ChannelGroup, GroupMember, ShortcutPruner

__all__ = [
    "ARCH_FORMAT",
    "ARCH_VERSION",
    "DEFAULT_TOLERANCE",
    "ChannelGraph",
    "ChannelGroup",
    "GroupMember",
    "ShortcutPruner",
    "SurgeryMismatchError",
    "SurgeryReport",
    "apply_arch_spec",
    "arch_spec",
    "check_equivalence",
    "compact",
    "zero_channels",
]
