"""Cost of NN-relief's statistics vs a plain forward pass over the same calibration samples.

Measures, side by side in one process and interleaved repeat by repeat (so that load from other
processes hits both alike), on a CIFAR-sized VGG-16 (BN, 32×32 inputs) on the CPU:

- ``forward``: ``model(x)`` over ``--samples`` samples in batches of ``--batch-size`` (eval, no grad);
- ``relief_paper``: the same passes with :class:`prunelab.stats.activations.ReliefStatistics` hooks
  collecting the paper's statistics (mean |input| of every layer + per-sample conv norms);
- ``relief_code``: the official code's statistics (mean |input| only), plus computing the importances
  of every layer from them (:func:`prunelab.criteria.relief.relief_importance`);
- with ``--previous REV``, ``relief_paper_previous``: the paper variant with
  ``src/prunelab/stats/activations.py`` as it was at git revision ``REV`` (loaded from ``git show`` into a
  temporary module), so that a rewrite is timed against its predecessor in the same run.

Each call is timed twice: wall clock (:func:`prunelab.metrics.latency.interleaved_times`) and the CPU
time of this thread (``time.thread_time``), which a loaded machine (other processes on the same cores)
distorts much less. The 1-minute load average is recorded before and after. Prints a JSON record
(medians over ``--repeats``) and rewrites it to ``--out`` after every repeat, so that a run cut short
still leaves its finished repeats. Target: the paper variant costs at most 3× the plain forward pass.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/relief_cost.py --samples 1000 --repeats 2 --threads 1 \
        --previous bf4c319 --out benchmarks/results/relief_cost.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from _machine import cpu_name, cpu_timed  # benchmarks/_machine.py, beside this script
from torch import nn

from prunelab._io import atomic_write_json
from prunelab.criteria.relief import relief_importance
from prunelab.metrics.latency import interleaved_times
from prunelab.models import build_model
from prunelab.stats.activations import collect

REPO = Path(__file__).resolve().parents[1]


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def _previous_statistics(revision: str) -> ModuleType:
    """``prunelab.stats.activations`` as it was at git ``revision``, imported under a private name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:src/prunelab/stats/activations.py"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    name = "_relief_activations_previous"
    spec = importlib.util.spec_from_file_location(name, handle.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    os.unlink(handle.name)
    return module


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and return its record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--previous", default=None, help="git revision of activations.py to time as well")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, input_shape=(3, 32, 32), width=args.width).eval()
    x = torch.randn(args.samples, 3, 32, 32)
    batches = [(chunk, torch.zeros(len(chunk))) for chunk in x.split(args.batch_size)]
    layers = _layers(model)

    def forward() -> None:
        with torch.no_grad():
            for xb, _ in batches:
                model(xb)

    def relief_paper() -> None:
        stats = collect(model, batches, layers, per_sample_norms=True)
        for name, layer in layers.items():
            relief_importance(layer, stats[name], "paper")

    def relief_code() -> None:
        stats = collect(model, batches, layers, per_sample_norms=False)
        for name, layer in layers.items():
            relief_importance(layer, stats[name], "code")

    cases: dict[str, Callable[[], None]] = {
        "forward": forward,
        "relief_paper": relief_paper,
        "relief_code": relief_code,
    }
    if args.previous:
        previous = _previous_statistics(args.previous)

        def relief_paper_previous() -> None:
            stats = previous.collect(model, batches, layers, per_sample_norms=True)
            for name, layer in layers.items():
                relief_importance(layer, stats[name], "paper")

        cases["relief_paper_previous"] = relief_paper_previous
    # Warm-up on one batch (allocator, oneDNN primitive caches) without paying a full repeat.
    full = batches
    batches = full[:1]
    for fn in cases.values():
        fn()
    batches = full
    load_before = os.getloadavg()[0]
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    timed = [cpu_timed(fn, cpu[name], scale=1.0) for name, fn in cases.items()]
    record: dict[str, object] = {}
    for _ in range(args.repeats):
        # One interleaved round per repeat, so that every finished repeat is written out.
        for name, ms in zip(cases, interleaved_times(timed, warmup=0, repeats=1), strict=True):
            wall[name].append(ms[0] / 1000.0)
        record = _record(args, wall, cpu, load_before)
        if args.out is not None:
            atomic_write_json(args.out, record)
    print(json.dumps(record, indent=2))
    return record


def _record(
    args: argparse.Namespace, wall: dict[str, list[float]], cpu: dict[str, list[float]], load_before: float
) -> dict[str, object]:
    """The JSON record of the repeats measured so far (medians, every repeat, ratios to the forward)."""
    med_wall = {name: statistics.median(t) for name, t in wall.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    return {
        "model": args.model,
        "width": args.width,
        "input": [3, 32, 32],
        "samples": args.samples,
        "batch_size": args.batch_size,
        "repeats_done": len(wall["forward"]),
        "previous_revision": args.previous,
        "seconds_median": {k: round(v, 4) for k, v in med_wall.items()},
        "seconds_all": {k: [round(t, 4) for t in v] for k, v in wall.items()},
        "cpu_seconds_median": {k: round(v, 4) for k, v in med_cpu.items()},
        "cpu_seconds_all": {k: [round(t, 4) for t in v] for k, v in cpu.items()},
        "ratio_vs_forward_wall": {k: round(v / med_wall["forward"], 3) for k, v in med_wall.items()},
        "ratio_vs_forward_cpu": {k: round(v / med_cpu["forward"], 3) for k, v in med_cpu.items()},
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


if __name__ == "__main__":
    main()
