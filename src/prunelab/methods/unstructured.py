"""Unstructured mask pruning: the dense baseline, one-shot, iterative (with rewinding) and gradual AGP.

Drivers (``prunelab list drivers``):

* ``none`` — no pruning: the dense network is the result;
* ``one_shot`` — prune once to ``prune.sparsity``, then fine-tune (Han et al., NeurIPS 2015);
* ``iterative`` — ``rounds`` rounds of prune → [rewind] → fine-tune to the cumulative targets
  ``s_k = 1 − (1 − s)^{k/n}`` (geometric spacing: the same fraction of the remaining weights each round)
  or ``s_k = s·k/n`` (linear); with ``rewind`` the surviving weights go back to their values before
  any training before each round's fine-tuning (lottery tickets, Frankle & Carbin, ICLR 2019);
* ``agp`` — gradual pruning during fine-tuning on the cubic schedule
  ``s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³`` (Zhu & Gupta, 2017).

Each masks the targeted tensors through a :class:`~prunelab.pruning.Pruner` whose criterion,
granularity and scope are the driver's own options (:class:`MaskOptions`); the presets below are the
classic baselines (``prunelab list methods``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prunelab.errors import ConfigError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method

__all__ = ["AGPOptions", "IterativeOptions", "MaskOptions"]


@dataclass
class MaskOptions:
    """Options of the mask-pruning drivers: what scores the entries and at which unit.

    Attributes:
        criterion: an entry-level criterion (``prunelab list criteria``).
        criterion_kwargs: its options (``{p: 2}`` for magnitude, ``{seed: 1}`` for random).
        granularity: the unit of a decision: ``element``, ``kernel``, ``filter`` or ``channel``.
        scope: ``global`` (one ranking over all targets) or ``layer`` (the same sparsity per tensor).
    """

    criterion: str = "magnitude"
    criterion_kwargs: dict[str, Any] = field(default_factory=dict)
    granularity: str = "element"
    scope: Literal["global", "layer"] = "global"

    def __post_init__(self) -> None:
        from prunelab.core.granularity import GRANULARITIES
        from prunelab.criteria import check_criterion

        check_criterion(self.criterion, "entry", self.criterion_kwargs)
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity: {GRANULARITIES.unknown_message(self.granularity)}")


@dataclass
class IterativeOptions(MaskOptions):
    """Options of the ``iterative`` driver.

    Attributes:
        rounds: prune → [rewind] → fine-tune rounds.
        spacing: ``geometric`` (the same fraction of the remaining weights per round) or ``linear``.
        rewind: reset surviving weights to their values before any training before each round's
            fine-tuning (lottery-ticket rewinding).
    """

    rounds: int = 5
    spacing: Literal["geometric", "linear"] = "geometric"
    rewind: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ConfigError("rounds: must be >= 1")


@dataclass
class AGPOptions(MaskOptions):
    """Options of the ``agp`` driver; ``start``/``end`` are fractions of the fine-tuning steps.

    Attributes:
        initial_sparsity: ``s_i``, the sparsity at ``start``.
        start: where pruning starts, as a fraction of the fine-tuning steps.
        end: where the final sparsity is reached.
        frequency: ``Δt``, optimizer steps between mask updates.
    """

    initial_sparsity: float = 0.0
    start: float = 0.0
    end: float = 0.8
    frequency: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ConfigError("initial_sparsity: must be in [0, 1)")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ConfigError("start: need 0 <= start < end <= 1")
        if self.frequency < 1:
            raise ConfigError("frequency: must be >= 1")


def prune_rounds(
    ctx: MethodContext, options: MaskOptions, targets: Sequence[float], rewind: bool = False
) -> MethodResult:
    """Prune ``ctx.model`` to each cumulative target in turn, [rewinding and] fine-tuning after each."""
    from prunelab.core import masking

    model = ctx.model
    pruner = ctx.make_pruner(model, options)
    result = MethodResult(model)
    for index, target in enumerate(targets, start=1):
        report = pruner.step(target, ctx.statistics(model, pruner.requires))
        before = ctx.evaluate(model)
        result.accuracy_before_finetune = before
        if rewind:
            if ctx.initial_weights is None:
                raise ConfigError("rewind: the runner kept no initial weights; update prunelab")
            masking.load_plain_state_dict(model, ctx.initial_weights)
        ctx.train(model, ctx.finetune, f"finetune{index}", seed_offset=index)
        changed = ctx.finetune.epochs > 0 or rewind
        after = ctx.evaluate(model) if changed else before
        result.rounds.append(ctx.round_row(model, index, target, report.sparsity, before, after))
    return result


def _check_none(options: None, recipe: Any, model: Any) -> None:
    # Nothing is pruned, so nothing is fine-tuned: epochs there would be silently ignored.
    if recipe.finetune.epochs > 0:
        raise ConfigError(
            f"finetune.epochs: method {recipe.prune.method!r} prunes nothing, so it never fine-tunes; "
            "put the training in train.epochs and remove finetune"
        )


@register_driver("none", uses_sparsity=False, reads={"reparam"}, check=_check_none, epochs=lambda o, ft: 0)
def run_none(ctx: MethodContext, options: None) -> MethodResult:
    """No pruning: the dense network is the result."""
    # A dense run's target is "nothing removed", which the study tables use as their reference point.
    return MethodResult(ctx.model, summary={"target_sparsity": 0.0})


@register_driver("one_shot", options=MaskOptions)
def run_one_shot(ctx: MethodContext, options: MaskOptions) -> MethodResult:
    """Prune once to prune.sparsity, then fine-tune."""
    assert ctx.sparsity is not None  # validated: the driver uses the sparsity
    return prune_rounds(ctx, options, [ctx.sparsity])


def _iterative_targets(sparsity: float, rounds: int, spacing: str) -> list[float]:
    from prunelab.core.schedules import SCHEDULES

    return SCHEDULES.build("iterative", sparsity=sparsity, rounds=rounds, spacing=spacing).targets()


@register_driver(
    "iterative",
    options=IterativeOptions,
    needs_initial_weights=lambda options: bool(options.rewind),
    epochs=lambda options, finetune: options.rounds * finetune,
)
def run_iterative(ctx: MethodContext, options: IterativeOptions) -> MethodResult:
    """Rounds of prune -> [rewind] -> fine-tune to prune.sparsity, geometrically spaced by default."""
    assert ctx.sparsity is not None
    targets = _iterative_targets(ctx.sparsity, options.rounds, options.spacing)
    return prune_rounds(ctx, options, targets, rewind=options.rewind)


def _check_agp(options: AGPOptions, recipe: Any, model: Any) -> None:
    if recipe.finetune.epochs == 0:
        raise ConfigError("finetune.epochs: agp prunes gradually during fine-tuning, so it needs epochs > 0")


@register_driver("agp", options=AGPOptions, check=_check_agp)
def run_agp(ctx: MethodContext, options: AGPOptions) -> MethodResult:
    """Gradual pruning during fine-tuning on the cubic schedule (Zhu & Gupta 2017)."""
    from prunelab.core.schedules import SCHEDULES
    from prunelab.pruning import GradualPruningHook

    schedule = SCHEDULES.build(
        "agp",
        sparsity=ctx.sparsity,
        initial_sparsity=options.initial_sparsity,
        start=options.start,
        end=options.end,
        frequency=options.frequency,
    )
    ctx.log(f"gradual pruning to {ctx.sparsity:.3f} over {ctx.finetune.epochs} epochs (AGP)")
    hook = GradualPruningHook(ctx.make_pruner(ctx.model, options), schedule)
    ctx.train(ctx.model, ctx.finetune, "agp", hooks=[hook])
    # Pruning and training are interleaved: there is no "before fine-tuning" point.
    return MethodResult(ctx.model, accuracy_before_finetune=None)


register_method("dense", "No pruning: train (or load) and measure the dense network.", "none")
register_method(
    "magnitude",
    "One-shot global magnitude pruning of all conv/linear weights, then fine-tuning (Han et al. 2015).",
    "one_shot",
    sparsity=0.9,
)
register_method(
    "magnitude_layerwise",
    "One-shot magnitude pruning with the same sparsity in every layer, then fine-tuning.",
    "one_shot",
    sparsity=0.9,
    scope="layer",
)
register_method(
    "magnitude_iterative",
    "Iterative global magnitude pruning: prune -> fine-tune rounds to the target (Han et al. 2015).",
    "iterative",
    sparsity=0.9,
    rounds=5,
)
register_method(
    "lottery_ticket",
    "Iterative magnitude pruning with rewinding of surviving weights to init (Frankle & Carbin 2019).",
    "iterative",
    sparsity=0.9,
    rounds=5,
    rewind=True,
)
register_method(
    "agp",
    "Global |w| masks of all conv/linear weights, tightened every few steps while fine-tuning (AGP, Zhu & Gupta 2017).",
    "agp",
    sparsity=0.9,
)
register_method(
    "random",
    "One-shot random pruning at the same sparsity: the baseline every criterion must beat.",
    "one_shot",
    sparsity=0.9,
    criterion="random",
)
register_method(
    "l1_filter_masked",
    "One-shot per-layer L1-norm filter pruning as masks (Li et al. 2017); no physical removal.",
    "one_shot",
    sparsity=0.9,
    criterion="magnitude",
    criterion_kwargs={"p": 1},
    granularity="filter",
    scope="layer",
)
