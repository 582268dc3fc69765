"""Reports over run directories and sweeps: markdown and HTML tables, grouped statistics and plots.

``prunelab report PATH ...`` reads each run's ``summary.json`` (a directory that is not itself a run is
searched for runs below it; a sweep directory also contributes its ``sweep.db`` labels and failures)
and writes, beside ``report.md``:

- ``report.md`` — a grouped table (mean ± sample standard deviation over the runs of each group and
  target sparsity, usually the seeds), the per-run table and the failed runs of a sweep;
- ``report.html`` — the same content as one self-contained page (plots embedded, no extra files),
  rendered from the Jinja2 template ``templates/report.html.j2`` shipped in the package;
- ``accuracy_vs_compression.png``, ``accuracy_vs_params.png``, ``accuracy_vs_macs.png`` — test accuracy
  against compression (dense parameters / non-zero parameters), remaining non-zero parameters and the
  MACs ratio (dense MACs / effective MACs), one line per group, error bars = one standard deviation;
- ``accuracy_vs_speedup.png`` — accuracy against the measured speed-up over the dense model, one panel
  per backend and batch size; ``accuracy_vs_latency.png`` — against the measured latency. Both show only
  runs whose network was physically made smaller (surgery): a masked network keeps the dense shape, so
  the timing differences of such runs are measurement noise.

Dense runs (``method: dense``) are drawn as reference lines (their accuracy, ± one std as a band, and
their position on the x axis), not as points; ratio axes mark 1x, the dense model. An axis whose values
span more than a factor of :data:`LOG_AXIS_SPAN` is logarithmic.

Sparsity, compression, MACs ratio and measured speed-up are relative to the dense network of each
run (see :mod:`prunelab.experiments.runner`), so structured runs whose surgery made the model smaller
show what they removed; summaries written before that convention are brought to it on reading.

Each run becomes a flat *record*: the ``summary.json`` fields, every recipe field of its ``config.yaml``
under its dotted name (``prune.scope``, ``model.init``, ``data.image_size``), and the labels a sweep
gave it (``vars.init`` in the sweep file → ``init``). ``--group-by`` takes any of these names. Measured
speed-ups become ``speedup.<backend>.<batch size>`` fields (see :data:`BACKENDS`).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunelab._io import atomic_write_text, ensure_writable_dir
from prunelab.dataclass_yaml import load_yaml_file
from prunelab.errors import ConfigError

__all__ = [
    "BACKENDS",
    "COLUMNS",
    "LOG_AXIS_SPAN",
    "PLOTS",
    "aggregate",
    "find_runs",
    "load_records",
    "load_summaries",
    "markdown_table",
    "plot_accuracy",
    "plot_speedup",
    "render_html",
    "speedup_series",
    "write_report",
]

#: Columns of the per-run table: (record key, header, format). The measured speed-ups follow them, one
#: column per backend and batch size found in the runs (:func:`speedup_series`).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "run", "{}"),
    ("method", "method", "{}"),
    ("network", "network", "{}"),
    ("sparsity", "sparsity", "{:.3f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("accuracy_dense", "dense acc.", "{:.4f}"),
    ("params_nonzero", "non-zero params", "{:,}"),
    ("params_total", "params", "{:,}"),
    ("params_dense_total", "dense params", "{:,}"),
    ("compression", "compression", "{:.2f}x"),
    ("macs_effective", "eff. MACs", "{:,}"),
    ("macs_dense", "dense MACs", "{:,}"),
    ("macs_ratio", "MACs ratio", "{:.2f}x"),
    ("latency", "latency (ms)", "{:.3f}"),
)

#: The plots of a report with one panel: (record key on the x axis, file name, axis label). The
#: speed-up plot has a panel per series (:func:`plot_speedup`).
PLOTS: tuple[tuple[str, str, str], ...] = (
    ("compression", "accuracy_vs_compression.png", "compression (dense params / non-zero params)"),
    ("params_nonzero", "accuracy_vs_params.png", "remaining (non-zero) parameters"),
    ("macs_ratio", "accuracy_vs_macs.png", "MACs ratio (dense MACs / effective MACs)"),
    ("latency", "accuracy_vs_latency.png", "measured latency (ms)"),
)

#: File name of the accuracy vs measured speed-up plot.
SPEEDUP_PLOT = "accuracy_vs_speedup.png"

#: x keys that are ratios to the dense model: the dense model sits at exactly 1x on them.
_RATIOS = frozenset({"compression", "macs_ratio"})

#: x keys measured by timing: plotted only for runs whose network was physically made smaller.
_TIMED = frozenset({"latency"})

#: Where a speed-up was measured, in report order: record backend name → label. ``eager_cpu``,
#: ``eager_cuda`` and ``onnxruntime`` come from a structured method's ``speedup`` block (dense and
#: compacted network timed interleaved in one process after pruning); ``eval`` from the run's
#: ``latency_speedup`` (the dense network timed before pruning, the final one at the end of the run).
BACKENDS: dict[str, str] = {
    "eager_cpu": "PyTorch CPU",
    "eager_cuda": "PyTorch CUDA",
    "onnxruntime": "ONNX Runtime",
    "eval": "eval latency",
}

#: An axis whose positive values span more than this factor is drawn logarithmic.
LOG_AXIS_SPAN = 10.0

#: Numeric record keys summarised (mean ± std) in the grouped table; the speed-up series are added.
AGGREGATED: tuple[str, ...] = (
    "accuracy",
    "accuracy_dense",
    "sparsity",
    "compression",
    "params_nonzero",
    "macs_effective",
    "macs_ratio",
    "latency",
)


#: What a report input should be, in its error messages.
_INPUTS = "pass run directories written by 'prunelab run', folders of runs or a sweep directory"


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (those holding ``summary.json``) at or below ``paths``, sorted.

    A path to a ``summary.json`` itself stands for its run directory.

    Raises:
        ConfigError: if a path does not exist, is another file, or holds no run.
    """
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.name == "summary.json" and path.is_file():
            path = path.parent
        if not path.exists():
            raise ConfigError(f"{path}: no such run directory; {_INPUTS}")
        if not path.is_dir():
            raise ConfigError(f"{path}: is a file, not a run directory; {_INPUTS}")
        found = (
            [path]
            if (path / "summary.json").is_file()
            else sorted(p.parent for p in path.rglob("summary.json") if p.is_file())
        )
        if not found:
            raise ConfigError(
                f"{path}: holds no finished run (no summary.json at or below it); {_INPUTS}, "
                "or finish the runs first (prunelab run --resume)"
            )
        runs.extend(found)
    return runs


def _fix(run: Path) -> str:
    """The fix for a damaged file of run ``run``."""
    return f"re-run that run (prunelab run RECIPE --out {run} --overwrite) or leave it out of the report"


def load_summaries(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """Read each run's ``summary.json``, adding ``run_dir``.

    Raises:
        ConfigError: one line naming a ``summary.json`` that is unreadable, not JSON, not an object,
            lacks the keys of a run summary or has a malformed ``latency_ms``, and the fix.
    """
    from prunelab.experiments.runner import read_summary

    rows = []
    for run in runs:
        row = read_summary(run, _fix(run))
        latency = row.get("latency_ms")
        if latency is not None and not (
            isinstance(latency, dict)
            and all(str(k).isdigit() and isinstance(v, (int, float)) for k, v in latency.items())
        ):
            raise ConfigError(
                f"{run / 'summary.json'}: latency_ms is not a mapping of batch size to milliseconds; {_fix(run)}"
            )
        row["run_dir"] = str(run)
        rows.append(_dense_relative(row))
    return rows


def _dense_relative(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with sparsity, compression and MACs ratio against the dense network.

    Summaries from before that convention (no ``macs_ratio``) computed them on the final model alone,
    which hides what surgery removed; they are recomputed from ``params_dense_total``.
    """
    from prunelab.methods.base import dense_relative

    keys = ("params_total", "params_nonzero", "macs_dense", "macs_effective", "params_dense_total")
    if "macs_ratio" in summary:
        return summary
    if not all(isinstance(summary.get(k), (int, float)) for k in keys):
        macs = summary.get("macs_dense"), summary.get("macs_effective")
        if all(_is_number(m) for m in macs) and macs[1] > 0:  # no dense totals: the final model's MACs
            return {**summary, "macs_ratio": macs[0] / macs[1]}
        return summary
    dense = {"params_total": summary["params_dense_total"], "macs_dense": summary["macs_dense"]}
    return {**summary, **dense_relative(summary, dense)}


def _load_config(run: Path) -> dict[str, Any]:
    """The recipe fields of ``run/config.yaml`` (none when the run has no config.yaml).

    Raises:
        ConfigError: one line naming a ``config.yaml`` that is unreadable, binary, invalid YAML or not
            a mapping, and the fix.
    """
    config = run / "config.yaml"
    if not config.exists():
        return {}
    try:
        data = load_yaml_file(config, "run config")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or {_fix(run)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{config}: holds a {type(data).__name__}, not a recipe mapping; {_fix(run)}")
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flatten(value, f"{dotted}."))
        out[dotted] = value
    return out


def _sweep_rows(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The rows of ``sweep_dir/sweep.db`` by run id (empty when there is no index)."""
    db = sweep_dir / "sweep.db"
    if not db.is_file():
        return {}
    conn = sqlite3.connect(db, timeout=30.0)
    try:
        conn.row_factory = sqlite3.Row
        return {row["id"]: dict(row) for row in conn.execute("SELECT * FROM runs")}
    except sqlite3.Error:
        return {}  # not a sweep index we understand: report the runs without labels
    finally:
        conn.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _network(summary: dict[str, Any]) -> str:
    """``dense``, ``compacted`` (surgery made the network physically smaller) or ``masked``."""
    if summary.get("method") == "dense":
        return "dense"
    total, dense_total = summary.get("params_total"), summary.get("params_dense_total")
    smaller = _is_number(total) and _is_number(dense_total) and total < dense_total
    return "compacted" if isinstance(summary.get("surgery"), dict) or smaller else "masked"


def _speedups(summary: dict[str, Any]) -> dict[str, float]:
    """The measured speed-ups of a summary as ``speedup.<backend>.<batch size>`` fields."""
    out: dict[str, float] = {}
    block = summary.get("speedup")
    if isinstance(block, dict):
        for backend, by_batch in block.items():
            if backend == "eval" or not isinstance(by_batch, dict):
                continue  # "eval" is this report's name for latency_speedup; scalars are metadata
            for batch, cell in by_batch.items():
                if str(batch).isdigit() and isinstance(cell, dict) and _is_number(cell.get("speedup")):
                    out[f"speedup.{backend}.{batch}"] = float(cell["speedup"])
    speedup = summary.get("latency_speedup")
    if isinstance(speedup, dict):
        for batch, value in speedup.items():
            if str(batch).isdigit() and _is_number(value):
                out[f"speedup.eval.{batch}"] = float(value)
    return out


def _skipped_backends(summary: dict[str, Any]) -> dict[str, str]:
    """Backends of a summary's ``speedup`` block that were not timed, with the reason."""
    block = summary.get("speedup")
    if not isinstance(block, dict):
        return {}
    return {b: str(v["skipped"]) for b, v in block.items() if isinstance(v, dict) and "skipped" in v}


def speedup_series(records: Sequence[dict[str, Any]]) -> list[str]:
    """The ``speedup.<backend>.<batch size>`` fields present in ``records``: backends in :data:`BACKENDS`
    order (others after them, alphabetically), then batch sizes ascending."""
    keys = {k for r in records for k in r if k.startswith("speedup.") and _is_number(r[k])}
    order = list(BACKENDS)

    def rank(key: str) -> tuple[int, str, int]:
        _, backend, batch = key.split(".", 2)
        return (order.index(backend) if backend in order else len(order), backend, int(batch))

    return sorted(keys, key=rank)


def _series_label(key: str) -> str:
    _, backend, batch = key.split(".", 2)
    return f"{BACKENDS.get(backend, backend)}, batch {batch}"


def load_records(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """Flat records of ``runs``: summary fields, dotted recipe fields and sweep labels.

    Summary fields win over recipe fields of the same name; the sweep label ``vars.X`` is available as
    ``X`` unless the summary already has that key, and as ``vars.X`` always. ``network`` is ``dense``,
    ``compacted`` (surgery removed channels) or ``masked``. ``latency`` is the measured latency at the
    smallest batch size (``latency_batch``). Only compacted runs get the measured speed-ups, as
    ``speedup.<backend>.<batch size>`` (see :data:`BACKENDS`): a dense or masked network has the dense
    shape, so its timing differences from the dense model are noise.
    """
    records = []
    sweeps: dict[Path, dict[str, dict[str, Any]]] = {}
    for summary in load_summaries(runs):
        run_dir = Path(summary["run_dir"])
        record: dict[str, Any] = _flatten(_load_config(run_dir))
        sweep_dir = run_dir.parent.parent
        if sweep_dir not in sweeps:
            sweeps[sweep_dir] = _sweep_rows(sweep_dir)
        row = sweeps[sweep_dir].get(run_dir.name)
        labels = json.loads(row["vars"]) if row and row.get("vars") else {}
        if row:
            record["run_id"] = row["id"]
            record["stage"] = row["stage"]
        for key, value in labels.items():
            record[f"vars.{key}"] = value
        record.update(summary)
        for key, value in labels.items():
            record.setdefault(key, value)
        record["network"] = _network(summary)
        latency = summary.get("latency_ms")
        if isinstance(latency, dict) and latency:
            batch = min(latency, key=lambda b: int(b))
            record["latency"] = latency[batch]
            record["latency_batch"] = int(batch)
        if record["network"] == "compacted":
            record.update(_speedups(summary))
        records.append(record)
    return records


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _md_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` inside a cell is escaped."""

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *map(line, cells)])


def _table_cells(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]
) -> tuple[list[str], list[list[str]]]:
    return [h for _, h, _ in columns], [[_cell(r.get(k), fmt) for k, _, fmt in columns] for r in rows]


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    """A GitHub-flavoured markdown table of ``rows`` with the given ``(key, header, format)`` columns."""
    return _md_table(*_table_cells(rows, columns))


def _sort_key(value: Any) -> tuple[int, Any]:
    # Numbers before strings and None last, so mixed-type columns still sort deterministically.
    if value is None:
        return (2, "")
    if _is_number(value):
        return (0, value)
    return (1, str(value))


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, dict)) else value


def aggregate(
    records: Sequence[dict[str, Any]],
    group_by: Sequence[str] = ("method",),
    x: str = "target_sparsity",
) -> list[dict[str, Any]]:
    """Group ``records`` by ``group_by`` and ``x`` and summarise each group over its runs (the seeds).

    Args:
        records: flat run records (see :func:`load_records`).
        group_by: the fields that define a group (a line in the plots).
        x: the field that orders a group's points (a run's target sparsity).

    Returns:
        One row per (group, x) with the group fields, ``x``, ``n`` (runs), ``seeds`` (distinct seeds),
        ``pooled`` (True when two runs share a seed, i.e. different settings were averaged: add a
        group-by field), ``dense`` (every run is a dense run: a reference, not a point),
        ``compacted`` (every run's network was physically made smaller) and ``<key>_mean`` /
        ``<key>_std`` for each key of :data:`AGGREGATED` and each speed-up series present.
        The std is the sample standard deviation (n - 1), 0.0 for a single run.

    Raises:
        ConfigError: if no record has one of the ``group_by`` fields (a typo).
    """
    for name in group_by:
        if records and all(name not in r for r in records):
            known = sorted({k for r in records for k in r if not isinstance(r[k], dict)})
            raise ConfigError(f"--group-by {name}: no run has this field; known fields: {', '.join(known)}")
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        key = tuple(_hashable(record.get(g)) for g in group_by) + (record.get(x) or 0.0,)
        cells[key].append(record)
    names = [*AGGREGATED, *speedup_series(records)]
    out = []
    for key in sorted(cells, key=lambda k: tuple(_sort_key(v) for v in k)):
        members = cells[key]
        seeds = [_hashable(m.get("seed")) for m in members]
        row: dict[str, Any] = dict(zip(group_by, key[:-1], strict=True))
        row[x] = key[-1]
        row["n"] = len(members)
        row["seeds"] = len(set(seeds))
        row["pooled"] = len(set(seeds)) < len(seeds)
        row["dense"] = all(m.get("method") == "dense" for m in members)
        row["compacted"] = all(m.get("network") == "compacted" for m in members)
        for name in names:
            values = [float(m[name]) for m in members if _is_number(m.get(name))]
            if not values:
                continue
            row[f"{name}_mean"] = statistics.fmean(values)
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(row)
    return out


def _pm(row: dict[str, Any], name: str, scale: float, digits: int, unit: str = "") -> str:
    if f"{name}_mean" not in row:
        return "–"
    return f"{scale * row[f'{name}_mean']:.{digits}f}{unit} ± {scale * row[f'{name}_std']:.{digits}f}"


def _grouped_cells(
    rows: Sequence[dict[str, Any]], group_by: Sequence[str], x: str, series: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    headers = [
        *group_by, x, "n", "accuracy (%)", "dense acc. (%)", "sparsity", "compression", "MACs ratio",
        "non-zero params", "eff. MACs", "latency (ms)", *(f"speed-up {_series_label(s)}" for s in series),
    ]  # fmt: skip
    cells = []
    for row in rows:
        line = [_cell(row.get(g), "{}") for g in group_by]
        line += [
            _cell(row.get(x), "{:g}"),
            f"{row['n']}" + (" (pooled)" if row["pooled"] else ""),
            _pm(row, "accuracy", 100, 2),
            _pm(row, "accuracy_dense", 100, 2),
            _cell(row.get("sparsity_mean"), "{:.3f}"),
            _cell(row.get("compression_mean"), "{:.2f}x"),
            _cell(row.get("macs_ratio_mean"), "{:.2f}x"),
            _cell(round(row["params_nonzero_mean"]) if "params_nonzero_mean" in row else None, "{:,}"),
            _cell(round(row["macs_effective_mean"]) if "macs_effective_mean" in row else None, "{:,}"),
            _pm(row, "latency", 1, 3),
            *(_pm(row, s, 1, 2, "x") for s in series),
        ]
        cells.append(line)
    return headers, cells


def grouped_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str], x: str = "target_sparsity") -> str:
    """The markdown table of :func:`aggregate`'s rows: accuracies in %, mean ± std, a column per speed-up."""
    series = speedup_series(
        [{k[: -len("_mean")]: v for k, v in r.items() if k.endswith("_mean")} for r in rows]
    )
    return _md_table(*_grouped_cells(rows, group_by, x, series))


def _label(row: dict[str, Any], group_by: Sequence[str]) -> str:
    return ", ".join(f"{row.get(g)}" for g in group_by) or "runs"


def _colours(rows: Sequence[dict[str, Any]], group_by: Sequence[str]) -> dict[str, str]:
    """One colour per group label, the same in every plot of a report."""
    labels = sorted({_label(r, group_by) for r in rows})
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _draw(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    x: str,
    group_by: Sequence[str],
    colours: dict[str, str],
    *,
    ratio: bool,
    compacted_only: bool,
) -> bool:
    """Draw accuracy against ``x`` on ``ax``: a line per group, dense rows as reference lines.

    Returns:
        False (nothing drawn) when no pruned row has ``x``.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    has = [r for r in rows if f"{x}_mean" in r and "accuracy_mean" in r]
    pruned = [r for r in has if not r["dense"] and (r["compacted"] or not compacted_only)]
    dense = [r for r in rows if r.get("dense") and "accuracy_mean" in r]
    if not pruned:
        if not has or not all(r.get("dense") for r in rows):
            return False  # pruned runs exist but none has x (e.g. only masked runs on a timed axis)
        # Only dense runs: nothing to compare against, so they are the points.
        pruned, dense = [r for r in has if r["dense"]], []
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in pruned:
        lines[_label(row, group_by)].append(row)
    xs = [r[f"{x}_mean"] for r in pruned]
    for label, members in sorted(lines.items()):
        members = sorted(members, key=lambda r: r[f"{x}_mean"])
        ax.errorbar(
            [r[f"{x}_mean"] for r in members],
            [100 * r["accuracy_mean"] for r in members],
            yerr=[100 * r["accuracy_std"] for r in members],
            marker="o", markersize=4, capsize=3, color=colours.get(label), label=label,
        )  # fmt: skip
    references: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in dense:
        references[_label(row, group_by)].append(row)
    for label, members in sorted(references.items()):
        accuracy = statistics.fmean(100 * r["accuracy_mean"] for r in members)
        spread = max(100 * r["accuracy_std"] for r in members)
        # A group of its own (grouped by method: "dense") gets black; a dense run inside a pruned
        # group (grouped by init) gets that group's colour.
        colour = colours.get(label) if label in lines else "black"
        name = "dense" if label == "dense" else f"{label} (dense)"
        ax.axhline(accuracy, color=colour, linestyle="--", linewidth=1.2, label=f"{name}: {accuracy:.1f} %")
        if spread > 0:
            ax.axhspan(accuracy - spread, accuracy + spread, color=colour, alpha=0.08, linewidth=0)
        # Where the dense model sits on the x axis (its parameters, its latency); 1x on a ratio axis.
        at = [r[f"{x}_mean"] for r in members if f"{x}_mean" in r]
        if not ratio and at:
            ax.axvline(statistics.fmean(at), color=colour, linestyle=":", linewidth=1)
            xs.append(statistics.fmean(at))
    if ratio:
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)  # the dense model, by definition
        xs.append(1.0)
    positive = [v for v in xs if v > 0]
    if positive and max(positive) / min(positive) > LOG_AXIS_SPAN:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    return True


def _figure(path: Path, fig: Any) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(
    rows: Sequence[dict[str, Any]],
    path: Path,
    x: str = "params_nonzero",
    group_by: Sequence[str] = ("method",),
    xlabel: str = "remaining (non-zero) parameters",
    title: str | None = None,
    *,
    ratio: bool | None = None,
    compacted_only: bool | None = None,
) -> Path | None:
    """Plot mean test accuracy (± std) against mean ``x`` for :func:`aggregate`'s rows, a line per group.

    Dense rows are drawn as reference lines (accuracy, ± std band, their ``x``), not as points.

    Args:
        ratio: ``x`` is a ratio to the dense model (dense = 1x, marked); default: ``x`` is compression,
            the MACs ratio or a speed-up series.
        compacted_only: plot only rows whose networks were physically made smaller; default: for
            timed ``x`` (latency), where masked networks differ from the dense one only by noise.

    Returns:
        ``path``, or ``None`` when no pruned row has ``x`` (e.g. latency was not measured).
    """
    plt = _pyplot()
    ratio = x in _RATIOS or x.startswith("speedup.") if ratio is None else ratio
    compacted_only = x in _TIMED or x.startswith("speedup.") if compacted_only is None else compacted_only
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    if not _draw(ax, rows, x, group_by, _colours(rows, group_by), ratio=ratio, compacted_only=compacted_only):
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title=", ".join(group_by) or None, title_fontsize=8)
    return _figure(path, fig)


def plot_speedup(
    rows: Sequence[dict[str, Any]],
    path: Path,
    series: Sequence[str],
    group_by: Sequence[str] = ("method",),
) -> Path | None:
    """Accuracy against measured speed-up over the dense model: one panel per series, compacted runs only.

    Args:
        rows: :func:`aggregate`'s rows.
        series: ``speedup.<backend>.<batch size>`` fields (:func:`speedup_series`).

    Returns:
        ``path``, or ``None`` when no compacted row has a measured speed-up.
    """
    plt = _pyplot()
    colours = _colours(rows, group_by)
    drawn = [s for s in series if any(r["compacted"] and not r["dense"] and f"{s}_mean" in r for r in rows)]
    if not drawn:
        return None
    cols = min(3, len(drawn))
    nrows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.3 * cols, 3.5 * nrows), dpi=100, squeeze=False, sharey=True
    )
    for ax, key in zip(axes.flat, drawn, strict=False):
        _draw(ax, rows, key, group_by, colours, ratio=True, compacted_only=True)
        ax.set_title(_series_label(key), fontsize=9)
        ax.set_xlabel("measured speed-up vs dense (x)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    for ax in list(axes.flat)[len(drawn) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, title=", ".join(group_by) or None, title_fontsize=7)
    return _figure(path, fig)


def _failed_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    failed = []
    for path in paths:
        for row in _sweep_rows(path).values():
            if row["status"] == "failed":
                failed.append(row)
    return sorted(failed, key=lambda r: r["position"])


def _markdown(blocks: Sequence[dict[str, Any]]) -> str:
    """The report's blocks (see :func:`render_html`) as markdown."""
    out: list[str] = []
    for block in blocks:
        kind = block["kind"]
        if kind == "heading":
            out.append("#" * block["level"] + " " + block["text"])
        elif kind == "paragraph":
            out.append(block["text"])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block["items"]))
        elif kind == "table":
            out.append(_md_table(block["headers"], block["rows"]))
        elif kind == "figure":
            out.append(f"![{block['alt']}]({block['name']})")
        out.append("")
    return "\n".join(out)


@functools.lru_cache(maxsize=1)
def _template() -> Any:
    import jinja2

    # PackageLoader reads the template from wherever prunelab is installed (a wheel ships it as
    # package data); autoescape: run names, labels and errors are user text.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("prunelab.experiments", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")


def render_html(title: str, blocks: Sequence[dict[str, Any]], images: dict[str, Path]) -> str:
    """The self-contained HTML page of a report, from ``templates/report.html.j2``.

    Args:
        title: the page title.
        blocks: the report's content, each a dict with ``kind``: ``heading`` (``level``, ``text``),
            ``paragraph`` (``text``), ``list`` (``items``), ``table`` (``id``, ``headers``, ``rows``:
            lists of cell text) or ``figure`` (``name``: a key of ``images``, ``alt``).
        images: the PNG files of the figures, embedded as data URIs.
    """
    data = {name: base64.b64encode(p.read_bytes()).decode("ascii") for name, p in images.items()}
    return _template().render(title=title, blocks=blocks, images=data)


def _report_path(out: str | Path | None, first: Path, html: bool) -> Path:
    """The markdown file to write, its folder created and proven writable before any plot is drawn.

    Raises:
        ConfigError: ``out`` is a directory or an ``.html`` file (the HTML page goes beside the
            markdown), or its folder cannot be created or written.
    """
    if out is None:
        ensure_writable_dir(first, "report folder", "pass --out FILE in a writable folder")
        return first / "report.md"
    path = Path(out)
    if path.is_dir():
        raise ConfigError(
            f"--out {path}: is a directory; name the report file, e.g. --out {path / 'report.md'}"
        )
    if html and path.suffix.lower() in (".html", ".htm"):
        raise ConfigError(
            f"--out {path}: name the markdown file (e.g. {path.with_suffix('.md')}); "
            "report.html is written beside it"
        )
    ensure_writable_dir(path.parent, "--out", "choose another --out", for_file=path)
    return path


#: The conventions paragraph at the top of every report.
_CONVENTIONS = (
    "Accuracy is final top-1 on the test split; parameters count every learnable tensor (BatchNorm "
    "included) and masked weights as zeros; sparsity = 1 - non-zero params / dense params and "
    "compression = dense params / non-zero params, against the dense network the method started from "
    "(so removed channels count); effective MACs scale each conv/linear layer's MACs by its weight "
    "density, MACs ratio = dense MACs / effective MACs; latency is the median of the measured forward "
    "passes. Network: dense, compacted (surgery removed channels: a physically smaller network) or "
    "masked (zeros in the dense shape)."
)

#: How the measured speed-ups were taken, under the grouped table.
_SPEEDUP_NOTE = (
    "Speed-up = the dense network's latency / the pruned one's, per backend and batch size, for compacted "
    "runs only: a masked network keeps the dense shape, so its timing differences are measurement noise "
    "and are neither tabulated nor plotted against speed-up or latency. PyTorch CPU / CUDA and ONNX "
    "Runtime: the dense and the compacted network timed interleaved in one process right after pruning "
    "(prune.options.speed_batch_sizes); eval latency: the dense network timed before pruning and the "
    "final one at the end of the run (eval.latency_batch_sizes), not interleaved."
)


def write_report(
    paths: Iterable[str | Path],
    out: str | Path | None = None,
    title: str = "prunelab report",
    *,
    group_by: Sequence[str] | None = None,
    html: bool = True,
) -> Path:
    """Write ``report.md`` (and ``report.html`` and the plots beside it) for the runs under ``paths``.

    Args:
        paths: run directories, directories containing runs, or sweep directories.
        out: the markdown file to write; default ``report.md`` in the first path.
        title: the report's heading.
        group_by: record fields that define a group (default ``["method"]``).
        html: also write the self-contained ``report.html``.

    Returns:
        The path of the markdown report.

    Raises:
        ConfigError: a path holds no runs, a run's ``summary.json`` or ``config.yaml`` is malformed, a
            ``group_by`` field is unknown, or ``out`` is a directory, an HTML file, or not writable.
    """
    paths = [Path(p) for p in paths]
    group_by = list(group_by or ["method"])
    runs = find_runs(paths)
    records = load_records(runs)
    records.sort(
        key=lambda r: (
            tuple(_sort_key(_hashable(r.get(g))) for g in group_by),
            r.get("target_sparsity") or 0.0,
            _sort_key(r.get("seed")),
            str(r.get("name")),
        )
    )
    rows = aggregate(records, group_by)
    series = speedup_series(records)
    out_path = _report_path(out, runs[0] if paths[0].is_file() else paths[0], html)
    batch = next((r["latency_batch"] for r in records if "latency_batch" in r), None)
    figures: list[tuple[str, str]] = []
    images: dict[str, Path] = {}
    for x, name, label in PLOTS:
        if x == "latency" and batch is not None:
            label = f"{label}, batch {batch}"
        plot = plot_accuracy(rows, out_path.with_name(name), x=x, group_by=group_by, xlabel=label)
        if plot is not None:
            images[name] = plot
            suffix = " (compacted runs)" if x in _TIMED else ""
            figures.append((name, f"accuracy vs {label}{suffix}"))
    plot = plot_speedup(rows, out_path.with_name(SPEEDUP_PLOT), series, group_by)
    if plot is not None:
        images[SPEEDUP_PLOT] = plot
        figures.insert(
            1, (SPEEDUP_PLOT, "accuracy vs measured speed-up over the dense model (compacted runs)")
        )
    seeds = sorted({_hashable(r.get("seed")) for r in records}, key=_sort_key)
    blocks: list[dict[str, Any]] = [
        {"kind": "heading", "level": 1, "text": title},
        {"kind": "paragraph", "text": f"{len(records)} run(s), seeds {', '.join(map(str, seeds))}. {_CONVENTIONS}"},
        {"kind": "heading", "level": 2, "text": f"Grouped by {', '.join(group_by)} and target sparsity (mean ± std over runs)"},
        {
            "kind": "paragraph",
            "text": (
                "n = runs averaged (usually seeds); std is the sample standard deviation (0 for one run). "
                "'(pooled)' marks cells that mix runs of the same seed, i.e. settings that differ in a field "
                "not grouped by."
            ),
        },
        {"kind": "table", "id": "grouped", "headers": [], "rows": []},
        {"kind": "paragraph", "text": _SPEEDUP_NOTE},
    ]  # fmt: skip
    blocks[4]["headers"], blocks[4]["rows"] = _grouped_cells(rows, group_by, "target_sparsity", series)
    skipped = sorted({f"{BACKENDS.get(b, b)} not timed in run {r.get('name')}: {why}"
                      for r in records if r["network"] == "compacted"
                      for b, why in _skipped_backends(r).items()})  # fmt: skip
    if skipped:
        blocks.append({"kind": "list", "items": skipped})
    if figures:
        blocks.append({
            "kind": "paragraph",
            "text": (
                "Dense runs are the dashed reference lines (band: ± one std), not points; the dotted vertical "
                "line marks the dense model on the x axis (1x on compression, MACs ratio and speed-up). "
                f"An axis whose values span more than {LOG_AXIS_SPAN:g}x is logarithmic."
            ),
        })  # fmt: skip
    blocks += [{"kind": "figure", "name": name, "alt": alt} for name, alt in figures]
    columns = [(g, g, "{}") for g in group_by if g not in {c[0] for c in COLUMNS}]
    columns += [("seed", "seed", "{}"), ("target_sparsity", "target", "{:g}")]
    columns = [
        *COLUMNS[:1],
        *columns,
        *COLUMNS[1:],
        *((s, f"speed-up {_series_label(s)}", "{:.2f}x") for s in series),
    ]
    headers, cells = _table_cells(records, columns)
    blocks += [
        {"kind": "heading", "level": 2, "text": "Runs"},
        {"kind": "table", "id": "runs", "headers": headers, "rows": cells},
    ]
    failed = _failed_runs(paths)
    if failed:
        blocks += [
            {"kind": "heading", "level": 2, "text": "Failed runs"},
            {
                "kind": "table",
                "id": "failed",
                "headers": ["run", "stage", "error"],
                "rows": [[r["id"], r["stage"], str(r["error"] or "")] for r in failed],
            },
        ]
    atomic_write_text(out_path, _markdown(blocks))
    if html:
        atomic_write_text(out_path.with_suffix(".html"), render_html(title, blocks, images))
    return out_path
