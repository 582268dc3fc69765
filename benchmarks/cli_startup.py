"""Start-up cost of the ``prunelab`` command: each subcommand that computes nothing, beside ``import torch``.

Every command runs in a fresh interpreter (``python -m prunelab ...``), the commands interleaved in
rotating order, ``--repeats`` times. For each, the median wall time and the median CPU time of the child
process (user + system, from ``resource.getrusage``: the waits of a shared machine left out) are printed
and written with the environment to ``benchmarks/results/cli_startup.json``.

With ``--before SRC`` the same commands also run against another checkout's ``src`` folder (for example
a ``git worktree`` of an earlier commit), interleaved with the current ones, and the ratios of the
current to the earlier medians are recorded beside them.

Usage::

    .venv/bin/python benchmarks/cli_startup.py --repeats 5
    git worktree add /tmp/before <commit> && \\
        .venv/bin/python benchmarks/cli_startup.py --repeats 5 --before /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cli_startup.json"

#: name -> arguments after ``python``; the recipes are shipped ones (a mobilenet recipe and a 68-run sweep).
COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
    "prunelab --help": ["-m", "prunelab", "--help"],
    "prunelab list methods": ["-m", "prunelab", "list", "methods"],
    "prunelab validate recipe": ["-m", "prunelab", "validate", "recipes/pretraining/cpu_protocol_dense.yaml"],
    "prunelab validate sweep (68 runs)": [
        "-m",
        "prunelab",
        "validate",
        "recipes/pretraining/cpu_protocol.sweep.yaml",
    ],
}


def timed(args: list[str], src: Path | None) -> tuple[float, float]:
    """Wall and child CPU seconds of one ``python ARGS`` run (``src`` first on the path when given)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    """Run the comparison and write the record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="an earlier checkout's src folder, timed alongside")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_before = os.getloadavg()
    versions: dict[str, Path | None] = {"now": None}
    if args.before is not None:
        versions["before"] = args.before.resolve()
    jobs = [(version, name) for name in COMMANDS for version in versions]
    times: dict[str, dict[str, list[list[float]]]] = {v: {n: [] for n in COMMANDS} for v in versions}
    for r in range(args.repeats):
        shift = r % len(jobs)
        for version, name in jobs[shift:] + jobs[:shift]:  # rotating order: drift hits all alike
            times[version][name].append(list(timed(COMMANDS[name], versions[version])))

    medians = {
        v: {
            n: {"wall": statistics.median(t[0] for t in ts), "cpu": statistics.median(t[1] for t in ts)}
            for n, ts in by_name.items()
        }
        for v, by_name in times.items()
    }
    record = {
        "benchmark": "cli_startup",
        "command": " ".join(["benchmarks/cli_startup.py", *sys.argv[1:]]),
        "repeats": args.repeats,
        "commands": {n: " ".join(["python", *a]) for n, a in COMMANDS.items()},
        "median_seconds": medians,
        "times": times,
        "machine": machine_record(load_before),
    }
    if "before" in medians:
        record["ratio_now_to_before"] = {
            n: {k: medians["now"][n][k] / medians["before"][n][k] for k in ("wall", "cpu")} for n in COMMANDS
        }
    for n in COMMANDS:
        line = "  ".join(
            f"{v}: {m[n]['wall']:5.2f} s wall {m[n]['cpu']:5.2f} s cpu" for v, m in medians.items()
        )
        print(f"{n:36s} {line}")
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
