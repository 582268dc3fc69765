"""Training-step time of interspace pruning (IP) vs standard pruning (SP), measured side by side.

Both models are the same network pruned to the same sparsity (masks on the weights for SP, on the
filter-basis coefficients for IP); one step = forward + cross-entropy + backward + SGD with momentum.
The two are timed in alternating blocks in one process, so machine load hits both alike; the median
over blocks is reported. IP's extra work is the weight reconstruction ``W = (Λ ⊙ M) Bᵀ`` and its
backward, a small matmul per layer per step. Target: IP ≤ 1.5 × SP.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/interspace_step.py [--threads 1] [--blocks 7] [--steps 5]

Prints a table and writes ``benchmarks/results/interspace_step.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prunelab._io import atomic_write_json
from prunelab.models import build_model
from prunelab.pruning.pruner import Pruner

CASES = [
    ("vgg11", {"width": 0.25}, (3, 32, 32), 128),
    ("resnet20", {}, (3, 32, 32), 128),
]


def _setup(name: str, kwargs: dict, shape: tuple[int, ...], reparam: str | None, device: str) -> tuple:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=shape, **kwargs).to(device)
    pruner = Pruner(model, reparam=reparam, reparam_kwargs={"init": "dct"} if reparam else None).prepare()
    pruner.step(0.95)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model, opt


def _time_steps(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    """Measure, print and record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "interspace_step.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for name, kwargs, shape, batch in CASES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=g).to(args.device)
        y = torch.randint(0, 10, (batch,), generator=g).to(args.device)
        modes = {
            "SP": _setup(name, kwargs, shape, None, args.device),
            "IP": _setup(name, kwargs, shape, "interspace", args.device),
        }
        times: dict[str, list[float]] = {"SP": [], "IP": []}
        for mode, (model, opt) in modes.items():
            _time_steps(model, opt, x, y, 2)  # warm-up
        for _ in range(args.blocks):
            for mode, (model, opt) in modes.items():
                times[mode].append(_time_steps(model, opt, x, y, args.steps))
        sp, ip = statistics.median(times["SP"]), statistics.median(times["IP"])
        row = {
            "model": name,
            "kwargs": kwargs,
            "input": list(shape),
            "batch": batch,
            "sparsity": 0.95,
            "sp_ms": round(1000 * sp, 2),
            "ip_ms": round(1000 * ip, 2),
            "ratio": round(ip / sp, 3),
        }
        results.append(row)
        print(
            f"{name:10s} batch {batch}: SP {row['sp_ms']:8.2f} ms/step  IP {row['ip_ms']:8.2f} ms/step  "
            f"IP/SP {row['ratio']:.3f}  (target <= 1.5)",
            flush=True,
        )
    record = {
        "benchmark": "interspace_step",
        "threads": args.threads,
        "device": args.device,
        "blocks": args.blocks,
        "steps_per_block": args.steps,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
