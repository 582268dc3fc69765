"""Time of a global magnitude ``Pruner.step`` next to its limit, concat + ``torch.kthvalue`` + mask.

One unstructured global magnitude step has to read every weight, rank the magnitudes and write a mask;
the least any implementation can do is the *limit*::

    flat = torch.cat([w.abs().reshape(-1) for w in weights])
    threshold = torch.kthvalue(flat, k).values
    masks = (flat > threshold).split(sizes)

This script times :meth:`prunelab.pruning.pruner.Pruner.step` (element granularity, global scope,
magnitude, ``min_keep=1``: the defaults of ``prunelab.prune``) against that limit on networks from 0.27 M
to 31 M targeted weights: ``lenet300_100``, ``resnet56``, ``vgg16`` and ``vgg19`` at width 1.25 (CIFAR
shapes). Two cases: a first step from dense to 90 %, and a second round 50 % → 80 % (masks already
present). ``selector`` times the registered ``topk`` selector alone on the same unit scores, to show
how much of the step is the selection. Every repetition starts from the same state (masks and weights
restored, untimed); the variants run in rotating order, one thread, and medians are compared. The
record counts the entries where the step's masks and the limit's differ, beside the entries tied at
the threshold: the limit drops every tied entry, the step exactly ``k`` (ties broken in index order),
so the two agree wherever nothing is tied.

The machine these figures come from is a shared, loaded 2-core box: absolute times drift with the
load; only the ratios, measured side by side, mean anything.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pruner_step.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pruner_step.py --models lenet300_100 resnet56 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _machine import machine_record  # benchmarks/_machine.py, beside this script

from prunelab._io import atomic_write_json
from prunelab.core import masking
from prunelab.models import build_model
from prunelab.pruning.pruner import Pruner

RESULTS = Path(__file__).resolve().parent / "results" / "pruner_step.json"

#: name → (build kwargs, input shape).
MODELS: dict[str, tuple[dict[str, Any], tuple[int, int, int]]] = {
    "lenet300_100": ({}, (1, 28, 28)),
    "resnet56": ({}, (3, 32, 32)),
    "vgg16": ({}, (3, 32, 32)),
    "vgg19_w1.25": ({"width": 1.25}, (3, 32, 32)),
}

#: case → (sparsity reached before the timed step, sparsity of the timed step).
CASES = {"first_step_0.9": (0.0, 0.9), "second_round_0.5_to_0.8": (0.5, 0.8)}

VARIANTS = ("pruner_step", "limit", "selector")


def measure(name: str, case: str, repeats: int) -> dict[str, Any]:
    """Median seconds of the step, the limit and the selector alone, interleaved, for one model and case."""
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name.split("_w")[0], num_classes=10, input_shape=shape, **kwargs)
    pruner = Pruner(model).prepare()
    before, level = CASES[case]
    if before:
        pruner.step(before)
    saved = [
        (masking.get_mask(t.module, t.param).clone(), masking.original(t.module, t.param).detach().clone())
        for t in pruner.targets
    ]

    def restore() -> None:
        with torch.no_grad():
            for t, (mask, orig) in zip(pruner.targets, saved, strict=True):
                masking.get_mask(t.module, t.param).copy_(mask)
                masking.original(t.module, t.param).copy_(orig)

    weights = [orig for _, orig in saved]
    sizes = [w.numel() for w in weights]
    k = round(level * sum(sizes))

    def limit() -> list[torch.Tensor]:
        flat = torch.cat([w.abs().reshape(-1) for w in weights])
        threshold = torch.kthvalue(flat, k).values
        return list((flat > threshold).split(sizes))

    unit_scores = {t.fqn: w.abs() for t, w in zip(pruner.targets, weights, strict=True)}
    previous = {t.fqn: m for t, (m, _) in zip(pruner.targets, saved, strict=True)}

    def selector() -> object:
        return pruner.selector(unit_scores, level, scope="global", previous=previous, min_keep=1)

    fns: dict[str, Callable[[], object]] = {
        "pruner_step": lambda: pruner.step(level),
        "limit": limit,
        "selector": selector,
    }
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats + 1):  # round 0 is the warm-up
        shift = r % len(VARIANTS)
        for kind in VARIANTS[shift:] + VARIANTS[:shift]:
            restore()
            start = time.perf_counter()
            fns[kind]()
            if r:
                times[kind].append(time.perf_counter() - start)
    restore()
    pruner.step(level)
    # The limit drops every entry tied with the threshold; the step removes exactly k (ties in index order).
    differ = sum(
        int((masking.get_mask(t.module, t.param).reshape(-1) != m).sum())
        for t, m in zip(pruner.targets, limit(), strict=True)
    )
    flat = torch.cat([w.abs().reshape(-1) for w in weights])
    tied = int((flat == torch.kthvalue(flat, k).values).sum())
    row: dict[str, Any] = {
        "model": name,
        "case": case,
        "weights": sum(sizes),
        "tensors": len(sizes),
        "repeats": repeats,
        "masks_differing_from_limit": differ,
        "entries_tied_at_threshold": tied,
    }
    for kind in VARIANTS:
        row[f"{kind}_s"] = round(statistics.median(times[kind]), 5)
        row[f"{kind}_all_s"] = [round(t, 5) for t in times[kind]]
    for kind in ("pruner_step", "selector"):
        row[f"{kind}_ratio"] = round(row[f"{kind}_s"] / row["limit_s"], 3)
        paired = [a / b for a, b in zip(times[kind], times["limit"], strict=True)]
        row[f"{kind}_ratio_paired"] = round(statistics.median(paired), 3)
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = []
    print("medians, 1 thread; ratio = time / limit (median of medians, and median of paired ratios)")
    for name in args.models:
        for case in args.cases:
            r = measure(name, case, args.repeats)
            rows.append(r)
            print(
                f"{name:<13} {case:<24} {r['weights'] / 1e6:6.2f} M  limit {r['limit_s']:7.3f} s  "
                f"step {r['pruner_step_s']:7.3f} s = {r['pruner_step_ratio']:.2f}× "
                f"({r['pruner_step_ratio_paired']:.2f}×)  selector {r['selector_ratio']:.2f}×  "
                f"mask diff {r['masks_differing_from_limit']} (ties {r['entries_tied_at_threshold']})",
                flush=True,
            )
    record = {
        "benchmark": "pruner_step",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pruner_step.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "note": "shared, loaded 2-core machine: only the side-by-side ratios count",
        "machine": machine_record(load_before),
        "results": rows,
    }
    atomic_write_json(args.out, record)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
