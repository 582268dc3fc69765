"""Reports: grouping and mean/std over seeds, markdown + HTML + plots, the study's "within 1 pp" table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.experiments.report import aggregate, load_records, write_report
from prunelab.experiments.sweep_index import SweepIndex
from prunelab.experiments.sweep_spec import RunSpec
from prunelab.methods.pretraining import largest_sparsity_within, reach_table


def _record(
    init: str, seed: int, target: float, accuracy: float, dense: float, **extra: Any
) -> dict[str, Any]:
    params = round(1000 * (1 - target))
    return {
        "init": init,
        "seed": seed,
        "method": "dense" if target == 0 else "agp",
        "target_sparsity": target,
        "sparsity": target,
        "accuracy": accuracy,
        "accuracy_dense": dense,
        "params_nonzero": params,
        "params_total": 1000,
        "macs_dense": 5000,
        "macs_effective": 5 * params,
        "compression": 1000 / params,
        "macs_ratio": 5000 / (5 * params),
        **extra,
    }


RECORDS = [
    _record("pre", 0, 0.0, 0.80, 0.80, latency=2.0),
    _record("pre", 1, 0.0, 0.82, 0.82, latency=4.0),
    _record("pre", 0, 0.9, 0.79, 0.80),
    _record("pre", 1, 0.9, 0.81, 0.82),
    _record("pre", 0, 0.95, 0.70, 0.80),
    _record("pre", 1, 0.95, 0.76, 0.82),
    _record("scratch", 0, 0.0, 0.60, 0.60),
    _record("scratch", 1, 0.0, 0.64, 0.64),
    _record("scratch", 0, 0.9, 0.55, 0.60),
    _record("scratch", 1, 0.9, 0.57, 0.64),
]


def test_aggregate_mean_and_sample_std_over_seeds() -> None:
    rows = aggregate(RECORDS, ["init"])
    assert [(r["init"], r["target_sparsity"], r["n"]) for r in rows] == [
        ("pre", 0.0, 2),
        ("pre", 0.9, 2),
        ("pre", 0.95, 2),
        ("scratch", 0.0, 2),
        ("scratch", 0.9, 2),
    ]
    pre95 = rows[2]
    assert pre95["accuracy_mean"] == pytest.approx(0.73)
    assert pre95["accuracy_std"] == pytest.approx(math.sqrt(2 * 0.03**2))  # sample std of 0.70, 0.76
    assert rows[0]["latency_mean"] == pytest.approx(3.0) and rows[0]["latency_std"] == pytest.approx(
        math.sqrt(2)
    )
    assert "latency_mean" not in rows[1]
    assert not any(r["pooled"] for r in rows)
    # Grouping by method only pools the two initialisations: flagged, and one std over four runs.
    by_method = {r["target_sparsity"]: r for r in aggregate(RECORDS, ["method"])}
    assert by_method[0.9]["pooled"] and by_method[0.9]["n"] == 4
    assert by_method[0.9]["accuracy_mean"] == pytest.approx((0.79 + 0.81 + 0.55 + 0.57) / 4)
    single = aggregate(RECORDS[:1], ["init"])[0]
    assert single["accuracy_std"] == 0.0


def test_unknown_group_field_is_a_clean_error() -> None:
    with pytest.raises(ConfigError, match="--group-by inti: no run has this field"):
        aggregate(RECORDS, ["inti"])


def test_largest_sparsity_within_one_point_of_own_dense() -> None:
    reach = largest_sparsity_within(RECORDS, group="init", tolerance=0.01)
    # pre: dense 81 %; 90 % sparsity keeps 80 % (-1.0 pp, inside), 95 % keeps 73 % (outside).
    assert reach["pre"].dense_accuracy == pytest.approx(0.81) and reach["pre"].seeds == 2
    assert reach["pre"].largest_sparsity == 0.9
    assert reach["pre"].accuracy_at_largest == pytest.approx(0.80)
    # scratch: dense 62 %, 90 % keeps 56 %: no pruned point within 1 pp.
    assert reach["scratch"].largest_sparsity is None
    table = reach_table(reach)
    assert "| pre | 81.0 ± 1.4 (n=2) | 90 % | 80.0 |" in table
    assert "| scratch | 62.0 ± 2.8 (n=2) | none (lowest tried: 90 %) | – |" in table
    dense_only = largest_sparsity_within([r for r in RECORDS if r["target_sparsity"] == 0], group="init")
    assert "| pre | 81.0 ± 1.4 (n=2) | not pruned | – |" in reach_table(dense_only)


def test_largest_sparsity_within_by_several_keys_gives_each_seed_its_own_reach() -> None:
    reach = largest_sparsity_within(RECORDS, group=("init", "seed"), tolerance=0.01)
    # pre seed 1: dense 82 %, 90 % keeps 81 % (inside), 95 % keeps 76 %; seed 0 the same at 80/79/70.
    assert reach[("pre", 1)].largest_sparsity == 0.9 and reach[("pre", 1)].seeds == 1
    assert reach[("pre", 0)].dense_accuracy == pytest.approx(0.80)
    # scratch seed 0: dense 60 %, 90 % keeps 55 %: none.
    assert reach[("scratch", 0)].largest_sparsity is None
    assert "| pre / 1 | 82.0 ± 0.0 (n=1) | 90 % | 81.0 |" in reach_table(reach)


def _fake_run(root: Path, run_id: str, record: dict[str, Any]) -> Path:
    run = root / "runs" / run_id
    run.mkdir(parents=True)
    summary = {k: v for k, v in record.items() if k not in {"init", "latency"}}
    summary["name"] = run_id
    if "latency" in record:
        summary["latency_ms"] = {"1": record["latency"], "8": 10 * record["latency"]}
    (run / "summary.json").write_text(json.dumps(summary))
    config = {
        "seed": record["seed"],
        "model": {"name": "small_cnn", "init": "scratch"},
        # A resolved config.yaml: method-owned settings live in prune.options.
        "prune": {"method": "agp", "options": {"scope": "layer"}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_report_files_from_a_sweep_directory(tmp_path: Path) -> None:
    index = SweepIndex(tmp_path / "sweep.db")
    for i, record in enumerate(RECORDS):
        run_id = f"r{i}"
        run_dir = _fake_run(tmp_path, run_id, record)
        index.register(RunSpec(run_id, "main", i, [], {"init": record["init"]}, {}), run_dir)
        index.mark_done(run_id, record)
    index.register(RunSpec("broken", "main", 99, [], {"init": "pre"}, {}), tmp_path / "runs" / "broken")
    index.mark_failed("broken", "data.name: unknown dataset 'cifar11'")

    records = load_records(sorted((tmp_path / "runs").iterdir()))
    assert {r["init"] for r in records} == {"pre", "scratch"}  # the sweep label
    # recipe fields, flattened (method-owned settings under prune.options)
    assert records[0]["prune.options.scope"] == "layer" and records[0]["model.name"] == "small_cnn"
    assert records[0]["latency"] == 2.0 and records[0]["latency_batch"] == 1

    assert main(["report", str(tmp_path), "--group-by", "init"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| pre | 0.95 | 2 | 73.00 ± 4.24 |" in md
    assert "| scratch | 0.9 | 2 | 56.00 ± 1.41 |" in md
    assert "## Failed runs" in md and "| broken | main | data.name: unknown dataset 'cifar11' |" in md
    for name in ("accuracy_vs_compression.png", "accuracy_vs_params.png", "accuracy_vs_macs.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in md
    # Only the dense runs were timed and no network was made smaller: no latency or speed-up plot.
    assert not (tmp_path / "accuracy_vs_latency.png").exists()
    assert not (tmp_path / "accuracy_vs_speedup.png").exists()
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('src="data:image/png;base64,') == 3
    assert "<td>73.00 ± 4.24</td>" in page and "<h2>Failed runs</h2>" in page

    # Any recipe field groups too; grouping by a field that does not separate the inits pools them.
    out = write_report([tmp_path], tmp_path / "by_scope.md", group_by=["prune.options.scope"], html=False)
    assert "(pooled)" in out.read_text() and not (tmp_path / "by_scope.html").exists()


def test_study_record_keeps_the_sweep_labels_the_tables_group_by(tmp_path: Path) -> None:
    """benchmarks/_records.py: a packed record re-derives the same records, sweep labels included."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_records.py"
    spec = importlib.util.spec_from_file_location("_records", path)
    assert spec is not None and spec.loader is not None
    records_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(records_module)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    index = SweepIndex(sweep / "sweep.db")
    for i, record in enumerate(RECORDS):
        run_dir = _fake_run(sweep, f"r{i}", record)
        index.register(RunSpec(f"r{i}", "main", i, [], {"init": record["init"]}, {}), run_dir)
        index.mark_done(f"r{i}", record)
    packed = tmp_path / "runs.json"
    assert records_module.save(sweep, packed) == len(RECORDS)
    assert "checkpoint" not in packed.read_text()

    def keyed(root: Path) -> dict[str, dict[str, Any]]:
        rows = load_records(sorted((root / "runs").iterdir()))
        return {r["name"]: {k: v for k, v in r.items() if k != "run_dir"} for r in rows}

    with records_module.sweep_dir(packed) as unpacked:
        assert keyed(unpacked) == keyed(sweep)
        assert {r["init"] for r in keyed(unpacked).values()} == {"pre", "scratch"}


def test_dense_runs_are_a_reference_line_and_wide_axes_are_logarithmic() -> None:
    """Dense rows become a dashed line at their mean accuracy (not a point); compression 1x-20x is log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunelab.experiments.report import _colours, _draw

    rows = aggregate(RECORDS, ["method"])
    for x, scale in (("compression", "log"), ("params_nonzero", "log"), ("macs_ratio", "log")):
        fig, ax = plt.subplots()
        assert _draw(ax, rows, x, ["method"], _colours(rows, ["method"]), ratio=x != "params_nonzero",
                     compacted_only=False)  # fmt: skip
        horizontal = [ln for ln in ax.lines if len(set(ln.get_ydata())) == 1 and ln.get_linestyle() == "--"]
        dense = 100 * (0.80 + 0.82 + 0.60 + 0.64) / 4
        assert [ln.get_ydata()[0] for ln in horizontal] == [pytest.approx(dense)], x
        points = [ln for ln in ax.lines if ln.get_marker() == "o"]
        assert len(points) == 1 and len(points[0].get_xdata()) == 2, x  # agp at 0.9 and 0.95 only
        dense_x = 1.0 if x != "params_nonzero" else 1000
        verticals = [ln for ln in ax.lines if list(ln.get_xdata()) == [dense_x, dense_x]]
        assert verticals, f"{x}: no line marks the dense model on the x axis"
        assert ax.get_xscale() == scale, x
        plt.close(fig)
    # 1x to 2x (sparsity 0.5) stays linear.
    near = aggregate([_record("pre", 0, 0.0, 0.8, 0.8), _record("pre", 0, 0.5, 0.79, 0.8)], ["method"])
    fig, ax = plt.subplots()
    assert _draw(
        ax, near, "compression", ["method"], _colours(near, ["method"]), ratio=True, compacted_only=False
    )
    assert ax.get_xscale() == "linear"
    plt.close(fig)


def test_report_without_latency_skips_that_plot(tmp_path: Path) -> None:
    _fake_run(tmp_path, "a", RECORDS[2])
    _fake_run(tmp_path, "b", RECORDS[3])
    write_report([tmp_path])
    assert (tmp_path / "accuracy_vs_params.png").is_file()
    assert not (tmp_path / "accuracy_vs_latency.png").exists()
    assert "accuracy_vs_latency" not in (tmp_path / "report.md").read_text()


def test_report_tables_are_relative_to_the_dense_model(tmp_path: Path) -> None:
    """A compacted run (400 of 1000 parameters left), one written before the convention, a masked one."""
    structured = _record("pre", 0, 0.5, 0.7, 0.8, latency=1.0)
    structured.update(
        params_total=400, params_nonzero=400, params_dense_total=1000, sparsity=0.6, compression=2.5,
        macs_effective=2000, macs_ratio=2.5, latency_speedup={"1": 1.6, "8": 2.0},
        surgery={"max_abs_diff": 1e-7},
        speedup={
            "threads": 1,
            "eager_cpu": {"1": {"dense_ms": 1.0, "compact_ms": 0.8, "speedup": 1.25}},
            "onnxruntime": {"skipped": "onnxruntime not installed"},
        },
    )  # fmt: skip
    old = _record("pre", 1, 0.5, 0.72, 0.8)
    old.update(
        params_total=400, params_nonzero=400, params_dense_total=1000, sparsity=0.0, compression=1.0,
        macs_effective=2000,
    )  # fmt: skip
    del old["macs_ratio"]  # written before the dense-relative convention
    # A masked network keeps the dense shape: its "speed-up" is timing noise and must not be reported.
    masked = _record("pre", 0, 0.6, 0.75, 0.8, latency=0.9)
    masked.update(params_total=1000, params_dense_total=1000, macs_ratio=2.5, latency_speedup={"1": 3.0})
    _fake_run(tmp_path, "new", structured)
    _fake_run(tmp_path, "old", old)
    _fake_run(tmp_path, "masked", masked)
    records = {r["name"]: r for r in load_records(sorted((tmp_path / "runs").iterdir()))}
    assert records["old"]["sparsity"] == pytest.approx(0.6) and records["old"]["compression"] == 2.5
    assert records["old"]["macs_ratio"] == pytest.approx(5000 / 2000)
    assert [records[n]["network"] for n in ("new", "old", "masked")] == ["compacted", "compacted", "masked"]
    assert records["new"]["speedup.eval.1"] == 1.6 and records["new"]["speedup.eager_cpu.1"] == 1.25
    assert not any(k.startswith("speedup.") for k in records["masked"])
    write_report([tmp_path], html=False)
    md = (tmp_path / "report.md").read_text()
    assert (
        "| agp | 0.5 | 2 | 71.00 ± 1.41 | 80.00 ± 0.00 | 0.600 | 2.50x | 2.50x | 400 | 2,000 | 1.000 ± 0.000 "
        "| 1.25x ± 0.00 | 1.60x ± 0.00 | 2.00x ± 0.00 |" in md
    )
    runs_header = (
        "| run | seed | target | method | network | sparsity | accuracy | dense acc. | non-zero params | params "
        "| dense params | compression | eff. MACs | dense MACs | MACs ratio | latency (ms) "
        "| speed-up PyTorch CPU, batch 1 | speed-up eval latency, batch 1 | speed-up eval latency, batch 8 |"
    )
    assert runs_header in md
    assert (
        "| new | 0 | 0.5 | agp | compacted | 0.600 | 0.7000 | 0.8000 | 400 | 400 | 1,000 | 2.50x | 2,000 | 5,000 "
        "| 2.50x | 1.000 | 1.25x | 1.60x | 2.00x |" in md
    )
    assert (
        "| old | 1 | 0.5 | agp | compacted | 0.600 | 0.7200 | 0.8000 | 400 | 400 | 1,000 | 2.50x | 2,000 | 5,000 "
        "| 2.50x | – | – | – | – |" in md
    )
    assert "| masked | 0 | 0.6 | agp | masked |" in md and "3.00x" not in md
    assert "- ONNX Runtime not timed in run new: onnxruntime not installed" in md
    # The latency plot holds only the compacted run; the masked one is left out, so both plots exist
    # (one compacted point) and a report of masked runs alone has neither.
    assert (tmp_path / "accuracy_vs_latency.png").is_file() and (
        tmp_path / "accuracy_vs_speedup.png"
    ).is_file()
    masked_only = tmp_path / "masked_only"
    _fake_run(masked_only, "masked", masked)
    write_report([masked_only], html=False)
    assert not (masked_only / "accuracy_vs_latency.png").exists()
    assert not (masked_only / "accuracy_vs_speedup.png").exists()


def test_html_template_ships_in_the_installed_package(tmp_path: Path) -> None:
    """A non-editable install of the source tree carries report.html.j2 and renders a page from it."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"
    shutil.copytree(root / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, project / name)
    site = tmp_path / "site"
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    proc = subprocess.run(
        [*install, "--target", str(site), str(project)], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    template = site / "prunelab" / "experiments" / "templates" / "report.html.j2"
    assert template.is_file()
    code = (
        "import prunelab, sys\n"
        f"assert prunelab.__file__.startswith({str(site)!r}), prunelab.__file__\n"
        "from prunelab.experiments.report import render_html\n"
        "blocks = [{'kind': 'heading', 'level': 1, 'text': 'a <b> run'},\n"
        "          {'kind': 'table', 'id': 'runs', 'headers': ['compression'], 'rows': [['2.00x']]}]\n"
        "sys.stdout.write(render_html('t', blocks, {}))\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<h1>a &lt;b&gt; run</h1>" in proc.stdout  # autoescaped
    assert '<table id="runs">' in proc.stdout and "<td>2.00x</td>" in proc.stdout
