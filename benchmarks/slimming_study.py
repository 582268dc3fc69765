"""Tabulate the NS vs proximal NS study from run directories and the Torch-Pruning reference JSON.

Reads ``summary.json`` of a network-slimming run and a proximal-network-slimming run (made with
``prunelab run recipes/{slimming,proximal_slimming}/<model>_cifar10.yaml``) and, optionally,
``benchmarks/results/slimming_tp_<model>.json`` (``benchmarks/slimming_tp_reference.py``), and prints
the Markdown table of ``benchmarks/slimming.md``: channels, parameters and MACs removed, accuracy
right after pruning and after fine-tuning, measured eager-CPU speed-up at batch 1 and 64 next to the
MACs ratio.

Usage::

    .venv/bin/python benchmarks/slimming_study.py --ns /tmp/slim/vgg19_ns --prox /tmp/slim/vgg19_prox \
        --tp benchmarks/results/slimming_tp_vgg19.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _row(label: str, s: dict[str, Any]) -> str:
    st = s["structured"]
    eager = s.get("speedup", {}).get("eager_cpu", {})
    sp = " / ".join(f"{eager[b]['speedup']:.2f}" for b in ("1", "64") if b in eager) or "n/a"
    return (
        f"| {label} | {st['channels_removed']}/{st['channels_total']} ({100 * st['channels_removed_share']:.1f} %) "
        f"| {100 * st['params_removed_share']:.1f} % | {100 * st['macs_removed_share']:.1f} % "
        f"| {100 * st['accuracy_after_sparsity_training']:.1f} | {100 * st['accuracy_after_pruning']:.1f} "
        f"| {100 * st['accuracy_after_finetune']:.1f} | {st['macs_ratio']:.2f} | {sp} |"
    )


def _tp_row(r: dict[str, Any]) -> str:
    return (
        f"| Torch-Pruning BNScalePruner | {r['channels_before'] - r['channels_after']}/{r['channels_before']} "
        f"({100 * (1 - r['channels_after'] / r['channels_before']):.1f} %) "
        f"| {100 * (1 - r['params_after'] / r['params_before']):.1f} % | {100 * (1 - r['macs_after'] / r['macs_before']):.1f} % "
        f"| {100 * r['accuracy_after_sparsity_training']:.1f} | {100 * r['accuracy_after_pruning']:.1f} "
        f"| {100 * r['accuracy_after_finetune']:.1f} | {r['macs_ratio']:.2f} | not measured |"
    )


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", required=True)
    parser.add_argument("--prox", required=True)
    parser.add_argument("--tp", default=None)
    args = parser.parse_args()
    print(
        "| method | channels removed | params removed | MACs removed | acc. after sparsity training (%) "
        "| acc. right after pruning (%) | acc. after fine-tuning (%) | MACs ratio | measured speed-up b1 / b64 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, run in (("network slimming", args.ns), ("proximal NS (rule ξ = 0)", args.prox)):
        print(_row(label, json.loads((Path(run) / "summary.json").read_text())))
    if args.tp and Path(args.tp).is_file():
        print(_tp_row(json.loads(Path(args.tp).read_text())))


if __name__ == "__main__":
    main()
