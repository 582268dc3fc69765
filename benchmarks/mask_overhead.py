"""Time of a masked training step relative to a dense one.

A pruned weight is a parametrization ``W = W₀ ⊙ M`` (:mod:`prunelab.core.masking`), so every forward
pays one element-wise product per masked tensor and every backward one more (``∂L/∂W₀ = ∂L/∂W ⊙ M``).
This script measures what that costs in a full training step (forward + backward + SGD step) on the
CPU, for a conv-heavy network (``vgg16``, width 0.25, CIFAR shape) and a small, weight-heavy one
(``lenet5``, MNIST shape), with 90 % global magnitude masks on every conv/linear weight.

Three variants start from the same weights and see the same batch: ``dense`` (no parametrization),
``masked`` (prunelab's mask, which casts the boolean mask to the weight's dtype once and reuses it) and
``masked_cast`` (the earlier implementation, which cast the mask on every forward; kept here as the
"before" of that change). After a warm-up, their steps are timed in rotating order, so that drift in
the machine's load hits all of them alike, and medians are compared: of the wall-clock step times,
of the per-repeat ratios to the dense step next to it, and of the process CPU time (less sensitive to
other processes on a shared machine). The figures are printed as a table and written to
``benchmarks/results/mask_overhead.json``.

Usage::

    .venv/bin/python benchmarks/mask_overhead.py                  # both models, default repeats
    .venv/bin/python benchmarks/mask_overhead.py --models lenet5 --repeats 100
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _machine import machine_record  # benchmarks/_machine.py, beside this script
from torch import nn

import prunelab
from prunelab._io import atomic_write_json
from prunelab.core.masking import Mask
from prunelab.models import build_model

#: name → (build kwargs, input shape (C, H, W)).
MODELS: dict[str, tuple[dict[str, Any], tuple[int, int, int]]] = {
    "vgg16": ({"width": 0.25}, (3, 32, 32)),
    "lenet5": ({}, (1, 28, 28)),
}

RESULTS = Path(__file__).resolve().parent / "results" / "mask_overhead.json"


class CastEveryStepMask(Mask):
    """The mask as first written: the boolean mask is cast to the weight's dtype on every forward."""

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """Return ``original ⊙ mask``, casting the mask anew."""
        return original * self.mask.to(original.dtype)


def _make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    # The optimizer is built after pruning, as prunelab requires; the settings are typical CIFAR ones.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    return step


VARIANTS = ("dense", "masked", "masked_cast")


def measure(name: str, *, batch: int, sparsity: float, warmup: int, repeats: int) -> dict[str, Any]:
    """Median step times of the dense and the masked copies of model ``name``, measured side by side."""
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    dense = build_model(name, num_classes=10, input_shape=shape, **kwargs).train()
    masked = copy.deepcopy(dense)
    pruner = prunelab.prune(masked, sparsity)
    masked_cast = copy.deepcopy(masked)
    for module in masked_cast.modules():
        if type(module) is Mask:
            module.__class__ = CastEveryStepMask
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    models = {"dense": dense, "masked": masked, "masked_cast": masked_cast}
    steps = {kind: _make_step(models[kind], x, y) for kind in VARIANTS}
    for _ in range(warmup):
        for kind in VARIANTS:
            steps[kind]()
    wall: dict[str, list[float]] = {kind: [] for kind in VARIANTS}
    cpu: dict[str, list[float]] = {kind: [] for kind in VARIANTS}
    for r in range(repeats):
        shift = r % len(VARIANTS)
        for kind in VARIANTS[shift:] + VARIANTS[:shift]:
            w, c = steps[kind]()
            wall[kind].append(w)
            cpu[kind].append(c)
    row: dict[str, Any] = {
        "model": name,
        "model_kwargs": kwargs,
        "input_shape": list(shape),
        "batch_size": batch,
        "targeted_sparsity": round(pruner.sparsity(), 6),
        "masked_tensors": len(pruner.targets),
        "warmup": warmup,
        "repeats": repeats,
    }
    for kind in VARIANTS:
        row[f"{kind}_ms"] = round(1e3 * statistics.median(wall[kind]), 3)
        row[f"{kind}_cpu_ms"] = round(1e3 * statistics.median(cpu[kind]), 3)
    for kind in VARIANTS[1:]:
        row[f"{kind}_ratio"] = round(row[f"{kind}_ms"] / row["dense_ms"], 4)
        paired = [m / d for m, d in zip(wall[kind], wall["dense"])]
        row[f"{kind}_ratio_paired"] = round(statistics.median(paired), 4)
        row[f"{kind}_ratio_cpu"] = round(row[f"{kind}_cpu_ms"] / row["dense_cpu_ms"], 4)
    row["wall_ms_all"] = {kind: [round(1e3 * t, 3) for t in wall[kind]] for kind in VARIANTS}
    return row


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
    load_before = os.getloadavg()
    rows = [
        measure(name, batch=args.batch, sparsity=args.sparsity, warmup=args.warmup, repeats=args.repeats)
        for name in args.models
    ]
    record = {
        "benchmark": "mask_overhead",
        "command": "python benchmarks/mask_overhead.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_record(load_before),
        "results": rows,
    }
    print(f"median of {args.repeats} steps, {torch.get_num_threads()} threads; ratios: wall / paired / cpu")
    print(
        f"{'model':<8} {'dense ms':>9} {'masked ms':>10} {'masked ratio':>22} {'cast-every-step ratio':>22}"
    )
    for row in rows:
        ratios = [
            f"{row[f'{k}_ratio']:.3f} / {row[f'{k}_ratio_paired']:.3f} / {row[f'{k}_ratio_cpu']:.3f}"
            for k in ("masked", "masked_cast")
        ]
        print(
            f"{row['model']:<8} {row['dense_ms']:>9.2f} {row['masked_ms']:>10.2f} {ratios[0]:>22} {ratios[1]:>22}"
        )
    atomic_write_json(args.out, record)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
