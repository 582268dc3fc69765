"""Sweeps: grid expansion, stable run ids, failures, the SQLite index, and kill -9 + restart."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sweeps import BASE, TINY, kill_mid_run

from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.experiments.sweep import run_sweep
from prunelab.experiments.sweep_index import SweepIndex
from prunelab.experiments.sweep_spec import expand_sweep, load_sweep, sweep_from_dict


def _sweep(grid: dict[str, list[Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "t", "base": BASE, "grid": grid, **extra}


def test_grid_is_a_cartesian_product_with_stable_ids(tmp_path: Path) -> None:
    raw = _sweep({"seed": [0, 1], "prune.sparsity": [0.5, 0.8, 0.9]})
    runs = expand_sweep(sweep_from_dict(raw), tmp_path)
    assert len(runs) == 6
    points = {(r.recipe["seed"], r.recipe["prune"]["sparsity"]) for r in runs}
    assert points == {(s, p) for s in (0, 1) for p in (0.5, 0.8, 0.9)}
    assert len({r.id for r in runs}) == 6
    # The id depends on the grid point only: the same sweep, or its keys in another order, gives the
    # same ids, so a restarted sweep finds its runs.
    again = expand_sweep(
        sweep_from_dict(_sweep({"prune.sparsity": [0.9, 0.8, 0.5], "seed": [1, 0]})), tmp_path
    )
    assert {r.id for r in again} == {r.id for r in runs}
    other = expand_sweep(sweep_from_dict(_sweep({"seed": [2]})), tmp_path)
    assert other[0].id not in {r.id for r in runs}


def test_templates_labels_and_stages(tmp_path: Path) -> None:
    raw = {
        "name": "t",
        "stages": [
            {
                "name": "dense",
                "base": {**{k: v for k, v in BASE.items() if k != "finetune"}, "prune": {"method": "dense"}},
                "grid": {"vars.init": ["scratch"], "seed": [0, 1]},
                "set": {"model.init": "{init}"},
                "id": "dense-{init}-s{seed}",
            },
            {
                "name": "prune",
                "base": {**BASE, "train": {"epochs": 0}},
                "grid": {"vars.init": ["scratch"], "seed": [0], "prune.sparsity": [0.5, 0.75]},
                "set": {"model.init": "{runs}/dense-{init}-s{seed}"},
                "id": "p-{init}-s{seed}-sp{sparsity}",
            },
        ],
    }
    runs = expand_sweep(sweep_from_dict(raw), tmp_path)
    assert [r.id for r in runs] == [
        "dense-scratch-s0",
        "dense-scratch-s1",
        "p-scratch-s0-sp0.5",
        "p-scratch-s0-sp0.75",
    ]
    assert [r.stage for r in runs] == ["dense", "dense", "prune", "prune"]
    assert runs[0].vars == {"init": "scratch"} and "vars" not in runs[0].recipe
    assert runs[0].recipe["model"]["init"] == "scratch"
    assert runs[2].recipe["model"]["init"] == str(tmp_path.resolve() / "runs" / "dense-scratch-s0")


@pytest.mark.parametrize(
    "raw,message",
    [
        (_sweep({"prune.sparsity": [0.5, 1.5]}), "prune.sparsity: 1.5 is impossible"),
        (_sweep({"model.name": ["small_cnn", "resnet21"]}), "model.name: unknown model 'resnet21'"),
        (_sweep({"seed": [0, 1]}, id="same"), "run id 'same' is produced by two grid points"),
        (_sweep({"seed": [0]}, id="{sed}"), "unknown placeholder {sed}"),
        (_sweep({"seed": []}), "grid.seed: expected a non-empty list"),
        (_sweep({"seed": [0]}, wrkers=2), "sweep.wrkers: unknown sweep key"),
    ],
)
def test_every_run_is_validated_before_anything_starts(
    tmp_path: Path, raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        run_sweep(sweep_from_dict(raw), tmp_path / "sweep", echo=None)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "sweep").exists()


def test_failed_run_is_reported_and_the_others_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One grid point fails (its dataset is not in the data dir), the other finishes; the index says so."""
    # digits ships with scikit-learn; mnist is not in the empty data dir, so that grid point fails.
    sweep = tmp_path / "s.sweep.yaml"
    raw = _sweep({"data.name": ["mnist", "digits"]}, workers=2, threads=1, data_dir=str(tmp_path / "empty"))
    raw["base"] = {**BASE, "model": {"name": "lenet300_100"}}
    sweep.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "1/2 done" in captured.out and "1 failed" in captured.out
    rows = {r["id"].split("-")[0]: r for r in SweepIndex(out / "sweep.db").rows()}
    bad, good = rows["name=mnist"], rows["name=digits"]
    assert bad["status"] == "failed" and str(tmp_path / "empty") in bad["error"]
    assert "\n" not in bad["error"]
    assert f"failed: {bad['id']}: {bad['error']}" in captured.err
    assert good["status"] == "done" and good["error"] is None and good["attempts"] == 1
    summary = json.loads((out / "runs" / good["id"] / "summary.json").read_text())
    assert good["accuracy"] == summary["accuracy"] and good["params_nonzero"] == summary["params_nonzero"]
    assert good["sparsity"] == summary["sparsity"]
    assert json.loads(good["overrides"]) == [["data.name", "digits"]]
    with sqlite3.connect(out / "sweep.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # A second call retries the failed run only; the finished one is neither recomputed nor re-counted.
    mtime = (out / "runs" / good["id"] / "summary.json").stat().st_mtime_ns
    again = run_sweep(load_sweep(sweep), out, echo=None)
    assert (again.total, again.done, again.skipped, again.executed) == (2, 1, 1, 1)
    assert list(again.failed) == [bad["id"]]
    rows = {r["id"]: r for r in SweepIndex(out / "sweep.db").rows()}
    assert rows[good["id"]]["attempts"] == 1 and rows[bad["id"]]["attempts"] == 2
    assert (out / "runs" / good["id"] / "summary.json").stat().st_mtime_ns == mtime

    # Changing the recipe of a run that was already started is refused instead of mixing results.
    raw["base"]["finetune"] = {**TINY, "lr": 1.0e-3}
    sweep.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="its recipe changed since the sweep started it"):
        run_sweep(load_sweep(sweep), out, echo=None)


def test_kill_9_then_restart_loses_and_recomputes_nothing(tmp_path: Path) -> None:
    """SIGKILL the whole process group of a running sweep, restart it: finished runs are kept as they are."""
    sweep = tmp_path / "k.sweep.yaml"
    base = {**BASE, "train": {**TINY, "epochs": 3}, "finetune": {**TINY, "epochs": 2}}
    sweep.write_text(
        yaml.safe_dump({"name": "k", "base": base, "workers": 1, "threads": 1, "grid": {"seed": [0, 1, 2]}})
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "prunelab", "sweep", str(sweep), "--out", str(out), "--quiet"]
    kill_mid_run(command, out, 150)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert 1 <= len(finished) < 3
    started = {p.name for p in (out / "runs").iterdir()}
    assert len(started) > len(finished)  # a run was interrupted mid-way

    subprocess.run(command, check=True, timeout=1800, stdout=subprocess.DEVNULL)
    summaries = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert len(summaries) == 3
    for run_id, mtime in finished.items():
        assert summaries[run_id] == mtime, f"{run_id} was recomputed"
        # The run counter: one 'prunelab run' command per finished run, none after the restart.
        assert (out / "runs" / run_id / "sweep_output.txt").read_text().count("$ ") == 1
    rows = SweepIndex(out / "sweep.db").rows()
    assert [r["status"] for r in rows] == ["done"] * 3
    assert all(r["attempts"] == 1 for r in rows if r["id"] in finished)
    interrupted = started - set(finished)
    for run_id in interrupted:
        assert "--resume" in (out / "runs" / run_id / "sweep_output.txt").read_text()


def test_dry_run_lists_runs_without_starting_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "d.sweep.yaml"
    sweep.write_text(yaml.safe_dump(_sweep({"seed": [0, 1]})))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("seed=" in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_a_stage_is_run_by_one_sweep_process_at_a_time(tmp_path: Path) -> None:
    from prunelab.experiments.sweep import _lock_stage

    spec = sweep_from_dict(_sweep({"seed": [0]}))
    tmp_path.mkdir(exist_ok=True)
    held = _lock_stage(tmp_path, "main")  # as another sweep process working on this stage would
    try:
        with pytest.raises(ConfigError, match="stage main of .* is being run by another 'prunelab sweep'"):
            run_sweep(spec, tmp_path, echo=None)
    finally:
        held.close()
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="--stage prune: no such stage; the sweep has main"):
        run_sweep(spec, tmp_path, echo=None, stages=["prune"])
