"""Reports over run directories and sweeps: markdown and HTML tables, grouped statistics and plots.

``prunelab report PATH ...`` reads each run's ``summary.json`` (a directory that is not itself a run is
searched for runs below it; a sweep directory also contributes its ``sweep.db`` labels and failures)
and writes, beside ``report.md``:

- ``report.md`` — a grouped table (mean ± sample standard deviation over the runs of each group and
  target sparsity, usually the seeds), the per-run table and the failed runs of a sweep;
- ``report.html`` — the same content as one self-contained page (plots embedded, no extra files);
- ``accuracy_vs_params.png``, ``accuracy_vs_macs.png`` and ``accuracy_vs_latency.png`` — test accuracy
  against remaining (non-zero) parameters, effective MACs and measured latency, one line per group,
  error bars = one standard deviation.

Sparsity, compression, MACs ratio and measured speed-up are relative to the dense network of each
run (see :mod:`prunelab.experiments.runner`), so structured runs whose surgery made the model smaller
show what they removed; summaries written before that convention are brought to it on reading.

Each run becomes a flat *record*: the ``summary.json`` fields, every recipe field of its ``config.yaml``
under its dotted name (``prune.scope``, ``model.init``, ``data.image_size``), and the labels a sweep
gave it (``vars.init`` in the sweep file → ``init``). ``--group-by`` takes any of these names.
"""

from __future__ import annotations

import base64
import html
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
    "COLUMNS",
    "PLOTS",
    "aggregate",
    "find_runs",
    "load_records",
    "load_summaries",
    "markdown_table",
    "plot_accuracy",
    "write_report",
]

#: Columns of the per-run table: (record key, header, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "run", "{}"),
    ("method", "method", "{}"),
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
    ("measured_speedup", "speed-up", "{:.2f}x"),
)

#: The plots of a report: (record key on the x axis, file name, axis label).
PLOTS: tuple[tuple[str, str, str], ...] = (
    ("params_nonzero", "accuracy_vs_params.png", "remaining (non-zero) parameters"),
    ("macs_effective", "accuracy_vs_macs.png", "effective MACs (dense MACs x weight density)"),
    ("latency", "accuracy_vs_latency.png", "measured latency (ms)"),
)

#: Numeric record keys summarised (mean ± std) in the grouped table.
AGGREGATED: tuple[str, ...] = (
    "accuracy",
    "accuracy_dense",
    "sparsity",
    "compression",
    "params_nonzero",
    "macs_effective",
    "macs_ratio",
    "latency",
    "measured_speedup",
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
    if "macs_ratio" in summary or not all(isinstance(summary.get(k), (int, float)) for k in keys):
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


def load_records(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """Flat records of ``runs``: summary fields, dotted recipe fields and sweep labels.

    Summary fields win over recipe fields of the same name; the sweep label ``vars.X`` is available as
    ``X`` unless the summary already has that key, and as ``vars.X`` always. ``latency`` is the measured
    latency at the smallest batch size (``latency_batch``), ``measured_speedup`` the dense model's
    latency over it at that batch size.
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
        latency = summary.get("latency_ms")
        if isinstance(latency, dict) and latency:
            batch = min(latency, key=lambda b: int(b))
            record["latency"] = latency[batch]
            record["latency_batch"] = int(batch)
            speedup = summary.get("latency_speedup")
            if isinstance(speedup, dict) and isinstance(speedup.get(batch), (int, float)):
                record["measured_speedup"] = speedup[batch]
        records.append(record)
    return records


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


def _sort_key(value: Any) -> tuple[int, Any]:
    # Numbers before strings and None last, so mixed-type columns still sort deterministically.
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
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
        group-by field), and ``<key>_mean`` / ``<key>_std`` for each key of :data:`AGGREGATED` present.
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
    out = []
    for key in sorted(cells, key=lambda k: tuple(_sort_key(v) for v in k)):
        members = cells[key]
        seeds = [_hashable(m.get("seed")) for m in members]
        row: dict[str, Any] = dict(zip(group_by, key[:-1], strict=True))
        row[x] = key[-1]
        row["n"] = len(members)
        row["seeds"] = len(set(seeds))
        row["pooled"] = len(set(seeds)) < len(seeds)
        for name in AGGREGATED:
            values = [float(m[name]) for m in members if isinstance(m.get(name), (int, float))]
            if not values:
                continue
            row[f"{name}_mean"] = statistics.fmean(values)
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(row)
    return out


def _pm(row: dict[str, Any], name: str, scale: float, digits: int) -> str:
    if f"{name}_mean" not in row:
        return "–"
    return f"{scale * row[f'{name}_mean']:.{digits}f} ± {scale * row[f'{name}_std']:.{digits}f}"


def grouped_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str], x: str = "target_sparsity") -> str:
    """The markdown table of :func:`aggregate`'s rows: accuracies in %, mean ± std."""
    headers = [
        *group_by,
        x,
        "n",
        "accuracy (%)",
        "dense acc. (%)",
        "sparsity",
        "compression",
        "non-zero params",
        "eff. MACs",
        "MACs ratio",
        "latency (ms)",
        "speed-up",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [_cell(row.get(g), "{}") for g in group_by]
        cells += [
            _cell(row.get(x), "{:g}"),
            f"{row['n']}" + (" (pooled)" if row["pooled"] else ""),
            _pm(row, "accuracy", 100, 2),
            _pm(row, "accuracy_dense", 100, 2),
            _cell(row.get("sparsity_mean"), "{:.3f}"),
            _cell(row.get("compression_mean"), "{:.2f}x"),
            _cell(round(row["params_nonzero_mean"]) if "params_nonzero_mean" in row else None, "{:,}"),
            _cell(round(row["macs_effective_mean"]) if "macs_effective_mean" in row else None, "{:,}"),
            _cell(row.get("macs_ratio_mean"), "{:.2f}x"),
            _pm(row, "latency", 1, 3),
            _cell(row.get("measured_speedup_mean"), "{:.2f}x"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy(
    rows: Sequence[dict[str, Any]],
    path: Path,
    x: str = "params_nonzero",
    group_by: Sequence[str] = ("method",),
    xlabel: str = "remaining (non-zero) parameters",
    title: str | None = None,
) -> Path | None:
    """Plot mean test accuracy (± std) against mean ``x`` for :func:`aggregate`'s rows, a line per group.

    Returns:
        ``path``, or ``None`` when no row has ``x`` (e.g. latency was not measured).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if f"{x}_mean" in row and "accuracy_mean" in row:
            label = ", ".join(f"{row.get(g)}" for g in group_by) or "runs"
            lines[label].append(row)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for label, members in sorted(lines.items()):
        members = sorted(members, key=lambda r: r[f"{x}_mean"])
        ax.errorbar(
            [r[f"{x}_mean"] for r in members],
            [100 * r["accuracy_mean"] for r in members],
            yerr=[100 * r["accuracy_std"] for r in members],
            marker="o",
            markersize=4,
            capsize=3,
            label=label,
        )
    values = [r[f"{x}_mean"] for m in lines.values() for r in m if r[f"{x}_mean"] > 0]
    if values and max(values) / min(values) > 20:  # a log axis only where it spreads the points out
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title=", ".join(group_by) or None, title_fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _failed_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    failed = []
    for path in paths:
        for row in _sweep_rows(path).values():
            if row["status"] == "failed":
                failed.append(row)
    return sorted(failed, key=lambda r: r["position"])


def _markdown_to_html(lines: Sequence[str], images: dict[str, Path]) -> str:
    """Render the report's simple markdown (headings, paragraphs, tables, images) as one HTML page."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if not table:
            return
        head, *rest = table
        body.append(
            "<table><thead><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in head)
            + "</tr></thead><tbody>"
        )
        for cells in rest:
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        body.append("</tbody></table>")
        table.clear()

    # Entries may be whole blocks (a table is one string): render line by line.
    for line in (part for block in lines for part in block.split("\n")):
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):  # skip the separator row
                table.append(cells)
            continue
        flush_table()
        if line.startswith("!["):
            alt, _, rest = line[2:].partition("](")
            name = rest.rstrip(")")
            if name in images:
                data = base64.b64encode(images[name].read_bytes()).decode("ascii")
                body.append(f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{html.escape(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "img{max-width:100%}"
    )
    title = next((b for b in body if b.startswith("<h1>")), "<h1>report</h1>")[4:-5]
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


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
    out_path = _report_path(out, runs[0] if paths[0].is_file() else paths[0], html)
    batch = next((r["latency_batch"] for r in records if "latency_batch" in r), None)
    images: dict[str, Path] = {}
    for x, name, label in PLOTS:
        if x == "latency" and batch is not None:
            label = f"{label}, batch {batch}"
        plot = plot_accuracy(rows, out_path.with_name(name), x=x, group_by=group_by, xlabel=label)
        if plot is not None:
            images[name] = plot
    seeds = sorted({_hashable(r.get("seed")) for r in records}, key=_sort_key)
    lines = [
        f"# {title}",
        "",
        (
            f"{len(records)} run(s), seeds {', '.join(map(str, seeds))}. Accuracy is final top-1 on the "
            "test split; parameters count every learnable tensor (BatchNorm included) and masked weights "
            "as zeros; sparsity = 1 - non-zero params / dense params and compression = dense params / "
            "non-zero params, against the dense network the method started from (so removed channels "
            "count); effective MACs scale each conv/linear layer's MACs by its weight density, MACs ratio = "
            "dense MACs / effective MACs; latency is the median of the measured forward passes, speed-up = "
            "the dense network's latency / the final one's at the same batch size."
        ),
        "",
        f"## Grouped by {', '.join(group_by)} and target sparsity (mean ± std over runs)",
        "",
        (
            "n = runs averaged (usually seeds); std is the sample standard deviation (0 for one run). "
            "'(pooled)' marks cells that mix runs of the same seed, i.e. settings that differ in a field "
            "not grouped by."
        ),
        "",
        grouped_table(rows, group_by),
        "",
    ]
    for _, name, label in PLOTS:
        if name in images:
            lines += [f"![accuracy vs {label}]({name})", ""]
    columns = [(g, g, "{}") for g in group_by if g not in {c[0] for c in COLUMNS}]
    columns += [("seed", "seed", "{}"), ("target_sparsity", "target", "{:g}")]
    lines += ["## Runs", "", markdown_table(records, [*COLUMNS[:1], *columns, *COLUMNS[1:]]), ""]
    failed = _failed_runs(paths)
    if failed:
        lines += ["## Failed runs", "", "| run | stage | error |", "|---|---|---|"]
        lines += [f"| {r['id']} | {r['stage']} | {str(r['error'] or '').replace('|', '/')} |" for r in failed]
        lines.append("")
    atomic_write_text(out_path, "\n".join(lines))
    if html:
        atomic_write_text(out_path.with_suffix(".html"), _markdown_to_html(lines, images))
    return out_path
