r"""The criterion protocol: how important each entry of a tensor, or each channel of a group, is.

A criterion answers at one or both of two levels (:data:`LEVELS`):

- **entry level** — :meth:`EntryCriterion.score` maps the live state of one target (a
  :class:`TargetView`) to a score tensor ``S`` with ``S.shape == view.value.shape``. It does not decide
  how many entries go (the selector's job) nor at which unit (the granularity's): the pruner sums ``S``
  over units, ranks the units and masks the losers. Criteria that need one global fit before scoring
  (SNIP, GraSP, SynFlow) also define ``fit(views, stats)``, which the pruner calls once per step
  before any ``score``.
- **group level** — :meth:`GroupCriterion.score_group` maps one coupled channel group (a
  :class:`ChannelGroupLike`: the channels that can only be removed together) to one score per group
  channel, shape ``(group.size,)``. Criteria that need one fit over all groups (PLS + VIP) also define
  ``fit_groups(groups, model, stats)``, which :func:`score_groups` calls once before any
  ``score_group``. :class:`MemberGroupCriterion` is the reusable base for criteria that score each
  member layer's units (a producer's filters, a BatchNorm's channels) and reduce them onto the group's
  channels with a *group reduction* chosen at construction,

  .. math:: s_c = \operatorname{reduce}_{(m, i)\,:\,(c, i) \in \mathrm{pairs}(m)} u_m(i),
            \qquad \operatorname{reduce} \in \{\mathrm{sum}, \mathrm{mean}, \mathrm{max}\},

  as Torch-Pruning's ``GroupMagnitudeImportance(group_reduction=...)`` does.

Scores at both levels are non-negative, higher = keep. A criterion object may implement one level or
both (``random`` does); :func:`criterion_levels` tells which.

Statistics. Both levels receive the same ``stats`` mapping (:data:`Stats`); ``requires`` names the
keys a criterion reads, data-free criteria leave it empty. The standard keys are listed in
:data:`STANDARD_STATS`; accumulated per-tensor statistics are keyed ``stats[name][target fqn]``.
Criteria with internal state (a random generator) may define ``state_dict()`` /
``load_state_dict(state)``; the pruner saves and restores it.

The channel group is duck-typed (:class:`ChannelGroupLike`, which
:class:`prunelab.surgery.ChannelGroup` satisfies), so neither this module nor any criterion imports
the surgery. The registry of criteria lives in :mod:`prunelab.criteria`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from prunelab.core.targets import Target
from prunelab.errors import ConfigError

__all__ = [
    "LEVELS",
    "REDUCTIONS",
    "STANDARD_STATS",
    "ChannelGroupLike",
    "EntryCriterion",
    "GroupCriterion",
    "GroupMemberLike",
    "Level",
    "MemberGroupCriterion",
    "Reduction",
    "Stats",
    "TargetView",
    "applies_to",
    "check_reduction",
    "criterion_levels",
    "score_groups",
]

#: Statistics handed to criteria of both levels: ``{statistic name: value}`` (see :data:`STANDARD_STATS`).
Stats = Mapping[str, Any]

#: The standard statistics keys and what they hold; a criterion's ``requires`` names the ones it reads.
STANDARD_STATS: Mapping[str, str] = {
    "model": "the nn.Module the targets or groups belong to",
    "batches": "calibration batches, a list of (x, y) tensors without augmentation",
    "data": "the training split (a prunelab tensor dataset or a map-style dataset of (x, y))",
    "num_classes": "the number of classes of the task",
    "seed": "the run's seed, for criteria that draw samples",
    "relief": "{target fqn: NN-relief importance numerators} (accumulated activations)",
}

#: The two levels a criterion can score at.
Level = Literal["entry", "group"]
LEVELS: tuple[Level, ...] = ("entry", "group")

#: How :class:`MemberGroupCriterion` reduces the member scores that map onto one group channel.
Reduction = Literal["sum", "mean", "max"]
REDUCTIONS: tuple[Reduction, ...] = ("sum", "mean", "max")


@dataclass(frozen=True)
class TargetView:
    """What an entry-level criterion sees of one target at scoring time.

    Attributes:
        target: the target's address.
        value: the tensor to score: the *original* tensor behind the mask
            (:func:`prunelab.core.masking.original`), detached. Entries already pruned are usually zero.
        mask: the current boolean keep-mask (``True`` = keep), same shape as ``value``.
        grad: the gradient accumulated on the original tensor, if any (``None`` otherwise).
    """

    target: Target
    value: Tensor
    mask: Tensor
    grad: Tensor | None = field(default=None)

    @property
    def fqn(self) -> str:
        """The target's qualified tensor name, the key into ``stats[name]``."""
        return self.target.fqn

    @property
    def module(self) -> nn.Module:
        """The module that owns the target tensor."""
        return self.target.module


class GroupMemberLike(Protocol):
    """One layer touched by a channel group (what :class:`prunelab.surgery.GroupMember` offers).

    Attributes:
        name: the member's qualified module name (``model.get_submodule(name)``).
        kind: ``Conv2d``, ``DepthwiseConv2d``, ``Linear``, ``BatchNorm2d``, ``BatchNorm1d``, ...
        role: ``"out"`` (the group is this layer's output channels / BN channels) or ``"in"``.
        pairs: ``(group channel, member index)`` pairs; a group channel may map to several indices.
    """

    name: str
    kind: str
    role: str
    pairs: list[tuple[int, int]]


class ChannelGroupLike(Protocol):
    """A set of coupled channels that can only be removed together (duck type of
    :class:`prunelab.surgery.ChannelGroup`).

    Attributes:
        name: the group's name (its first producer layer).
        size: the number of group channels, the length of a group-level score.
        members: every layer the group touches.
    """

    name: str
    size: int
    members: Sequence[GroupMemberLike]

    def producers(self) -> Sequence[GroupMemberLike]:
        """Conv/Linear members whose output channels are the group."""
        ...

    def bns(self) -> Sequence[GroupMemberLike]:
        """The BatchNorm members."""
        ...


@runtime_checkable
class EntryCriterion(Protocol):
    """Scores the entries of one target; higher = more important = keep.

    Attributes:
        requires: names of the statistics :meth:`score` reads from ``stats`` (empty if data-free).
    """

    requires: frozenset[str]

    def score(self, view: TargetView, stats: Stats) -> Tensor:
        """Return non-negative scores with ``view.value``'s shape (higher = keep)."""
        ...


@runtime_checkable
class GroupCriterion(Protocol):
    """Scores the channels of one coupled channel group; higher = more important = keep.

    Attributes:
        requires: names of the statistics :meth:`score_group` reads from ``stats`` (empty if data-free).
    """

    requires: frozenset[str]

    def score_group(self, group: ChannelGroupLike, model: nn.Module, stats: Stats) -> Tensor:
        """Return non-negative scores of shape ``(group.size,)``, on the CPU (higher = keep)."""
        ...


def applies_to(criterion: object, group: ChannelGroupLike) -> bool:
    """Whether a group criterion can score ``group``: its optional ``applies_to(group)``, else ``True``.

    A criterion that reads one kind of member (BN scale reads BatchNorms) defines ``applies_to`` so that
    callers pruning a whole model can keep the groups it cannot score whole instead of failing.
    """
    check = getattr(criterion, "applies_to", None)
    return bool(check(group)) if callable(check) else True


def criterion_levels(obj: object) -> tuple[Level, ...]:
    """The levels a criterion object, class or factory scores at, in :data:`LEVELS` order.

    A class or object counts as entry level if it has a callable ``score`` and as group level if it has a
    callable ``score_group``. A factory function that is not a class declares its levels in a ``levels``
    attribute.

    Example:
        >>> class Both:
        ...     def score(self, view, stats): ...
        ...     def score_group(self, group, model, stats): ...
        >>> criterion_levels(Both), criterion_levels(object())
        (('entry', 'group'), ())
    """
    declared = getattr(obj, "levels", None)
    if declared is not None and not isinstance(obj, type):
        return tuple(level for level in LEVELS if level in declared)
    found: list[Level] = []
    if callable(getattr(obj, "score", None)):
        found.append("entry")
    if callable(getattr(obj, "score_group", None)):
        found.append("group")
    return tuple(found)


def check_reduction(reduction: str, what: str = "group reduction") -> Reduction:
    """Return ``reduction`` after checking it is one of :data:`REDUCTIONS`.

    Raises:
        ConfigError: for any other value.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"{what} {reduction!r} is unknown; use one of {', '.join(REDUCTIONS)}")
    return reduction  # type: ignore[return-value]


class MemberGroupCriterion:
    """Base of group criteria that score each member layer's units and reduce them onto the channels.

    A subclass says which members of a group it scores (:meth:`members`) and what each unit of one
    member scores (:meth:`member_scores`, one value per member index: a conv's filters, a BN's
    channels). :meth:`score_group` maps them onto the group channels through ``member.pairs`` and reduces
    the values that land on one channel with the group reduction, members in group order, pairs in
    order. A channel no value lands on scores 0.

    Args:
        reduction: ``"sum"``, ``"mean"`` or ``"max"``; ``None`` takes the class's
            :attr:`default_reduction`.

    Attributes:
        requires: statistics the member scores read (empty for weight-only criteria).
        default_reduction: the reduction of the published method.
    """

    requires: frozenset[str] = frozenset()
    default_reduction: ClassVar[Reduction] = "sum"

    def __init__(self, reduction: Reduction | None = None) -> None:
        self.reduction: Reduction = check_reduction(
            self.default_reduction if reduction is None else reduction, f"{type(self).__name__} reduction"
        )

    def members(self, group: ChannelGroupLike) -> Sequence[GroupMemberLike]:
        """The members whose units are scored (override)."""
        raise NotImplementedError

    def member_scores(self, member: GroupMemberLike, model: nn.Module, stats: Stats) -> Tensor:
        """Non-negative scores of ``member``'s units, a 1-D tensor indexed by member index (override)."""
        raise NotImplementedError

    def score_group(self, group: ChannelGroupLike, model: nn.Module, stats: Stats) -> Tensor:
        """The per-channel reduction of the member scores, shape ``(group.size,)``, on the CPU."""
        values: list[Tensor] = []
        channels: list[Tensor] = []
        for member in self.members(group):
            if not member.pairs:
                continue
            scores = self.member_scores(member, model, stats).detach().cpu()
            pairs = torch.tensor(member.pairs, dtype=torch.long)
            channels.append(pairs[:, 0])
            values.append(scores[pairs[:, 1]])
        # At least float32: the channel sums of a half-precision model would lose their ranking.
        dtype = torch.promote_types(torch.float32, values[0].dtype) if values else torch.float32
        out = torch.zeros(group.size, dtype=dtype)
        if not values:
            return out
        index = torch.cat(channels)
        value = torch.cat(values).to(dtype)
        if self.reduction == "max":
            # Scores are non-negative, so the zero start is the identity of max.
            return out.scatter_reduce_(0, index, value, reduce="amax", include_self=True)
        # index_add_ on a 1-D CPU tensor adds in index order, member after member: the sums (and their
        # float rounding) are those of adding the values one pair at a time.
        out.index_add_(0, index, value)
        if self.reduction == "mean":
            count = torch.zeros(group.size, dtype=dtype).index_add_(0, index, torch.ones_like(value))
            out /= count.clamp_min(1)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


def score_groups(
    criterion: object, groups: Sequence[ChannelGroupLike], model: nn.Module, stats: Stats | None = None
) -> dict[str, Tensor]:
    """``{group name: per-channel scores}`` of ``groups`` (in order) under a group-level ``criterion``.

    Calls the criterion's optional ``fit_groups(groups, model, stats)`` once, then ``score_group`` for
    every group, and checks every result as the pruner checks entry scores.

    Args:
        criterion: a group-level criterion (:class:`GroupCriterion`).
        groups: the channel groups to score, e.g. a :class:`prunelab.surgery.ChannelGraph`'s ``groups``.
        model: the network the groups were traced on.
        stats: the statistics the criterion ``requires``.

    Raises:
        ConfigError: a criterion without the group level, or statistics it requires that are missing.
        ValueError: scores of the wrong shape, negative or not finite (a bug in the criterion).
    """
    if "group" not in criterion_levels(criterion):
        raise ConfigError(
            f"criterion {criterion!r} has no group level (score_group); use a group-level criterion "
            "(prunelab list criteria)"
        )
    stats = {} if stats is None else stats
    missing = set(getattr(criterion, "requires", frozenset())) - set(stats)
    if missing:
        raise ConfigError(
            f"criterion {criterion!r} needs statistics {sorted(missing)}; pass them in stats= "
            f"({', '.join(f'{k}: {STANDARD_STATS.get(k, k)}' for k in sorted(missing))})"
        )
    fit = getattr(criterion, "fit_groups", None)
    if callable(fit):
        fit(groups, model, stats)
    scores: dict[str, Tensor] = {}
    for group in groups:
        s = criterion.score_group(group, model, stats)  # type: ignore[attr-defined]
        if tuple(s.shape) != (group.size,):
            raise ValueError(
                f"criterion {criterion!r} returned scores of shape {tuple(s.shape)} for group "
                f"{group.name!r} of {group.size} channels; group scores must have shape ({group.size},)"
            )
        if s.is_floating_point() and not bool(torch.isfinite(s).all()):
            raise ValueError(f"criterion {criterion!r} returned NaN or inf for group {group.name!r}")
        if bool((s < 0).any()):
            raise ValueError(f"criterion {criterion!r} returned negative scores for group {group.name!r}")
        scores[group.name] = s
    return scores
