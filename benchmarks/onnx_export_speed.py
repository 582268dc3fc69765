"""Time of the latency comparison's ONNX export next to a plain ``dynamo=False`` export.

:func:`prunelab.metrics.speed.compare_latency` (run by every structured method) exports the dense and the
compacted model to ONNX for ONNX Runtime. Its export path, :func:`prunelab.metrics.speed.onnx_session`,
exports with the TorchScript-based exporter (``dynamo=False``), builds the ONNX Runtime session and
checks the file's outputs against the model's. This script times that whole path against the bare
reference ``torch.onnx.export(model, (x,), path, dynamo=False, dynamic_axes=...)`` for resnet56 and vgg19
(CIFAR shape), dense and with 50 % of every coupled channel group removed (random channels, compacted by
:func:`prunelab.surgery.compact`), one thread, the two timed in alternating order, medians compared.

With ``--before``, the default exporter (``torch.onnx.export`` with ``dynamo=True``, what
``compare_latency`` used before) is timed once per model as well, interleaved with the others: it
takes minutes on resnet56, so it is off by default.

The machine these figures come from is a shared, loaded 2-core box: absolute times drift with the
load; only the ratios, measured side by side, mean anything.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_export_speed.py              # 3 repeats
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_export_speed.py --before --models resnet56
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab._io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_record  # benchmarks/_machine.py, beside this script

from prunelab.metrics.speed import _quiet_exporter, onnx_session
from prunelab.models import build_model
from prunelab.surgery import ChannelGraph, compact

RESULTS = Path(__file__).resolve().parent / "results" / "onnx_export_speed.json"
SHAPE = (3, 32, 32)


def _models(name: str) -> dict[str, nn.Module]:
    """``{"dense": model, "half": the same with 50 % of every channel group removed}`` (eval mode)."""
    torch.manual_seed(0)
    dense = build_model(name, num_classes=10, input_shape=SHAPE).eval()
    graph = ChannelGraph(dense, SHAPE)
    gen = torch.Generator().manual_seed(0)
    keep = {}
    for g in graph.groups:
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[torch.randperm(g.size, generator=gen)[: max(1, g.size // 2)]] = True
        keep[g.name] = mask
    half, _ = compact(dense, keep, SHAPE)
    return {"dense": dense, "half": half.eval()}


def _plain(model: nn.Module, x: torch.Tensor, path: str, dynamo: bool) -> None:
    with _quiet_exporter(), torch.no_grad():
        if dynamo:  # what compare_latency called before: the default exporter
            torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})  # fmt: skip
        else:
            torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)  # fmt: skip


def measure(name: str, variant: str, model: nn.Module, repeats: int, before: bool) -> dict[str, Any]:
    """Median seconds of prunelab's export path and of the plain ``dynamo=False`` export, interleaved."""
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"prunelab": [], "plain_dynamo_false": [], "default_exporter": []}
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def run(kind: str) -> None:
            start = time.perf_counter()
            if kind == "prunelab":
                _, found = onnx_session(model, x, tmp)
                info.update(found)
            else:
                _plain(model, x, os.path.join(tmp, f"{kind}.onnx"), dynamo=kind == "default_exporter")
            times[kind].append(time.perf_counter() - start)

        run("prunelab")  # warm-up: first-call costs (imports, ORT start-up) counted for neither
        times["prunelab"].clear()
        kinds = ["prunelab", "plain_dynamo_false"]
        for r in range(repeats):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                run(kind)
            if before and r == 0:
                run("default_exporter")
    row: dict[str, Any] = {
        "model": name,
        "variant": variant,
        "params": sum(p.numel() for p in model.parameters()),
        "repeats": repeats,
        "export": info,
    }
    for kind, values in times.items():
        if values:
            row[f"{kind}_s"] = round(statistics.median(values), 4)
            row[f"{kind}_all_s"] = [round(v, 4) for v in values]
    row["ratio_prunelab_to_plain"] = round(row["prunelab_s"] / row["plain_dynamo_false_s"], 3)
    paired = [p / q for p, q in zip(times["prunelab"], times["plain_dynamo_false"], strict=True)]
    row["ratio_paired_median"] = round(statistics.median(paired), 3)
    if "default_exporter_s" in row:
        row["ratio_default_to_plain"] = round(row["default_exporter_s"] / row["plain_dynamo_false_s"], 2)
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet56", "vgg19"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", action="store_true", help="also time the default exporter, once")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = []
    for name in args.models:
        for variant, model in _models(name).items():
            rows.append(measure(name, variant, model, args.repeats, args.before))
            r = rows[-1]
            extra = f"  default exporter {r['default_exporter_s']:.2f} s" if "default_exporter_s" in r else ""
            print(
                f"{name:<9} {variant:<6} prunelab {r['prunelab_s']:7.3f} s  plain dynamo=False "
                f"{r['plain_dynamo_false_s']:7.3f} s  ratio {r['ratio_prunelab_to_plain']:.2f} "
                f"(paired {r['ratio_paired_median']:.2f}) via {r['export'].get('exporter')}{extra}",
                flush=True,
            )
    record = {
        "benchmark": "onnx_export_speed",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_export_speed.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "note": "shared, loaded 2-core machine: only the side-by-side ratios count",
        "machine": machine_record(load_before, onnx=_version("onnx"), onnxruntime=_version("onnxruntime")),
        "results": rows,
    }
    atomic_write_json(args.out, record)
    print(f"written to {args.out}")
    return 0


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())
