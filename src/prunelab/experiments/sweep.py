"""Sweep execution: every run of a sweep as an independent, resumable ``prunelab run`` subprocess.

:func:`run_sweep` expands and validates the sweep (:mod:`prunelab.experiments.sweep_spec`) before any
run starts, then runs it stage after stage, ``workers`` runs at a time. Each run is ``python -m prunelab
run`` in its own subprocess writing ``<sweep_dir>/runs/<run-id>`` from the recipe written to
``<sweep_dir>/recipes/<run-id>.yaml``. ``summary.json`` in a run directory is the source of truth: a run
that has one is done and never recomputed; a run without one is started again with ``--resume`` (it
continues from its stage checkpoints). The SQLite index ``<sweep_dir>/sweep.db``
(:mod:`prunelab.experiments.sweep_index`) records each run's status (pending / running / done /
failed), error text and summary fields; an index that cannot be read is moved aside and rebuilt from the
runs' ``summary.json`` files. :func:`plan_sweep` does every check that needs no file written (options,
every expanded recipe), then :func:`run_sweep` checks that the sweep directory can be written, so a bad
input fails before any run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from prunelab._io import atomic_write_text, ensure_writable_dir
from prunelab.dataclass_yaml import check_name
from prunelab.errors import ConfigError
from prunelab.experiments.sweep_index import SweepIndex
from prunelab.experiments.sweep_spec import RunSpec, SweepSpec, expand_sweep, select_stages

__all__ = ["SweepPlan", "SweepResult", "plan_sweep", "run_sweep"]


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


@dataclass
class SweepPlan:
    """A sweep checked and expanded, ready to run; nothing has been written for it yet.

    Attributes:
        sweep_dir: the absolute sweep directory (not checked yet: :func:`plan_sweep` writes nothing).
        runs: every run of the sweep, all stages, each recipe validated.
        stages: the stages to run, in sweep order.
        workers: runs executed at the same time.
    """

    sweep_dir: Path
    runs: list[RunSpec]
    stages: list[str]
    workers: int

    def selected(self) -> list[RunSpec]:
        """The runs of the stages to run, in sweep order."""
        return [run for run in self.runs if run.stage in self.stages]


def plan_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    workers: int | None = None,
    stages: Sequence[str] | None = None,
) -> SweepPlan:
    """Check the options, expand ``spec`` and validate every run; write nothing (``--dry-run`` is this).

    Args:
        spec: the parsed sweep.
        sweep_dir: the sweep directory (``--out``).
        workers: parallel runs (default: the sweep's ``workers``).
        stages: the stages to run (default: all).

    Raises:
        ConfigError: one line for the first problem: ``--workers``, ``--stage``, or a run.
    """
    workers = spec.workers if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(
            f"--workers {workers}: must be a positive integer (the runs executed at the same time)"
        )
    selected = select_stages(spec, None if stages is None else list(stages))
    sweep_dir = Path(sweep_dir).resolve()
    runs = expand_sweep(spec, sweep_dir)  # every run of every stage: later stages' ids and templates too
    return SweepPlan(sweep_dir=sweep_dir, runs=runs, stages=selected, workers=workers)


def _run_dir(sweep_dir: Path, run_id: str) -> Path:
    """Where run ``run_id`` writes: always directly under ``sweep_dir/runs`` (its id is one path component)."""
    return sweep_dir / "runs" / check_name(run_id, "run id")


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


def _lock_stage(sweep_dir: Path, stage: str) -> TextIO:
    """Hold an exclusive lock on ``stage`` of ``sweep_dir`` for this process (released on close).

    Raises:
        ConfigError: another sweep process is working on that stage (two would start the same runs).
    """
    import fcntl

    path = sweep_dir / f".lock-{check_name(stage, 'stage name')}"
    handle = open(path, "a")  # noqa: SIM115 -- kept open while the stage runs
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


def _check_recipe_unchanged(path: Path, text: str, run: RunSpec, run_dir: Path) -> None:
    """Refuse to continue a started run under a different recipe (its files would mix two recipes)."""
    if path.is_file() and run_dir.exists() and path.read_text(errors="replace") != text:
        raise ConfigError(
            f"run {run.id}: its recipe changed since the sweep started it; use a new sweep directory "
            f"or delete {run_dir} to recompute it"
        )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (e.g. from a batch scheduler) into ``KeyboardInterrupt`` while the block runs.

    The exception reaches :meth:`_Launcher.run_all`, which then stops the runs it started too. Signal
    handlers can only be installed from the main thread; elsewhere the block runs unchanged.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@dataclass
class _Launcher:
    """Starts runs as subprocesses and records their outcome; shared by the worker threads of a sweep.

    Attributes:
        sweep_dir: the sweep directory (``runs/`` lives in it).
        index: the sweep's index.
        recipes: run id → the recipe file its subprocess reads.
        python: the command that starts Python.
        data_dir: data root passed to every run, if any.
        env: the subprocesses' environment.
        say: where progress lines go.
        lock: guards ``active``, ``failed`` and ``say`` across the worker threads.
        failed: run id → error message of each run that failed in this call.
        active: run id → the subprocess running it now.
        stopping: set once the sweep is interrupted; no new run starts after that.
    """

    sweep_dir: Path
    index: SweepIndex
    recipes: dict[str, Path]
    python: list[str]
    data_dir: str | None
    env: dict[str, str]
    say: Callable[[str], None]
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: dict[str, str] = field(default_factory=dict)
    active: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def execute(self, run: RunSpec) -> None:
        """Run ``run`` in a subprocess (resuming if an earlier attempt left files); record the outcome."""
        run_dir = _run_dir(self.sweep_dir, run.id)
        resume = run_dir.exists()  # a previous attempt left files: continue from its stage checkpoints
        recipe = self.recipes[run.id]
        command = [*self.python, "-m", "prunelab", "run", str(recipe), "--out", str(run_dir), "--quiet"]
        if resume:
            command.append("--resume")
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        if self.stopping.is_set():
            return
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "sweep_output.txt", "a", encoding="utf-8")  # noqa: SIM115 -- closed below
        except OSError as exc:
            # This run's folder is unusable (a file in its place, no permission): fail it, not the sweep.
            self._fail(
                run, f"cannot write {run_dir} ({exc.strerror or exc}); move what is there away, then restart"
            )
            return
        with log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            with self.lock:
                self.active[run.id] = proc
            self.index.mark_running(run.id, proc.pid)
            returncode = proc.wait()
            with self.lock:
                self.active.pop(run.id, None)
        self._record(run, run_dir, returncode)

    def _record(self, run: RunSpec, run_dir: Path, returncode: int) -> None:
        """Mark a finished subprocess's run done, failed, or pending again (interrupted with the sweep)."""
        summary = _read_summary(run_dir)
        if self.stopping.is_set() and summary is None:
            self.index.mark_pending(run.id, "interrupted with the sweep; restart the sweep to resume it")
            return
        if summary is not None:  # summary.json is the source of truth, whatever the exit code says
            self.index.mark_done(run.id, summary)
            with self.lock:
                self.say(f"done    {run.id}: accuracy {summary.get('accuracy', float('nan')):.4f}")
            return
        text = (run_dir / "sweep_output.txt").read_text(errors="replace")
        last_attempt = text[text.rfind("$ ") :]
        self._fail(run, _error_from_log(last_attempt.split("\n", 1)[-1], returncode))

    def _fail(self, run: RunSpec, error: str) -> None:
        """Record that ``run`` failed with ``error`` (one line); the other runs go on."""
        self.index.mark_failed(run.id, error)
        with self.lock:
            self.failed[run.id] = error
            self.say(f"FAILED  {run.id}: {error}")

    def run_all(self, todo: Sequence[RunSpec], workers: int) -> None:
        """Execute ``todo``, ``workers`` at a time; on any exception (Ctrl-C, SIGTERM) stop them, re-raise."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self.execute, run) for run in todo]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                # The runs we started are stopped here and resume on restart.
                self.stopping.set()
                for future in futures:
                    future.cancel()
                with self.lock:
                    procs = list(self.active.values())
                for proc in procs:
                    proc.terminate()
                raise


def _register_runs(
    spec: SweepSpec, runs: Sequence[RunSpec], sweep_dir: Path
) -> tuple[SweepIndex, dict[str, Path]]:
    """Create the sweep directory and its index, write every run's recipe and register every run.

    An unreadable index is moved aside (one warning line on stderr) and rebuilt: every run is registered
    again here, and :func:`_unfinished` marks done those with a ``summary.json``.

    Returns:
        The index and, by run id, the recipe file of each run.
    """
    texts = {run.id: _recipe_text(run) for run in runs}
    recipes = {run.id: sweep_dir / "recipes" / f"{run.id}.yaml" for run in runs}
    for run in runs:  # every run is checked before any file is written
        _check_recipe_unchanged(recipes[run.id], texts[run.id], run, _run_dir(sweep_dir, run.id))
    fix = "move it away or choose another --out"
    ensure_writable_dir(sweep_dir / "recipes", "recipes folder", fix)
    if (sweep_dir / "runs").exists():  # made by the first run to start, not before (the lock is taken first)
        ensure_writable_dir(sweep_dir / "runs", "runs folder", fix)
    index = SweepIndex(sweep_dir / "sweep.db")
    if index.recovered:
        print(f"warning: {index.recovered}; rebuilding it from the runs' summary.json files", file=sys.stderr)
    index.set_meta("spec", {"name": spec.name, "source": str(spec.source) if spec.source else None})
    for run in runs:
        atomic_write_text(recipes[run.id], texts[run.id])
        index.register(run, _run_dir(sweep_dir, run.id))
    return index, recipes


def _unfinished(
    runs: Sequence[RunSpec], sweep_dir: Path, index: SweepIndex, pids: dict[str, int | None]
) -> list[RunSpec]:
    """The runs without a ``summary.json``; finished ones are marked done in the index.

    A run still executed by a live process of an earlier, killed sweep (``pids``: run id → the process
    id the index recorded) is waited for first.
    """
    todo: list[RunSpec] = []
    for run in runs:
        run_dir = _run_dir(sweep_dir, run.id)
        while _running_orphan(pids.get(run.id), run_dir):
            # A previous sweep was killed but its run lives on: let it finish rather than race it.
            time.sleep(1.0)
        summary = _read_summary(run_dir)
        if summary is not None:
            index.mark_done(run.id, summary)  # the DB may have missed the update before a kill
        else:
            todo.append(run)
    return todo


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
        ConfigError: a bad option or run (:func:`plan_sweep`; nothing is written then), a sweep directory
            that cannot be written, or a started run whose recipe changed; no run has started then.
    """
    say = echo or (lambda _: None)
    plan = plan_sweep(spec, sweep_dir, workers=workers, stages=stages)  # before anything is written
    sweep_dir, runs, workers = plan.sweep_dir, plan.runs, plan.workers
    # A file, a folder under a file or a read-only folder fails here, after the runs validated.
    ensure_writable_dir(sweep_dir, "sweep directory", "choose another --out")
    threads = spec.threads or max(1, (os.cpu_count() or 1) // workers)
    index, recipes = _register_runs(spec, runs, sweep_dir)
    launcher = _Launcher(
        sweep_dir=sweep_dir,
        index=index,
        recipes=recipes,
        python=list(python or [sys.executable]),
        data_dir=data_dir if data_dir is not None else spec.data_dir,
        env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        say=say,
    )
    skipped = executed = 0
    pids = {row["id"]: row["pid"] for row in index.rows() if row["status"] == "running"}
    with contextlib.ExitStack() as locks, _sigterm_as_interrupt():
        for stage in spec.stages:
            if stage.name not in plan.stages:
                continue
            locks.enter_context(_lock_stage(sweep_dir, stage.name))  # closing the file releases its lock
            in_stage = [r for r in runs if r.stage == stage.name]
            todo = _unfinished(in_stage, sweep_dir, index, pids)
            skipped += len(in_stage) - len(todo)
            say(
                f"stage {stage.name}: {len(todo)} run(s) to do, {len(in_stage) - len(todo)} already done; "
                f"{workers} worker(s) x {threads} thread(s)"
            )
            if todo:
                executed += len(todo)
                launcher.run_all(todo, workers)
    ids = {run.id for run in runs}  # the index may also hold runs of other sweep files
    done = sum(1 for row in index.rows() if row["id"] in ids and row["status"] == "done")
    return SweepResult(total=len(runs), done=done, skipped=skipped, executed=executed, failed=launcher.failed)
