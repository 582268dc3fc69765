"""One call for structured pruning of any CNN: :func:`prune_channels`.

``prune_channels(model, example_inputs, amount)`` does what a channel-pruning recipe does, on a model
object from anywhere (prunelab's zoo, torchvision, timm, a user's module):

1. trace the coupled channel groups (:class:`prunelab.surgery.ChannelGraph`; the classifier head and
   every other output layer keep their outputs);
2. score every group channel with a group-level criterion (``l1_filter``, ``bn_scale``, ``pls_vip``,
   ``random`` or a plugin; :mod:`prunelab.criteria`), fed the statistics it requires — ``pls_vip``
   reads ``calibration`` batches;
3. select ``round(amount · channels)`` channels to remove, globally or per group, respecting each
   group's periodic structure (grouped convolutions, GroupNorm) and ``min_keep``;
4. remove them physically (:func:`prunelab.surgery.compact`) and verify the smaller model against the
   masked one on a seeded batch (maximum absolute output difference ≤ ``tolerance``).

Groups whose channels cannot be removed from this model (a constant-width split or slice, a channel
shuffle) are found by the surgery, left whole, reported under ``refused`` with the reason, and the
selection is redone over the other groups, so the call still prunes what can be pruned and says what
could not. Save the result with :func:`prunelab.checkpoint.save_pruned`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunelab.core.criterion import applies_to, score_groups
from prunelab.core.inputs import ExampleInputs
from prunelab.core.selectors import check_min_keep, check_scope, check_sparsity, select_channels
from prunelab.criteria import build_criterion
from prunelab.errors import ConfigError
from prunelab.metrics.counting import count_parameters, dense_macs
from prunelab.surgery import (
    DEFAULT_TOLERANCE,
    ChannelGraph,
    ChannelRemovalError,
    SurgeryReport,
    compact,
    find_unremovable,
)

__all__ = ["ChannelPruningReport", "prune_channels"]


@dataclass
class ChannelPruningReport:
    """What :func:`prune_channels` did, measured.

    Attributes:
        criterion: the criterion's name (or repr, for a criterion object).
        amount: the requested share of channels to remove.
        scope: ``"global"`` or ``"layer"``.
        head: the classifier head kept whole.
        channels_before / channels_after: prunable channels before and after.
        params_before / params_after: parameter counts.
        macs_before / macs_after: multiply-accumulates of one forward pass on the example inputs.
        surgery: the :class:`~prunelab.surgery.SurgeryReport` (its ``max_abs_diff`` is the equivalence check).
        refused: ``{group: why}`` for groups kept whole: the criterion cannot score them (BN scale
            without a BatchNorm) or the surgery cannot remove them.
        prunability: the channel graph's report (groups, exclusions).
    """

    criterion: str
    amount: float
    scope: str
    head: str
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    surgery: SurgeryReport
    refused: dict[str, str] = field(default_factory=dict)
    prunability: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "criterion": self.criterion,
            "amount": self.amount,
            "scope": self.scope,
            "head": self.head,
            "channels_before": self.channels_before,
            "channels_after": self.channels_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "surgery": self.surgery.to_dict(),
            "refused": dict(self.refused),
            "prunability": self.prunability,
        }


def _statistics(
    criterion: Any, model: nn.Module, calibration: Iterable[Any] | None, head: str
) -> dict[str, Any]:
    """The statistics a group criterion requires, from the model and the calibration batches."""
    requires = set(getattr(criterion, "requires", frozenset()))
    layer = model.get_submodule(head)
    classes = getattr(layer, "out_features", getattr(layer, "out_channels", None))
    stats: dict[str, Any] = {"model": model, "seed": 0}
    if classes is not None:
        stats["num_classes"] = int(classes)
    if calibration is not None:
        batches = list(calibration)
        if not batches or not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
            raise ConfigError("calibration: give a list of (inputs, labels) batches, e.g. [(x, y), ...]")
        stats["batches"] = batches
    missing = requires - set(stats)
    if missing:
        what = "calibration=[(x, y), ...] batches" if "batches" in missing else ", ".join(sorted(missing))
        raise ConfigError(f"criterion {criterion!r} needs {what}; pass them to prune_channels")
    return stats


def prune_channels(
    model: nn.Module,
    example_inputs: ExampleInputs,
    amount: float,
    *,
    criterion: str | Any = "l1_filter",
    scope: str = "global",
    head: str | None = None,
    exclude: Sequence[str] = (),
    min_keep: int = 1,
    calibration: Iterable[Any] | None = None,
    criterion_kwargs: Mapping[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    batch: ExampleInputs | None = None,
) -> tuple[nn.Module, ChannelPruningReport]:
    """Remove ``amount`` of the prunable channels of ``model`` physically; return the smaller model and a report.

    Args:
        model: any ``nn.Module`` CNN (left unchanged; the result is a new module).
        example_inputs: what the model is called with: a tensor ``x`` (``model(x)``), a tuple of tensors
            (``model(x, y)``), a dict of keyword tensors (``model(**d)``), or the shape ``(C, H, W)``.
            Outputs may be a tensor, a tuple or a dict.
        amount: share of channels to remove, in [0, 1).
        criterion: a group-level criterion name (``prunelab list criteria``: ``l1_filter``,
            ``bn_scale``, ``pls_vip``, ``random``) or a criterion object with ``score_group``.
        scope: ``"global"`` (one ranking over all groups) or ``"layer"`` (the same share in every group).
            A global ranking can leave layers a few channels wide, which remove MACs but little latency:
            on a trained ResNet-56 at 50 %, 1.4-1.7x faster for a MACs ratio of 3.43, against 2.1-3.0x
            per layer (``benchmarks/speedup.md``); measure with :func:`prunelab.metrics.speed.compare_latency`.
        head: the classifier head's module name (default: found from the graph).
        exclude: module names whose output channels stay.
        min_keep: channels every group keeps at least; even with 0, a selection that would remove every
            channel of a layer is refused (one-line :class:`~prunelab.errors.ConfigError` naming the layer).
        calibration: ``[(inputs, labels), ...]`` batches, for criteria that read data (``pls_vip``).
        criterion_kwargs: options of a named criterion (e.g. ``{"p": 2}`` for ``l1_filter``).
        tolerance: the equivalence check's maximum absolute output difference.
        batch: verification inputs (default: seeded standard-normal inputs shaped like ``example_inputs``).

    Returns:
        ``(compacted model, ChannelPruningReport)``.

    Raises:
        ConfigError: a bad argument (amount, scope, criterion, head, calibration), one line.
        UnsupportedModelError: the model cannot be traced, has a layer type the surgery cannot handle, is
            on the meta device (no weights: materialise it first) or holds NaN/inf weights.
        SurgeryMismatchError: the compacted model differs from the masked one (a bug: report it).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        >>> small, report = prune_channels(net, torch.randn(2, 3, 8, 8), 0.5)
        >>> small[0].out_channels, report.surgery.max_abs_diff <= 1e-4
        (4, True)
    """
    amount = check_sparsity(amount, "amount")
    if amount >= 1.0:
        raise ConfigError("amount: must be below 1 (a share of channels to remove), e.g. 0.3")
    check_scope(scope)
    check_min_keep(min_keep)
    if isinstance(criterion, str):
        name = criterion
        crit = build_criterion(criterion, "group", **dict(criterion_kwargs or {}))
    else:
        if criterion_kwargs:
            raise ConfigError(
                "criterion_kwargs: only for a criterion given by name; configure the object instead"
            )
        name, crit = repr(criterion), criterion
    # The graph is the first to touch the model: it refuses one without real weights (meta, NaN/inf).
    graph = ChannelGraph(model, example_inputs, exclude=exclude, head=head)
    unscored = {g.name: f"criterion {name} cannot score it" for g in graph.groups if not applies_to(crit, g)}
    if len(unscored) == len(graph.groups) and unscored:
        raise ConfigError(
            f"criterion {name} can score none of the {len(unscored)} channel groups of {type(model).__name__} "
            "(bn_scale needs BatchNorm); use criterion l1_filter"
        )
    for group, why in unscored.items():
        graph.refuse(group, why)
    stats = _statistics(crit, model, calibration, graph.head)
    scores = score_groups(crit, graph.groups, model, stats)
    params_before = count_parameters(model).total
    macs_before = dense_macs(model, example_inputs)
    channels_before = sum(g.size for g in graph.groups)
    while True:
        live = {g.name: scores[g.name] for g in graph.groups}
        keep = select_channels(
            live,
            amount,
            scope=scope,
            min_keep=min_keep,
            divisions={g.name: g.divisions for g in graph.groups},
        )
        try:
            small, surgery = compact(
                model, keep, example_inputs, graph=graph, tolerance=tolerance, batch=batch, diagnose=False
            )
            break
        except ChannelRemovalError:
            # Find every group that cannot go (not only the selected ones), so one retry suffices: they
            # stay whole, and the others are selected again to reach the amount.
            gone = {n: [i for i, k in enumerate(mask.tolist()) if not k] for n, mask in keep.items()}
            trial = {
                g.name: gone.get(g.name) or g.periodic([0]) for g in graph.groups if g.size > g.divisions
            }
            bad = find_unremovable(model, graph, example_inputs, trial, batch=batch, tolerance=tolerance)
            if not bad:
                raise  # the joint removal fails, no group alone does: nothing to leave out
            for group, why in bad.items():
                graph.refuse(group, why)
            if not graph.groups:
                raise
    return small, ChannelPruningReport(
        criterion=name,
        amount=amount,
        scope=scope,
        head=graph.head,
        channels_before=channels_before,
        channels_after=channels_before - surgery.channels_removed,
        params_before=params_before,
        params_after=count_parameters(small).total,
        macs_before=macs_before,
        macs_after=dense_macs(small, example_inputs),
        surgery=surgery,
        refused=dict(graph.refused),
        prunability=graph.report(),
    )
