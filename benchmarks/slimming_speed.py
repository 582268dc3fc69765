"""Re-measure the dense vs compacted latency of finished slimming runs (eager CPU, ONNX Runtime if installed).

The drivers already time both models at the end of a run (``summary.json`` → ``speedup``); on a busy
shared machine that figure can be distorted, so this script repeats the measurement later from the
run directory: the compacted network is rebuilt from ``checkpoint.pt`` (weights_only) and the dense
one is the zoo model of the recipe (latency does not depend on the weights). Both are timed
interleaved in one process (:func:`prunelab.metrics.speed.compare_latency`) and medians compared with
the MACs ratio. Output: ``benchmarks/results/slimming_speed.json``.

Usage::

    .venv/bin/python benchmarks/slimming_speed.py /tmp/slim/vgg19_ns /tmp/slim/vgg19_prox --repeats 50
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from prunelab._io import atomic_write_json
from prunelab.checkpoint import build_from_checkpoint, load_checkpoint
from prunelab.metrics import dense_macs
from prunelab.metrics.speed import compare_latency
from prunelab.models import build_model


def main() -> None:
    """Measure every run given and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "slimming_speed.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for run in args.runs:
        arch = load_checkpoint(run)["arch"]
        shape = tuple(arch["input_shape"])
        dense = build_model(
            arch["model"], num_classes=arch["num_classes"], input_shape=shape, **arch["kwargs"]
        )
        small = build_from_checkpoint(run)
        speed = compare_latency(dense, small, shape, (1, 64), repeats=args.repeats)
        speed["macs_ratio"] = dense_macs(dense, shape) / dense_macs(small, shape)
        speed["load_avg_1min_after"] = os.getloadavg()[0]
        results[str(run)] = speed
        print(run, json.dumps(speed))
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
