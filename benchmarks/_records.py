"""Compact per-run records behind a study's tables (imported by the table scripts beside it).

A sweep's run directories hold checkpoints and logs that are too large to commit, but a study's tables
read only a few small files of each run (``summary.json``, ``rounds.csv``, ``config.yaml``, and the
per-epoch curve ``metrics.jsonl`` behind a "trained until the loss levels off" statement) and the
run's row in the sweep index (``sweep.db``: its stage and its ``vars.*`` labels, e.g. ``init``, by
which the tables group). This module packs those of every finished run under a sweep directory into
one JSON record (``save``), and writes them back as a sweep directory (``sweep_dir``: run directories
and an index holding the same rows), so a table script run on the committed record re-derives every
figure of its page exactly as it did from the sweep:

    python benchmarks/interspace_report.py sweeps/interspace_cpu --records-out benchmarks/results/interspace_runs.json
    python benchmarks/interspace_report.py benchmarks/results/interspace_runs.json   # the same tables
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunelab.experiments.sweep_index import SweepIndex
from prunelab.experiments.sweep_spec import RunSpec

#: The files of a run that the tables and their pages read; anything else (checkpoints, logs) is left out.
FILES = ("summary.json", "rounds.csv", "config.yaml", "metrics.jsonl")
FORMAT = "prunelab.study-records"
#: The columns of a run's sweep-index row that a record keeps (what the tables read of it).
INDEX_COLUMNS = ("id", "stage", "position", "overrides", "vars")


def _index_rows(sweep: Path) -> dict[str, dict[str, Any]]:
    """The kept columns of ``sweep/sweep.db``'s rows by run id ({} without an index)."""
    db = sweep / "sweep.db"
    if not db.is_file():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(f"SELECT {', '.join(INDEX_COLUMNS)} FROM runs").fetchall()
    finally:
        conn.close()
    return {row["id"]: {c: row[c] for c in INDEX_COLUMNS} for row in rows}


def save(root: Path, out: Path) -> int:
    """Pack :data:`FILES` and the index row of every finished run (a ``summary.json``) under ``root``.

    Returns the number of runs packed. Runs are keyed by their path relative to ``root``, so two
    stages' runs of the same name stay apart.
    """
    runs: dict[str, dict[str, str]] = {}
    index: dict[str, dict[str, Any]] = {}
    indexes: dict[Path, dict[str, dict[str, Any]]] = {}
    for summary in sorted(root.rglob("summary.json")):
        run = summary.parent
        key = str(run.relative_to(root))
        runs[key] = {name: (run / name).read_text() for name in FILES if (run / name).is_file()}
        sweep = run.parent.parent  # SWEEP/runs/<id>
        if sweep not in indexes:
            indexes[sweep] = _index_rows(sweep)
        if run.name in indexes[sweep]:
            index[key] = indexes[sweep][run.name]
    record = {"format": FORMAT, "runs": runs, "index": index}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
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
            row = record.get("index", {}).get(name)
            if row is not None:
                # The run's index row, as the sweep wrote it, beside the runs/ folder it sits in.
                spec = RunSpec(
                    id=row["id"],
                    stage=row["stage"],
                    position=row["position"],
                    overrides=json.loads(row["overrides"]),
                    vars=json.loads(row["vars"]),
                    recipe={},
                )
                db = SweepIndex(run.parent.parent / "sweep.db")
                db.register(spec, run)
                db.mark_done(spec.id, json.loads(files["summary.json"]))
        yield root
