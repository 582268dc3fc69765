"""Table and plots of the SP vs IP study (recipes/interspace/*.sweep.yaml).

Reads every ``summary.json`` (and the run's ``config.yaml`` for ``prune.reparam.name``) under a sweep
directory, groups the runs by method, mode (SP = reparam none, IP = interspace) and target sparsity,
and writes

- ``<out>/interspace_table.md``: mean ± std test accuracy over seeds, the IP − SP gap, that gap less
  the dense gap (IP − SP of the dense networks trained the same way at 0 % sparsity: what training the
  basis changes by itself, the control of the study), non-zero parameters and effective MACs (IP
  counted in its compact form: non-zero coefficients + bases);
- ``<out>/interspace_<method>.png``: accuracy vs sparsity, SP and IP, with the dense baselines.

``--records-out FILE`` also packs every run's ``summary.json``, ``rounds.csv`` and ``config.yaml`` into
one JSON record (``benchmarks/_records.py``); given that file instead of a sweep directory, the script
re-derives the same table and plots.

Usage::

    python benchmarks/interspace_report.py sweeps/interspace_cpu [--out benchmarks/results] \
        [--records-out benchmarks/results/interspace_runs.json]
    python benchmarks/interspace_report.py benchmarks/results/interspace_runs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _records  # benchmarks/_records.py, beside this script

METHOD_ORDER = ["magnitude", "agp", "lottery_ticket", "snip", "grasp", "synflow"]
MODE = {"none": "SP", "interspace": "IP"}


def _runs(root: Path) -> list[dict[str, Any]]:
    rows = []
    for summary_path in sorted(root.rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
        config = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
        reparam = ((config.get("prune") or {}).get("reparam") or {}).get("name", "none")
        rows.append({**summary, "mode": MODE.get(reparam, reparam), "run": summary_path.parent.name})
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def build(root: Path, out: Path) -> str:
    """Write the table and plots for the sweep in ``root`` to ``out``; returns the markdown table."""
    rows = _runs(root)
    dense = defaultdict(list)
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["method"] == "dense":
            dense[r["mode"]].append(r["accuracy"])
        else:
            groups[(r["method"], r["mode"], round(float(r["target_sparsity"]), 4))].append(r)
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in groups)]
    methods += sorted({k[0] for k in groups} - set(methods))
    lines = [
        (
            "| method | sparsity | SP accuracy | IP accuracy | IP − SP | IP − SP − dense gap | SP non-zero "
            "| IP non-zero | SP MACs | IP MACs | seeds |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # The control: IP − SP of the dense networks, trained the same way at 0 % sparsity.
    dense_gap = (
        statistics.fmean(dense["IP"]) - statistics.fmean(dense["SP"])
        if dense.get("IP") and dense.get("SP")
        else None
    )
    for mode, accs in sorted(dense.items()):
        m, s = _mean_std(accs)
        lines.append(f"| dense ({mode}) | 0 | {m:.4f} ± {s:.4f} | | | | | | | | {len(accs)} |")
    for method in methods:
        for sp in sorted({k[2] for k in groups if k[0] == method}):
            cells = {}
            for mode in ("SP", "IP"):
                runs = groups.get((method, mode, sp), [])
                if runs:
                    cells[mode] = (
                        _mean_std([r["accuracy"] for r in runs]),
                        round(statistics.fmean(r["params_nonzero"] for r in runs)),
                        round(statistics.fmean(r["macs_effective"] for r in runs)),
                        len(runs),
                    )
            sp_cell = cells.get("SP")
            ip_cell = cells.get("IP")
            both = sp_cell is not None and ip_cell is not None
            gap = f"{ip_cell[0][0] - sp_cell[0][0]:+.4f}" if both else ""
            net = (
                f"{ip_cell[0][0] - sp_cell[0][0] - dense_gap:+.4f}" if both and dense_gap is not None else ""
            )
            fmt = lambda c: f"{c[0][0]:.4f} ± {c[0][1]:.4f}" if c else "–"
            lines.append(
                f"| {method} | {sp:g} | {fmt(sp_cell)} | {fmt(ip_cell)} | {gap} | {net} | "
                f"{sp_cell[1] if sp_cell else ''} | {ip_cell[1] if ip_cell else ''} | "
                f"{sp_cell[2] if sp_cell else ''} | {ip_cell[2] if ip_cell else ''} | "
                f"{max(sp_cell[3] if sp_cell else 0, ip_cell[3] if ip_cell else 0)} |"
            )
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "interspace_table.md").write_text(table)
    _plots(groups, dense, methods, out)
    return table


def _plots(
    groups: dict[tuple[str, str, float], list[dict[str, Any]]],
    dense: dict[str, list[float]],
    methods: list[str],
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for method in methods:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        for mode, color in (("SP", "tab:blue"), ("IP", "tab:red")):
            pts = sorted((k[2], v) for k, v in groups.items() if k[0] == method and k[1] == mode)
            if not pts:
                continue
            xs = [100 * s for s, _ in pts]
            stats = [_mean_std([r["accuracy"] for r in runs]) for _, runs in pts]
            ax.errorbar(
                xs,
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                marker="o",
                capsize=3,
                color=color,
                label=mode,
            )
            if dense.get(mode):
                ax.axhline(
                    statistics.fmean(dense[mode]),
                    color=color,
                    linestyle=":",
                    linewidth=1,
                    label=f"dense {mode}",
                )
        ax.set_xlabel("sparsity of the pruned tensors (%)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{method}: SP vs IP")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"interspace_{method}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="a sweep directory, or a record written by --records-out"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--records-out", type=Path, default=None, help="also pack the runs' records here")
    args = parser.parse_args()
    with _records.sweep_dir(args.sweep_dir) as root:
        print(build(root, args.out), end="")
        if args.records_out is not None:
            print(f"{_records.save(root, args.records_out)} runs packed into {args.records_out}")


if __name__ == "__main__":
    main()
