"""Recipe schema, loading, ``--set`` overrides and validation.

A recipe is a YAML file with the sections ``model``, ``data``, ``train``, ``prune``, ``finetune`` and
``eval`` (see ``recipes/`` for examples). Everything is validated *before* a run starts: unknown keys,
wrong types, values out of range and unknown registry names all fail with one line of the form
``file: field.path: reason`` and exit code 2, so a typo never costs a half-finished run.

``prune.method`` names a preset (see :mod:`prunelab.experiments.methods`) that fills in the other
``prune`` fields; fields written in the recipe win over the preset.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prunelab.errors import ConfigError, PrunelabError
from prunelab.experiments.dataclass_yaml import build_section, parse_overrides, set_dotted
from prunelab.reparam import ReparamConfig
from prunelab.training.config import TrainConfig


@dataclass
class ModelSection:
    """Which network to build and how to initialise it.

    Attributes:
        name: a registered model (``prunelab list models``).
        kwargs: model-specific options (``width``, ``stem``, ...).
        init: ``scratch``; ``pretrained`` (the registered weights named by ``pretrained``); or a path to
            a weights file or to a run directory whose ``checkpoint.pt`` is loaded.
        pretrained: the registered pretrained weights used when ``init: pretrained``.
    """

    name: str = "lenet300_100"
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: str = "scratch"
    pretrained: str | None = None


@dataclass
class DataSection:
    """Which dataset to load and how (see :func:`prunelab.data.load_dataset`)."""

    name: str = "digits"
    val_fraction: float = 0.1
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool | None = None
    normalize: Literal["dataset", "imagenet", "inception", "none"] = "dataset"
    image_size: int | None = None
    download: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction: must be in [0, 1)")
        for name in ("train_subset", "test_subset", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}: must be a positive integer or null")


@dataclass(kw_only=True)
class TrainSection(TrainConfig):
    """One training stage of a recipe (dense training or fine-tuning): a :class:`TrainConfig` whose
    ``epochs`` default to 0 (the stage is skipped) so a recipe can leave the section out."""

    epochs: int = 0
    lr: float = 0.1

    def to_train_config(self, progress: bool = True) -> TrainConfig:
        """The equivalent :class:`prunelab.training.TrainConfig` (progress bars off unless both allow)."""
        values = dataclasses.asdict(self)
        values["progress"] = self.progress and progress
        return TrainConfig(**values)


@dataclass
class AGPSection:
    """Automated gradual pruning settings; ``start``/``end`` are fractions of the fine-tuning steps."""

    initial_sparsity: float = 0.0
    start: float = 0.0
    end: float = 0.8
    frequency: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ConfigError("initial_sparsity: must be in [0, 1)")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ConfigError("start/end: need 0 <= start < end <= 1")
        if self.frequency < 1:
            raise ConfigError("frequency: must be >= 1")


@dataclass
class PruneSection:
    """What to prune, how, and when.

    Attributes:
        method: a preset from ``prunelab list methods`` that fills in the other fields.
        sparsity: final fraction of the targeted weights (or units) removed, in [0, 1).
        schedule: the pruning driver (``prunelab list schedules``): ``none`` (no pruning), ``one_shot``,
            ``iterative``, ``agp``, or a method's own driver (e.g. ``relief``).
        rounds: number of prune → fine-tune rounds of the iterative schedule.
        spacing: how the iterative targets are spaced (``geometric``: the same fraction of the
            remaining weights each round).
        rewind: iterative only — reset surviving weights to their initial values before each round's
            fine-tuning (lottery-ticket rewinding).
        options: the driver's own options, validated against its options dataclass.
        reparam: what the masks act on, for every driver: ``name: none`` (weights, SP) or
            ``name: interspace`` (filter-basis coefficients, IP) with its basis options.
    """

    method: str = "magnitude"
    criterion: str = "magnitude"
    criterion_kwargs: dict[str, Any] = field(default_factory=dict)
    granularity: str = "element"
    scope: Literal["global", "layer"] = "global"
    sparsity: float = 0.9
    schedule: str = "one_shot"
    rounds: int = 1
    spacing: Literal["geometric", "linear"] = "geometric"
    rewind: bool = False
    include: list[str] | None = None
    exclude: list[str] | None = None
    min_keep: int = 1
    agp: AGPSection = field(default_factory=AGPSection)
    options: dict[str, Any] = field(default_factory=dict)
    reparam: ReparamConfig = field(default_factory=ReparamConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(
                f"sparsity: {self.sparsity} is impossible; use a fraction in [0, 1) (0.9 = remove 90 %)"
            )
        if self.rounds < 1:
            raise ConfigError("rounds: must be >= 1")
        if self.min_keep < 0:
            raise ConfigError("min_keep: must be >= 0")
        if self.rewind and self.schedule != "iterative":
            raise ConfigError("rewind: only the iterative schedule rewinds; set schedule: iterative")


@dataclass
class EvalSection:
    """Final measurements: latency batch sizes and repeats (``latency: false`` skips timing)."""

    latency: bool = True
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1])
    latency_repeats: int = 20
    batch_size: int = 256


@dataclass
class Recipe:
    """A complete, validated experiment description."""

    name: str = "experiment"
    seed: int = 0
    device: str = "auto"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    prune: PruneSection = field(default_factory=PruneSection)
    finetune: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"device: {self.device!r} is not a device; use auto (CUDA when available), cpu, cuda or cuda:N"
            )

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what ``config.yaml`` of a run holds)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading and validation


def recipe_from_dict(raw: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> Recipe:  # type: ignore[assignment]
    """Build and validate a :class:`Recipe` from plain data (method preset applied, overrides last).

    Raises:
        ConfigError: ``field.path: reason`` for the first problem found.
    """
    from prunelab.experiments.drivers import load_drivers
    from prunelab.experiments.methods import METHODS

    load_drivers()  # method modules register their presets and drivers on import
    data = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
    for key, value in overrides:
        set_dotted(data, key, value)
    prune = data.get("prune") or {}
    if not isinstance(prune, dict):
        raise ConfigError("prune: expected a mapping")
    method = prune.get("method", PruneSection.method)
    if method not in METHODS:
        raise ConfigError(f"prune.method: {METHODS.unknown_message(method)}")
    merged = copy.deepcopy(METHODS.get(method).defaults)
    merged.update(prune)
    merged["method"] = method
    data["prune"] = merged
    recipe = build_section(Recipe, data, "")
    check_names(recipe)
    return recipe


def check_names(recipe: Recipe) -> None:
    """Resolve every registry name and model/data option of ``recipe`` (cheap: nothing is trained)."""
    from prunelab.core.granularity import GRANULARITIES
    from prunelab.criteria import CRITERIA
    from prunelab.data import DATASETS
    from prunelab.experiments.drivers import load_drivers, parse_options
    from prunelab.models import MODELS, PRETRAINED

    checks = [
        ("model.name", MODELS, recipe.model.name),
        ("data.name", DATASETS, recipe.data.name),
        ("prune.criterion", CRITERIA, recipe.prune.criterion),
        ("prune.granularity", GRANULARITIES, recipe.prune.granularity),
    ]
    for path, registry, name in checks:
        if name not in registry:
            raise ConfigError(f"{path}: {registry.unknown_message(name)}")
    if recipe.model.init == "pretrained":
        if recipe.model.pretrained is None:
            raise ConfigError("model.pretrained: required with init: pretrained (e.g. resnet20_cifar10)")
        if recipe.model.pretrained not in PRETRAINED:
            raise ConfigError(f"model.pretrained: {PRETRAINED.unknown_message(recipe.model.pretrained)}")
    drivers = load_drivers()
    if recipe.prune.schedule not in drivers:
        raise ConfigError(f"prune.schedule: {drivers.unknown_message(recipe.prune.schedule)}")
    parse_options(recipe.prune.schedule, recipe.prune.options)
    if recipe.prune.schedule == "agp" and recipe.finetune.epochs == 0:
        raise ConfigError("finetune.epochs: agp prunes gradually during fine-tuning, so it needs epochs > 0")
    _check_model_kwargs(recipe)


def _check_model_kwargs(recipe: Recipe) -> None:
    import torch

    from prunelab.models import build_model

    # Building on the meta device checks the options without allocating or initialising weights.
    with torch.device("meta"):
        try:
            build_model(recipe.model.name, **recipe.model.kwargs)
        except ConfigError as exc:
            raise ConfigError(f"model.kwargs: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"model.kwargs: {exc}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge and validate a recipe file.

    Raises:
        ConfigError: ``file: field.path: reason``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found; check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {where}{problem}; fix the YAML syntax") from None
    try:
        parsed = parse_overrides(overrides or [])
        recipe = recipe_from_dict(raw or {}, parsed)
    except PrunelabError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if recipe.name == Recipe.name:
        recipe.name = path.stem
    return recipe
