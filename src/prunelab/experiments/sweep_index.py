"""The SQLite index of a sweep (``<sweep_dir>/sweep.db``): one row per run.

Each row records a run's stage, position, overrides and labels, its status (one of :data:`STATUSES`:
pending / running / done / failed), attempts, process id, error text and the summary fields listed in
:data:`SUMMARY_FIELDS`. The index is a record, not the source of truth: a run's ``summary.json`` is
(see :mod:`prunelab.experiments.sweep`), so a lost update is repaired when the sweep restarts, and an
index that cannot be read (garbage bytes, a truncated file, another program's database, a directory in
its place) is moved aside to ``sweep.db.corrupt-<time>`` and started afresh (:attr:`SweepIndex.recovered`);
the sweep then registers its runs again and marks those with a ``summary.json`` done.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunelab.errors import ConfigError
from prunelab.experiments.sweep_spec import RunSpec

__all__ = ["STATUSES", "SUMMARY_FIELDS", "SweepIndex"]

STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed")
"""The states of a run in the index."""

#: Summary fields copied into the index (the rest stays in each run's ``summary.json``).
SUMMARY_FIELDS: tuple[str, ...] = (
    "accuracy",
    "accuracy_dense",
    "sparsity",
    "params_nonzero",
    "params_total",
    "macs_effective",
    "wall_time_s",
)

_RUNS_TABLE = """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    overrides TEXT NOT NULL,
    vars TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    error TEXT,
    started REAL,
    finished REAL,
    accuracy REAL,
    accuracy_dense REAL,
    sparsity REAL,
    params_nonzero INTEGER,
    params_total INTEGER,
    macs_effective INTEGER,
    wall_time_s REAL
)"""
_META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def _tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """The user tables of ``conn``'s database with their column names."""
    names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {name: [col[1] for col in conn.execute(f"PRAGMA table_info('{name}')")] for (name,) in names}


@functools.cache
def _schema() -> dict[str, list[str]]:
    """The tables of an index this module writes, with their columns: anything else is not our index."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(_RUNS_TABLE)
        conn.execute(_META_TABLE)
        return _tables(conn)
    finally:
        conn.close()


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the file is not a readable database (rather than busy, locked or read-only)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    # A busy or locked index is another sweep process at work: never a reason to move it aside.
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
        not name and any(text in str(exc) for text in ("malformed", "not a database"))
    )


#: SQLite errors that are the user's to fix (permissions, a full disk, a process holding the lock), as
#: opposed to a bug in a statement here; they become one-line :class:`ConfigError` s.
_USER_ERRORS = (
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_PERM",
    "SQLITE_AUTH",
)


def _user_error(path: Path, exc: sqlite3.Error) -> ConfigError | None:
    """``exc`` as a one-line error naming ``path`` when the user can fix it, else ``None`` (a bug)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if not name.startswith(_USER_ERRORS):
        return None
    return ConfigError(
        f"{path}: cannot use the sweep index ({exc}); check its permissions and the free disk space, "
        "or stop the process that holds it"
    )


class SweepIndex:
    """The sweep's SQLite index (``sweep.db``): one row per run with status, error and summary fields.

    Every method opens its own short connection, so worker threads and separate processes (e.g. a
    report written while the sweep runs) can use it at the same time; WAL mode lets readers proceed
    while a status update is written, and each update is a single transaction.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        #: ``None``, or one line saying what was wrong with the file found at ``path`` and where it was
        #: moved; the index is then empty and its runs must be registered again.
        self.recovered: str | None = None
        problem = self._damage()
        if problem is not None:
            aside = self._move_aside()
            self.recovered = f"{self.path} {problem}; moved it to {aside.name}"
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_RUNS_TABLE)
            conn.execute(_META_TABLE)

    def _damage(self) -> str | None:
        """What makes the file at ``path`` unusable as this index, or ``None`` (fine, or absent)."""
        if not self.path.exists():
            return None
        if not self.path.is_file():
            return "is a directory, not an index file" if self.path.is_dir() else "is not a regular file"
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
            try:
                check = str(conn.execute("PRAGMA quick_check").fetchone()[0])
                if check != "ok":
                    return f"is damaged ({check.splitlines()[0]})"
                tables = _tables(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                return f"is not a readable SQLite database ({exc})"
            raise _user_error(self.path, exc) or exc from None
        # A crash between creating the two tables leaves one of them: that is still this index.
        if any(_schema().get(name) != columns for name, columns in tables.items()):
            return f"is not a sweep index (tables: {', '.join(sorted(tables))})"
        return None

    def _move_aside(self) -> Path:
        """Rename the file at ``path`` (and its WAL files) to a free ``<name>.corrupt-<time>``; returns it."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        self.path.rename(aside)
        for suffix in ("-wal", "-shm"):
            # A write-ahead log belongs to the old file; replayed into a new one it would be garbage.
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(aside.with_name(aside.name + suffix))
        return aside

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
            try:
                with conn:  # one transaction: committed on success, rolled back on error
                    yield conn
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            raise _user_error(self.path, exc) or exc from None

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` in the ``meta`` table."""
        with self._connect() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def register(self, run: RunSpec, run_dir: Path) -> None:
        """Add ``run`` as pending if it is new; refresh its description otherwise (status untouched)."""
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, stage, position, status, overrides, vars, run_dir) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "stage = excluded.stage, position = excluded.position, overrides = excluded.overrides, "
                "vars = excluded.vars, run_dir = excluded.run_dir",
                (
                    run.id,
                    run.stage,
                    run.position,
                    json.dumps(run.overrides, default=str),
                    json.dumps(run.vars, default=str),
                    str(run_dir),
                ),
            )

    def mark_running(self, run_id: str, pid: int | None) -> None:
        """Record that ``run_id`` was started by process ``pid`` (one more attempt).

        ``pid`` is the local worker process; ``None`` for a run handed to a Ray or SLURM cluster.
        """
        with self._connect() as conn:
            conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, error = NULL, started = ?, "
                "attempts = attempts + 1 WHERE id = ?",
                (pid, time.time(), run_id),
            )

    def mark_done(self, run_id: str, summary: dict[str, Any]) -> None:
        """Record that ``run_id`` finished, with its summary fields."""
        values = [summary.get(name) for name in SUMMARY_FIELDS]
        assignments = ", ".join(f"{name} = ?" for name in SUMMARY_FIELDS)
        with self._connect() as conn:
            conn.execute(
                f"UPDATE runs SET status = 'done', error = NULL, finished = ?, {assignments} WHERE id = ?",
                (time.time(), *values, run_id),
            )

    def mark_pending(self, run_id: str, note: str | None = None) -> None:
        """Put ``run_id`` back to pending (e.g. interrupted), keeping ``note`` as its error text."""
        with self._connect() as conn:
            conn.execute("UPDATE runs SET status = 'pending', error = ? WHERE id = ?", (note, run_id))

    def mark_failed(self, run_id: str, error: str) -> None:
        """Record that ``run_id`` failed with ``error``."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE runs SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                (error, time.time(), run_id),
            )

    def rows(self) -> list[dict[str, Any]]:
        """Every run as a mapping of column → value, in sweep order."""
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY position")]

    def counts(self) -> dict[str, int]:
        """Number of runs per status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self.rows():
            counts[row["status"]] += 1
        return counts
