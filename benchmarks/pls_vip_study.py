"""Tables of the PLS+VIP study: accuracy vs MACs removed per criterion, and at matched MACs reductions.

Reads the run directories of ``recipes/pls_vip/study.sweep.yaml`` (``<sweep>/runs/*/rounds.csv`` and
``summary.json``), groups them by criterion, and prints two markdown tables:

1. per round: MACs / filters / parameters removed and test accuracy after fine-tuning (mean ± std over
   seeds) and the drop against each run's own unpruned accuracy;
2. at matched MACs reductions: each run's accuracy-after-fine-tuning curve (the unpruned point at 0 %
   plus one point per round) is interpolated linearly at the given MACs-removed levels, then averaged
   over seeds. The criteria remove the same share of filters per round but not the same MACs (they pick
   different layers), so this is the fair comparison for cost; levels beyond a run's last round are not
   extrapolated;
3. at matched filter counts: the same interpolation at the given filters-removed levels
   (``--filter-levels``), the comparison the paper's own tables make.

Runs are grouped by method (``pls_vip``, ``pls_vip_per_mac``, ``l1_filter_iterative``,
``l1_filter_layer_iterative``, ``random_filter_iterative``), so variants of one criterion (per-layer
scope, cost-aware scores) are told apart.

Usage::

    python benchmarks/pls_vip_study.py sweeps/pls_vip_study --levels 10 20 30 \
        --filter-levels 10 20 30 --out benchmarks/results/pls_vip_study.json
    python benchmarks/pls_vip_study.py --from-record benchmarks/results/pls_vip_study_resnet20_ft1.json
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
        groups.setdefault(summary.get("method") or summary["pls_vip"]["criterion"], []).append(
            {
                "dir": str(run),
                "seed": summary.get("seed"),
                "dense": 100.0 * summary["accuracy_dense"],
                "rounds": rounds,
            }
        )
    return groups


def interpolate(run: dict[str, Any], level: float, axis: str = "macs_removed_percent") -> float | None:
    """Accuracy (%) after fine-tuning at ``level`` % of ``axis`` (MACs or filters removed), linear between
    rounds; None beyond the last round."""
    xs = [0.0] + [r[axis] for r in run["rounds"]]
    ys = [run["dense"]] + [100.0 * r["accuracy_after_finetune"] for r in run["rounds"]]
    if level > xs[-1]:
        return None
    return float(np.interp(level, xs, ys))


def _matched(
    groups: dict[str, list[dict[str, Any]]], levels: list[float], axis: str, label: str
) -> tuple[list[str], dict[str, Any]]:
    """A markdown table of accuracy at matched ``axis`` levels (mean ± std over seeds), and its record."""
    lines = ["", "| method | " + " | ".join(f"acc. @ {lv:g} % {label} removed (drop pp)" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]  # fmt: skip
    record: dict[str, Any] = {}
    for name, runs in sorted(groups.items()):
        cells = []
        record[name] = {}
        for level in levels:
            values = [(interpolate(r, level, axis), r["dense"]) for r in runs]
            acc = [v for v, _ in values if v is not None]
            drop = [d - v for v, d in values if v is not None]
            record[name][str(level)] = {"accuracy": acc, "drop": drop}
            cells.append(f"{_mean_std(acc)} ({_mean_std(drop)}, n={len(acc)})" if acc else "not reached")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines, record


def tables(
    groups: dict[str, list[dict[str, Any]]], levels: list[float], filter_levels: list[float] | None = None
) -> tuple[str, dict[str, Any]]:
    """The markdown tables (per round, matched MACs, matched filters) and a JSON-friendly record."""
    header = (
        "| method | round | MACs removed % | filters removed % | params removed % | "
        "acc. after FT % | drop (pp) | runs |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    record: dict[str, Any] = {"per_round": {}, "levels": levels}
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
    matched, record["matched"] = _matched(groups, levels, "macs_removed_percent", "MACs")
    by_filters, record["matched_filters"] = _matched(
        groups, filter_levels or levels, "filters_removed_percent", "filters"
    )
    record["filter_levels"] = filter_levels or levels
    return "\n".join(lines + matched + by_filters), record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the study tables and optionally write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="sweep directories or run directories")
    parser.add_argument(
        "--from-record",
        type=Path,
        default=None,
        help="re-derive the tables from a JSON record this script wrote (its 'runs')",
    )
    parser.add_argument("--levels", nargs="+", type=float, default=[10.0, 20.0, 30.0])
    parser.add_argument(
        "--filter-levels",
        nargs="+",
        type=float,
        default=None,
        help="filters-removed levels of the matched-filters table (default: --levels)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.from_record is not None:
        groups = json.loads(args.from_record.read_text())["runs"]
    else:
        groups = load(args.paths)
    if not groups:
        raise SystemExit("no finished pls_vip runs found under " + ", ".join(map(str, args.paths)))
    text, record = tables(groups, args.levels, args.filter_levels)
    print(text)
    if args.out is not None:
        atomic_write_json(args.out, {**record, "runs": groups})
    return record


if __name__ == "__main__":
    main()
