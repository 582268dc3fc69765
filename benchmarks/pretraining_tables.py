"""Tables and plots of benchmarks/pretraining.md from a finished (or partial) study sweep.

Usage::

    python benchmarks/pretraining_tables.py SWEEP_DIR [--out-dir benchmarks/results]

Writes ``pretraining_report.md`` (grouped by initialisation, mean ± std over seeds, per-run table) and the
plots ``pretraining_accuracy_vs_{params,macs,latency}.png`` into ``--out-dir`` and prints the
"largest sparsity within 1 pp of its own dense accuracy" table.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from prunelab.experiments.report import find_runs, load_records, write_report
from prunelab.methods.pretraining import largest_sparsity_within, reach_table


def main() -> None:
    """Write the report files and print the reach table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = write_report(
            [args.sweep_dir],
            Path(tmp) / "report.md",
            title="Pre-trained vs from-scratch pruning, CPU size",
            group_by=["init"],
            html=False,
        )
        text = report.read_text()
        for png in Path(tmp).glob("*.png"):
            name = f"pretraining_{png.name}"
            shutil.copy(png, args.out_dir / name)
            text = text.replace(f"]({png.name})", f"]({name})")
        (args.out_dir / "pretraining_report.md").write_text(text)
    records = load_records(find_runs([args.sweep_dir]))
    print(reach_table(largest_sparsity_within(records, group="init", tolerance=0.01)))


if __name__ == "__main__":
    main()
