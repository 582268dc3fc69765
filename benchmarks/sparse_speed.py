"""Measured speed-up of sparse execution (``prunelab.metrics.sparse_exec.to_sparse``) beside the MACs ratio.

For each model, sparsity and batch size, the model is pruned with prunelab's global magnitude pruning
(``prunelab.prune``, on its initial weights: the timing does not depend on the values, only on where the
zeros are) and converted with ``to_sparse`` at that batch size (each layer timed dense vs CSR on its real
input, kept sparse only where it is ≥ 1.1× faster). Three forms are then timed side by side in one
process, one thread, interleaved (dense, chosen, all-sparse, dense, ...; in three blocks, each starting
with another form), and medians are compared:

- ``dense``: the baked model (plain ``nn.Linear`` / ``nn.Conv2d`` with zeros);
- ``chosen``: ``to_sparse``'s per-layer choice — the figure to quote;
- ``all_sparse``: every linear / conv layer forced sparse, to show what the measurement saves.

Beside them: dense MACs / effective MACs (``prunelab.metrics``), the work a zero-skipping kernel could
save. The figures are printed and written to ``benchmarks/results/sparse_speed.json`` with the
environment. On a shared machine only the ratios mean anything.

Usage::

    .venv/bin/python benchmarks/sparse_speed.py                       # everything (a few minutes)
    .venv/bin/python benchmarks/sparse_speed.py --only lenet300_100 --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_name, cpu_timed  # benchmarks/_machine.py, beside this script
from torch import nn

import prunelab
from prunelab._io import atomic_write_json
from prunelab.core.masking import bake
from prunelab.metrics import dense_macs, effective_macs
from prunelab.metrics.latency import interleaved_times
from prunelab.metrics.sparse_exec import to_sparse
from prunelab.models import build_model

RESULTS = Path(__file__).resolve().parent / "results" / "sparse_speed.json"


def mlp20m(num_classes: int = 10, input_shape: tuple[int, ...] = (1024,)) -> nn.Module:
    """A 1024-4096-4096-10 ReLU MLP: 21.0 M weights, the large-MLP case of issue 15."""
    return nn.Sequential(
        nn.Linear(input_shape[0], 4096),
        nn.ReLU(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


#: name → (builder, input shape, sparsities, batch sizes, timed repeats).
CASES: dict[str, tuple[Any, tuple[int, ...], tuple[float, ...], tuple[int, ...], int]] = {
    "lenet300_100": (
        lambda: build_model("lenet300_100", num_classes=10, input_shape=(1, 28, 28)),
        (1, 28, 28), (0.90, 0.95, 0.98), (1, 64, 256), 40,
    ),
    "mlp20m": (mlp20m, (1024,), (0.90, 0.98), (1, 64, 256), 8),
    "lenet5": (
        lambda: build_model("lenet5", num_classes=10, input_shape=(1, 28, 28)),
        (1, 28, 28), (0.90, 0.98), (1, 64), 20,
    ),
    "vgg11_w0.25": (
        lambda: build_model("vgg11", num_classes=10, input_shape=(3, 32, 32), width=0.25),
        (3, 32, 32), (0.90, 0.98), (1, 64), 15,
    ),
}  # fmt: skip


def _thread_cpu_times(fns: list[Any], warmup: int, repeats: int) -> list[list[float]]:
    """Like :func:`interleaved_times`, but each call's CPU time of this thread (ms).

    With one intra-op thread every kernel runs in the calling thread, so this leaves out the time the
    thread waits while other processes hold the 2 cores; wall-clock times of long calls (the dense
    batch-256 products) are inflated by that wait far more than short ones.
    """
    times: list[list[float]] = [[] for _ in fns]
    interleaved_times([cpu_timed(fn, t) for fn, t in zip(fns, times, strict=True)], warmup, repeats)
    return [t[warmup:] for t in times]


def _rotated_medians(fns: list[Any], repeats: int, timer: Any) -> list[float]:
    """Median per function over three interleaved blocks, each starting with another function (so no
    form always runs right after the dense one, whose large weights have just filled the caches)."""
    times: list[list[float]] = [[] for _ in fns]
    for shift in range(len(fns)):
        order = [(k + shift) % len(fns) for k in range(len(fns))]
        for k, t in zip(order, timer([fns[k] for k in order], 2, max(1, repeats // 3)), strict=True):
            times[k] += t
    return [statistics.median(t) for t in times]


@torch.no_grad()
def run_case(name: str, sparsity: float, batch: int, repeats: int) -> dict[str, Any]:
    """Prune, convert and time one (model, sparsity, batch) case; returns its JSON row."""
    build, shape, *_ = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    prunelab.prune(model, sparsity)
    layer_repeats = max(5, repeats // 2)
    chosen, report = to_sparse(model, shape, batch, repeats=layer_repeats)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        all_sparse, _ = to_sparse(model, shape, batch, force=dict.fromkeys(layers, "sparse"), repeats=1)
    except prunelab.errors.PrunelabError as err:  # a layer without a sparse form (none in these models)
        all_sparse, _ = chosen, print(f"  all-sparse not possible: {err}")
    dense = bake(copy.deepcopy(model)).eval()
    x = torch.randn(batch, *shape)
    fns = [lambda: dense(x), lambda: chosen(x), lambda: all_sparse(x)]
    d, c, a = _rotated_medians(fns, repeats, interleaved_times)
    cd, cc, ca = _rotated_medians(fns, repeats, _thread_cpu_times)
    macs, eff = dense_macs(model, shape, batch), effective_macs(model, shape, batch)
    return {
        "model": name,
        "sparsity": sparsity,
        "batch": batch,
        "dense_ms": d,
        "chosen_ms": c,
        "all_sparse_ms": a,
        "speedup_chosen": d / c,
        "speedup_all_sparse": d / a,
        "cpu_dense_ms": cd,
        "cpu_chosen_ms": cc,
        "cpu_all_sparse_ms": ca,
        "cpu_speedup_chosen": cd / cc,
        "cpu_speedup_all_sparse": cd / ca,
        "macs_dense": macs,
        "macs_effective": eff,
        "macs_ratio": macs / eff,
        "sparse_layers": report.sparse_layers,
        "max_abs_diff": report.max_abs_diff,
        "layers": report.to_dict()["layers"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print a table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (default: per case)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"{'model':>13} {'sparsity':>8} {'batch':>5} {'dense ms':>9} {'chosen':>7} {'all-sp.':>7} "
          f"{'cpu:ch.':>7} {'cpu:all':>7} {'MACs ratio':>10}  sparse layers")  # fmt: skip
    for name in args.only or list(CASES):
        _, _, sparsities, batches, repeats = CASES[name]
        for sparsity in sparsities:
            for batch in batches:
                row = run_case(name, sparsity, batch, args.repeats or repeats)
                rows.append(row)
                print(f"{name:>13} {sparsity:>8.2f} {batch:>5} {row['dense_ms']:>9.3f} "
                      f"{row['speedup_chosen']:>6.2f}x {row['speedup_all_sparse']:>6.2f}x "
                      f"{row['cpu_speedup_chosen']:>6.2f}x {row['cpu_speedup_all_sparse']:>6.2f}x "
                      f"{row['macs_ratio']:>9.1f}x  {','.join(row['sparse_layers']) or '-'}",
                      flush=True)  # fmt: skip
    record = {
        "command": " ".join(["benchmarks/sparse_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "mkl": torch.backends.mkl.is_available(),
            "load_avg_1min": os.getloadavg()[0],
            "note": "shared, loaded 2-core machine: only ratios measured side by side count",
        },
        "rows": rows,
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
