"""Tables of the PLS+VIP study: accuracy vs MACs removed per criterion, and at matched MACs reductions.

Reads the run directories of ``recipes/pls_vip/study.sweep.yaml`` (``<sweep>/runs/*/rounds.csv`` and
``summary.json``), groups them by criterion, and prints two markdown tables:

1. per round: MACs / filters / parameters removed and test accuracy after fine-tuning (mean ± std over
   seeds) and the drop against each run's own unpruned accuracy;
2. at matched MACs reductions: each run's accuracy-after-fine-tuning curve (the unpruned point at 0 %
   plus one point per round) is interpolated linearly at the given MACs-removed levels, then averaged
   over seeds. The criteria remove the same share of filters per round but not the same MACs (they pick
   different layers), so this is the fair comparison; levels beyond a run's last round are not
   extrapolated.

Usage::

    python benchmarks/pls_vip_study.py sweeps/pls_vip_study --levels 10 20 30 \
        --out benchmarks/results/pls_vip_study.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from prunelab._io import atomic_write_json


def _runs(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if (path / "summary.json").exists():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.glob("**/summary.json")))
    return found


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def load(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """``{criterion: [run, ...]}`` with each run's summary and rounds (as floats)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in _runs(paths):
        summary = json.loads((run / "summary.json").read_text())
        if "pls_vip" not in summary or not (run / "rounds.csv").exists():
            continue
        rows = list(csv.DictReader((run / "rounds.csv").read_text().splitlines()))
        rounds = [{k: float(v) for k, v in r.items() if k not in ("criterion", "threshold") and v != ""}
                  for r in rows]  # fmt: skip
        groups.setdefault(summary["pls_vip"]["criterion"], []).append(
            {
                "dir": str(run),
                "seed": summary.get("seed"),
                "dense": 100.0 * summary["accuracy_dense"],
                "rounds": rounds,
            }
        )
    return groups


def interpolate(run: dict[str, Any], level: float) -> float | None:
    """Accuracy (%) after fine-tuning at ``level`` % MACs removed, linear between rounds; None beyond the last."""
    xs = [0.0] + [r["macs_removed_percent"] for r in run["rounds"]]
    ys = [run["dense"]] + [100.0 * r["accuracy_after_finetune"] for r in run["rounds"]]
    if level > xs[-1]:
        return None
    return float(np.interp(level, xs, ys))


def tables(groups: dict[str, list[dict[str, Any]]], levels: list[float]) -> tuple[str, dict[str, Any]]:
    """The two markdown tables and a JSON-friendly record."""
    header = (
        "| criterion | round | MACs removed % | filters removed % | params removed % | "
        "acc. after FT % | drop (pp) | runs |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    record: dict[str, Any] = {"per_round": {}, "matched": {}, "levels": levels}
    for name, runs in sorted(groups.items()):
        n_rounds = min(len(r["rounds"]) for r in runs)
        dense = [r["dense"] for r in runs]
        lines.append(f"| {name} | 0 | 0 | 0 | 0 | {_mean_std(dense)} | 0 | {len(runs)} |")
        record["per_round"][name] = []
        for k in range(n_rounds):
            macs = [r["rounds"][k]["macs_removed_percent"] for r in runs]
            filt = [r["rounds"][k]["filters_removed_percent"] for r in runs]
            par = [r["rounds"][k]["params_removed_percent"] for r in runs]
            acc = [100.0 * r["rounds"][k]["accuracy_after_finetune"] for r in runs]
            drop = [r["dense"] - a for r, a in zip(runs, acc, strict=True)]
            lines.append(f"| {name} | {k + 1} | {_mean_std(macs)} | {_mean_std(filt)} | {_mean_std(par)} | "
                         f"{_mean_std(acc)} | {_mean_std(drop)} | {len(runs)} |")  # fmt: skip
            record["per_round"][name].append(
                {"round": k + 1, "macs_removed": macs, "accuracy": acc, "drop": drop}
            )
    matched = ["", "| criterion | " + " | ".join(f"acc. @ {lv:g} % MACs removed (drop pp)" for lv in levels) + " |",
               "|---|" + "---|" * len(levels)]  # fmt: skip
    for name, runs in sorted(groups.items()):
        cells = []
        record["matched"][name] = {}
        for level in levels:
            values = [(interpolate(r, level), r["dense"]) for r in runs]
            acc = [v for v, _ in values if v is not None]
            drop = [d - v for v, d in values if v is not None]
            record["matched"][name][str(level)] = {"accuracy": acc, "drop": drop}
            cells.append(f"{_mean_std(acc)} ({_mean_std(drop)}, n={len(acc)})" if acc else "not reached")
        matched.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + matched), record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the study tables and optionally write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep directories or run directories")
    parser.add_argument("--levels", nargs="+", type=float, default=[10.0, 20.0, 30.0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    groups = load(args.paths)
    if not groups:
        raise SystemExit("no finished pls_vip runs found under " + ", ".join(map(str, args.paths)))
    text, record = tables(groups, args.levels)
    print(text)
    if args.out is not None:
        atomic_write_json(args.out, {**record, "runs": groups})
    return record


if __name__ == "__main__":
    main()
