"""Sweep execution: every run of a sweep as an independent, resumable ``prunelab run``.

:func:`run_sweep` expands and validates the sweep (:mod:`prunelab.experiments.sweep_spec`) before any
run starts, then runs it stage after stage, ``workers`` runs at a time. Each run is ``prunelab run``
writing ``<sweep_dir>/runs/<run-id>`` from the recipe written to ``<sweep_dir>/recipes/<run-id>.yaml``,
executed by a launcher (:mod:`prunelab.experiments.launchers`): ``local`` (persistent worker processes
on this machine, one per worker slot), ``ray`` (one Ray task per run) or ``slurm`` (one submitit job per
run); every launcher uses the same run ids, resume rule and index, and this process (the driver) is
the only writer of the index. ``summary.json`` in a run directory is the source of truth: a run
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
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from prunelab._io import atomic_write_text, ensure_writable_dir
from prunelab.dataclass_yaml import check_name
from prunelab.errors import ConfigError
from prunelab.experiments.launchers import LOG_NAME, LocalWorker, RunJob, execute_job, run_is_executing
from prunelab.experiments.sweep_index import SweepIndex
from prunelab.experiments.sweep_spec import (
    LauncherSpec,
    RunSpec,
    SweepSpec,
    expand_sweep,
    parse_launcher,
    select_stages,
)

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
        workers: runs executed (or handed to the cluster) at the same time.
        launcher: where the runs execute.
    """

    sweep_dir: Path
    runs: list[RunSpec]
    stages: list[str]
    workers: int
    launcher: LauncherSpec = field(default_factory=LauncherSpec)

    def selected(self) -> list[RunSpec]:
        """The runs of the stages to run, in sweep order."""
        return [run for run in self.runs if run.stage in self.stages]


def plan_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    workers: int | None = None,
    stages: Sequence[str] | None = None,
    launcher: str | None = None,
) -> SweepPlan:
    """Check the options, expand ``spec`` and validate every run; write nothing (``--dry-run`` is this).

    Args:
        spec: the parsed sweep.
        sweep_dir: the sweep directory (``--out``).
        workers: parallel runs (default: the sweep's ``workers``).
        stages: the stages to run (default: all).
        launcher: ``local``, ``ray`` or ``slurm`` (default: the sweep's ``launcher``); its package
            must be installed.

    Raises:
        ConfigError: one line for the first problem: ``--workers``, ``--launcher``, ``--stage``, or a run.
    """
    workers = spec.workers if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(
            f"--workers {workers}: must be a positive integer (the runs executed at the same time)"
        )
    chosen = spec.launcher
    if launcher is not None:
        chosen = parse_launcher({**asdict(chosen), "name": launcher}, "--launcher")
    _check_launcher_installed(chosen.name)
    selected = select_stages(spec, None if stages is None else list(stages))
    sweep_dir = Path(sweep_dir).resolve()
    runs = expand_sweep(spec, sweep_dir)  # every run of every stage: later stages' ids and templates too
    return SweepPlan(sweep_dir=sweep_dir, runs=runs, stages=selected, workers=workers, launcher=chosen)


#: The package each cluster launcher needs, and the extra that installs it.
_LAUNCHER_PACKAGES = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}


def _check_launcher_installed(name: str) -> None:
    """Refuse a launcher whose package is missing, before anything is written."""
    import importlib.util

    if name in _LAUNCHER_PACKAGES:
        module, extra = _LAUNCHER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"--launcher {name}: needs the {module} package, which is not installed; "
                f"pip install 'prunelab[{extra}]'"
            )


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
    """Hands runs to a launcher and records their outcome; the one writer of the index during a sweep.

    Each run becomes a :class:`~prunelab.experiments.launchers.RunJob` executed by
    :func:`~prunelab.experiments.launchers.execute_job`: in a persistent local worker process
    (``local``), as a Ray task (``ray``) or as a submitit job (``slurm``). Whatever executed it, the
    outcome is read back here from the run directory (``summary.json``, else the log's error line).

    Attributes:
        sweep_dir: the sweep directory (``runs/`` lives in it).
        index: the sweep's index.
        recipes: run id → the recipe file the run reads.
        python: the command that starts Python (local worker processes).
        data_dir: data root passed to every run, if any.
        env: the environment of local worker processes.
        say: where progress lines go.
        spec: the launcher and its options.
        lock: guards ``failed``, ``workers`` and ``say`` across the local launcher's threads.
        failed: run id → error message of each run that failed in this call.
        workers: the local worker processes started so far.
        idle: those not executing a run now (reused by the next run, also in the next stage).
        stopping: set once the sweep is interrupted; no new run starts after that.
    """

    sweep_dir: Path
    index: SweepIndex
    recipes: dict[str, Path]
    python: list[str]
    data_dir: str | None
    env: dict[str, str]
    say: Callable[[str], None]
    spec: LauncherSpec = field(default_factory=LauncherSpec)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: dict[str, str] = field(default_factory=dict)
    workers: list[LocalWorker] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    idle: list[LocalWorker] = field(default_factory=list)

    def job(self, run: RunSpec, threads: int) -> RunJob | None:
        """The job of ``run`` (resuming if an earlier attempt left files), or ``None`` if it cannot start.

        A run whose folder cannot be written (a file in its place, no permission) is failed here, and
        the sweep goes on.
        """
        run_dir = _run_dir(self.sweep_dir, run.id)
        resume = run_dir.exists()  # a previous attempt left files: continue from its stage checkpoints
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / LOG_NAME, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            self._fail(
                run, f"cannot write {run_dir} ({exc.strerror or exc}); move what is there away, then restart"
            )
            return None
        # Variables of ours travel with the job: a Ray or SLURM worker does not have the driver's environment.
        env = {key: value for key, value in self.env.items() if key.startswith("PRUNELAB_")}
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        return RunJob(
            run_id=run.id,
            recipe=str(self.recipes[run.id]),
            run_dir=str(run_dir),
            resume=resume,
            data_dir=None if self.data_dir is None else str(self.data_dir),
            threads=threads,
            cwd=os.getcwd(),
            env=env,
        )

    def _record(self, run: RunSpec, returncode: int, note: str | None = None) -> None:
        """Mark a run whose execution ended done, failed, or pending again (interrupted with the sweep).

        ``note`` says what the launcher saw (a dead worker, a failed cluster job); it is the error when
        the run's log has no ``prunelab: error:`` line of its own.
        """
        run_dir = _run_dir(self.sweep_dir, run.id)
        summary = _read_summary(run_dir)
        if self.stopping.is_set() and summary is None:
            self.index.mark_pending(run.id, "interrupted with the sweep; restart the sweep to resume it")
            return
        if summary is not None:  # summary.json is the source of truth, whatever the exit code says
            self.index.mark_done(run.id, summary)
            with self.lock:
                self.say(f"done    {run.id}: accuracy {summary.get('accuracy', float('nan')):.4f}")
            return
        text = (run_dir / LOG_NAME).read_text(errors="replace")
        last_attempt = text[text.rfind("$ ") :].split("\n", 1)[-1]
        error = _error_from_log(last_attempt, returncode)
        if note and "prunelab: error:" not in last_attempt:
            error = note
        self._fail(run, error)

    def _fail(self, run: RunSpec, error: str) -> None:
        """Record that ``run`` failed with ``error`` (one line); the other runs go on."""
        self.index.mark_failed(run.id, error)
        with self.lock:
            self.failed[run.id] = error
            self.say(f"FAILED  {run.id}: {error}")

    # -- local: persistent worker processes, one per slot -------------------------------------------------

    def _execute_local(self, run: RunSpec, threads: int) -> None:
        """Run ``run`` in an idle worker process (a new one if none is idle; a dead one is replaced)."""
        if self.stopping.is_set():
            return
        job = self.job(run, threads)
        if job is None:
            return
        with self.lock:
            worker = self.idle.pop() if self.idle else None
            if worker is None:
                worker = LocalWorker(self.python, self.env)
                self.workers.append(worker)
        try:
            self.index.mark_running(run.id, worker.start())
            returncode = worker.execute(job)
        finally:
            with self.lock:
                self.idle.append(worker)
        note = None
        if returncode < 0:
            note = f"its worker process died (signal {-returncode}); restart the sweep to run it again"
        self._record(run, returncode, note)

    def _run_local(self, todo: Sequence[RunSpec], workers: int, threads: int) -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._execute_local, run, threads) for run in todo]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                # The runs we started are stopped here and resume on restart.
                self.stopping.set()
                for future in futures:
                    future.cancel()
                with self.lock:
                    running = list(self.workers)
                for worker in running:
                    worker.stop()
                raise

    def close(self) -> None:
        """Let the local worker processes exit."""
        for worker in self.workers:
            worker.close()
        self.workers.clear()
        self.idle.clear()

    # -- ray and slurm: at most `workers` runs handed to the cluster at a time ----------------------------

    def _run_cluster(
        self, backend: _ClusterBackend, todo: Sequence[RunSpec], workers: int, threads: int
    ) -> None:
        queue = list(todo)
        flight: dict[Any, RunSpec] = {}
        try:
            while queue or flight:
                while queue and len(flight) < workers:
                    run = queue.pop(0)
                    job = self.job(run, run.resources.cpus or threads)
                    if job is None:
                        continue
                    handle = backend.submit(run, job)
                    self.index.mark_running(run.id, None)
                    flight[handle] = run
                for handle in backend.wait(list(flight)):
                    run = flight.pop(handle)
                    returncode, note = backend.outcome(handle)
                    self._record(run, returncode, note)
        except BaseException:
            self.stopping.set()
            for handle, run in flight.items():
                backend.cancel(handle)
                self.index.mark_pending(run.id, "interrupted with the sweep; restart the sweep to resume it")
            raise

    def run_all(
        self, todo: Sequence[RunSpec], workers: int, threads: int, backend: _ClusterBackend | None
    ) -> None:
        """Execute ``todo`` (``workers`` at a time); on any exception (Ctrl-C, SIGTERM) stop them, re-raise."""
        if backend is None:
            self._run_local(todo, workers, threads)
        else:
            self._run_cluster(backend, todo, workers, threads)


class _ClusterBackend:
    """A cluster that executes :class:`RunJob` s: submit, wait for some to end, read the outcome, cancel."""

    def submit(self, run: RunSpec, job: RunJob) -> Any:
        """Hand ``job`` to the cluster with ``run``'s resources; returns a handle."""
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> list[Any]:
        """Block until at least one of ``handles`` has ended; return those that have."""
        raise NotImplementedError

    def outcome(self, handle: Any) -> tuple[int, str | None]:
        """An ended job's exit code and, when the cluster (not the run) failed it, what it said."""
        raise NotImplementedError

    def cancel(self, handle: Any) -> None:
        """Stop a submitted job (its run resumes when the sweep restarts)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the cluster connection."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _RayBackend(_ClusterBackend):
    """Each run is a Ray task (``num_cpus``/``num_gpus`` from its resources) calling ``execute_job``."""

    def __init__(self, address: str | None) -> None:
        import logging

        import ray

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address is None and not os.environ.get("RAY_ADDRESS"):
                    # No cluster named: a Ray instance on this machine, for this sweep only.
                    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
                else:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or os.environ.get("RAY_ADDRESS")
                raise ConfigError(
                    f"--launcher ray: cannot connect to the Ray cluster at {where} ({_first_line(exc)}); "
                    "start it ('ray start --head') or fix launcher.address"
                ) from None
        self.remote = ray.remote(max_retries=0)(execute_job)

    def submit(self, run: RunSpec, job: RunJob) -> Any:
        """A Ray task for ``job``."""
        options = {"num_cpus": job.threads, "num_gpus": run.resources.gpus, "name": run.id}
        return self.remote.options(**options).remote(asdict(job))

    def wait(self, handles: list[Any]) -> list[Any]:
        """The tasks that have ended (at least one)."""
        ended, _ = self.ray.wait(handles, num_returns=1)
        return ended

    def outcome(self, handle: Any) -> tuple[int, str | None]:
        """The task's exit code, or -1 and Ray's error (a crashed worker, a lost node)."""
        try:
            return int(self.ray.get(handle)), None
        except Exception as exc:  # noqa: BLE001 -- Ray's errors have no common base we could name
            return -1, f"its Ray task failed ({_first_line(exc)}); restart the sweep to run it again"

    def cancel(self, handle: Any) -> None:
        """Cancel the task (killing its worker if it runs)."""
        with contextlib.suppress(Exception):
            self.ray.cancel(handle, force=True)

    def close(self) -> None:
        """Disconnect, if this sweep connected (a caller's own Ray session is left as it is)."""
        if self.started:
            self.ray.shutdown()


class _SlurmBackend(_ClusterBackend):
    """Each run is a submitit job (SLURM, or submitit's local executor) calling ``execute_job``.

    Job scripts and logs live in ``<sweep_dir>/slurm``; a job's resources are its run's
    (``cpus_per_task``, ``gpus_per_node``) and the launcher's ``timeout_min`` and ``partition``.
    """

    def __init__(self, spec: LauncherSpec, sweep_dir: Path) -> None:
        import submitit

        if spec.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError(
                "--launcher slurm: sbatch not found; run the sweep on a SLURM login node, or set "
                "'launcher: {name: slurm, cluster: local}' to use submitit's local executor"
            )
        self.spec = spec
        self.executor = submitit.AutoExecutor(folder=sweep_dir / "slurm", cluster=spec.cluster)
        self.poll_s = 0.5 if spec.cluster == "local" else 10.0

    def submit(self, run: RunSpec, job: RunJob) -> Any:
        """A submitit job for ``job``."""
        params: dict[str, Any] = {
            "name": run.id,
            "timeout_min": self.spec.timeout_min,
            "cpus_per_task": job.threads,
            "gpus_per_node": run.resources.gpus,
            "nodes": 1,
            "tasks_per_node": 1,
        }
        if self.spec.partition is not None:
            params["slurm_partition"] = self.spec.partition
        self.executor.update_parameters(**params)
        return self.executor.submit(execute_job, asdict(job))

    def wait(self, handles: list[Any]) -> list[Any]:
        """The jobs that have ended (polled: SLURM has no push notification)."""
        while True:
            ended = [handle for handle in handles if handle.done()]
            if ended:
                return ended
            time.sleep(self.poll_s)

    def outcome(self, handle: Any) -> tuple[int, str | None]:
        """The job's exit code, or -1 and submitit's error (a job killed, timed out or not started)."""
        try:
            return int(handle.result()), None
        except Exception as exc:  # noqa: BLE001 -- submitit raises several unrelated types here
            return -1, (
                f"its {self.spec.cluster} job {handle.job_id} failed ({_first_line(exc)}); logs in "
                f"{handle.paths.folder}"
            )

    def cancel(self, handle: Any) -> None:
        """Cancel the job."""
        with contextlib.suppress(Exception):
            handle.cancel(check=False)


def _backend(spec: LauncherSpec, sweep_dir: Path) -> _ClusterBackend | None:
    """The cluster backend of ``spec`` (``None`` for the local launcher)."""
    if spec.name == "ray":
        return _RayBackend(spec.address)
    if spec.name == "slurm":
        return _SlurmBackend(spec, sweep_dir)
    return None


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


def _unfinished(runs: Sequence[RunSpec], sweep_dir: Path, index: SweepIndex) -> list[RunSpec]:
    """The runs without a ``summary.json``; finished ones are marked done in the index.

    A run still executed by a live process of an earlier, killed sweep (it holds the run's lock) is
    waited for first.
    """
    todo: list[RunSpec] = []
    for run in runs:
        run_dir = _run_dir(sweep_dir, run.id)
        while run_is_executing(run_dir):
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
    launcher: str | None = None,
) -> SweepResult:
    """Run every run of ``spec`` that has not finished yet, ``workers`` at a time, stage after stage.

    Safe to call again after any interruption (``kill -9`` included), with any launcher: finished runs
    (those with a ``summary.json``) are skipped, unfinished ones continue with ``--resume``. A failing
    run is recorded with its error and the others go on.

    Args:
        spec: the parsed sweep.
        sweep_dir: where ``sweep.db``, ``recipes/`` and ``runs/`` live (created).
        workers: parallel runs (default: the sweep's ``workers``).
        data_dir: data root for every run (default: the sweep's ``data_dir``).
        echo: where progress lines go (``None`` for silence).
        python: the command that starts Python (default: this interpreter).
        stages: run only these stages (default: all, in order); every run is still validated and
            indexed. Two sweep processes may work on different stages of one sweep directory at once.
        launcher: ``local``, ``ray`` or ``slurm`` (default: the sweep's ``launcher``, else local);
            the launcher's options come from the sweep file.

    Returns:
        The counts and the errors of failed runs.

    Raises:
        ConfigError: a bad option or run (:func:`plan_sweep`; nothing is written then), a sweep directory
            that cannot be written, or a started run whose recipe changed; no run has started then.
    """
    say = echo or (lambda _: None)
    # Before anything is written:
    plan = plan_sweep(spec, sweep_dir, workers=workers, stages=stages, launcher=launcher)
    sweep_dir, runs, workers = plan.sweep_dir, plan.runs, plan.workers
    # A file, a folder under a file or a read-only folder fails here, after the runs validated.
    ensure_writable_dir(sweep_dir, "sweep directory", "choose another --out")
    local = plan.launcher.name == "local"
    # Threads per run unless its stage's resources name its cpus: on a cluster each run asks for them.
    threads = spec.threads or (max(1, (os.cpu_count() or 1) // workers) if local else 1)
    index, recipes = _register_runs(spec, runs, sweep_dir)
    launcher = _Launcher(
        sweep_dir=sweep_dir,
        index=index,
        recipes=recipes,
        python=list(python or [sys.executable]),
        data_dir=data_dir if data_dir is not None else spec.data_dir,
        env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        say=say,
        spec=plan.launcher,
    )
    skipped = executed = 0
    with contextlib.ExitStack() as stack, _sigterm_as_interrupt():
        stack.callback(launcher.close)
        backend = None
        for stage in spec.stages:
            if stage.name not in plan.stages:
                continue
            stack.enter_context(_lock_stage(sweep_dir, stage.name))  # closing the file releases its lock
            in_stage = [r for r in runs if r.stage == stage.name]
            todo = _unfinished(in_stage, sweep_dir, index)
            skipped += len(in_stage) - len(todo)
            cpus = stage.resources.cpus or threads
            say(
                f"stage {stage.name}: {len(todo)} run(s) to do, {len(in_stage) - len(todo)} already done; "
                f"{plan.launcher.name} launcher, {workers} at a time x {cpus} cpu(s)"
                + (f" {stage.resources.gpus} gpu(s)" if stage.resources.gpus else "")
            )
            if todo:
                if backend is None and not local:
                    backend = _backend(plan.launcher, sweep_dir)  # connected once, on first need
                    stack.callback(backend.close)
                executed += len(todo)
                launcher.run_all(todo, workers, cpus, backend)
    ids = {run.id for run in runs}  # the index may also hold runs of other sweep files
    done = sum(1 for row in index.rows() if row["id"] in ids and row["status"] == "done")
    return SweepResult(total=len(runs), done=done, skipped=skipped, executed=executed, failed=launcher.failed)
