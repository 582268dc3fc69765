"""Cost of a network-slimming / proximal-network-slimming training step relative to a plain one.

Three variants of the same training step (forward, cross-entropy, backward, hook edits, SGD step, in
the order of :func:`prunelab.training.train`) on ``vgg19`` (width 0.25, CIFAR shape, batch 64) on the
CPU: ``plain`` (no hook), ``slimming`` (:class:`~prunelab.regularizers.L1SubgradientHook` in
``after_backward``) and ``proximal`` (:class:`~prunelab.regularizers.ProximalSlimmingHook` in
``after_step``). Each variant has its own copy of the weights and optimizer and sees the same batch.
After a warm-up the steps are timed in rotating order (plain, slimming, proximal, plain, ...), so a
load spike on the shared machine hits all of them, and the median of the per-repeat ratios to the
plain step next to it is reported, together with median wall and process-CPU times. Results go to
``benchmarks/results/slimming_overhead.json``.

Usage::

    .venv/bin/python benchmarks/slimming_overhead.py --repeats 30
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab._io import atomic_write_json
from prunelab.models import build_model
from prunelab.regularizers import L1SubgradientHook, ProximalSlimmingHook


def _step(model: nn.Module, opt: torch.optim.Optimizer, hook: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if hook is not None:
        hook.after_backward(model)
    opt.step()
    if hook is not None:
        hook.after_step(model, opt.param_groups[0]["lr"])


def main() -> None:
    """Run the benchmark and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg19")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "slimming_overhead.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    base = build_model(args.model, width=args.width).train()
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    variants: dict[str, tuple[nn.Module, torch.optim.Optimizer, Any]] = {}
    for name in ("plain", "slimming", "proximal"):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        hook: Any = None
        if name == "slimming":
            hook = L1SubgradientHook(model, lam=1e-4)
        elif name == "proximal":
            hook = ProximalSlimmingHook(model, lam=0.0045, beta=100.0)
        variants[name] = (model, opt, hook)
    for _ in range(args.warmup):
        for model, opt, hook in variants.values():
            _step(model, opt, hook, x, y)
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        order = names[r % 3 :] + names[: r % 3]  # rotate, so no variant always runs right after another
        for name in order:
            model, opt, hook = variants[name]
            c0, t0 = time.process_time(), time.perf_counter()
            _step(model, opt, hook, x, y)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    result: dict[str, Any] = {
        "model": args.model,
        "width": args.width,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        "median_wall_ms": {k: 1000 * statistics.median(v) for k, v in wall.items()},
        "median_cpu_ms": {k: 1000 * statistics.median(v) for k, v in cpu.items()},
        "ratio_to_plain_median": {
            k: statistics.median(a / b for a, b in zip(wall[k], wall["plain"], strict=True)) for k in names
        },
        "cpu_ratio_to_plain": {k: statistics.median(cpu[k]) / statistics.median(cpu["plain"]) for k in names},
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
