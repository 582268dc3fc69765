"""Cost of NN-relief's statistics vs a plain forward pass over the same calibration samples.

Measures, side by side in one process and interleaved repeat by repeat (so that load from other
processes hits both alike), on a CIFAR-sized VGG-16 (BN, 32×32 inputs) on the CPU:

- ``forward``: ``model(x)`` over ``--samples`` samples in batches of ``--batch-size`` (eval, no grad);
- ``relief_paper``: the same passes with :class:`prunelab.stats.activations.ReliefStatistics` hooks
  collecting the paper's statistics (mean |input| of every layer + per-sample conv norms);
- ``relief_code``: the official code's statistics (mean |input| only), plus computing the importances
  of every layer from them (:func:`prunelab.criteria.relief.relief_importance`).

Prints a JSON record (medians over ``--repeats``) and writes it to ``--out`` if given. Target: the
paper variant costs at most 3× the plain forward pass.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/relief_cost.py --samples 1000 --repeats 3 \
        --out benchmarks/results/relief_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from prunelab._io import atomic_write_json
from prunelab.criteria.relief import relief_importance
from prunelab.models import build_model
from prunelab.stats.activations import collect


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and return its record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
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

    cases = {"forward": forward, "relief_paper": relief_paper, "relief_code": relief_code}
    # Warm-up on one batch (allocator, oneDNN primitive caches) without paying a full repeat.
    full = batches
    batches = full[:1]
    for fn in cases.values():
        fn()
    batches = full
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    record: dict[str, object] = {
        "model": args.model,
        "width": args.width,
        "input": [3, 32, 32],
        "samples": args.samples,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seconds_median": {k: round(v, 4) for k, v in median.items()},
        "seconds_all": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "ratio_paper_vs_forward": round(median["relief_paper"] / median["forward"], 3),
        "ratio_code_vs_forward": round(median["relief_code"] / median["forward"], 3),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(record, indent=2))
    if args.out is not None:
        atomic_write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
