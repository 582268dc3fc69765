r"""A one-shot Taylor pruning method: the driver ``taylor_one_shot`` and the method preset of the same name.

Prune once to ``prune.sparsity`` with the first-order Taylor criterion (:mod:`.taylor`, Molchanov et
al., CVPR 2019) scored on calibration batches drawn from the training split, evaluate, fine-tune with
the recipe's ``finetune`` section, and report one ``rounds.csv`` row and a ``taylor_one_shot`` summary
field: the calibration set's size and loss, and the share of the total Taylor importance (measured on
the network before the step) that the kept entries hold,

.. math:: \rho = \frac{\sum_m M_m\, \mathcal{I}_m}{\sum_m \mathcal{I}_m},

which, with the Taylor criterion and one global ranking of elements, is the largest share any mask with
as many entries can keep (the highest scores are kept), so at least the kept fraction of the entries.
Another entry criterion may be named (``options: {criterion: magnitude}``); its ``ρ`` then says how much
of the Taylor importance it gave away. Recipe::

    prune:
      method: taylor_one_shot
      sparsity: 0.5
      options: {granularity: element, scope: global, calibration_samples: 256}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.core import masking
from prunelab.core.criterion import TargetView
from prunelab.errors import ConfigError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method
from prunelab.methods.unstructured import MaskOptions

from .taylor import Taylor

__all__ = ["TaylorOneShotOptions", "run_taylor_one_shot"]


@dataclass
class TaylorOneShotOptions(MaskOptions):
    """``prune.options`` of ``taylor_one_shot``: the mask options with Taylor as the criterion.

    Attributes:
        criterion: an entry-level criterion; ``taylor`` (this plugin's) by default.
        calibration_samples: training samples the gradients are accumulated over.
        calibration_batch_size: samples per calibration batch.
    """

    criterion: str = "taylor"
    calibration_samples: int = 256
    calibration_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration_samples < 1 or self.calibration_batch_size < 1:
            raise ConfigError(
                "calibration_samples: calibration_samples and calibration_batch_size must be >= 1"
            )


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean cross-entropy of ``model`` (eval mode) over ``batches``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = sum(
        float(F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum")) for x, y in batches
    )
    model.train(was_training)
    return total / sum(len(y) for _, y in batches)


def _views(pruner: Any) -> list[TargetView]:
    """What an entry criterion sees of each of the pruner's targets now."""
    return [
        TargetView(
            t,
            masking.original(t.module, t.param).detach(),
            masking.get_mask(t.module, t.param),
        )
        for t in pruner.targets
    ]


def _importance_kept(pruner: Any, scores: dict[str, torch.Tensor]) -> float:
    """Share of the total importance ``scores`` that the pruner's current masks keep."""
    kept = total = 0.0
    for target in pruner.targets:
        s = scores[target.fqn]
        mask = masking.get_mask(target.module, target.param).to(s.device)
        kept += float((s * mask).sum())
        total += float(s.sum())
    return kept / total if total > 0 else 1.0


@register_driver("taylor_one_shot", options=TaylorOneShotOptions)
def run_taylor_one_shot(ctx: MethodContext, options: TaylorOneShotOptions) -> MethodResult:
    """Prune once by first-order Taylor importance on calibration batches, then fine-tune (plugin example)."""
    assert ctx.sparsity is not None  # the driver reads prune.sparsity, so validation set it
    model = ctx.model
    pruner = ctx.make_pruner(model, options)
    batches = ctx.calibration(options.calibration_samples, options.calibration_batch_size)
    stats = {"model": model, "batches": batches}
    loss = _mean_loss(model, batches)
    # The Taylor importance of every entry before the step: what the kept share is measured in, whichever
    # criterion prunes (with criterion taylor and its default options it is the ranking the step uses).
    reference = Taylor()
    views = _views(pruner)
    reference.fit(views, stats)
    importance = {v.fqn: reference.score(v, stats) for v in views}
    report = pruner.step(ctx.sparsity, stats if pruner.requires else None)
    kept = _importance_kept(pruner, importance)
    before = ctx.evaluate(model)
    ctx.log(
        f"taylor_one_shot: {options.criterion} pruned {report.sparsity:.4f} of the targeted entries, "
        f"keeping {100 * kept:.2f} % of the Taylor importance"
    )
    ctx.train(model, ctx.finetune, "finetune1", seed_offset=1)
    after = ctx.evaluate(model) if ctx.finetune.epochs > 0 else before
    row = ctx.round_row(
        model, 1, ctx.sparsity, report.sparsity, before, after, importance_kept=round(kept, 6)
    )
    return MethodResult(
        model,
        rounds=[row],
        accuracy_before_finetune=before,
        summary={
            "taylor_one_shot": {
                "criterion": options.criterion,
                "calibration_samples": sum(len(y) for _, y in batches),
                "calibration_loss": loss,
                "importance_kept": kept,
            }
        },
    )


register_method(
    "taylor_one_shot",
    "Plugin example: one-shot first-order Taylor pruning on calibration batches, then fine-tuning "
    "(Molchanov et al. 2019).",
    "taylor_one_shot",
    sparsity=0.5,
)
