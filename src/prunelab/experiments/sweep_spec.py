"""Sweep files: their format, parsing and expansion into validated runs.

A sweep file (``*.sweep.yaml``) names a base recipe and a grid of dotted recipe fields::

    name: lenet_sparsity            # the sweep's name (default: the file's; output folder sweeps/<name>)
    base: ../magnitude/lenet300_mnist.yaml   # required: a recipe path (relative to this file) or a mapping
    workers: 2                      # runs executed at the same time
    threads: 1                      # torch/OpenMP threads per run (default: cores // workers)
    data_dir: null                  # passed to every run as --data-dir
    grid:                           # required, not empty: the cartesian product of these lists
      seed: [0, 1]
      prune.sparsity: [0.5, 0.9]
      vars.label: [a, b]            # ``vars.*`` are labels: not recipe fields, usable in templates
    set:                            # overrides derived from the grid point (``{key}`` templates)
      name: "lenet-{label}"
    id: "{label}-s{seed}-sp{sparsity}"   # optional run-id template (default: fields + hash)
    resources: {cpus: 2, gpus: 0}   # per run (default: cpus = threads); a stage may set its own
    launcher: local                 # local | ray | slurm, or a mapping with the launcher's options:
    # launcher: {name: ray, address: "ray://head:10001"}
    # launcher: {name: slurm, partition: gpu, timeout_min: 120, cluster: slurm}   # cluster: local = submitit's

Several ``stages`` (each with its own ``base``, ``grid``, ``set``, ``id`` and ``resources``; top-level values are the
defaults) run one after the other, so a later stage can start from an earlier stage's runs, e.g.
``set: {model.init: "{runs}/dense-{init}-s{seed}"}``. Templates see every grid key by its full dotted
name and by its last component when that is unambiguous, plus ``{runs}`` (the absolute runs folder)
and ``{sweep_dir}``.

The sweep's name, every stage name and every run id become directories (``sweeps/<name>``,
``runs/<id>``), so each must be one safe path component (:func:`~prunelab.dataclass_yaml.check_name`);
a bad one is an error when the sweep is loaded or expanded, never a directory outside the sweep.

:func:`load_sweep` / :func:`sweep_from_dict` parse a sweep into a :class:`SweepSpec`;
:func:`expand_sweep` expands it into :class:`RunSpec` objects and validates every expanded recipe, so
a sweep that would fail on a recipe error fails before any run starts. Run ids are stable functions of
the grid point, so a restarted sweep finds its runs again. Running the runs is
:mod:`prunelab.experiments.sweep`; recording their status is :mod:`prunelab.experiments.sweep_index`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.dataclass_yaml import check_name, load_yaml_file
from prunelab.errors import ConfigError, PrunelabError

__all__ = [
    "LAUNCHERS",
    "LauncherSpec",
    "Resources",
    "RunSpec",
    "StageSpec",
    "SweepSpec",
    "expand_sweep",
    "load_sweep",
    "parse_launcher",
    "select_stages",
    "sweep_from_dict",
]

_TOP_KEYS = {
    "name",
    "base",
    "grid",
    "set",
    "id",
    "stages",
    "workers",
    "threads",
    "data_dir",
    "resources",
    "launcher",
}
_STAGE_KEYS = {"name", "base", "grid", "set", "id", "resources"}
#: Where a sweep's runs can execute (:mod:`prunelab.experiments.launchers`).
LAUNCHERS: tuple[str, ...] = ("local", "ray", "slurm")
#: The options of each launcher in a sweep file's ``launcher:`` mapping.
_LAUNCHER_KEYS = {"name", "address", "cluster", "partition", "timeout_min"}


@dataclass(frozen=True)
class Resources:
    """What one run of a stage needs; a Ray task or a SLURM job asks for exactly this.

    Attributes:
        cpus: CPU cores (also its torch / OpenMP threads); ``None``: the sweep's ``threads``, else on
            the local launcher cores // workers and on a cluster 1.
        gpus: GPUs (Ray ``num_gpus``, SLURM ``gpus_per_node``); the local launcher runs on the
            machine's devices as they are.
    """

    cpus: int | None = None
    gpus: int = 0


@dataclass(frozen=True)
class LauncherSpec:
    """A sweep file's ``launcher:`` (``prunelab sweep --launcher`` overrides the name).

    Attributes:
        name: one of :data:`LAUNCHERS`.
        address: Ray: the cluster to connect to (``None``: ``RAY_ADDRESS``, else a local Ray instance
            for the sweep).
        cluster: SLURM: ``slurm``, or ``local`` for submitit's local executor (one machine, tests).
        partition: SLURM: the partition (``None``: the cluster's default).
        timeout_min: SLURM: the time limit of each run's job, in minutes.
    """

    name: str = "local"
    address: str | None = None
    cluster: str = "slurm"
    partition: str | None = None
    timeout_min: int = 720


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
#: The longest run id :func:`~prunelab.dataclass_yaml.check_name` accepts; derived ids are cut to fit.
_MAX_ID = 128


@dataclass
class StageSpec:
    """One stage of a sweep: a base recipe and the grid expanded over it.

    Attributes:
        name: the stage's name (``main`` for single-stage sweeps).
        base: the base recipe as plain data.
        grid: dotted field → list of values; ``vars.*`` keys are labels, not recipe fields.
        set: dotted field → value; string values are ``{key}`` templates filled from the grid point.
        id: optional run-id template.
        resources: what each of its runs needs.
    """

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    set: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    resources: Resources = field(default_factory=Resources)


@dataclass
class SweepSpec:
    """A parsed sweep file.

    Attributes:
        name: the sweep's name.
        stages: the stages, run in order.
        workers: runs executed at the same time.
        threads: torch/OpenMP threads per run (``None``: cores // workers, at least 1).
        data_dir: the data root passed to every run (``None``: the runs' default).
        source: the file it was read from, if any.
        launcher: where the runs execute.
    """

    name: str
    stages: list[StageSpec]
    workers: int = 1
    threads: int | None = None
    data_dir: str | None = None
    source: Path | None = None
    launcher: LauncherSpec = field(default_factory=LauncherSpec)


@dataclass
class RunSpec:
    """One expanded run of a sweep.

    Attributes:
        id: the stable run id (also its directory name under ``runs/``).
        stage: the stage it belongs to.
        position: its order within the sweep.
        overrides: the recipe fields it sets, ``(dotted key, value)`` in a fixed order.
        vars: its ``vars.*`` labels (without the prefix).
        recipe: the recipe as plain data (base with the overrides applied; ``name`` = id unless set).
        resources: what it needs (its stage's).
    """

    id: str
    stage: str
    position: int
    overrides: list[tuple[str, Any]]
    vars: dict[str, Any]
    recipe: dict[str, Any]
    resources: Resources = field(default_factory=Resources)


def _prefixed(exc: PrunelabError, prefix: str) -> ConfigError:
    """``exc`` as a :class:`ConfigError` whose every problem starts with ``prefix`` (none is dropped)."""
    return exc.prefixed(prefix) if isinstance(exc, ConfigError) else ConfigError(f"{prefix}{exc}")


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown sweep key; known keys: {', '.join(sorted(allowed))}")


def _count(value: Any, where: str, *, minimum: int, what: str) -> int:
    """``value`` as an integer >= ``minimum``, or a one-line error naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {value!r} must be an integer >= {minimum} ({what})")
    return value


def _parse_resources(raw: Any, where: str) -> Resources:
    if raw is None:
        return Resources()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping such as '{{cpus: 2, gpus: 0}}'")
    _check_keys(raw, {"cpus", "gpus"}, where)
    cpus = raw.get("cpus")
    if cpus is not None:
        cpus = _count(cpus, f"{where}.cpus", minimum=1, what="CPU cores per run, or null")
    gpus = _count(raw.get("gpus", 0), f"{where}.gpus", minimum=0, what="GPUs per run")
    return Resources(cpus=cpus, gpus=gpus)


def parse_launcher(raw: Any, where: str = "sweep.launcher") -> LauncherSpec:
    """A sweep file's ``launcher:`` value (a name, or a mapping with ``name`` and options).

    Raises:
        ConfigError: an unknown launcher or option, or an option of the wrong type.
    """
    if raw is None:
        return LauncherSpec()
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected one of {', '.join(LAUNCHERS)} or a mapping with a name")
    _check_keys(raw, _LAUNCHER_KEYS, where)
    name = raw.get("name", "local")
    if name not in LAUNCHERS:
        raise ConfigError(f"{where}.name: unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}")
    for key in ("address", "partition"):
        if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise ConfigError(f"{where}.{key}: expected a non-empty string or null")
    cluster = raw.get("cluster", "slurm")
    if cluster not in ("slurm", "local"):
        raise ConfigError(
            f"{where}.cluster: {cluster!r}; use slurm, or local for submitit's local executor (one machine)"
        )
    timeout = _count(raw.get("timeout_min", 720), f"{where}.timeout_min", minimum=1, what="minutes per run")
    return LauncherSpec(
        name=name,
        address=raw.get("address"),
        cluster=cluster,
        partition=raw.get("partition"),
        timeout_min=timeout,
    )


def _parse_stage(raw: Any, defaults: dict[str, Any], where: str, root: Path | None, index: int) -> StageSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _check_keys(raw, _STAGE_KEYS, where)
    merged = {**defaults, **raw}
    name = raw["name"] if "name" in raw else ("main" if index < 0 else f"stage{index + 1}")
    check_name(name, f"{where}.name")  # it names the stage's lock file and, in templates, run ids
    if "base" not in merged:
        raise ConfigError(
            f"{where}.base: missing; give a recipe file (relative to the sweep file) or an inline recipe mapping"
        )
    base = merged["base"]
    if isinstance(base, str) and base.strip():
        path = Path(base)
        if not path.is_absolute() and root is not None:
            path = root / path
        try:
            base = load_yaml_file(path, "base recipe file")
        except ConfigError as exc:
            raise _prefixed(exc, f"{where}.base: ") from None
        if not isinstance(base, dict):
            got = "an empty file" if base is None else type(base).__name__
            raise ConfigError(f"{where}.base: {path}: expected a recipe mapping, got {got}")
    elif not isinstance(base, dict):
        raise ConfigError(f"{where}.base: expected a recipe path or an inline recipe mapping, got {base!r}")
    grid = merged.get("grid")
    if grid is None or grid == {}:
        # An empty grid would silently be one run of the base recipe; 'prunelab run' is for that.
        raise ConfigError(
            f"{where}.grid: empty; give at least one dotted recipe field with a list of values, "
            "e.g. 'grid: {seed: [0, 1]}'"
        )
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}.grid: expected a mapping of dotted recipe fields to lists")
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}.grid: keys must be dotted recipe fields such as prune.sparsity")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.grid.{key}: expected a non-empty list of values")
    overrides = merged.get("set") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}.set: expected a mapping of dotted recipe fields to values")
    template = merged.get("id")
    if template is not None and not isinstance(template, str):
        raise ConfigError(f"{where}.id: expected a template string such as '{{init}}-s{{seed}}'")
    resources = _parse_resources(merged.get("resources"), f"{where}.resources")
    return StageSpec(
        name=name, base=base, grid=dict(grid), set=dict(overrides), id=template, resources=resources
    )


def sweep_from_dict(raw: Any, source: Path | None = None) -> SweepSpec:
    """Parse sweep data (the content of a sweep file); relative ``base`` paths resolve beside ``source``.

    Raises:
        ConfigError: ``field: reason`` for the first problem found.
    """
    if not isinstance(raw, dict):
        raise ConfigError("sweep: expected a mapping at the top level")
    _check_keys(raw, _TOP_KEYS, "sweep")
    root = source.parent if source is not None else None
    if "name" in raw:
        name = check_name(raw["name"], "sweep.name")
    elif source is not None:
        name = check_name(
            source.name.split(".")[0], f"sweep.name (from the file name {source.name}; add a name:)"
        )
    else:
        name = "sweep"
    workers = raw.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"sweep.workers: {workers!r} must be a positive integer")
    threads = raw.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"sweep.threads: {threads!r} must be a positive integer or null")
    data_dir = raw.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError("sweep.data_dir: expected a path string or null")
    launcher = parse_launcher(raw.get("launcher"))
    defaults = {k: raw[k] for k in ("base", "grid", "set", "id", "resources") if k in raw}
    stages_raw = raw.get("stages")
    if stages_raw is None:
        stages = [_parse_stage({}, defaults, "sweep", root, -1)]
    else:
        if not isinstance(stages_raw, list) or not stages_raw:
            raise ConfigError("sweep.stages: expected a non-empty list of stages")
        stages = [_parse_stage(s, defaults, f"sweep.stages[{i}]", root, i) for i, s in enumerate(stages_raw)]
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"sweep.stages: stage names must be unique, got {names}")
    return SweepSpec(
        name=name,
        stages=stages,
        workers=workers,
        threads=threads,
        data_dir=data_dir,
        source=source,
        launcher=launcher,
    )


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and parse a sweep file (the grid is expanded and validated by :func:`expand_sweep`).

    Raises:
        ConfigError: ``file: field: reason``.
    """
    path = Path(path)
    raw = load_yaml_file(path, "sweep file")
    try:
        return sweep_from_dict(raw, source=path)
    except PrunelabError as exc:
        raise _prefixed(exc, f"{path}: ") from None


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _fill(template: Any, context: dict[str, Any], where: str) -> Any:
    """Substitute ``{key}`` placeholders in strings (recursively in lists and mappings)."""
    if isinstance(template, list):
        return [_fill(v, context, where) for v in template]
    if isinstance(template, dict):
        return {k: _fill(v, context, where) for k, v in template.items()}
    if not isinstance(template, str):
        return template

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in context:
            known = ", ".join(sorted(context))
            raise ConfigError(f"{where}: unknown placeholder {{{key}}}; known: {known}")
        return _format_value(context[key])

    return _PLACEHOLDER.sub(replace, template)


def _context(point: dict[str, Any], runs_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    context: dict[str, Any] = {"runs": str(runs_dir), "sweep_dir": str(sweep_dir)}
    shorts: dict[str, list[str]] = {}
    for key in point:
        short = key.split(".")[-1]
        shorts.setdefault(short, []).append(key)
    for key, value in point.items():
        context[key] = value
    for short, keys in shorts.items():
        # A short alias only when it names one grid key, so a template never picks the wrong one.
        if len(keys) == 1 and short not in context:
            context[short] = point[keys[0]]
    return context


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_.") or "run"


def _default_id(stage: str, point: dict[str, Any], overrides: list[tuple[str, Any]], multi: bool) -> str:
    parts = [f"{key.split('.')[-1]}={_format_value(point[key])}" for key in sorted(point)]
    # Sorted, so the order of the grid keys in the file does not change the id.
    canonical = json.dumps(sorted(overrides, key=lambda kv: kv[0]), sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    prefix = f"{stage}-" if multi else ""
    # The readable part is cut so that the id stays a valid name; the digest keeps it unique.
    readable = _sanitize(",".join(parts))[: min(80, _MAX_ID - len(prefix) - len(digest) - 1)]
    return f"{prefix}{readable}-{digest}" if parts else f"{prefix}{digest}"


def expand_sweep(spec: SweepSpec, sweep_dir: str | Path) -> list[RunSpec]:
    """Expand every stage's grid into runs and validate each run's recipe.

    Raises:
        ConfigError: a bad template or run id, a duplicate run id, or ``run <id>: field.path: reason`` for
            each problem of the first run whose recipe does not validate, after ``file: `` when the sweep
            came from a file. Nothing has been started when this raises.
    """
    try:
        return _expand(spec, sweep_dir)
    except PrunelabError as exc:
        if spec.source is None:
            raise
        raise _prefixed(exc, f"{spec.source}: ") from None


def _made_by_sweep(recipe: dict[str, Any], sweep_dir: Path) -> bool:
    """Whether the recipe's ``model.init`` is a path in the sweep directory (an earlier stage's run).

    Such a path may not exist yet; any other init path is checked now, as ``prunelab run`` would (the
    runs start in this working directory), so a typo fails before the sweep starts rather than per run.
    """
    model = recipe.get("model")
    init = model.get("init") if isinstance(model, dict) else None
    if not isinstance(init, str) or init in ("scratch", "pretrained"):
        return False
    return Path(init).resolve().is_relative_to(sweep_dir)


def _expand(spec: SweepSpec, sweep_dir: str | Path) -> list[RunSpec]:
    """:func:`expand_sweep` without the file name in its errors."""
    from prunelab.dataclass_yaml import set_dotted
    from prunelab.experiments.schema import recipe_from_dict

    sweep_dir = Path(sweep_dir).resolve()
    runs_dir = sweep_dir / "runs"
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    multi = len(spec.stages) > 1
    for stage in spec.stages:
        keys = list(stage.grid)
        for values in itertools.product(*(stage.grid[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            context = _context(point, runs_dir, sweep_dir)
            overrides = [(k, v) for k, v in point.items() if not k.startswith("vars.")]
            derived = [(k, _fill(v, context, f"stage {stage.name}: set.{k}")) for k, v in stage.set.items()]
            overrides += derived
            labels = {k[len("vars.") :]: v for k, v in point.items() if k.startswith("vars.")}
            if stage.id is not None:
                # Checked, not rewritten: the user chose this id, so a '/' or '..' in it is an error.
                run_id = check_name(
                    _fill(stage.id, context, f"stage {stage.name}: id"), f"stage {stage.name}: id"
                )
            else:
                run_id = check_name(
                    _default_id(stage.name, point, overrides, multi), f"stage {stage.name}: run id"
                )
            if run_id in seen:
                raise ConfigError(
                    f"stage {stage.name}: run id {run_id!r} is produced by two grid points; "
                    "make the id template use every grid key"
                )
            seen[run_id] = stage.name
            recipe = copy.deepcopy(stage.base)
            recipe["name"] = run_id  # a run's name is its id unless the sweep sets one
            try:
                for key, value in overrides:
                    set_dotted(recipe, key, value)
                recipe_from_dict(recipe, check_paths=not _made_by_sweep(recipe, sweep_dir))
            except PrunelabError as exc:
                raise _prefixed(exc, f"run {run_id}: ") from None
            runs.append(
                RunSpec(
                    id=run_id,
                    stage=stage.name,
                    position=len(runs),
                    overrides=overrides,
                    vars=labels,
                    recipe=recipe,
                    resources=stage.resources,
                )
            )
    if not runs:
        raise ConfigError("sweep: the grid expands to no runs")
    return runs


def select_stages(spec: SweepSpec, names: list[str] | None = None) -> list[str]:
    """The stages to run, in sweep order: all of them, or ``names`` (``--stage``) once each is checked.

    Raises:
        ConfigError: a name is not a stage of ``spec`` (the message lists its stages), or ``names`` is empty.
    """
    known = [stage.name for stage in spec.stages]
    if names is None:
        return known
    if not names:
        raise ConfigError(f"--stage: no stage given; the sweep has {', '.join(known)}")
    for name in names:
        if name not in known:
            raise ConfigError(f"--stage {name}: no such stage; the sweep has {', '.join(known)}")
    return [name for name in known if name in names]
