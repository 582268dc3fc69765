"""Channel surgery cost: prunelab against Torch-Pruning doing the same removal, side by side in one process.

For each zoo model (CIFAR input 3×32×32, seeded untrained weights) 50 % of the prunable channels are
selected once by global L1-filter ranking (prunelab's ``l1_filter`` criterion and ``select_channels``,
outside the timings). Then, interleaved (the order alternates every repetition, medians compared):

* ``surgery``: prunelab's channel graph plus :func:`prunelab.surgery.compact` (a deep copy, the removal,
  the equivalence check against the masked reference on a seeded batch of 8);
* ``prune_channels``: the whole user call :func:`prunelab.prune_channels` (graph, scores, selection,
  surgery, parameter and MAC counts, prunability report) — the same channels;
* ``torch_pruning``: a deep copy of the model (prunelab leaves the original untouched, so both sides
  copy once), ``tp.DependencyGraph().build_dependency`` and ``get_pruning_group(...).prune()`` for every
  group with the same channel indices. No verification, no counting: the lower bound of the work.

The results must be identical: the same per-layer widths, parameters and MACs, the same state_dict
tensors (bit for bit) and outputs. The shared machine is loaded, so only the ratios count. Writes
``benchmarks/results/surgery_speed.json`` (with the environment).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/surgery_speed.py --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunelab._io import atomic_write_json
from prunelab.channels import prune_channels
from prunelab.core.criterion import score_groups
from prunelab.core.selectors import select_channels
from prunelab.criteria import build_criterion
from prunelab.metrics import count_parameters, dense_macs
from prunelab.models import build_model
from prunelab.surgery import ChannelGraph, ShortcutPruner, channel_mapping_types, compact

SHAPE = (3, 32, 32)
AMOUNT = 0.5


def _selection(model: nn.Module) -> dict[str, torch.Tensor]:
    """The keep masks ``prune_channels(model, SHAPE, AMOUNT)`` chooses (global L1-filter ranking)."""
    graph = ChannelGraph(model, SHAPE)
    crit = build_criterion("l1_filter", "group")
    scores = score_groups(crit, graph.groups, model, {"model": model, "seed": 0, "num_classes": 10})
    return select_channels(
        scores, AMOUNT, scope="global", min_keep=1, divisions={g.name: 1 for g in graph.groups}
    )


def _prunelab_surgery(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    graph = ChannelGraph(model, SHAPE)
    return compact(model, keep, SHAPE, graph=graph)[0]


def _prunelab_call(model: nn.Module) -> nn.Module:
    return prune_channels(model, SHAPE, AMOUNT, criterion="l1_filter")[0]


def _torch_pruning(model: nn.Module, removed: dict[str, list[int]]) -> nn.Module:
    work = copy.deepcopy(model).eval()
    pruners = {t: ShortcutPruner() for t in channel_mapping_types(work)}  # resnet's option-A shortcut
    dg = tp.DependencyGraph().build_dependency(
        work, example_inputs=torch.zeros(1, *SHAPE), customized_pruners=pruners, verbose=False
    )
    for name, idxs in removed.items():
        dg.get_pruning_group(work.get_submodule(name), tp.prune_conv_out_channels, idxs).prune()
    return work


def _widths(model: nn.Module) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[n] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            out[n] = [m.in_features, m.out_features]
        elif isinstance(m, nn.BatchNorm2d):
            out[n] = [m.num_features]
    return out


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """How the prunelab and Torch-Pruning results compare (widths, params, MACs, tensors, outputs)."""
    sa, sb = a.state_dict(), b.state_dict()
    with torch.no_grad():
        diff = float((a.eval()(x) - b.eval()(x)).abs().max())
    return {
        "same_widths": _widths(a) == _widths(b),
        "same_state_dict": sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa),
        "params": [count_parameters(a).total, count_parameters(b).total],
        "macs": [dense_macs(a, SHAPE), dense_macs(b, SHAPE)],
        "output_max_abs_diff": diff,
    }


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(name: str, repeats: int) -> dict[str, Any]:
    """Time the three variants on zoo model ``name``, interleaved; check the results are identical."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=SHAPE).eval()
    keep = _selection(model)
    removed = {n: torch.nonzero(~m).flatten().tolist() for n, m in keep.items() if not bool(m.all())}
    variants = {
        "surgery": lambda: _prunelab_surgery(model, keep),
        "prune_channels": lambda: _prunelab_call(model),
        "torch_pruning": lambda: _torch_pruning(model, removed),
    }
    results = {k: fn() for k, fn in variants.items()}  # warm-up, and the results compared below
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(1))
    checks = {
        "surgery_vs_tp": _same(results["surgery"], results["torch_pruning"], x),
        "prune_channels_vs_tp": _same(results["prune_channels"], results["torch_pruning"], x),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for rep in range(repeats):
        for k in order if rep % 2 == 0 else order[::-1]:
            times[k].append(_timed(variants[k])[0])
        print(f"{name} rep {rep}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    tp_t = times["torch_pruning"]
    copy_s = statistics.median(_timed(lambda: copy.deepcopy(model))[0] for _ in range(5))
    return {
        "model": name,
        "channels_removed": [sum(len(v) for v in removed.values()), sum(m.numel() for m in keep.values())],
        "median_s": med,
        "ratio_to_tp": {k: med[k] / med["torch_pruning"] for k in ("surgery", "prune_channels")},
        "paired_ratio_median": {
            k: statistics.median(a / b for a, b in zip(times[k], tp_t, strict=True))
            for k in ("surgery", "prune_channels")
        },
        "deepcopy_s": copy_s,
        "times_s": times,
        "checks": checks,
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def _environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        # Uncommitted edits of the measured code, if any (other work shares the tree).
        "git_dirty": _git("status", "--porcelain", "--", "src/prunelab").splitlines(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": list(os.getloadavg()),
    }


def main() -> None:
    """Measure every model and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56", "vgg19"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "surgery_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    record: dict[str, Any] = {
        "benchmark": "surgery_speed",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/surgery_speed.py "
        + f"--models {' '.join(args.models)} --repeats {args.repeats}",
        "amount": AMOUNT,
        "input_shape": list(SHAPE),
        "environment": _environment(),
        "results": [],
    }
    for name in args.models:
        result = measure(name, args.repeats)
        record["results"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "times_s"}), flush=True)
    record["load_average_after"] = list(os.getloadavg())
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
