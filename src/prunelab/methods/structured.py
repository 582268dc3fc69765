"""The structured round shared by every channel-pruning method: compact → evaluate → fine-tune → measure → record.

Network slimming, proximal network slimming, one-shot structured pruning (L1-filter, BN scale) and
PLS+VIP differ in how they train and which channels they keep; once the keep masks are chosen, one round
is the same sequence for all of them, written here once:

1. the masks of rank 0 are broadcast, so every DDP rank removes the same channels;
2. :func:`prunelab.surgery.compact` removes the channels physically (BN channels and the next layers'
   inputs included) and verifies the smaller network against the masked one;
3. the compacted network is evaluated ("accuracy before fine-tuning"), fine-tuned with the given
   section, evaluated again if it trained, measured, and its ``rounds.csv`` row is recorded.

Also here, for the same methods: the channel graph of the recipe's model (:func:`channel_graph`), the
group-level criterion a method's options name (:func:`prunelab.criteria.check_criterion`); the statistics a
criterion requires come from :meth:`prunelab.methods.base.MethodContext.statistics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from prunelab.methods.base import MethodContext

__all__ = ["StructuredRound", "channel_graph", "structured_round"]

#: What a method records for a round: ``(target, sparsity, extra rounds.csv columns)`` from the compacted,
#: fine-tuned model, the surgery report and the model's measures (``MethodContext.measure``).
Record = Callable[[nn.Module, Any, Mapping[str, int]], tuple[float, float, dict[str, Any]]]


@dataclass
class StructuredRound:
    """What one structured round left.

    Attributes:
        model: the compacted (and fine-tuned) network.
        report: the surgery report (:class:`prunelab.surgery.SurgeryReport`).
        accuracy_before_finetune: test accuracy right after the surgery.
        accuracy_after_finetune: test accuracy after fine-tuning (the same when it did not train).
        measures: parameters and MACs of ``model`` after fine-tuning.
        row: the ``rounds.csv`` row recorded for the round.
    """

    model: nn.Module
    report: Any
    accuracy_before_finetune: float
    accuracy_after_finetune: float
    measures: dict[str, int]
    row: dict[str, Any]


def channel_graph(ctx: MethodContext, model: nn.Module) -> Any:
    """The coupled channel groups of ``model`` (:class:`prunelab.surgery.ChannelGraph`), minus ``prune.exclude``."""
    from prunelab.surgery import ChannelGraph

    return ChannelGraph(model, ctx.input_shape, exclude=list(ctx.exclude or []), head=ctx.head)


def structured_round(
    ctx: MethodContext,
    model: nn.Module,
    graph: Any,
    keep: Mapping[str, Tensor],
    *,
    index: int,
    tag: str,
    section: Any,
    seed_offset: int,
    tolerance: float,
    min_keep: int,
    record: Record,
) -> StructuredRound:
    """Compact ``model`` to the ``keep`` masks, evaluate, fine-tune, measure and record round ``index``.

    Args:
        ctx: the method's context (its services).
        model: the network ``graph`` was traced on (not modified: surgery builds a new one).
        graph: its :class:`~prunelab.surgery.ChannelGraph`.
        keep: ``{group: bool channel mask}`` (``True`` = keep) for the groups to prune.
        index: the round number (1-based) in ``rounds.csv``.
        tag: the fine-tuning stage's name (its checkpoint and ``metrics.jsonl`` lines).
        section: the fine-tuning :class:`~prunelab.training.config.TrainSection` (0 epochs: none).
        seed_offset: the fine-tuning stage's seed offset (its own data order).
        tolerance: surgery verification tolerance (max abs output difference).
        min_keep: channels every group must keep (the surgery refuses masks below it).
        record: ``(model, report, measures) -> (target, sparsity, columns)`` of the round's row.

    Raises:
        SurgeryMismatchError: the compacted network differs from the masked one beyond ``tolerance``.
    """
    from prunelab import distributed as dist
    from prunelab.surgery import compact

    # Identical decisions on every rank: rank 0's masks win (a no-op single-process).
    keep = dist.broadcast_object({k: v.cpu() for k, v in keep.items()})
    model, report = compact(model, keep, ctx.input_shape, graph=graph, tolerance=tolerance, min_keep=min_keep)
    ctx.log(
        f"surgery: removed {report.channels_removed}/{report.channels_before} channels, "
        f"max |compact - masked| = {report.max_abs_diff:.2e} (accepted {report.accepted_diff:.2g}), "
        f"{len(report.folds_inexact)} inexact shift folds"
    )
    before = ctx.evaluate(model)
    ctx.train(model, section, tag, seed_offset=seed_offset)
    after = ctx.evaluate(model) if section.epochs > 0 else before
    measures = ctx.measure(model)
    target, sparsity, columns = record(model, report, measures)
    row = ctx.round_row(model, index, target, sparsity, before, after, **columns)
    return StructuredRound(model, report, before, after, measures, row)
