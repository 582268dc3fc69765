"""Time of a masked training step relative to a dense one.

A pruned weight is a parametrization ``W = W₀ ⊙ M`` (:mod:`prunelab.core.masking`), so every forward
pays one element-wise product per masked tensor and every backward one more (``∂L/∂W₀ = ∂L/∂W ⊙ M``).
This script measures what that costs in a full training step (forward + backward + SGD step) on the
CPU, for a conv-heavy network (``vgg16``, width 0.25, CIFAR shape) and a small, weight-heavy one
(``lenet5``, MNIST shape), with 90 % global magnitude masks on every conv/linear weight.

Method: the dense and the masked model start from the same weights and see the same batch; after a
warm-up, their steps are timed alternately (dense, masked, masked, dense, ...) so that drift in the
machine's load hits both alike, and the medians are compared. The figures are printed as a table and
written to ``benchmarks/results/mask_overhead.json``.

Usage::

    .venv/bin/python benchmarks/mask_overhead.py                  # both models, default repeats
    .venv/bin/python benchmarks/mask_overhead.py --models lenet5 --repeats 100
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunelab
from prunelab._io import atomic_write_json
from prunelab.models import build_model

#: name → (build kwargs, input shape (C, H, W)).
MODELS: dict[str, tuple[dict[str, Any], tuple[int, int, int]]] = {
    "vgg16": ({"width": 0.25}, (3, 32, 32)),
    "lenet5": ({}, (1, 28, 28)),
}

RESULTS = Path(__file__).resolve().parent / "results" / "mask_overhead.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    # The optimizer is built after pruning, as prunelab requires; the settings are typical CIFAR ones.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def measure(name: str, *, batch: int, sparsity: float, warmup: int, repeats: int) -> dict[str, Any]:
    """Median step times of the dense and the masked copy of model ``name``, measured side by side."""
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    dense = build_model(name, num_classes=10, input_shape=shape, **kwargs).train()
    masked = copy.deepcopy(dense)
    pruner = prunelab.prune(masked, sparsity)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    steps = {"dense": _make_step(dense, x, y), "masked": _make_step(masked, x, y)}
    for _ in range(warmup):
        steps["dense"]()
        steps["masked"]()
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    for r in range(repeats):
        order = ("dense", "masked") if r % 2 == 0 else ("masked", "dense")
        for kind in order:
            times[kind].append(steps[kind]())
    dense_ms = 1e3 * statistics.median(times["dense"])
    masked_ms = 1e3 * statistics.median(times["masked"])
    return {
        "model": name,
        "model_kwargs": kwargs,
        "input_shape": list(shape),
        "batch_size": batch,
        "targeted_sparsity": pruner.sparsity(),
        "masked_tensors": len(pruner.targets),
        "warmup": warmup,
        "repeats": repeats,
        "dense_ms_median": round(dense_ms, 3),
        "masked_ms_median": round(masked_ms, 3),
        "ratio": round(masked_ms / dense_ms, 4),
        "dense_ms_all": [round(1e3 * t, 3) for t in times["dense"]],
        "masked_ms_all": [round(1e3 * t, 3) for t in times["masked"]],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per model and kind")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        measure(name, batch=args.batch, sparsity=args.sparsity, warmup=args.warmup, repeats=args.repeats)
        for name in args.models
    ]
    record = {
        "benchmark": "mask_overhead",
        "command": "python benchmarks/mask_overhead.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "machine": {
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": rows,
    }
    print(f"{'model':<8} {'batch':>5} {'dense ms':>9} {'masked ms':>10} {'ratio':>6}  (median of {args.repeats})")
    for row in rows:
        print(
            f"{row['model']:<8} {row['batch_size']:>5} {row['dense_ms_median']:>9.2f} "
            f"{row['masked_ms_median']:>10.2f} {row['ratio']:>6.3f}"
        )
    atomic_write_json(args.out, record)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
