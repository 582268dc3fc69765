"""Tables and plots of benchmarks/pretraining.md from a finished (or partial) study sweep.

Usage::

    python benchmarks/pretraining_tables.py SWEEP_DIR [--out-dir benchmarks/results]

Writes ``pretraining_report.md`` (grouped by initialisation, mean ± std over seeds, per-run table) and the
plots ``pretraining_accuracy_vs_{params,macs,latency}.png`` into ``--out-dir`` and prints the
"largest sparsity within 1 pp of its own dense accuracy" table. ``--records-out FILE`` also packs every
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
from prunelab.methods.pretraining import largest_sparsity_within, reach_table


def main() -> None:
    """Write the report files and print the reach table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="a sweep directory, or a record written by --records-out"
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--records-out", type=Path, default=None, help="also pack the runs' records here")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with _records.sweep_dir(args.sweep_dir) as root:
        _tables(root, args.out_dir)
        if args.records_out is not None:
            print(f"{_records.save(root, args.records_out)} runs packed into {args.records_out}")


def _tables(sweep: Path, out_dir: Path) -> None:
    """The report files of the runs under ``sweep`` into ``out_dir``, and the printed reach table."""
    with tempfile.TemporaryDirectory() as tmp:
        report = write_report(
            [sweep],
            Path(tmp) / "report.md",
            title="Pre-trained vs from-scratch pruning, CPU size",
            group_by=["init"],
            html=False,
        )
        text = report.read_text()
        for png in Path(tmp).glob("*.png"):
            name = f"pretraining_{png.name}"
            shutil.copy(png, out_dir / name)
            text = text.replace(f"]({png.name})", f"]({name})")
        (out_dir / "pretraining_report.md").write_text(text)
    records = load_records(find_runs([sweep]))
    print(reach_table(largest_sparsity_within(records, group="init", tolerance=0.01)))


if __name__ == "__main__":
    main()
