"""What a sweep costs over running the same runs in one process, and a kill -9 check of a Ray sweep.

``overhead`` (issue 15): a sweep of tiny runs (small_cnn on digits, 1 epoch + 1 fine-tuning epoch) is
timed three ways, interleaved, each in a fresh Python
process so that each pays one interpreter start:

- ``sweep``: ``prunelab sweep`` (local launcher: persistent worker processes, ``--workers``);
- ``subprocess``: the former launcher, one ``prunelab run`` subprocess per run, ``--workers`` at a time;
- ``one_process``: the same runs one after another in one process (the launchers' per-run function).

Timed with :func:`prunelab.metrics.latency.interleaved_times` (each round runs the three in turn). The
ratios sweep / one_process and subprocess / one_process are the medians' ratios. Everything runs with
one torch / OpenMP thread per run.

``ray-kill`` (issue 16): a sweep of ``--runs`` runs goes to a two-CPU Ray cluster started here; its
driver is killed with SIGKILL mid-way and restarted; the record says how many runs were lost or
recomputed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_overhead.py overhead --runs 6 --workers 2 --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_overhead.py ray-kill --runs 20

Both write their section of ``benchmarks/results/sweep_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _machine import cpu_name  # benchmarks/_machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from sweeps import BASE  # the sweep tests' tiny recipe (tests/sweeps.py): the same runs

RESULT = ROOT / "benchmarks" / "results" / "sweep_overhead.json"
ENV_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV = {**os.environ, **ENV_THREADS}

#: The same runs one after another in one process, through the launchers' per-run function.
ONE_PROCESS = """
import sys, yaml
from prunelab.experiments.launchers import RunJob, execute_job
for recipe, run_dir in yaml.safe_load(open(sys.argv[1])):
    assert execute_job(RunJob("r", recipe, run_dir, False, None, 1, ".")) == 0
"""

#: The former launcher: one ``prunelab run`` subprocess per run, N at a time.
SUBPROCESS = """
import subprocess, sys, yaml
from concurrent.futures import ThreadPoolExecutor
jobs = yaml.safe_load(open(sys.argv[1]))
def one(job):
    cmd = [sys.executable, "-m", "prunelab", "run", job[0], "--out", job[1], "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
with ThreadPoolExecutor(int(sys.argv[2])) as pool:
    list(pool.map(one, jobs))
"""


def _sweep_file(folder: Path, runs: int, workers: int, launcher: Any = "local") -> Path:
    raw = {
        "name": "bench",
        "base": BASE,
        "workers": workers,
        "threads": 1,
        "resources": {"cpus": 1},
        "launcher": launcher,
        "grid": {"seed": list(range(runs))},
    }
    path = folder / "bench.sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _recipes(folder: Path, runs: int) -> list[str]:
    paths = []
    for seed in range(runs):
        path = folder / f"r{seed}.yaml"
        path.write_text(yaml.safe_dump({**BASE, "name": f"r{seed}", "seed": seed}))
        paths.append(str(path))
    return paths


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def overhead(runs: int, workers: int, repeats: int) -> dict[str, Any]:
    """Time sweep, subprocess-per-run and one-process, interleaved; return the record."""
    from prunelab.metrics.latency import interleaved_times

    names = ("sweep", "subprocess", "one_process")
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="sweep_overhead_") as tmp:
        root = Path(tmp)
        sweep = _sweep_file(root, runs, workers)
        recipes = _recipes(root, runs)
        attempt = {name: 0 for name in names}

        def timed(name: str) -> Any:
            def call() -> None:
                attempt[name] += 1  # every call writes a fresh folder: no run is ever found finished
                out = root / f"{name}-{attempt[name]}"
                out.mkdir()
                jobs = root / f"{name}-{attempt[name]}.yaml"
                jobs.write_text(yaml.safe_dump([[r, str(out / f"run{i}")] for i, r in enumerate(recipes)]))
                if name == "sweep":
                    command = [
                        sys.executable,
                        "-m",
                        "prunelab",
                        "sweep",
                        str(sweep),
                        "--out",
                        str(out),
                        "--quiet",
                    ]
                elif name == "subprocess":
                    command = [sys.executable, "-c", SUBPROCESS, str(jobs), str(workers)]
                else:
                    command = [sys.executable, "-c", ONE_PROCESS, str(jobs)]
                subprocess.run(command, check=True, env=ENV, stdout=subprocess.DEVNULL, cwd=ROOT)
                print(f"{name:12s} #{attempt[name]} done", flush=True)

            return call

        # Interleaved: every round runs the three once each, so a change of machine load hits all three.
        measured = interleaved_times([timed(name) for name in names], warmup=0, repeats=repeats)
    times = {
        name: [round(t / 1000.0, 2) for t in values] for name, values in zip(names, measured, strict=True)
    }
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "runs": runs,
        "workers": workers,
        "repeats": repeats,
        "recipe": BASE,
        "times_s": times,
        "median_s": median,
        "ratio_sweep_over_one_process": median["sweep"] / median["one_process"],
        "ratio_subprocess_over_one_process": median["subprocess"] / median["one_process"],
        "loadavg_before": load_before,
        "loadavg_after": _load(),
    }


def ray_kill(runs: int) -> dict[str, Any]:
    """A ``runs``-run sweep on a local two-CPU Ray cluster, its driver kill -9'd mid-way, then resumed."""
    import ray

    from prunelab.experiments.sweep_index import SweepIndex

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        with tempfile.TemporaryDirectory(prefix="sweep_ray_kill_") as tmp:
            root = Path(tmp)
            sweep = _sweep_file(root, runs, 2, {"name": "ray", "address": address})
            out = root / "out"
            command = [sys.executable, "-m", "prunelab", "sweep", str(sweep), "--out", str(out), "--quiet"]
            start = time.perf_counter()
            env = {**os.environ, **ENV_THREADS}  # after ray.init: it adds the cluster's auth settings
            proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, env=env)
            # Killed once half the runs are finished and another one is training.
            while proc.poll() is None:
                done = {p.parent for p in out.glob("runs/*/summary.json")}
                training = [p for p in out.glob("runs/*/metrics.jsonl") if p.parent not in done]
                if len(done) >= runs // 2 and training:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the sweep ended before it was killed"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = time.perf_counter() - start
            before = {
                p.parent.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("runs/*/summary.json")
            }
            # Counted now, not after the resume (then every run has its metrics file).
            interrupted = len(list(out.glob("runs/*/metrics.jsonl"))) - len(before)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
            after = {
                p.parent.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("runs/*/summary.json")
            }
            rows = SweepIndex(out / "sweep.db").rows()
            recomputed = [r for r in before if after.get(r) != before[r]]
            attempts = {
                r: (out / "runs" / r / "sweep_output.txt").read_text().count("$ prunelab run") for r in before
            }
            return {
                "runs": runs,
                "killed_after_s": round(killed_at, 1),
                "finished_before_kill": len(before),
                "interrupted_mid_run": interrupted,
                "summaries_after_resume": len(after),
                "index_done": sum(r["status"] == "done" for r in rows),
                "lost": runs - len(after),
                "recomputed": len(recomputed) + sum(n != 1 for n in attempts.values()),
                "total_wall_s": round(time.perf_counter() - start, 1),
                "loadavg_after": _load(),
            }
    finally:
        ray.shutdown()


def main() -> None:
    """Run the chosen measurement and merge its record into the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("overhead", "ray-kill"))
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "overhead":
        record = overhead(args.runs, args.workers, args.repeats)
    else:
        record = ray_kill(args.runs)
    record.update(cpu=cpu_name(), cores=os.cpu_count(), python=sys.version.split()[0])
    print(json.dumps(record, indent=2, default=str))
    data = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    data[args.what.replace("-", "_")] = record
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(data, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
