"""Where a sweep's runs execute: persistent local worker processes, a Ray cluster, or SLURM (submitit).

Every launcher executes a run with the same function, :func:`execute_job`: it runs ``prunelab run
RECIPE --out RUN_DIR --quiet [--resume]`` *in the calling process*, with that process's standard output
and error sent to ``RUN_DIR/sweep_output.txt``, and returns the command's exit code. Calling it in a
process that has already imported torch is what makes a sweep of tiny runs cheap (issue 15): the local
launcher keeps one worker process per slot (:class:`LocalWorker`, started with ``python -m
prunelab.experiments.launchers``) that runs one run after another; a Ray worker does the same for Ray
tasks; a SLURM job is a fresh process per run.

Each run stays isolated: its recipe sets its seed, it writes only its own run directory, any error is
caught and becomes its exit code and log text, and a worker that dies (a crash, ``kill -9``) fails only
the run it was executing and is replaced for the next one. :func:`execute_job` holds an exclusive lock
on ``RUN_DIR/.sweep-run.lock`` while the run executes, so a run left executing by a killed sweep driver
is waited for (:func:`run_is_executing`) instead of being raced by the restarted sweep.

The driver (:mod:`prunelab.experiments.sweep`) decides what to run and records every outcome in the
index; nothing here touches ``sweep.db``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["LOCK_NAME", "LOG_NAME", "LocalWorker", "RunJob", "execute_job", "run_is_executing", "worker_main"]

#: The log of a run's attempts, in its run directory (one ``$ prunelab run ...`` line per attempt).
LOG_NAME = "sweep_output.txt"
#: The lock a run holds while it executes, in its run directory.
LOCK_NAME = ".sweep-run.lock"


@dataclass(frozen=True)
class RunJob:
    """Everything :func:`execute_job` needs to run one run; plain data, so it travels as JSON or a pickle.

    Attributes:
        run_id: the run's id.
        recipe: the recipe file the sweep wrote for it.
        run_dir: its run directory (``--out``).
        resume: continue from an earlier attempt's stage checkpoints (``--resume``).
        data_dir: ``--data-dir``, if any.
        threads: torch / OpenMP threads for the run.
        cwd: the working directory the run starts in (the sweep driver's, for relative paths in recipes).
        env: environment variables set for the run (e.g. ``PRUNELAB_DATA`` from the driver).
    """

    run_id: str
    recipe: str
    run_dir: str
    resume: bool
    data_dir: str | None
    threads: int
    cwd: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        """The ``prunelab`` arguments of this run."""
        argv = ["run", self.recipe, "--out", self.run_dir, "--quiet"]
        if self.resume:
            argv.append("--resume")
        if self.data_dir is not None:
            argv += ["--data-dir", self.data_dir]
        return argv


def _try_lock(handle: TextIO, blocking: bool) -> bool:
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def run_is_executing(run_dir: Path) -> bool:
    """Whether some process (e.g. a worker of a killed sweep) is executing the run in ``run_dir`` now."""
    path = run_dir / LOCK_NAME
    if not path.is_file():
        return False
    try:
        with open(path, "a") as handle:
            return not _try_lock(handle, blocking=False)  # closing the file releases a lock we took
    except OSError:
        return False  # an unreadable lock file: no process of ours holds it


@contextlib.contextmanager
def _output_to(log: TextIO) -> Iterator[None]:
    """Send this process's file descriptors 1 and 2 (Python's and C code's output) to ``log``, then back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def _run_context(job: RunJob) -> Iterator[None]:
    """The job's working directory, environment and thread count while it runs; restored afterwards."""
    import torch

    old_cwd, old_threads = os.getcwd(), torch.get_num_threads()
    old_env = {key: os.environ.get(key) for key in job.env}
    try:
        os.environ.update(job.env)
        with contextlib.suppress(OSError):  # a driver folder this node lacks: stay where we are
            os.chdir(job.cwd)
        torch.set_num_threads(job.threads)
        yield
    finally:
        torch.set_num_threads(old_threads)
        os.chdir(old_cwd)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_job(job: RunJob | dict[str, Any]) -> int:
    """Run one sweep run in this process (``prunelab run``), its output in its log; return the exit code.

    The same function for every launcher. Errors never escape: a ``prunelab`` error is its one-line
    ``prunelab: error:`` message in the log and its exit code, anything else its traceback and exit
    code 1, so the caller can run the next run in the same process. The run's lock is held throughout;
    a run another process is still executing is waited for, and ``prunelab run`` then finds it finished
    (its ``summary.json``) and keeps it as it is.
    """
    if isinstance(job, dict):
        job = RunJob(**job)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a") as lock, open(run_dir / LOG_NAME, "a", encoding="utf-8") as log:
        _try_lock(lock, blocking=True)
        log.write(f"$ prunelab {' '.join(job.argv())}\n")
        log.flush()
        with _output_to(log), _run_context(job):
            return _run(job)


def _run(job: RunJob) -> int:
    """``prunelab run RECIPE --out DIR --quiet [--resume]`` of ``job`` in this process, without torchrun's
    process group (a sweep run is one process): its result line, or its error as the command prints it."""
    from prunelab.errors import error_line
    from prunelab.experiments.runner import result_line, run_or_keep
    from prunelab.experiments.schema import load_recipe

    try:
        summary, finished = run_or_keep(
            load_recipe(job.recipe),
            job.run_dir,
            resume=job.resume,
            data_dir=job.data_dir,
            progress=False,
            echo=None,
        )
        print(result_line(job.run_dir, summary, finished))
        return 0
    except Exception as exc:  # noqa: BLE001 -- any error in a run fails that run, not the worker
        user = error_line(exc)
        if user is None:
            traceback.print_exc()
            return 1
        print(user[0], file=sys.stderr)  # the line the sweep reports as the run's error
        return user[1]


class LocalWorker:
    """One persistent worker process on this machine that executes runs one after another.

    It imports torch once; each :meth:`execute` sends it a job and waits for the exit code. When the
    process has died (a crash, a signal), the run it was executing gets the negative signal number or
    exit status, and the next :meth:`execute` starts a new process.
    """

    def __init__(self, python: list[str], env: dict[str, str]) -> None:
        self.python, self.env = python, env
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the live worker process, if any."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> int:
        """Make sure a live worker process exists; returns its process id."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [*self.python, "-m", "prunelab.experiments.launchers"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env,
                text=True,
            )
        return self.proc.pid

    def execute(self, job: RunJob) -> int:
        """Run ``job`` in the worker process; the run's exit code (negative: the worker died)."""
        self.start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(asdict(job)) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            reply = ""
        if reply:
            return int(json.loads(reply)["returncode"])
        code = proc.wait()  # it died with the run: the next execute starts another
        self.proc = None
        return code if code != 0 else 1

    def stop(self) -> None:
        """Terminate the worker process (the run it executes resumes when the sweep restarts)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def close(self) -> None:
        """Let an idle worker process exit (end of its input) and wait for it."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def worker_main() -> None:
    """The loop of a :class:`LocalWorker` process: one JSON job per input line, one exit code per output line.

    Its standard output is the reply channel, so everything else printed here goes to standard error
    (and, while a run executes, to the run's log).
    """
    import torch  # noqa: F401 -- once, before the first run: this is the cost the worker saves

    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        if not line.strip():
            continue
        code = execute_job(json.loads(line))
        channel.write(json.dumps({"returncode": code}) + "\n")
        channel.flush()


if __name__ == "__main__":
    worker_main()
