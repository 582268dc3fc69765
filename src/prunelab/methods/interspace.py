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
  ``prune.rounds`` rounds on the exponential schedule ``s_k = 1 − (1 − s)^{k/n}``; SynFlow uses 100),
  then train the sparse network with the recipe's ``finetune`` section.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.errors import ConfigError
from prunelab.experiments.drivers import PruneContext, register_driver
from prunelab.experiments.methods import register_preset


@dataclass
class AtInitOptions:
    """``prune.options`` of the ``at_init`` driver.

    Attributes:
        calibration_samples: training samples the data-driven criteria (SNIP, GraSP) see
            (SNIP's paper uses one mini-batch; GraSP's code ten per class).
        calibration_batch_size: samples per calibration batch.
    """

    calibration_samples: int = 256
    calibration_batch_size: int = 128

    def __post_init__(self) -> None:
        if self.calibration_samples < 1 or self.calibration_batch_size < 1:
            raise ConfigError("calibration_samples/calibration_batch_size: must be >= 1")


@register_driver("at_init", options=AtInitOptions)
def run_at_init(ctx: PruneContext, options: AtInitOptions) -> None:
    """Prune the weights as received (at init when train.epochs is 0) in prune.rounds scoring rounds, then train."""
    from prunelab.core.schedules import SCHEDULES
    from prunelab.stats import calibration_batches

    p = ctx.recipe.prune
    if ctx.recipe.train.epochs > 0:
        ctx.log("at_init: train.epochs > 0, so the network is pruned after dense training, not at init")
    pruner = ctx.make_pruner()
    batches = calibration_batches(
        ctx.data.train, options.calibration_samples, options.calibration_batch_size, seed=ctx.recipe.seed
    )
    stats = {"model": ctx.model, "batches": batches}
    targets = SCHEDULES.build("iterative", sparsity=p.sparsity, rounds=p.rounds, spacing=p.spacing).targets()
    report = None
    for target in targets:
        # No training between rounds: iterating the scoring is what keeps SynFlow from collapsing layers.
        report = pruner.step(target, stats)
    assert report is not None
    ctx.log(
        f"at_init: {p.criterion} pruned to {report.sparsity:.4f} of the targeted entries in {p.rounds} round(s)"
    )
    before = ctx.evaluate_test()
    ctx.accuracy_before_finetune = before
    ctx.train(ctx.recipe.finetune, "finetune1", seed_offset=1)
    after = ctx.evaluate_test() if ctx.recipe.finetune.epochs > 0 else before
    ctx.record_round(1, p.sparsity, report.sparsity, before, after)


_AT_INIT = {"granularity": "element", "scope": "global", "schedule": "at_init"}

register_preset(
    "snip",
    "SNIP at initialisation: keep the highest |θ ⊙ ∂L/∂θ|, then train (Lee et al. 2019); SP or IP.",
    criterion="snip",
    rounds=1,
    **_AT_INIT,
)
register_preset(
    "grasp",
    "GraSP at initialisation: keep the highest θ ⊙ Hg (gradient flow), then train (Wang et al. 2020).",
    criterion="grasp",
    rounds=1,
    **_AT_INIT,
)
register_preset(
    "synflow",
    "SynFlow at initialisation, 100 data-free rounds on the exponential schedule (Tanaka et al. 2020).",
    criterion="synflow",
    rounds=100,
    **_AT_INIT,
)
register_preset(
    "magnitude_at_init",
    "Global magnitude pruning at initialisation, then train: the data-free baseline of the at-init methods.",
    criterion="magnitude",
    rounds=1,
    **_AT_INIT,
)
