"""Cluster sweeps for real: a local Ray cluster and submitit's local executor, each killed with -9 and resumed.

The Ray cluster is started by this module (``ray.init`` in the test process, two CPUs) and the sweep
driver, a separate ``prunelab sweep --launcher ray`` process, connects to it by address, so killing the
driver leaves the cluster up, as on a real cluster. Each kill test checks that no run finished before the
kill is recomputed (its ``summary.json`` untouched, one attempt in its log) and that none is lost (every
run done in the index, with a summary). The local launcher's own kill -9 test is in ``test_sweep.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sweeps import BASE, kill_mid_run

from prunelab.errors import ConfigError
from prunelab.experiments.launchers import LOG_NAME, LocalWorker, RunJob
from prunelab.experiments.sweep_index import SweepIndex
from prunelab.experiments.sweep_spec import Resources, expand_sweep, sweep_from_dict

RUNS = 6


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """The address of a real two-CPU Ray cluster on this machine, shut down after the module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _write_sweep(tmp_path: Path, launcher: dict[str, Any]) -> Path:
    sweep = tmp_path / "c.sweep.yaml"
    raw = {
        "name": "c",
        "base": BASE,
        "workers": 2,
        "threads": 1,
        "resources": {"cpus": 1, "gpus": 0},
        "launcher": launcher,
        "grid": {"seed": list(range(RUNS))},
    }
    sweep.write_text(yaml.safe_dump(raw))
    return sweep


def _kill_mid_sweep_then_resume(tmp_path: Path, launcher: dict[str, Any]) -> Path:
    """Start the sweep, ``kill -9`` its driver's process group mid-way, restart it; check nothing is lost.

    Returns:
        The sweep directory.
    """
    sweep = _write_sweep(tmp_path, launcher)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "prunelab", "sweep", str(sweep), "--out", str(out), "--quiet"]
    kill_mid_run(command, out, 400)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert 1 <= len(finished) < RUNS

    subprocess.run(command, check=True, timeout=900, stdout=subprocess.DEVNULL)
    summaries = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert len(summaries) == RUNS  # 0 runs lost
    for run_id, mtime in finished.items():  # 0 runs recomputed
        assert summaries[run_id] == mtime, f"{run_id} was recomputed"
        assert (out / "runs" / run_id / LOG_NAME).read_text().count("$ prunelab run") == 1
    rows = SweepIndex(out / "sweep.db").rows()
    assert [r["status"] for r in rows] == ["done"] * RUNS
    for row in rows:
        summary = json.loads((out / "runs" / row["id"] / "summary.json").read_text())
        assert row["accuracy"] == summary["accuracy"] and row["error"] is None
        if row["id"] in finished:
            assert row["attempts"] == 1
    # The same run ids as the local launcher would use.
    assert {r["id"] for r in rows} == {
        r.id for r in expand_sweep(sweep_from_dict(yaml.safe_load(sweep.read_text())), out)
    }
    return out


def test_ray_sweep_is_killed_and_resumed_without_loss(tmp_path: Path, ray_address: str) -> None:
    _kill_mid_sweep_then_resume(tmp_path, {"name": "ray", "address": ray_address})


def test_submitit_sweep_is_killed_and_resumed_without_loss(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    out = _kill_mid_sweep_then_resume(tmp_path, {"name": "slurm", "cluster": "local", "timeout_min": 30})
    # Job scripts and logs stay inside the sweep directory.
    assert list((out / "slurm").glob("*_log.out"))


def test_a_dead_local_worker_fails_only_its_run_and_is_replaced(tmp_path: Path) -> None:
    """kill -9 a worker process mid-run: that run reports the signal; the next job gets a new worker."""
    spec = sweep_from_dict({"name": "w", "base": BASE, "grid": {"seed": [0]}})
    run = expand_sweep(spec, tmp_path)[0]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(run.recipe))
    run_dir = tmp_path / "runs" / run.id

    def job(resume: bool) -> RunJob:
        return RunJob(run.id, str(recipe), str(run_dir), resume, None, 1, str(tmp_path), {})

    worker = LocalWorker([sys.executable], {**os.environ, "OMP_NUM_THREADS": "1"})
    first = worker.start()

    def kill_when_training() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
            time.sleep(0.02)
        os.kill(first, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_training)
    killer.start()
    try:
        assert worker.execute(job(False)) == -signal.SIGKILL
        killer.join()
        assert not (run_dir / "summary.json").exists()
        assert worker.execute(job(True)) == 0  # a new worker process, resuming the run
        assert worker.pid is not None and worker.pid != first
        assert (run_dir / "summary.json").is_file()
        assert (run_dir / LOG_NAME).read_text().count("--resume") == 1
    finally:
        worker.close()


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"launcher": "kubernetes"}, "sweep.launcher.name: unknown launcher 'kubernetes'"),
        ({"launcher": {"name": "slurm", "partiton": "gpu"}}, "sweep.launcher.partiton: unknown sweep key"),
        ({"launcher": {"name": "slurm", "cluster": "aws"}}, "sweep.launcher.cluster: 'aws'"),
        (
            {"launcher": {"name": "slurm", "timeout_min": 0}},
            "sweep.launcher.timeout_min: 0 must be an integer",
        ),
        ({"resources": {"cpus": 0}}, "sweep.resources.cpus: 0 must be an integer >= 1"),
        ({"resources": {"gpus": -1}}, "sweep.resources.gpus: -1 must be an integer >= 0"),
        ({"resources": {"cpu": 2}}, "sweep.resources.cpu: unknown sweep key"),
        ({"resources": 2}, "sweep.resources: expected a mapping"),
    ],
)
def test_bad_launcher_or_resources_is_one_line(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        sweep_from_dict({"name": "b", "base": BASE, "grid": {"seed": [0]}, **extra})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_stage_resources_override_the_sweep_default(tmp_path: Path) -> None:
    raw = {
        "name": "s",
        "resources": {"cpus": 2},
        "stages": [
            {"name": "a", "base": BASE, "grid": {"seed": [0]}},
            {"name": "b", "base": BASE, "grid": {"seed": [1]}, "resources": {"cpus": 1, "gpus": 1}},
        ],
    }
    runs = expand_sweep(sweep_from_dict(raw), tmp_path)
    assert [r.resources for r in runs] == [Resources(cpus=2, gpus=0), Resources(cpus=1, gpus=1)]
