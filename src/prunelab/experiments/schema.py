"""Recipe schema, loading, ``--set`` overrides and validation.

A recipe is a YAML file with the sections ``model``, ``data``, ``train``, ``prune``, ``finetune`` and
``eval`` (see ``recipes/`` for examples). Everything is validated *before* a run starts: unknown keys,
wrong types, values out of range and unknown registry names all fail with one line of the form
``file: field.path: reason`` and exit code 2, so a typo never costs a half-finished run.

``prune`` holds what every method shares (``method``, ``sparsity``, ``include``/``exclude``,
``min_keep``, ``reparam``) and the method's own ``options``. ``prune.method`` names a method
(:mod:`prunelab.methods`): its driver and default options, which the recipe's ``options`` are
deep-merged over; the merged options are parsed once into the driver's typed dataclass and kept in the
validated :class:`Recipe`. A shared field the method does not read, or a key that moved into the
options, is an error that names the field and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prunelab.dataclass_yaml import build_section, check_name, load_yaml_file, parse_overrides, set_dotted
from prunelab.errors import ConfigError, ErrorCollector, PrunelabError
from prunelab.reparam import ReparamConfig
from prunelab.training.config import TrainSection


@dataclass
class ModelSection:
    """Which network to build and how to initialise it.

    Attributes:
        name: a registered model (``prunelab list models``).
        kwargs: model-specific options (``width``, ``stem``, ...).
        init: ``scratch``; ``pretrained`` (the registered weights named by ``pretrained``); or a path to
            a weights file or to a run directory whose ``checkpoint.pt`` is loaded.
        pretrained: the registered pretrained weights used when ``init: pretrained``.
        head: the classifier head's module name (its outputs, the classes, are never pruned and are
            re-initialised for another class count); ``null`` = found from the graph, the last layer
            with weights producing the output (:func:`~prunelab.core.targets.find_head`).
    """

    name: str = "lenet300_100"
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: str = "scratch"
    pretrained: str | None = None
    head: str | None = None


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


#: Keys that lived directly under ``prune:`` before each method owned its settings, and where they went.
MOVED_KEYS: dict[str, str] = {
    "criterion": "prune.options.criterion",
    "criterion_kwargs": "prune.options.criterion_kwargs",
    "granularity": "prune.options.granularity",
    "scope": "prune.options.scope",
    "rounds": "prune.options.rounds",
    "spacing": "prune.options.spacing",
    "rewind": "prune.options.rewind",
    "agp": "prune.options (initial_sparsity, start, end, frequency)",
}


@dataclass
class PruneSection:
    """What every method shares; everything method-specific lives in ``options``.

    Attributes:
        method: a method from ``prunelab list methods``: a driver with default options (and sparsity).
        sparsity: the target, for methods that read it: the fraction of the targeted weights (or units)
            removed, in [0, 1). Methods that decide the amount themselves (relief, proximal slimming,
            PLS+VIP) take none, and giving one is an error.
        include: glob(s) over module names to prune.
        exclude: glob(s) over module names to leave alone.
        min_keep: units every layer keeps at least (guards against layer collapse).
        reparam: what the masks act on: ``name: none`` (weights, SP) or ``name: interspace``
            (filter-basis coefficients, IP) with its basis options.
        options: the method's own settings, merged over the method's defaults and parsed into the
            driver's options dataclass (``prunelab list drivers``; each driver's docstring lists them).
    """

    method: str = "magnitude"
    sparsity: float | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    min_keep: int = 1
    reparam: ReparamConfig = field(default_factory=ReparamConfig)
    options: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(
                f"sparsity: {self.sparsity} is impossible; use a fraction in [0, 1) (0.9 = remove 90 %)"
            )
        if self.min_keep < 0:
            raise ConfigError("min_keep: must be >= 0")

    @property
    def driver(self) -> str:
        """The name of the method's driver."""
        from prunelab.methods import METHODS

        return METHODS.get(self.method).driver


@dataclass
class EvalSection:
    """Final measurements: latency batch sizes and repeats (``latency: false`` skips timing)."""

    latency: bool = True
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1])
    latency_repeats: int = 20
    batch_size: int = 256

    def __post_init__(self) -> None:
        # Checked here so a bad value fails at validation, not after the training it would follow.
        bad = [b for b in self.latency_batch_sizes if b < 1]
        if bad:
            raise ConfigError(
                f"latency_batch_sizes: {bad[0]} is not a batch size; use positive integers, e.g. [1, 64]"
            )
        if self.latency and not self.latency_batch_sizes:
            raise ConfigError("latency_batch_sizes: empty; give at least one batch size, or latency: false")
        if self.latency_repeats < 1:
            raise ConfigError("latency_repeats: must be >= 1 (timed repetitions per batch size)")
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")


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
        check_name(self.name, "name")  # it becomes the run directory's name
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"device: {self.device!r} is not a device; use auto (CUDA when available), cpu, cuda or cuda:N"
            )

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what ``config.yaml`` of a run holds)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading and validation


def recipe_from_dict(
    raw: dict[str, Any],
    overrides: list[tuple[str, Any]] = (),  # type: ignore[assignment]
    *,
    check_paths: bool = False,
) -> Recipe:
    """Build and validate a :class:`Recipe` from plain data (method preset merged, overrides last).

    ``check_paths`` also requires a ``model.init`` path to exist (a recipe about to run; a sweep's
    later stage names a run directory an earlier stage has not written yet).

    Every independent check runs, so the error carries all problems found (``ConfigError.errors``):
    the sections' keys and values first; the names, the model's options and the method's
    cross-checks once the sections parse.

    Raises:
        ConfigError: ``field.path: reason`` for each problem found.
    """
    data = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
    for key, value in overrides:
        set_dotted(data, key, value)
    prune = data.get("prune") or {}
    if not isinstance(prune, dict):
        raise ConfigError("prune: expected a mapping")
    errors = ErrorCollector()
    options: Any = None
    with errors:
        data["prune"] = _resolve_prune(prune)
        options = data["prune"].pop("options")
    if options is None:  # the prune section failed; still check the others
        data["prune"] = {}
    recipe = None
    with errors:
        recipe = build_section(Recipe, data, "")
    if recipe is None or options is None:
        errors.raise_if_any()
    with errors:
        recipe.prune.options = _parse_method_options(recipe.prune, options)
        check_names(recipe, check_paths=check_paths)
    errors.raise_if_any()
    return recipe


def _resolve_prune(prune: dict[str, Any]) -> dict[str, Any]:
    """The ``prune`` section with the method's defaults merged in, checked against what its driver reads."""
    from prunelab.methods.base import DRIVERS, METHODS, SHARED_FIELDS, merge_options

    for key, new in MOVED_KEYS.items():
        if key in prune:
            raise ConfigError(
                f"prune.{key}: moved to {new} (a method's own settings live under prune.options)"
            )
    if "schedule" in prune:
        raise ConfigError(
            "prune.schedule: removed; the method names its driver, so pick a method "
            "(prunelab list methods), e.g. method: magnitude_iterative"
        )
    method = prune.get("method", PruneSection.method)
    if method not in METHODS:
        raise ConfigError(f"prune.method: {METHODS.unknown_message(method)}")
    preset = METHODS.get(method)
    driver = DRIVERS.get(preset.driver)
    options = prune.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"prune.options: expected a mapping, got {type(options).__name__}")
    resolved = {**prune, "method": method, "options": merge_options(preset.options, options)}
    given = {k for k in SHARED_FIELDS if _is_given(k, prune.get(k))}
    for key in sorted(given - driver.reads):
        why = " (it takes no target sparsity)" if key == "sparsity" else ""
        raise ConfigError(f"prune.{key}: method {method!r} does not read it{why}; remove it")
    if driver.uses_sparsity:
        resolved["sparsity"] = prune.get("sparsity", preset.sparsity)
        if resolved["sparsity"] is None:
            raise ConfigError(f"prune.sparsity: method {method!r} needs a target sparsity, e.g. 0.9")
    return resolved


def _is_given(key: str, value: Any) -> bool:
    """Whether a shared field holds something other than its default (a resolved config repeats them)."""
    if value is None:
        return False
    if key == "min_keep":
        return value != PruneSection.min_keep
    if key == "reparam":
        return isinstance(value, dict) and value.get("name", "none") != "none"
    return True


def _parse_method_options(section: PruneSection, options: dict[str, Any]) -> Any:
    from prunelab.methods.base import parse_options

    return parse_options(section.driver, options)


def check_names(recipe: Recipe, *, check_paths: bool = False) -> None:
    """Every check of ``recipe`` that needs no data: registry names, the model and data options, the
    init file, the include/exclude patterns, the method's and the reparametrization's cross-checks.

    Cheap: the model is built on the meta device (layers, no weights) and nothing is loaded or trained.
    ``check_paths``: a ``model.init`` path must exist.
    Independent checks all run; the :class:`ConfigError` carries every problem found.
    """
    from prunelab.data import DATASETS, check_dataset_options
    from prunelab.models import PRETRAINED, check_model_name

    errors = ErrorCollector()
    model = None
    with errors:
        # A zoo name, torchvision:<name>, timm:<name> or package.module:callable (prunelab.models.external).
        try:
            check_model_name(recipe.model.name)
        except ConfigError as exc:
            raise ConfigError(f"model.name: {exc}") from None
        reserved = sorted({"num_classes", "input_shape"} & set(recipe.model.kwargs))
        if reserved:
            raise ConfigError(
                f"model.kwargs.{reserved[0]}: set by the data (its classes and input shape); remove it"
            )
        model = _meta_model(recipe)
    with errors:
        if recipe.data.name not in DATASETS:
            raise ConfigError(f"data.name: {DATASETS.unknown_message(recipe.data.name)}")
        check_dataset_options(recipe.data.name, recipe.data.kwargs)
    with errors:
        _check_init(recipe, PRETRAINED, check_paths)
    if model is not None:
        with errors:
            _check_patterns(recipe, model)
        with errors:
            _check_method(recipe, model)
    errors.raise_if_any()


def _check_init(recipe: Recipe, pretrained: Any, check_paths: bool) -> None:
    """``model.init``: registered weights that exist in the registry, or (``check_paths``) a path that exists."""
    init = recipe.model.init
    if init == "pretrained":
        if recipe.model.pretrained is None:
            raise ConfigError("model.pretrained: required with init: pretrained (e.g. resnet20_cifar10)")
        if recipe.model.pretrained not in pretrained:
            raise ConfigError(f"model.pretrained: {pretrained.unknown_message(recipe.model.pretrained)}")
    if check_paths and init not in ("scratch", "pretrained") and not Path(init).exists():
        raise ConfigError(
            f"model.init: {init!r} is neither scratch, pretrained, nor an existing weights file or run directory; "
            "check the path"
        )


def _meta_model(recipe: Recipe) -> Any:
    """The recipe's model built on the meta device (checks ``model.kwargs`` and ``model.head``)."""
    import torch

    from prunelab.core.targets import find_head
    from prunelab.models import build_model

    # Building on the meta device checks the options without allocating or initialising weights.
    with torch.device("meta"):
        try:
            model = build_model(recipe.model.name, **recipe.model.kwargs)
        except ConfigError as exc:
            raise ConfigError(f"model.kwargs: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"model.kwargs: {exc}") from None
    if recipe.model.head is not None:
        find_head(model, (), recipe.model.head)  # a named head is checked, not traced
    return model


def _check_patterns(recipe: Recipe, model: Any) -> None:
    """Each ``prune.include`` / ``prune.exclude`` glob names at least one module of the model.

    A pattern that matches nothing is a typo that would leave the intended layers pruned (exclude) or
    fail after dense training (include), so it fails here.
    """
    import fnmatch

    names = [name for name, _ in model.named_modules() if name]
    errors = ErrorCollector()
    for key in ("include", "exclude"):
        for i, pattern in enumerate(getattr(recipe.prune, key) or []):
            with errors:
                if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                    close = difflib.get_close_matches(pattern, names, n=1)
                    hint = (
                        f"did you mean {close[0]!r}?"
                        if close
                        else f"module names: {', '.join(names[:6])}, ..."
                    )
                    raise ConfigError(
                        f"prune.{key}[{i}]: {pattern!r} matches no module of {recipe.model.name}; {hint}"
                    )
    errors.raise_if_any()


def _check_method(recipe: Recipe, model: Any) -> None:
    """The method's and the reparametrization's cross-checks against the recipe and the (meta) model."""
    from prunelab.methods import DRIVERS
    from prunelab.reparam import check_reparam

    p = recipe.prune
    errors = ErrorCollector()
    driver = DRIVERS.get(p.driver)
    with errors:
        if driver.check is not None:
            driver.check(p.options, recipe, model)
    with errors:
        check_reparam(p.reparam, model, p.include, p.exclude, getattr(p.options, "granularity", None))
    errors.raise_if_any()


def check_recipe_files(recipe: Recipe, data_dir: str | None = None) -> None:
    """Fail unless the files ``recipe`` reads are present: its dataset and its registered pretrained
    weights, looked up where a run would look (``data_dir``, else ``$PRUNELAB_DATA`` or
    ``~/.cache/prunelab``). Nothing is loaded; with ``data.download: true`` missing files are fine.

    Raises:
        ConfigError: one ``data.name`` / ``model.pretrained`` line per missing file, with where it
            looked and how to get it.
    """
    from prunelab.data import check_dataset_present
    from prunelab.models.pretrained import check_pretrained_present

    errors = ErrorCollector()
    with errors:
        try:
            check_dataset_present(
                recipe.data.name, data_dir, recipe.data.download, options=recipe.data.kwargs
            )
        except PrunelabError as exc:
            raise ConfigError(f"data.name: {exc}") from None
    if recipe.model.init == "pretrained" and recipe.model.pretrained is not None:
        with errors:
            try:
                check_pretrained_present(recipe.model.pretrained, data_dir, recipe.data.download)
            except PrunelabError as exc:
                raise ConfigError(f"model.pretrained: {exc}") from None
    errors.raise_if_any()


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge and validate a recipe file.

    An empty file is an error (it would train every default); a recipe without ``name`` is named
    after the file (made a safe name).

    Raises:
        ConfigError: ``file: field.path: reason`` for each problem found (``ConfigError.errors``).
    """
    path = Path(path)
    raw = load_yaml_file(path, "recipe file")
    if raw is None or raw == {}:
        raise ConfigError(
            f"{path}: the recipe is empty; give at least model, data and prune sections (see recipes/ for examples)"
        )
    try:
        parsed = parse_overrides(overrides or [])
        recipe = recipe_from_dict(raw, parsed, check_paths=True)
    except ConfigError as exc:
        raise exc.prefixed(f"{path}: ") from None
    except PrunelabError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if recipe.name == Recipe.name:
        recipe.name = _name_from_file(path)
    return recipe


def _name_from_file(path: Path) -> str:
    """A safe run name from a recipe file's name (``my recipe.yaml`` -> ``my-recipe``)."""
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", path.stem).strip(".-")[:128].rstrip(".")
    return name or "recipe"
