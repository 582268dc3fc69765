"""Pruning drivers: the "when and how often" of a run, registered by name.

The runner does everything that is common to all methods (data, model, initialisation, dense
training, final measurements, the run record) and hands the pruning stage to the driver named by
``prune.schedule``. A driver is a plain function ``run(ctx, options)`` that prunes ``ctx.model``,
trains it through ``ctx.train`` and records per-round results through ``ctx.record_round``;
``options`` is the recipe's ``prune.options`` parsed into the driver's own dataclass, so a new
method adds one module (driver + options) without touching the runner or the schema.

Built-in drivers: ``none`` (dense baseline), ``one_shot``, ``iterative`` (with optional
lottery-ticket rewinding) and ``agp`` (gradual pruning during fine-tuning, Zhu & Gupta 2017).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.errors import ConfigError
from prunelab.registry import Registry


@dataclass(frozen=True)
class Driver:
    """A registered pruning stage.

    Attributes:
        run: ``run(ctx, options)``; prunes and fine-tunes ``ctx.model``.
        options: dataclass of the driver's ``prune.options`` (``None``: the driver takes none).
        description: one line for ``prunelab list schedules``.
        uses_sparsity: whether ``prune.sparsity`` is the driver's target (relief and proximal slimming
            decide the sparsity themselves, so their summaries record no target).
    """

    run: Callable[[PruneContext, Any], None]
    options: type | None = None
    description: str = ""
    uses_sparsity: bool = True


DRIVERS: Registry[Driver] = Registry("prune schedule")


def register_driver(
    name: str, options: type | None = None, uses_sparsity: bool = True
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator registering ``fn(ctx, options)`` as the driver ``name`` (first docstring line = help)."""

    def decorator(fn: Callable[..., None]) -> Callable[..., None]:
        doc = (fn.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        DRIVERS.register(name, help=summary)(Driver(fn, options, summary, uses_sparsity))
        return fn

    return decorator


def parse_options(schedule: str, raw: dict[str, Any]) -> Any:
    """Validate ``prune.options`` against the driver's options dataclass and return the parsed value.

    Raises:
        ConfigError: ``prune.options.<field>: reason`` (unknown keys, wrong types, bad values).
    """
    from prunelab.experiments.dataclass_yaml import build_section

    driver = DRIVERS.get(schedule)
    if driver.options is None:
        if raw:
            raise ConfigError(f"prune.options: schedule {schedule!r} takes no options; remove them")
        return None
    return build_section(driver.options, raw, "prune.options")


@dataclass
class PruneContext:
    """Everything a driver needs, plus what it reports back to the runner.

    Attributes:
        recipe: the validated recipe.
        model: the network; a driver that replaces it (surgery) assigns the new module here.
        data: the dataset splits.
        out: the run directory (stage checkpoints and ``metrics.jsonl`` go here).
        log: the run log.
        input_shape: ``(C, H, W)`` of one input.
        arch: how to rebuild the model (stored in ``checkpoint.pt``); surgery updates it.
        resume: whether training stages continue from their checkpoints.
        progress: whether to show progress bars.
        init_state: weights before any training (only kept when the recipe rewinds).
        rounds: per-round records written to ``rounds.csv``.
        extra: additional ``summary.json`` fields.
        accuracy_before_finetune: test accuracy right after the last pruning step (``None`` when
            pruning and training are interleaved).
    """

    recipe: Any
    model: nn.Module
    data: Any
    out: Path
    log: Callable[[str], None]
    input_shape: tuple[int, ...]
    arch: dict[str, Any]
    resume: bool = False
    progress: bool = True
    init_state: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    accuracy_before_finetune: float | None = None

    def evaluate_test(self) -> float:
        """Top-1 accuracy of ``self.model`` on the test split (reported, never used for selection)."""
        from prunelab.training import evaluate

        return float(evaluate(self.model, self.data.test, batch_size=self.recipe.eval.batch_size)["accuracy"])

    def measure(self) -> dict[str, int]:
        """Parameters (total, non-zero) and MACs (dense, effective) of ``self.model``."""
        from prunelab.metrics import count_parameters, dense_macs, effective_macs

        counts = count_parameters(self.model)
        return {
            "params_total": int(counts.total),
            "params_nonzero": int(counts.nonzero),
            "macs_dense": int(dense_macs(self.model, self.input_shape)),
            "macs_effective": int(effective_macs(self.model, self.input_shape)),
        }

    def train(self, section: Any, tag: str, hooks: Sequence[object] = (), seed_offset: int = 0) -> Any:
        """Train ``self.model`` with a recipe training section (skipped when it has 0 epochs)."""
        from prunelab.training import train

        if section.epochs == 0:
            return None
        return train(
            self.model,
            self.data,
            section.to_train_config(self.progress),
            hooks=hooks,
            out_dir=self.out,
            seed=self.recipe.seed + seed_offset,
            tag=tag,
            resume=self.resume,
        )

    def make_pruner(self, **overrides: Any) -> Any:
        """A prepared :class:`~prunelab.pruning.pruner.Pruner` configured from the recipe's ``prune`` section."""
        from prunelab.pruning.pruner import Pruner

        p = self.recipe.prune
        kwargs: dict[str, Any] = {
            "criterion": p.criterion,
            "granularity": p.granularity,
            "scope": p.scope,
            "include": p.include,
            "exclude": p.exclude,
            "min_keep": p.min_keep,
            "criterion_kwargs": dict(p.criterion_kwargs),
            "reparam": p.reparam.name,
            "reparam_kwargs": p.reparam.kwargs(),
        }
        kwargs.update(overrides)
        return Pruner(self.model, **kwargs).prepare()

    def record_round(
        self, index: int, target: float, sparsity: float, before: float, after: float, **columns: Any
    ) -> dict[str, Any]:
        """Append one ``rounds.csv`` row (remaining %, compression and MACs are measured here)."""
        m = self.measure()
        row = {
            "round": index,
            "target_sparsity": round(float(target), 6),
            "sparsity": round(float(sparsity), 6),
            "accuracy_before_finetune": round(before, 6),
            "accuracy_after_finetune": round(after, 6),
            "remaining_percent": round(100.0 * m["params_nonzero"] / m["params_total"], 4),
            "compression": round(m["params_total"] / max(m["params_nonzero"], 1), 4),
            "macs_effective": m["macs_effective"],
            **columns,
        }
        self.rounds.append(row)
        self.log(
            f"round {index}: accuracy {before:.4f} -> {after:.4f} after fine-tuning, "
            f"{row['remaining_percent']:.2f} % remaining, compression {row['compression']:.2f}x"
        )
        return row


@register_driver("none")
def run_none(ctx: PruneContext, options: None) -> None:
    """No pruning: the dense network is the result."""


def _saliency_stats(ctx: PruneContext, pruner: Any) -> dict[str, Any] | None:
    """``{"model", "batches"}`` for gradient criteria (SNIP, GraSP, SynFlow) used after training."""
    if not pruner.requires or not pruner.requires <= {"model", "batches"}:
        return None
    from prunelab.stats import calibration_batches

    return {
        "model": ctx.model,
        "batches": calibration_batches(ctx.data.train, 256, 128, seed=ctx.recipe.seed),
    }


def _rounds(ctx: PruneContext, targets: Sequence[float]) -> None:
    from prunelab.core import masking

    pruner = ctx.make_pruner()
    for index, target in enumerate(targets, start=1):
        report = pruner.step(target, _saliency_stats(ctx, pruner))
        before = ctx.evaluate_test()
        ctx.accuracy_before_finetune = before
        if ctx.init_state is not None:
            masking.load_plain_state_dict(ctx.model, ctx.init_state)
        ctx.train(ctx.recipe.finetune, f"finetune{index}", seed_offset=index)
        changed = ctx.recipe.finetune.epochs > 0 or ctx.init_state is not None
        after = ctx.evaluate_test() if changed else before
        ctx.record_round(index, target, report.sparsity, before, after)


@register_driver("one_shot")
def run_one_shot(ctx: PruneContext, options: None) -> None:
    """Prune once to prune.sparsity, then fine-tune."""
    _rounds(ctx, [ctx.recipe.prune.sparsity])


@register_driver("iterative")
def run_iterative(ctx: PruneContext, options: None) -> None:
    """prune.rounds rounds of prune -> [rewind] -> fine-tune, geometrically spaced by default."""
    from prunelab.core.schedules import SCHEDULES

    p = ctx.recipe.prune
    _rounds(
        ctx, SCHEDULES.build("iterative", sparsity=p.sparsity, rounds=p.rounds, spacing=p.spacing).targets()
    )


@register_driver("agp")
def run_agp(ctx: PruneContext, options: None) -> None:
    """Gradual magnitude pruning during fine-tuning on the cubic schedule (Zhu & Gupta 2017)."""
    from prunelab.core.schedules import SCHEDULES
    from prunelab.pruning.pruner import GradualPruningHook

    p = ctx.recipe.prune
    schedule = SCHEDULES.build(
        "agp",
        sparsity=p.sparsity,
        initial_sparsity=p.agp.initial_sparsity,
        start=p.agp.start,
        end=p.agp.end,
        frequency=p.agp.frequency,
    )
    ctx.log(f"gradual pruning to {p.sparsity:.3f} over {ctx.recipe.finetune.epochs} epochs (AGP)")
    ctx.train(ctx.recipe.finetune, "agp", hooks=[GradualPruningHook(ctx.make_pruner(), schedule)])
    ctx.accuracy_before_finetune = None  # pruning and training are interleaved: no "before" point


#: Modules that register the drivers of the published methods; imported on first use so that
#: ``prunelab list schedules`` and recipe validation see every driver.
METHOD_MODULES: tuple[str, ...] = (
    "prunelab.methods.relief",
    "prunelab.methods.interspace",
    "prunelab.methods.slimming",
    "prunelab.methods.pretraining",
    "prunelab.methods.pls_vip",
)


def load_drivers() -> Registry[Driver]:
    """Import every module in :data:`METHOD_MODULES` (registering their drivers) and return :data:`DRIVERS`."""
    import importlib

    for module in METHOD_MODULES:
        importlib.import_module(module)
    return DRIVERS
