"""Sweeps: a grid of recipe variations run as independent, resumable subprocesses.

A sweep file (``*.sweep.yaml``) names a base recipe and a grid of dotted recipe fields::

    name: lenet_sparsity            # the sweep's name (default output folder: sweeps/<name>)
    base: ../magnitude/lenet300_mnist.yaml   # a recipe path (relative to this file) or an inline mapping
    workers: 2                      # runs executed at the same time
    threads: 1                      # torch/OpenMP threads per run (default: cores // workers)
    data_dir: null                  # passed to every run as --data-dir
    grid:                           # cartesian product of these lists
      seed: [0, 1]
      prune.sparsity: [0.5, 0.9]
      vars.label: [a, b]            # ``vars.*`` are labels: not recipe fields, usable in templates
    set:                            # overrides derived from the grid point (``{key}`` templates)
      name: "lenet-{label}"
    id: "{label}-s{seed}-sp{sparsity}"   # optional run-id template (default: fields + hash)

Several ``stages`` (each with its own ``base``, ``grid``, ``set`` and ``id``; top-level values are the
defaults) run one after the other, so a later stage can start from an earlier stage's runs, e.g.
``set: {model.init: "{runs}/dense-{init}-s{seed}"}``. Templates see every grid key by its full dotted
name and by its last component when that is unambiguous, plus ``{runs}`` (the absolute runs folder)
and ``{sweep_dir}``.

Every expanded recipe is validated before any run starts. Each run is ``python -m prunelab run`` in its
own subprocess writing ``<sweep_dir>/runs/<run-id>``; run ids are stable functions of the grid point, so
a restarted sweep finds its runs again. ``summary.json`` in a run directory is the source of truth: a
run that has one is done and never recomputed; a run without one is started again with ``--resume`` (it
continues from its stage checkpoints). The SQLite index ``<sweep_dir>/sweep.db`` records each run's
status (pending / running / done / failed), error text and summary fields.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunelab._io import atomic_write_text
from prunelab.errors import ConfigError, PrunelabError

__all__ = [
    "STATUSES",
    "RunSpec",
    "StageSpec",
    "SweepIndex",
    "SweepResult",
    "SweepSpec",
    "expand_sweep",
    "load_sweep",
    "run_sweep",
    "sweep_from_dict",
]

STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed")
"""The states of a run in the index."""

#: Summary fields copied into the index (the rest stays in each run's ``summary.json``).
SUMMARY_FIELDS: tuple[str, ...] = (
    "accuracy",
    "accuracy_dense",
    "sparsity",
    "params_nonzero",
    "params_total",
    "macs_effective",
    "wall_time_s",
)

_TOP_KEYS = {"name", "base", "grid", "set", "id", "stages", "workers", "threads", "data_dir"}
_STAGE_KEYS = {"name", "base", "grid", "set", "id"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


@dataclass
class StageSpec:
    """One stage of a sweep: a base recipe and the grid expanded over it.

    Attributes:
        name: the stage's name (``main`` for single-stage sweeps).
        base: the base recipe as plain data.
        grid: dotted field → list of values; ``vars.*`` keys are labels, not recipe fields.
        set: dotted field → value; string values are ``{key}`` templates filled from the grid point.
        id: optional run-id template.
    """

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    set: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


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
    """

    name: str
    stages: list[StageSpec]
    workers: int = 1
    threads: int | None = None
    data_dir: str | None = None
    source: Path | None = None


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
    """

    id: str
    stage: str
    position: int
    overrides: list[tuple[str, Any]]
    vars: dict[str, Any]
    recipe: dict[str, Any]


@dataclass
class SweepResult:
    """What a call of :func:`run_sweep` found and did.

    Attributes:
        total: runs in the sweep.
        done: runs finished (now or before).
        skipped: runs that were already finished when the sweep started (not recomputed).
        executed: runs started by this call.
        failed: run id → error message of each failed run.
    """

    total: int
    done: int
    skipped: int
    executed: int
    failed: dict[str, str]


# --------------------------------------------------------------------------------------------------
# Loading and expansion


def _load_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found; check the path")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}invalid YAML; fix the syntax") from None


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown sweep key; known keys: {', '.join(sorted(allowed))}")


def _parse_stage(raw: Any, defaults: dict[str, Any], where: str, root: Path | None, index: int) -> StageSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _check_keys(raw, _STAGE_KEYS, where)
    merged = {**defaults, **raw}
    name = merged.get("name") if "name" in raw else ("main" if index < 0 else f"stage{index + 1}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{where}.name: {name!r} must be letters, digits, '.', '_' or '-'")
    base = merged.get("base")
    if isinstance(base, str):
        path = Path(base)
        if not path.is_absolute() and root is not None:
            path = root / path
        base = _load_yaml(path, "base recipe") or {}
        if not isinstance(base, dict):
            raise ConfigError(f"{path}: expected a recipe mapping")
    elif base is None:
        base = {}
    elif not isinstance(base, dict):
        raise ConfigError(f"{where}.base: expected a recipe path or an inline recipe mapping")
    grid = merged.get("grid") or {}
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
    return StageSpec(name=name, base=base, grid=dict(grid), set=dict(overrides), id=template)


def sweep_from_dict(raw: Any, source: Path | None = None) -> SweepSpec:
    """Parse sweep data (the content of a sweep file); relative ``base`` paths resolve beside ``source``.

    Raises:
        ConfigError: ``field: reason`` for the first problem found.
    """
    if not isinstance(raw, dict):
        raise ConfigError("sweep: expected a mapping at the top level")
    _check_keys(raw, _TOP_KEYS, "sweep")
    root = source.parent if source is not None else None
    name = raw.get("name") or (source.name.split(".")[0] if source is not None else "sweep")
    if not isinstance(name, str):
        raise ConfigError("sweep.name: expected a string")
    workers = raw.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"sweep.workers: {workers!r} must be a positive integer")
    threads = raw.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"sweep.threads: {threads!r} must be a positive integer or null")
    data_dir = raw.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError("sweep.data_dir: expected a path string or null")
    defaults = {k: raw[k] for k in ("base", "grid", "set", "id") if k in raw}
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
        name=name, stages=stages, workers=workers, threads=threads, data_dir=data_dir, source=source
    )


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and parse a sweep file (the grid is expanded and validated by :func:`expand_sweep`).

    Raises:
        ConfigError: ``file: field: reason``.
    """
    path = Path(path)
    raw = _load_yaml(path, "sweep file")
    try:
        return sweep_from_dict(raw, source=path)
    except PrunelabError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
    readable = _sanitize(",".join(parts))[:80]
    prefix = f"{stage}-" if multi else ""
    return f"{prefix}{readable}-{digest}" if parts else f"{prefix}{digest}"


def expand_sweep(spec: SweepSpec, sweep_dir: str | Path) -> list[RunSpec]:
    """Expand every stage's grid into runs and validate each run's recipe.

    Raises:
        ConfigError: a bad template, a duplicate run id, or ``run <id>: field.path: reason`` for the first
            run whose recipe does not validate. Nothing has been started when this raises.
    """
    from prunelab.experiments.dataclass_yaml import set_dotted
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
                run_id = _sanitize(_fill(stage.id, context, f"stage {stage.name}: id"))
            else:
                run_id = _default_id(stage.name, point, overrides, multi)
            if run_id in seen:
                raise ConfigError(
                    f"stage {stage.name}: run id {run_id!r} is produced by two grid points; "
                    "make the id template use every grid key"
                )
            seen[run_id] = stage.name
            recipe = copy.deepcopy(stage.base)
            recipe["name"] = run_id  # a run's name is its id unless the sweep sets one
            for key, value in overrides:
                try:
                    set_dotted(recipe, key, value)
                except ConfigError as exc:
                    raise ConfigError(f"run {run_id}: {exc}") from None
            try:
                recipe_from_dict(recipe)
            except PrunelabError as exc:
                raise ConfigError(f"run {run_id}: {exc}") from None
            runs.append(
                RunSpec(
                    id=run_id,
                    stage=stage.name,
                    position=len(runs),
                    overrides=overrides,
                    vars=labels,
                    recipe=recipe,
                )
            )
    if not runs:
        raise ConfigError("sweep: the grid expands to no runs")
    return runs


# --------------------------------------------------------------------------------------------------
# The SQLite index


class SweepIndex:
    """The sweep's SQLite index (``sweep.db``): one row per run with status, error and summary fields.

    Every method opens its own short connection, so worker threads and separate processes (e.g. a
    report written while the sweep runs) can use it at the same time; WAL mode lets readers proceed
    while a status update is written, and each update is a single transaction.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS runs (
                    id TEXT PRIMARY KEY,
                    stage TEXT NOT NULL,
                    position INTEGER NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
                    overrides TEXT NOT NULL,
                    vars TEXT NOT NULL,
                    run_dir TEXT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    pid INTEGER,
                    error TEXT,
                    started REAL,
                    finished REAL,
                    accuracy REAL,
                    accuracy_dense REAL,
                    sparsity REAL,
                    params_nonzero INTEGER,
                    params_total INTEGER,
                    macs_effective INTEGER,
                    wall_time_s REAL
                )"""
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            with conn:  # one transaction: committed on success, rolled back on error
                yield conn
        finally:
            conn.close()

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` in the ``meta`` table."""
        with self._connect() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def register(self, run: RunSpec, run_dir: Path) -> None:
        """Add ``run`` as pending if it is new; refresh its description otherwise (status untouched)."""
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, stage, position, status, overrides, vars, run_dir) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "stage = excluded.stage, position = excluded.position, overrides = excluded.overrides, "
                "vars = excluded.vars, run_dir = excluded.run_dir",
                (
                    run.id,
                    run.stage,
                    run.position,
                    json.dumps(run.overrides, default=str),
                    json.dumps(run.vars, default=str),
                    str(run_dir),
                ),
            )

    def mark_running(self, run_id: str, pid: int) -> None:
        """Record that ``run_id`` was started by process ``pid`` (one more attempt)."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, error = NULL, started = ?, "
                "attempts = attempts + 1 WHERE id = ?",
                (pid, time.time(), run_id),
            )

    def mark_done(self, run_id: str, summary: dict[str, Any]) -> None:
        """Record that ``run_id`` finished, with its summary fields."""
        values = [summary.get(name) for name in SUMMARY_FIELDS]
        assignments = ", ".join(f"{name} = ?" for name in SUMMARY_FIELDS)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE runs SET status = 'done', error = NULL, finished = ?, {assignments} WHERE id = ?",
                (time.time(), *values, run_id),
            )

    def mark_pending(self, run_id: str, note: str | None = None) -> None:
        """Put ``run_id`` back to pending (e.g. interrupted), keeping ``note`` as its error text."""
        with self._connect() as conn:
            conn.execute("UPDATE runs SET status = 'pending', error = ? WHERE id = ?", (note, run_id))

    def mark_failed(self, run_id: str, error: str) -> None:
        """Record that ``run_id`` failed with ``error``."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE runs SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                (error, time.time(), run_id),
            )

    def rows(self) -> list[dict[str, Any]]:
        """Every run as a mapping of column → value, in sweep order."""
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY position")]
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        """Number of runs per status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self.rows():
            counts[row["status"]] += 1
        return counts


# --------------------------------------------------------------------------------------------------
# Execution


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # summary.json is written atomically, so this is a damaged file: run it again
    return data if isinstance(data, dict) else None


def _error_from_log(text: str, returncode: int) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("prunelab: error:"):
            return line[len("prunelab: error:") :].strip()
    if lines:
        return f"exit code {returncode}: {lines[-1]}"[:500]
    return f"exit code {returncode}"


def _running_orphan(pid: int | None, run_dir: Path) -> bool:
    """Whether ``pid`` is still a live ``prunelab run`` writing ``run_dir`` (left behind by a killed sweep)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # gone (or no /proc): nothing to wait for
    return str(run_dir).encode() in cmdline


def _lock_stage(sweep_dir: Path, stage: str) -> Any:
    """Hold an exclusive lock on ``stage`` of ``sweep_dir`` for this process (released on close).

    Raises:
        ConfigError: another sweep process is working on that stage (two would start the same runs).
    """
    import fcntl

    handle = open(sweep_dir / f".lock-{stage}", "a")  # noqa: SIM115 -- kept open while the stage runs
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"stage {stage} of {sweep_dir} is being run by another 'prunelab sweep' process; wait for it "
            "or stop it first"
        ) from None
    return handle


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _recipe_text(run: RunSpec) -> str:
    header = f"# Written by 'prunelab sweep' for run {run.id}; overrides: {json.dumps(run.overrides, default=str)}\n"
    return header + yaml.safe_dump(run.recipe, sort_keys=False)


def _prepare_recipe(sweep_dir: Path, run: RunSpec, run_dir: Path) -> Path:
    path = sweep_dir / "recipes" / f"{run.id}.yaml"
    text = _recipe_text(run)
    if path.is_file() and path.read_text() != text and run_dir.exists():
        raise ConfigError(
            f"run {run.id}: its recipe changed since the sweep started it; use a new sweep directory "
            f"or delete {run_dir} to recompute it"
        )
    atomic_write_text(path, text)
    return path


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    workers: int | None = None,
    data_dir: str | None = None,
    echo: Callable[[str], None] | None = print,
    python: Sequence[str] | None = None,
    stages: Sequence[str] | None = None,
) -> SweepResult:
    """Run every run of ``spec`` that has not finished yet, ``workers`` at a time, stage after stage.

    Safe to call again after any interruption (``kill -9`` included): finished runs (those with a
    ``summary.json``) are skipped, unfinished ones continue with ``--resume``. A failing run is
    recorded with its error and the others go on.

    Args:
        spec: the parsed sweep.
        sweep_dir: where ``sweep.db``, ``recipes/`` and ``runs/`` live (created).
        workers: parallel runs (default: the sweep's ``workers``).
        data_dir: data root for every run (default: the sweep's ``data_dir``).
        echo: where progress lines go (``None`` for silence).
        python: the command that starts Python (default: this interpreter).
        stages: run only these stages (default: all, in order); every run is still validated and
            indexed. Two sweep processes may work on different stages of one sweep directory at once.

    Returns:
        The counts and the errors of failed runs.

    Raises:
        ConfigError: the sweep does not expand or validate (nothing is started then).
    """
    say = echo or (lambda _: None)
    sweep_dir = Path(sweep_dir).resolve()
    runs = expand_sweep(spec, sweep_dir)  # validates everything before any run starts
    known = [stage.name for stage in spec.stages]
    for name in stages or ():
        if name not in known:
            raise ConfigError(f"--stage {name}: no such stage; the sweep has {', '.join(known)}")
    workers = workers or spec.workers
    data_dir = data_dir if data_dir is not None else spec.data_dir
    threads = spec.threads or max(1, (os.cpu_count() or 1) // workers)
    python = list(python or [sys.executable])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    index = SweepIndex(sweep_dir / "sweep.db")
    index.set_meta("spec", {"name": spec.name, "source": str(spec.source) if spec.source else None})
    recipes = {}
    for run in runs:
        run_dir = sweep_dir / "runs" / run.id
        recipes[run.id] = _prepare_recipe(sweep_dir, run, run_dir)
        index.register(run, run_dir)

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    lock = threading.Lock()
    failed: dict[str, str] = {}
    active: dict[str, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()
    skipped = executed = 0
    pids = {row["id"]: row["pid"] for row in index.rows() if row["status"] == "running"}

    def execute(run: RunSpec) -> None:
        run_dir = sweep_dir / "runs" / run.id
        resume = run_dir.exists()  # a previous attempt left files: continue from its stage checkpoints
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [*python, "-m", "prunelab", "run", str(recipes[run.id]), "--out", str(run_dir), "--quiet"]
        if resume:
            command.append("--resume")
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        if stopping.is_set():
            return
        with open(run_dir / "sweep_output.txt", "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            with lock:
                active[run.id] = proc
            index.mark_running(run.id, proc.pid)
            returncode = proc.wait()
            with lock:
                active.pop(run.id, None)
        summary = _read_summary(run_dir)
        if stopping.is_set() and summary is None:
            index.mark_pending(run.id, "interrupted with the sweep; restart the sweep to resume it")
            return
        if summary is not None:  # summary.json is the source of truth, whatever the exit code says
            index.mark_done(run.id, summary)
            with lock:
                say(f"done    {run.id}: accuracy {summary.get('accuracy', float('nan')):.4f}")
            return
        text = (run_dir / "sweep_output.txt").read_text(errors="replace")
        last_attempt = text[text.rfind("$ ") :]
        error = _error_from_log(last_attempt.split("\n", 1)[-1], returncode)
        index.mark_failed(run.id, error)
        with lock:
            failed[run.id] = error
            say(f"FAILED  {run.id}: {error}")

    # SIGTERM (e.g. from a batch scheduler) becomes an exception, so that the runs get stopped too.
    previous = None
    locks: list[Any] = []
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for stage in spec.stages:
            if stages and stage.name not in stages:
                continue
            locks.append(_lock_stage(sweep_dir, stage.name))
            todo: list[RunSpec] = []
            for run in (r for r in runs if r.stage == stage.name):
                run_dir = sweep_dir / "runs" / run.id
                while _running_orphan(pids.get(run.id), run_dir):
                    # A previous sweep was killed but its run lives on: let it finish rather than race it.
                    time.sleep(1.0)
                summary = _read_summary(run_dir)
                if summary is not None:
                    index.mark_done(run.id, summary)  # the DB may have missed the update before a kill
                    skipped += 1
                else:
                    todo.append(run)
            say(
                f"stage {stage.name}: {len(todo)} run(s) to do, "
                f"{sum(1 for r in runs if r.stage == stage.name) - len(todo)} already done; "
                f"{workers} worker(s) x {threads} thread(s)"
            )
            if not todo:
                continue
            executed += len(todo)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(execute, run) for run in todo]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    # Ctrl-C or SIGTERM: stop the runs we started (they resume on restart), then re-raise.
                    stopping.set()
                    for future in futures:
                        future.cancel()
                    with lock:
                        procs = list(active.values())
                    for proc in procs:
                        proc.terminate()
                    raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for handle in locks:
            handle.close()  # closing the file releases its lock
    ids = {run.id for run in runs}  # the index may also hold runs of other sweep files
    done = sum(1 for row in index.rows() if row["id"] in ids and row["status"] == "done")
    return SweepResult(
        total=len(runs),
        done=done,
        skipped=skipped,
        executed=executed,
        failed=failed,
    )
