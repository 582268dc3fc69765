"""Channel surgery cost: prunelab against Torch-Pruning doing the same removal, side by side in one process.

For each zoo model (CIFAR input 3×32×32, seeded untrained weights) 50 % of the prunable channels are
selected once by global L1-filter ranking (prunelab's ``l1_filter`` criterion and ``select_channels``,
outside the timings). Then, interleaved (every variant once per repetition, the order reversed every
other one, medians compared), with the garbage of the previous calls collected before each call,
untimed (Torch-Pruning's dependency graphs are reference cycles: without it the cyclic collector frees
them inside whichever call comes next, which scattered single calls by up to 3× in earlier runs):

* ``surgery``: prunelab's channel graph plus :func:`prunelab.surgery.compact` (a copy of the model, the
  removal, the equivalence check of the compacted model against the masked reference on seeded inputs);
* ``prune_channels``: the whole user call :func:`prunelab.prune_channels` (graph, scores, selection,
  surgery, parameter and MAC counts, prunability report) — the same channels;
* ``torch_pruning``: ``copy.deepcopy`` of the model (prunelab leaves the original untouched, so both
  sides copy once), ``tp.DependencyGraph().build_dependency`` and ``get_pruning_group(...).prune()`` for
  every group with the same channel indices. No verification, no counting: the lower bound of the work.

Timed in the same rounds: a batch-1 forward pass of the full model and of the compacted one
(Torch-Pruning's time plus these two is the floor of a removal that keeps the equivalence check with a
full-width reference pass: ``floor_ratio``), and the two copies on their own, ``copy.deepcopy`` (what
Torch-Pruning's side uses) and :func:`prunelab.core.modules.copy_model` (what ``compact`` uses), so that
``ratio_to_tp_without_copies`` compares the removal work alone. Every time is recorded twice, wall clock
and the calling thread's CPU time (``cpu``: one thread does all of the work, so this leaves out the
waits of a shared machine).

The results must be identical: the same per-layer widths, parameters and MACs, the same state_dict
tensors (bit for bit) and outputs. Writes ``benchmarks/results/surgery_speed.json`` (with the environment).

Seeded untrained networks have BN shifts β = 0, so ``compact`` finds nothing to fold and needs one
verification pass less (its γ-masked pass is the reference). ``--bn-shift`` also times each model with
seeded non-zero β (as after training): ``surgery`` then runs its general path (γ-masked pass with the
shift folding, reference pass, compacted pass) against ``torch_pruning`` on the same model. Its results
differ from Torch-Pruning's by design there (the folded shifts become consumer biases), so only the
widths are compared, and the surgery's own equivalence check must pass.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/surgery_speed.py --repeats 7 --bn-shift
"""

from __future__ import annotations

import argparse
import copy
import gc
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
from _machine import cpu_name  # benchmarks/_machine.py, beside this script
from torch import nn

import prunelab
from prunelab._io import atomic_write_json
from prunelab.channels import prune_channels
from prunelab.core.criterion import score_groups
from prunelab.core.selectors import select_channels
from prunelab.criteria import build_criterion
from prunelab.metrics import count_parameters, dense_macs
from prunelab.models import build_model
from prunelab.surgery import ChannelGraph, ShortcutPruner, channel_mapping_types, compact

try:
    from prunelab.core.modules import copy_model
except ImportError:  # timing an older checkout (PYTHONPATH=<it>/src): the copy compact used then
    copy_model = copy.deepcopy

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


def _with_bn_shift(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with seeded non-zero BN shifts β (of both signs, as after training)."""
    shifted = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in shifted.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
    return shifted


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


def measure(name: str, repeats: int, bn_shift: bool = False) -> dict[str, Any]:
    """Time the variants on zoo model ``name``, interleaved; check the results are identical.

    With ``bn_shift`` the model gets seeded non-zero BN shifts and only ``surgery`` and ``torch_pruning``
    are timed (the same channels as without).
    """
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=SHAPE).eval()
    keep = _selection(model)  # L1-filter scores: conv weights only, the same with or without shifts
    removed = {n: torch.nonzero(~m).flatten().tolist() for n, m in keep.items() if not bool(m.all())}
    if bn_shift:
        model = _with_bn_shift(model)
    variants = {
        "surgery": lambda: _prunelab_surgery(model, keep),
        "prune_channels": lambda: _prunelab_call(model),
        "torch_pruning": lambda: _torch_pruning(model, removed),
    }
    if bn_shift:
        del variants["prune_channels"]
    results = {k: fn() for k, fn in variants.items()}  # warm-up, and the results compared below
    # The floor of a verified removal: Torch-Pruning's work plus the two passes the check cannot do
    # without, the full-width reference and the compacted model, at batch 1 (timed in the same rounds).
    x1 = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    small = results["torch_pruning"]
    variants["forward_full"] = torch.no_grad()(lambda: model(x1))
    variants["forward_compacted"] = torch.no_grad()(lambda: small(x1))
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(1))
    if bn_shift:
        report = compact(model, keep, SHAPE)[1]
        checks: dict[str, Any] = {
            "surgery_vs_tp": {
                "same_widths": _widths(results["surgery"]) == _widths(results["torch_pruning"])
            },
            "surgery_max_abs_diff": report.max_abs_diff,
            "surgery_shift_max_abs_diff": report.shift_max_abs_diff,
            "folds": [len(report.folds_exact), len(report.folds_inexact)],
        }
    else:
        checks = {
            "surgery_vs_tp": _same(results["surgery"], results["torch_pruning"], x),
            "prune_channels_vs_tp": _same(results["prune_channels"], results["torch_pruning"], x),
        }
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    variants["deepcopy"] = lambda: copy.deepcopy(model)  # Torch-Pruning's side copies with it
    variants["copy_model"] = lambda: copy_model(model)  # prunelab's side (inside compact)
    times["deepcopy"], times["copy_model"], cpu["deepcopy"], cpu["copy_model"] = [], [], [], []
    order = list(variants)
    load_before = list(os.getloadavg())
    for rep in range(repeats):
        # Every variant once per repetition, the order reversed every other one. Before each call the
        # previous calls' garbage is collected, untimed: Torch-Pruning's graphs are reference cycles, which
        # Python's cyclic collector would otherwise free in the middle of whichever call comes next.
        keys = order if rep % 2 == 0 else order[::-1]
        for k in keys:
            gc.collect()
            wall, thread = time.perf_counter(), time.thread_time()
            variants[k]()
            cpu[k].append(time.thread_time() - thread)
            times[k].append(time.perf_counter() - wall)
        print(f"{name} rep {rep}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    mine = [k for k in variants if k in ("surgery", "prune_channels")]

    def ratios(clock: dict[str, list[float]]) -> dict[str, Any]:
        med = {k: statistics.median(v) for k, v in clock.items()}
        tp_t = clock["torch_pruning"]
        return {
            "median_s": med,
            "ratio_to_tp": {k: med[k] / med["torch_pruning"] for k in mine},
            "floor_ratio": (med["torch_pruning"] + med["forward_full"] + med["forward_compacted"])
            / med["torch_pruning"],
            "paired_ratio_median": {
                k: statistics.median(a / b for a, b in zip(clock[k], tp_t, strict=True)) for k in mine
            },
            # Both sides without their copy of the model (prunelab's copy_model, Torch-Pruning's deepcopy):
            # the removal work alone.
            "ratio_to_tp_without_copies": {
                k: (med[k] - med["copy_model"]) / (med["torch_pruning"] - med["deepcopy"]) for k in mine
            },
        }

    return {
        "model": name + ("+bn_shift" if bn_shift else ""),
        "channels_removed": [sum(len(v) for v in removed.values()), sum(m.numel() for m in keep.values())],
        **ratios(times),
        # The calling thread's CPU time of the same calls (one thread: all of the work), which leaves
        # out the waits of a shared machine that the wall clock counts.
        "cpu": ratios(cpu),
        "deepcopy_s": statistics.median(times["deepcopy"]),
        "copy_model_s": statistics.median(times["copy_model"]),
        "load_average": {"before": load_before, "after": list(os.getloadavg())},
        "times_s": times,
        "cpu_times_s": cpu,
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
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "HEAD"),
        # The checkout whose prunelab was timed (another one with PYTHONPATH=<checkout>/src).
        "prunelab_commit": _git("-C", str(Path(prunelab.__file__).parent), "rev-parse", "HEAD"),
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
    parser.add_argument(
        "--bn-shift", action="store_true", help="also time each model with non-zero BN shifts"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "surgery_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    record: dict[str, Any] = {
        "benchmark": "surgery_speed",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/surgery_speed.py "
        + f"--models {' '.join(args.models)} --repeats {args.repeats}"
        + (" --bn-shift" if args.bn_shift else ""),
        "amount": AMOUNT,
        "input_shape": list(SHAPE),
        "environment": _environment(),
        "results": [],
    }
    for name in args.models:
        for bn_shift in (False, True) if args.bn_shift else (False,):
            result = measure(name, args.repeats, bn_shift)
            record["results"].append(result)
            print(json.dumps({k: v for k, v in result.items() if not k.endswith("times_s")}), flush=True)
    record["load_average_after"] = list(os.getloadavg())
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
