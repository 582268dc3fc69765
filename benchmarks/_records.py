"""Compact per-run records behind a study's tables (imported by the table scripts beside it).

A sweep's run directories hold checkpoints and logs that are too large to commit, but a study's tables
read only three small files of each run: ``summary.json``, ``rounds.csv`` and ``config.yaml``. This
module packs those three files of every finished run under a sweep directory into one JSON record
(``save``), and writes them back as run directories (``unpack``), so a table script run on the
committed record re-derives every figure of its page exactly as it did from the sweep:

    python benchmarks/interspace_report.py sweeps/interspace_cpu --records-out benchmarks/results/interspace_runs.json
    python benchmarks/interspace_report.py benchmarks/results/interspace_runs.json   # the same tables
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The files of a run that the tables read; anything else (checkpoints, logs) is left out.
FILES = ("summary.json", "rounds.csv", "config.yaml")
FORMAT = "prunelab.study-records"


def save(root: Path, out: Path) -> int:
    """Pack :data:`FILES` of every finished run (a ``summary.json``) under ``root`` into ``out``.

    Returns the number of runs packed. Runs are keyed by their path relative to ``root``, so two
    stages' runs of the same name stay apart.
    """
    runs: dict[str, dict[str, str]] = {}
    for summary in sorted(root.rglob("summary.json")):
        run = summary.parent
        runs[str(run.relative_to(root))] = {
            name: (run / name).read_text() for name in FILES if (run / name).is_file()
        }
    text = json.dumps({"format": FORMAT, "runs": runs}, indent=1, sort_keys=True) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.tmp")
    partial.write_text(text)
    partial.replace(out)  # atomic: a half-written record never replaces a good one
    return len(runs)


@contextmanager
def sweep_dir(path: Path) -> Iterator[Path]:
    """``path`` itself when it is a sweep directory; for a record file, its runs unpacked in a temporary one."""
    if path.is_dir():
        yield path
        return
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise SystemExit(f"{path}: not a study record written by benchmarks/_records.py")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, files in record["runs"].items():
            run = root / name
            run.mkdir(parents=True, exist_ok=True)
            for file, text in files.items():
                if file in FILES:
                    (run / file).write_text(text)
        yield root
