"""Reports over run directories: a markdown table and accuracy-vs-size plots.

``prunelab report RUN_DIR ...`` reads each run's ``summary.json`` (a directory that is not itself a run
is searched for runs below it) and writes ``report.md`` with one row per run and a PNG plot of test
accuracy against remaining (non-zero) parameters, one line per method.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunelab._io import atomic_write_text
from prunelab.errors import ConfigError

#: Columns of the report table: (summary key, header, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "run", "{}"),
    ("method", "method", "{}"),
    ("sparsity", "sparsity", "{:.3f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("accuracy_dense", "dense acc.", "{:.4f}"),
    ("params_nonzero", "non-zero params", "{:,}"),
    ("params_total", "params", "{:,}"),
    ("compression", "compression", "{:.2f}x"),
    ("macs_effective", "eff. MACs", "{:,}"),
    ("macs_dense", "dense MACs", "{:,}"),
)


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (those holding ``summary.json``) at or below ``paths``, sorted.

    Raises:
        ConfigError: if a path does not exist or holds no run.
    """
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"{path}: no such run directory; pass a directory written by 'prunelab run'")
        found = (
            [path]
            if (path / "summary.json").is_file()
            else sorted(p.parent for p in path.rglob("summary.json"))
        )
        if not found:
            raise ConfigError(f"{path}: holds no summary.json; is the run finished?")
        runs.extend(found)
    return runs


def load_summaries(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """Read each run's ``summary.json``, adding ``run_dir``."""
    rows = []
    for run in runs:
        try:
            row = json.loads((run / "summary.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{run / 'summary.json'}: unreadable ({exc}); re-run that recipe") from None
        row["run_dir"] = str(run)
        rows.append(row)
    return rows


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    """A GitHub-flavoured markdown table of ``rows`` with the given ``(key, header, format)`` columns."""
    lines = [
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def plot_accuracy(
    rows: Sequence[dict[str, Any]],
    path: Path,
    x: str = "params_nonzero",
    group: str = "method",
    xlabel: str = "remaining (non-zero) parameters",
) -> Path:
    """Plot test accuracy against ``x`` with one line per ``group`` value; dense points are stars."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("method") != "dense":  # dense runs are drawn once, as the reference star
            groups[str(row.get(group))].append(row)
    for name, members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r.get(x) or 0)
        ax.plot([r.get(x) for r in members], [100 * r["accuracy"] for r in members], marker="o", label=name)
    dense = [r for r in rows if r.get("params_dense_nonzero")]
    if dense:
        ref = max(dense, key=lambda r: r.get("accuracy_dense") or 0)
        ax.plot(
            [ref["params_dense_nonzero"]],
            [100 * ref["accuracy_dense"]],
            marker="*",
            markersize=12,
            color="black",
            linestyle="none",
            label="dense",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    paths: Iterable[str | Path], out: str | Path | None = None, title: str = "prunelab report"
) -> Path:
    """Write ``report.md`` (and ``accuracy_vs_params.png`` beside it) for the runs under ``paths``.

    Args:
        paths: run directories, or directories containing runs.
        out: the markdown file to write; default ``report.md`` in the first path.
        title: the report's heading.

    Returns:
        The path of the markdown report.
    """
    paths = list(paths)
    runs = find_runs(paths)
    rows = sorted(load_summaries(runs), key=lambda r: (str(r.get("method")), -(r.get("params_nonzero") or 0)))
    out_path = Path(out) if out is not None else Path(paths[0]) / "report.md"
    plot = plot_accuracy(rows, out_path.with_name("accuracy_vs_params.png"))
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} run(s). Accuracy is final top-1 on the test split; parameters count every learnable",
        "tensor (BatchNorm included) and masked weights as zeros; compression = params / non-zero params;",
        "effective MACs scale each conv/linear layer's MACs by its weight density.",
        "",
        markdown_table(rows),
        "",
        f"![accuracy vs remaining parameters]({plot.name})",
        "",
    ]
    atomic_write_text(out_path, "\n".join(lines))
    return out_path
