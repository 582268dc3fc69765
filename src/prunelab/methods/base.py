"""The method contract: drivers, method presets, the context a method is given and the result it returns.

A **driver** is the code of a pruning method: a plain function ``run(ctx, options) -> MethodResult``.
``options`` is the recipe's ``prune.options`` parsed once, at validation, into the driver's own typed
dataclass; ``ctx`` is a :class:`MethodContext`, which offers *services only* (train, evaluate, measure,
build a pruner, draw calibration data, log) plus the inputs every method may read (the dense model, the
data, the shared ``prune`` fields, the fine-tuning section, the seed). A driver never writes into the
context: it returns a :class:`MethodResult` (the final model, its per-round records, the summary fields
it adds, the architecture of a compacted model), and the runner writes the run directory from it.

A driver declares what it needs instead of the runner guessing from option names:

- ``uses_sparsity``: whether ``prune.sparsity`` is its target (relief, proximal slimming and PLS+VIP
  decide how much to remove themselves; giving them a sparsity is a validation error);
- ``reads``: which shared ``prune`` fields it reads at all (a field it does not read is an error);
- ``needs_initial_weights(options)``: whether the runner must keep the weights before any training
  (lottery-ticket and relief rewinding);
- ``check(options, recipe, model)``: cross-section checks run at validation time, before anything trains
  (``model`` is the recipe's network built on the meta device: names and layer types, no weights).

A **method** (``prune.method`` in a recipe, ``prunelab list methods``) is a preset: a driver plus
default options and, for drivers that read it, a default sparsity. A recipe's ``prune.options`` are
deep-merged over the preset's, so adding one option never drops another.

Adding a method is one file: define the options dataclass and the driver, call
:func:`register_driver` and :func:`register_method`; import it from :mod:`prunelab.methods` (built-ins)
or expose it through the ``prunelab.methods`` entry-point group (third-party packages; see
:func:`prunelab.registry.load_plugins`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.dataclass_yaml import build_section
from prunelab.errors import ConfigError
from prunelab.registry import Registry
from prunelab.reparam import ReparamConfig

__all__ = [
    "CALIBRATION",
    "DRIVERS",
    "METHODS",
    "SHARED_FIELDS",
    "Driver",
    "MethodContext",
    "MethodPreset",
    "MethodResult",
    "merge_options",
    "parse_options",
    "register_driver",
    "register_method",
]

#: ``(samples, batch size)`` of the calibration draw for criteria that read ``stats["batches"]`` (SNIP,
#: GraSP, Taylor) when a method has no calibration options of its own.
CALIBRATION: tuple[int, int] = (256, 128)

#: The ``prune`` fields every method shares; each driver declares which of them it reads.
SHARED_FIELDS: frozenset[str] = frozenset({"sparsity", "include", "exclude", "min_keep", "reparam"})


@dataclass
class MethodResult:
    """What a method made, handed back to the runner.

    Attributes:
        model: the final network (a new module when surgery replaced the dense one).
        rounds: one ``rounds.csv`` row per pruning round (see :meth:`MethodContext.round_row`).
        summary: fields the method adds to ``summary.json`` (e.g. ``{"relief": {...}}``).
        accuracy_before_finetune: test accuracy right after the last pruning step (``None`` when
            pruning and training are interleaved, or nothing was pruned).
        surgery: the per-layer architecture spec of a compacted model
            (:func:`prunelab.surgery.arch_spec`), stored in the checkpoint so it can be rebuilt.
    """

    model: nn.Module
    rounds: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    accuracy_before_finetune: float | None = None
    surgery: dict[str, Any] | None = None


def dense_relative(now: Mapping[str, int], dense: Mapping[str, int]) -> dict[str, float]:
    """Sparsity, compression and MACs ratio of measurements ``now`` relative to the dense network's.

    Both are :meth:`MethodContext.measure` dicts. The denominators are the dense network's, so a model
    that surgery made smaller shows what it lost: ``sparsity = 1 − now non-zero / dense total``,
    ``compression = dense total / now non-zero``, ``macs_ratio = dense MACs / now effective MACs``.
    """
    return {
        "sparsity": 1.0 - now["params_nonzero"] / dense["params_total"],
        "compression": dense["params_total"] / max(now["params_nonzero"], 1),
        "macs_ratio": dense["macs_dense"] / max(now["macs_effective"], 1),
    }


def _finetune_once(options: Any, finetune_epochs: int) -> int:
    """The default epoch plan of a method: one fine-tuning stage."""
    return finetune_epochs


def _never(options: Any) -> bool:
    return False


@dataclass(frozen=True)
class Driver:
    """A registered pruning method's code and what it declares about itself.

    Attributes:
        run: ``run(ctx, options) -> MethodResult``.
        options: the dataclass of its ``prune.options`` (``None``: it takes none).
        description: one line for ``prunelab list drivers``.
        uses_sparsity: whether ``prune.sparsity`` is the method's target.
        reads: the shared ``prune`` fields (:data:`SHARED_FIELDS`) the method reads.
        needs_initial_weights: ``fn(options) -> bool``: keep the weights before any training for it.
        check: ``fn(options, recipe, model)`` raising :class:`~prunelab.errors.ConfigError` for a recipe
            the method cannot run (checked at validation, before anything trains; ``model`` is built on
            the meta device, so it has the layers but no weights); ``None`` for none.
        epochs: ``fn(options, finetune_epochs) -> int``: the training epochs the method plans after the
            dense stage (every round's fine-tuning, its own training stages), the denominator of the
            run's ETA; the default is one fine-tuning stage.
    """

    run: Callable[[MethodContext, Any], MethodResult]
    options: type | None = None
    description: str = ""
    uses_sparsity: bool = True
    reads: frozenset[str] = SHARED_FIELDS
    needs_initial_weights: Callable[[Any], bool] = _never
    check: Callable[[Any, Any, Any], None] | None = None
    epochs: Callable[[Any, int], int] = _finetune_once


#: Drivers by name (``prunelab list drivers``).
DRIVERS: Registry[Driver] = Registry("driver")


def register_driver(
    name: str,
    options: type | None = None,
    *,
    uses_sparsity: bool = True,
    reads: frozenset[str] | set[str] | None = None,
    needs_initial_weights: bool | Callable[[Any], bool] = False,
    check: Callable[[Any, Any, Any], None] | None = None,
    epochs: Callable[[Any, int], int] = _finetune_once,
) -> Callable[[Callable[..., MethodResult]], Callable[..., MethodResult]]:
    """Decorator registering ``fn(ctx, options) -> MethodResult`` as the driver ``name``.

    The first docstring line of ``fn`` is its description. ``reads`` defaults to every shared field
    (minus ``sparsity`` when ``uses_sparsity`` is false); ``needs_initial_weights`` is a constant or a
    function of the parsed options; ``epochs`` is :attr:`Driver.epochs`.
    """
    if reads is None:
        reads = SHARED_FIELDS if uses_sparsity else SHARED_FIELDS - {"sparsity"}
    unknown = set(reads) - SHARED_FIELDS
    if unknown:
        raise ValueError(f"driver {name!r} reads unknown shared fields {sorted(unknown)}")
    needs = (
        needs_initial_weights
        if callable(needs_initial_weights)
        else ((lambda options: True) if needs_initial_weights else _never)
    )

    def decorator(fn: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
        doc = (fn.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        driver = Driver(fn, options, summary, uses_sparsity, frozenset(reads), needs, check, epochs)
        DRIVERS.register(name, help=summary)(driver)
        return fn

    return decorator


@dataclass(frozen=True)
class MethodPreset:
    """A named method: a driver, its default options and (for drivers that read it) a default sparsity."""

    description: str
    driver: str
    options: dict[str, Any] = field(default_factory=dict)
    sparsity: float | None = None


#: Method presets by name (``prune.method`` in a recipe; ``prunelab list methods``).
METHODS: Registry[MethodPreset] = Registry("method")


def register_method(
    name: str, description: str, driver: str, *, sparsity: float | None = None, **options: Any
) -> MethodPreset:
    """Register the method ``name``: ``driver`` with default ``options`` (and ``sparsity``)."""
    preset = MethodPreset(description, driver, dict(options), sparsity)
    METHODS.register(name, help=description)(preset)
    return preset


def merge_options(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged over ``base`` (nested mappings merge key by key; other values replace)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_options(driver_name: str, raw: Any, path: str = "prune.options") -> Any:
    """``prune.options`` checked against the driver's options dataclass (already parsed objects pass).

    Raises:
        ConfigError: ``prune.options.<field>: reason`` (unknown keys, wrong types, bad values).
    """
    driver = DRIVERS.get(driver_name)
    if driver.options is None:
        if raw:
            raise ConfigError(f"{path}: the {driver_name!r} driver takes no options; remove them")
        return None
    if isinstance(raw, driver.options):
        return raw
    return build_section(driver.options, raw, path)


@dataclass
class MethodContext:
    """The services and inputs a method is given; it returns what it made as a :class:`MethodResult`.

    Attributes:
        model: the network after dense training (pruned in place or replaced by the method).
        data: the dataset splits (``train``, ``val``, ``test``, ``num_classes``, ``input_shape``).
        input_shape: ``(C, H, W)`` of one input.
        out: the run directory (methods write their own reports here, rank 0 only).
        log: the run log.
        seed: the recipe seed (every random draw of a method derives from it).
        finetune: the recipe's ``finetune`` section (a :class:`~prunelab.training.config.TrainSection`).
        sparsity: ``prune.sparsity`` (``None`` for methods that do not read it).
        include: ``prune.include`` module globs.
        exclude: ``prune.exclude`` module globs.
        min_keep: ``prune.min_keep``, the units every layer keeps at least.
        head: the classifier head's module name (``model.head``, else found from the graph); its
            outputs, the classes, are never pruned. ``None`` = find it from the graph where needed.
        reparam: ``prune.reparam``, what the masks act on.
        dense_epochs: epochs of the dense training that preceded the method.
        eval_batch_size: batch size of test evaluations.
        initial_weights: the plain weights before any training, when the driver declared the need.
        resume: whether training stages continue from their stage checkpoints.
        progress: whether to show progress bars.
        dense: the dense network's :meth:`measure` (set by the runner after dense training); the
            denominators of ``rounds.csv``'s remaining percent, compression and MACs ratio.
    """

    model: nn.Module
    data: Any
    input_shape: tuple[int, ...]
    out: Path
    log: Callable[[str], None]
    seed: int
    finetune: Any
    sparsity: float | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    min_keep: int = 1
    head: str | None = None
    reparam: ReparamConfig = field(default_factory=ReparamConfig)
    dense_epochs: int = 0
    eval_batch_size: int = 256
    initial_weights: dict[str, Any] | None = None
    resume: bool = False
    progress: bool = True
    dense: dict[str, int] | None = None

    def evaluate(self, model: nn.Module) -> float:
        """Top-1 accuracy of ``model`` on the test split (reported, never used for selection)."""
        from prunelab.training import evaluate

        return float(evaluate(model, self.data.test, batch_size=self.eval_batch_size)["accuracy"])

    def measure(self, model: nn.Module) -> dict[str, int]:
        """Parameters (total, non-zero) and MACs (dense, effective) of ``model``."""
        from prunelab.metrics import count_parameters, dense_macs, effective_macs

        counts = count_parameters(model)
        return {
            "params_total": int(counts.total),
            "params_nonzero": int(counts.nonzero),
            "macs_dense": int(dense_macs(model, self.input_shape)),
            "macs_effective": int(effective_macs(model, self.input_shape)),
        }

    def train(
        self, model: nn.Module, section: Any, tag: str, hooks: Sequence[object] = (), seed_offset: int = 0
    ) -> Any:
        """Train ``model`` in place with a training section (nothing when it has 0 epochs).

        ``tag`` names the stage (its checkpoint and ``metrics.jsonl`` lines); ``seed_offset`` gives each
        stage of a method its own reproducible data order.
        """
        from prunelab.training import train

        if section.epochs == 0:
            return None
        return train(
            model,
            self.data,
            section.to_train_config(self.progress),
            hooks=hooks,
            out_dir=self.out,
            seed=self.seed + seed_offset,
            tag=tag,
            resume=self.resume,
        )

    def make_pruner(self, model: nn.Module, options: Any, **overrides: Any) -> Any:
        """A prepared :class:`~prunelab.pruning.Pruner` for ``model``.

        ``options`` supplies the method's ``criterion``, ``criterion_kwargs``, ``granularity`` and
        ``scope``; the shared ``include``, ``exclude``, ``min_keep`` and ``reparam`` come from the recipe.
        """
        from prunelab.pruning import Pruner

        kwargs: dict[str, Any] = {
            "criterion": options.criterion,
            "granularity": options.granularity,
            "scope": options.scope,
            "include": self.include,
            "exclude": self.exclude,
            "min_keep": self.min_keep,
            "criterion_kwargs": dict(options.criterion_kwargs),
            "reparam": self.reparam.name,
            "reparam_kwargs": self.reparam.kwargs(),
        }
        kwargs.update(overrides)
        return Pruner(model, **kwargs).prepare()

    def calibration(self, num_samples: int, batch_size: int) -> list[Any]:
        """A fixed, seeded subset of the training split as ``(x, y)`` batches, without augmentation."""
        from prunelab.stats import calibration_batches

        return calibration_batches(self.data.train, num_samples, batch_size, seed=self.seed)

    def statistics(self, model: nn.Module, requires: frozenset[str] | set[str]) -> dict[str, Any]:
        """The standard statistics (:data:`prunelab.core.criterion.STANDARD_STATS`) for a criterion.

        Cheap ones are always there (the model, the training split, the classes, the seed);
        calibration batches (:data:`CALIBRATION` samples, seeded) are drawn only when ``requires``
        names them. Accumulated statistics (relief's) are a method's own business.
        """
        stats: dict[str, Any] = {
            "model": model,
            "data": self.data.train,
            "num_classes": int(self.data.num_classes),
            "seed": self.seed,
        }
        if "batches" in requires:
            stats["batches"] = self.calibration(*CALIBRATION)
        return stats

    def round_row(
        self,
        model: nn.Module,
        index: int,
        target: float,
        sparsity: float,
        before: float,
        after: float,
        **columns: Any,
    ) -> dict[str, Any]:
        """One ``rounds.csv`` row for ``model`` (remaining %, compression and MACs measured here), logged.

        Remaining percent, compression and MACs ratio are relative to :attr:`dense` (the model itself
        when unset), so rounds after surgery count the removed channels.
        """
        m = self.measure(model)
        relative = dense_relative(m, self.dense or m)
        row = {
            "round": index,
            "target_sparsity": round(float(target), 6),
            "sparsity": round(float(sparsity), 6),
            "accuracy_before_finetune": round(before, 6),
            "accuracy_after_finetune": round(after, 6),
            "remaining_percent": round(100.0 * (1.0 - relative["sparsity"]), 4),
            "compression": round(relative["compression"], 4),
            "macs_effective": m["macs_effective"],
            "macs_ratio": round(relative["macs_ratio"], 4),
            **columns,
        }
        self.log(
            f"round {index}: accuracy {before:.4f} -> {after:.4f} after fine-tuning, "
            f"{row['remaining_percent']:.2f} % remaining, compression {row['compression']:.2f}x"
        )
        return row
