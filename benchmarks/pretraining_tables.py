"""Tables and plots of benchmarks/pretraining.md from a finished (or partial) study sweep.

Usage::

    python benchmarks/pretraining_tables.py SWEEP_DIR [--out-dir benchmarks/results] [--prefix pretraining]

Writes ``<prefix>_report.md`` (grouped by initialisation, mean ± std over seeds, per-run table) and the
plots ``<prefix>_accuracy_vs_{params,macs,latency}.png`` into ``--out-dir`` and prints the
"largest sparsity within 1 pp of its own dense accuracy" table. When the pruned runs carry a
``variant`` label (``recipes/pretraining/cpu_protocol.sweep.yaml``: layer, global, dwspare), every
variant is compared with the same dense runs, the report groups by variant and initialisation, and the
table adds each seed's own reach (the spread), against the dense runs and, where the sweep has them,
against the dense control runs (the pruning phase at 0 %, trained as long as every pruned run). ``--records-out FILE`` also packs every
run's ``summary.json``, ``rounds.csv`` and ``config.yaml`` into one JSON record
(``benchmarks/_records.py``); given that file instead of a sweep directory, the script re-derives the
same tables.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _records  # benchmarks/_records.py, beside this script

from prunelab.experiments.report import find_runs, load_records, write_report
from prunelab.methods.pretraining import SparsityReach, largest_sparsity_within, reach_table


def main() -> None:
    """Write the report files and print the reach table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="a sweep directory, or a record written by --records-out"
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--prefix", default="pretraining", help="name prefix of the written files")
    parser.add_argument("--records-out", type=Path, default=None, help="also pack the runs' records here")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with _records.sweep_dir(args.sweep_dir) as root:
        _tables(root, args.out_dir, args.prefix)
        if args.records_out is not None:
            print(f"{_records.save(root, args.records_out)} runs packed into {args.records_out}")


def _tables(sweep: Path, out_dir: Path, prefix: str) -> None:
    """The report files of the runs under ``sweep`` into ``out_dir``, and the printed reach table."""
    records = load_records(find_runs([sweep]))
    variants = sorted({str(r["variant"]) for r in records if r.get("variant") and r.get("target_sparsity")})
    with tempfile.TemporaryDirectory() as tmp:
        report = write_report(
            [sweep],
            Path(tmp) / "report.md",
            title="Pre-trained vs from-scratch pruning, CPU size",
            group_by=["variant", "init"] if variants else ["init"],
            html=False,
        )
        text = report.read_text()
        for png in Path(tmp).glob("*.png"):
            name = f"{prefix}_{png.name}"
            shutil.copy(png, out_dir / name)
            text = text.replace(f"]({png.name})", f"]({name})")
        (out_dir / f"{prefix}_report.md").write_text(text)
    if not variants:
        print(reach_table(largest_sparsity_within(records, group="init", tolerance=0.01)))
        return
    print(_variant_table(records, variants))


def _variant_table(records: list[dict], variants: list[str], tolerance: float = 0.01) -> str:
    """Per variant and initialisation: the reach of the seed means, and each seed's own reach.

    Two references, one table each: the dense runs themselves, and (when the sweep has them) the dense
    control runs, i.e. the pruning phase at 0 %, trained as long as every pruned run.
    """
    references = {
        "the dense model": [r for r in records if r.get("method") == "dense"],
        "the dense control (the same pruning phase at 0 %)": [
            r for r in records if not r.get("target_sparsity") and r.get("method") != "dense"
        ],
    }
    pruned = [r for r in records if r.get("target_sparsity")]
    tables = []
    for label, dense in references.items():
        if dense:
            tables.append(f"Reference: {label}.\n\n" + _reach_rows(dense, pruned, variants, tolerance))
    return "\n\n".join(tables)


def _reach_rows(dense: list[dict], pruned: list[dict], variants: list[str], tolerance: float) -> str:
    """The markdown table of one reference: every variant compared with the same ``dense`` runs."""
    compared = []
    for variant in variants:
        compared += [{**r, "variant": variant, "target_sparsity": 0.0} for r in dense]
        compared += [r for r in pruned if r.get("variant") == variant]
    means = largest_sparsity_within(compared, group=("variant", "init"), tolerance=tolerance)
    seeds = largest_sparsity_within(compared, group=("variant", "init", "seed"), tolerance=tolerance)
    header = (
        f"| variant | init | reference accuracy (%) | largest sparsity within {100 * tolerance:g} pp "
        "(seed means) | accuracy there (%) | each seed's own (vs its reference run) |"
    )
    lines = [header, "|---|---|---|---|---|---|"]

    def reach(r: SparsityReach) -> str:
        if not r.points:
            return "not pruned"
        return "none" if r.largest_sparsity is None else f"{100 * r.largest_sparsity:g} %"

    for (variant, init), r in sorted(means.items(), key=lambda kv: str(kv[0])):
        own = [f"s{k[2]}: {reach(v)}" for k, v in sorted(seeds.items(), key=str) if k[:2] == (variant, init)]
        at = f"{100 * r.accuracy_at_largest:.1f}" if r.accuracy_at_largest is not None else "–"
        lines.append(
            f"| {variant} | {init} | {100 * r.dense_accuracy:.1f} ± {100 * r.dense_std:.1f} (n={r.seeds}) "
            f"| {reach(r)} | {at} | {', '.join(own)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
