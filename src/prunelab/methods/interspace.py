"""Interspace pruning (IP) and the pruning-at-initialisation methods it was combined with.

Wimmer, Mehnert, Condurache, "Interspace Pruning: Using Adaptive Filter Representations to Improve
Training of Sparse CNNs", CVPR 2022. IP is not a driver: it is a reparametrization of *what* is pruned
(``prune.reparam.name: interspace``, :mod:`prunelab.reparam.interspace`): every K×K conv weight becomes
``W = (Λ ⊙ M) Bᵀ`` with coefficients ``Λ``, their mask ``M`` and a trainable filter basis ``B``, and any
unstructured method then scores and masks ``Λ`` instead of ``W``. The same recipe with
``reparam.name: none`` is standard pruning (SP), so every method runs in both modes unchanged:

- global magnitude one-shot after training (preset ``magnitude``), gradual magnitude during training
  (``agp``), iterative magnitude with rewinding (``lottery_ticket``; rewinding also resets ``B`` by
  default, ``reparam.rewind_basis``) — built-in presets and drivers;
- SNIP, GraSP and SynFlow at initialisation (presets ``snip``, ``grasp``, ``synflow`` below) with the
  :func:`run_at_init` driver: score the untrained network on calibration data, prune (in
  ``prune.options.rounds`` rounds on the exponential schedule ``s_k = 1 − (1 − s)^{k/n}``; SynFlow uses 100),
  then train the sparse network with the recipe's ``finetune`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunelab.errors import ConfigError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method
from prunelab.methods.unstructured import MaskOptions


@dataclass
class AtInitOptions(MaskOptions):
    """``prune.options`` of the ``at_init`` driver.

    Attributes:
        rounds: scoring rounds on the exponential schedule (SynFlow uses 100, the others 1).
        spacing: ``geometric`` (exponential: ``s_k = 1 − (1 − s)^{k/n}``) or ``linear``.
        calibration_samples: training samples the data-driven criteria (SNIP, GraSP) see
            (SNIP's paper uses one mini-batch; GraSP's code ten per class).
        calibration_batch_size: samples per calibration batch.
    """

    rounds: int = 1
    spacing: Literal["geometric", "linear"] = "geometric"
    calibration_samples: int = 256
    calibration_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ConfigError("rounds: must be >= 1")
        if self.calibration_samples < 1 or self.calibration_batch_size < 1:
            raise ConfigError(
                "calibration_samples: calibration_samples and calibration_batch_size must be >= 1"
            )


@register_driver("at_init", options=AtInitOptions)
def run_at_init(ctx: MethodContext, options: AtInitOptions) -> MethodResult:
    """Prune the weights as received (at init when train.epochs is 0) in scoring rounds, then train."""
    from prunelab.core.schedules import SCHEDULES

    assert ctx.sparsity is not None
    if ctx.dense_epochs > 0:
        ctx.log("at_init: train.epochs > 0, so the network is pruned after dense training, not at init")
    model = ctx.model
    pruner = ctx.make_pruner(model, options)
    stats = {
        "model": model,
        "batches": ctx.calibration(options.calibration_samples, options.calibration_batch_size),
    }
    schedule = SCHEDULES.build(
        "iterative", sparsity=ctx.sparsity, rounds=options.rounds, spacing=options.spacing
    )
    report = None
    for target in schedule.targets():
        # No training between rounds: iterating the scoring is what keeps SynFlow from collapsing layers.
        report = pruner.step(target, stats)
    assert report is not None
    ctx.log(
        f"at_init: {options.criterion} pruned to {report.sparsity:.4f} of the targeted entries "
        f"in {options.rounds} round(s)"
    )
    before = ctx.evaluate(model)
    ctx.train(model, ctx.finetune, "finetune1", seed_offset=1)
    after = ctx.evaluate(model) if ctx.finetune.epochs > 0 else before
    row = ctx.round_row(model, 1, ctx.sparsity, report.sparsity, before, after)
    return MethodResult(model, rounds=[row], accuracy_before_finetune=before)


register_method(
    "snip",
    "SNIP at initialisation: keep the highest |θ ⊙ ∂L/∂θ|, then train (Lee et al. 2019); SP or IP.",
    "at_init",
    sparsity=0.9,
    criterion="snip",
)
register_method(
    "grasp",
    "GraSP at initialisation: keep the highest θ ⊙ Hg (gradient flow), then train (Wang et al. 2020).",
    "at_init",
    sparsity=0.9,
    criterion="grasp",
)
register_method(
    "synflow",
    "SynFlow at initialisation, 100 data-free rounds on the exponential schedule (Tanaka et al. 2020).",
    "at_init",
    sparsity=0.9,
    criterion="synflow",
    rounds=100,
)
register_method(
    "magnitude_at_init",
    "Global magnitude pruning at initialisation, then train: the data-free baseline of the at-init methods.",
    "at_init",
    sparsity=0.9,
    criterion="magnitude",
)
