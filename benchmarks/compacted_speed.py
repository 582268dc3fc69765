"""Real speed-up of a compacted network over its dense original, per backend, against its MACs ratio.

For vgg19 and resnet56 (CIFAR-10 shape, random weights: latency does not depend on the values) this
removes ``--amount`` of the channels of every coupled group (:func:`prunelab.channels.prune_channels`,
L1 filter criterion, ``scope="layer"`` by default so that "50 % channels removed" holds in every layer),
then times the dense and the compacted model side by side on one thread, at batch 1 and 64, on four
backends:

* ``eager``: the PyTorch modules as they are;
* ``eager_folded``: eager, BatchNorm folded into the convolutions (:func:`prunelab.export.fold_batchnorm`);
* ``onnxruntime``: the folded model exported to ONNX (:func:`prunelab.metrics.speed.onnx_session`, the
  export of :func:`prunelab.export.onnx_bytes`), ONNX Runtime CPU provider, graph optimisations at
  ``ORT_ENABLE_ALL`` (which fuses Conv+ReLU and Conv+Add+ReLU into one kernel), one intra-op thread;
* ``compile``: ``torch.compile`` (inductor, ``freezing=True`` so weights are constants: prepacked
  oneDNN convolutions, fused pointwise epilogues) of the folded model, one compile per batch size,
  dropped with its reason when the first compile exceeds ``--compile-budget`` seconds.

Every timed function of one (model, batch) cell runs in the same interleaved rounds
(:func:`prunelab.metrics.latency.interleaved_times`: dense, compact, dense, compact, ... for every
backend in turn), so a load spike on the shared machine hits all of them; medians are compared. The
speed-up is ``dense_ms / compact_ms``; the target of issue 15 is ``speed-up >= 0.9 x MACs ratio`` at batch
64 and ``>= 0.75 x`` at batch 1.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compacted_speed.py                 # both models, ~8 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compacted_speed.py --models resnet56 --repeats 5

Output: ``benchmarks/results/compacted_speed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name  # benchmarks/_machine.py, beside this script

from prunelab._io import atomic_write_json
from prunelab.channels import prune_channels
from prunelab.export import fold_batchnorm
from prunelab.metrics.latency import interleaved_times
from prunelab.metrics.speed import onnx_session
from prunelab.models import build_model

RESULTS = Path(__file__).resolve().parent / "results" / "compacted_speed.json"
SHAPE = (3, 32, 32)
TARGET = {1: 0.75, 64: 0.9}
"""Issue 15's target: measured speed-up >= this share of the MACs ratio, per batch size."""


def build_pair(name: str, amount: float, scope: str) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The dense zoo model (seeded random weights) and its compacted copy, both in eval mode."""
    torch.manual_seed(0)
    dense = build_model(name, num_classes=10, input_shape=SHAPE).eval()
    small, report = prune_channels(dense, SHAPE, amount, criterion="l1_filter", scope=scope)
    small.eval()
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    info = {
        "macs_dense": report.macs_before,
        "macs_compact": report.macs_after,
        "macs_ratio": report.macs_before / report.macs_after,
        "params_dense": report.params_before,
        "params_compact": report.params_after,
        "channels_before": report.channels_before,
        "channels_after": report.channels_after,
        "conv_widths_compact": widths,
        "max_abs_diff_surgery": report.surgery.max_abs_diff,
    }
    return dense, small, info


def _compiled(model: nn.Module, x: torch.Tensor) -> tuple[Callable[[], object], float]:
    """``torch.compile`` of ``model`` for inputs like ``x`` (frozen weights) and its compile seconds."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    fn = torch.compile(model, dynamic=False)
    start = time.perf_counter()
    with torch.no_grad():
        fn(x)
    return (lambda: fn(x)), time.perf_counter() - start


def prepare(dense: nn.Module, small: nn.Module, backends: list[str]) -> dict[str, Any]:
    """The BatchNorm-folded copies and, with ONNX Runtime, one session per folded model."""
    x1 = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(1))
    folded = [fold_batchnorm(m, x1)[0] for m in (dense, small)]
    out: dict[str, Any] = {"folded": folded, "sessions": [], "onnx_export": {}}
    if "onnxruntime" in backends:
        with tempfile.TemporaryDirectory(prefix="compacted-speed-") as tmp:
            built = [onnx_session(m, x1, tmp) for m in folded]
        out["sessions"] = [s for s, _ in built]
        level = out["sessions"][0].get_session_options().graph_optimization_level
        out["onnx_export"] = {"dense": built[0][1], "compact": built[1][1], "graph_optimization": str(level)}
    return out


def measure(
    name: str,
    models: tuple[nn.Module, nn.Module],
    prepared: dict[str, Any],
    bs: int,
    backends: list[str],
    warmup: int,
    repeats: int,
    compile_budget: float,
    compile_state: dict[str, Any],
) -> dict[str, Any]:
    """Medians (ms) of dense and compact at batch ``bs`` for every backend, all timed interleaved."""
    x = torch.randn((bs, *SHAPE), generator=torch.Generator().manual_seed(bs))
    fns: dict[str, list[Callable[[], object]]] = {}
    if "eager" in backends:
        fns["eager"] = [lambda m=m: m(x) for m in models]
    if "eager_folded" in backends:
        fns["eager_folded"] = [lambda m=m: m(x) for m in prepared["folded"]]
    if prepared["sessions"]:
        feed = {prepared["sessions"][0].get_inputs()[0].name: x.numpy()}
        fns["onnxruntime"] = [lambda s=s: s.run(None, feed) for s in prepared["sessions"]]
    compiled: dict[str, Any] = {}
    if "compile" in backends and not compile_state.get("skipped"):
        try:
            pair = [_compiled(m, x) for m in prepared["folded"]]
        except Exception as exc:  # noqa: BLE001 - any compile failure is recorded, not fatal
            compile_state["skipped"] = f"torch.compile failed: {str(exc).strip().splitlines()[0][:200]}"
        else:
            compiled = {"compile_s_dense": pair[0][1], "compile_s_compact": pair[1][1]}
            fns["compile"] = [f for f, _ in pair]
            slowest = max(pair[0][1], pair[1][1])
            if slowest > compile_budget:
                compile_state["skipped"] = (
                    f"compiling {name} at batch {bs} took {slowest:.0f} s > budget {compile_budget:.0f} s; "
                    "the later cells were not compiled"
                )
    flat = [f for pair in fns.values() for f in pair]
    with torch.no_grad():
        times = interleaved_times(flat, warmup, repeats)
    row: dict[str, Any] = {"repeats": repeats, "warmup": warmup}
    for k, backend in enumerate(fns):
        d, c = statistics.median(times[2 * k]), statistics.median(times[2 * k + 1])
        row[backend] = {"dense_ms": d, "compact_ms": c, "speedup": d / c}
    if compiled:
        row["compile"].update(compiled)
    print(name, bs, json.dumps({b: round(v["speedup"], 3) for b, v in row.items() if isinstance(v, dict)}))
    return row


def main() -> None:
    """Measure every model and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg19", "resnet56"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--backends", nargs="+", default=["eager", "eager_folded", "onnxruntime", "compile"])
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--scope", default="layer", choices=["layer", "global"])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds at batch 64 (x8 at batch 1)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile-budget", type=float, default=120.0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_before": list(os.getloadavg()),
        },
        "threads": torch.get_num_threads(),
        "amount": args.amount,
        "scope": args.scope,
        "criterion": "l1_filter",
        "weights": "random (seeded zoo initialisation); latency does not depend on weight values",
        "target": {str(k): v for k, v in TARGET.items()},
        "models": {},
    }
    try:
        import onnxruntime

        record["machine"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        args.backends = [b for b in args.backends if b != "onnxruntime"]
    compile_state: dict[str, Any] = {}
    start = time.perf_counter()
    for name in args.models:
        dense, small, info = build_pair(name, args.amount, args.scope)
        prepared = prepare(dense, small, args.backends)
        cells: dict[str, Any] = {}
        for bs in args.batches:
            # Batch 1 passes are ~50x cheaper: more rounds for the same wall time, a steadier median.
            reps = args.repeats * (8 if bs == 1 else 1)
            row = measure(
                name, (dense, small), prepared, bs, args.backends, args.warmup, reps,
                args.compile_budget, compile_state,
            )  # fmt: skip
            for v in row.values():
                if isinstance(v, dict):
                    v["share_of_macs_ratio"] = v["speedup"] / info["macs_ratio"]
                    v["target"] = TARGET.get(bs)
                    v["met"] = bool(bs in TARGET and v["share_of_macs_ratio"] >= TARGET[bs])
            cells[str(bs)] = row
        record["models"][name] = {**info, "onnx_export": prepared["onnx_export"], "cells": cells}
    if compile_state.get("skipped"):
        record["compile_skipped"] = compile_state["skipped"]
    record["machine"]["load_avg_after"] = list(os.getloadavg())
    record["wall_s"] = time.perf_counter() - start
    atomic_write_json(args.out, record)
    print(f"wrote {args.out} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
