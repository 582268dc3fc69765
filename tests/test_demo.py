"""``prunelab demo`` end to end: every part is a real run with the result it exists to show, and a report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunelab.experiments.demo import DEMO_SECONDS, DEMO_SPARSITY, PARTS


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo, run once by the README's command into a fresh folder: (folder, its output)."""
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab", "demo", "--out", str(out), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=1800,  # only a hang takes this long; the README's figure is measured, not asserted
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def _summary(out: Path, name: str) -> dict:
    return json.loads((out / name / "summary.json").read_text())


def test_says_what_it_does_and_how_long(demo: tuple[Path, str]) -> None:
    """It announces the expected duration and the thread count, then one line per part as it starts."""
    _, stdout = demo
    first = stdout.splitlines()[0]
    assert f"about {DEMO_SECONDS} s" in first and "1 CPU thread" in first
    for i, (name, _) in enumerate(PARTS, 1):
        assert f"[{i}/{len(PARTS)}] {name}:" in stdout
    assert "| run | method | sparsity |" in stdout


def test_slimming_compacts_with_verified_surgery_and_measured_speedup(demo: tuple[Path, str]) -> None:
    """(a) Channels are physically removed, the surgery's check held, and the speed-up was timed."""
    out, _ = demo
    dense, run = _summary(out, "dense"), _summary(out, "slimming")
    assert run["method"] == "network_slimming"
    assert run["params_total"] < dense["params_total"] / 2  # compacted, not masked
    assert run["params_nonzero"] == run["params_total"]
    surgery = run["surgery"]
    assert surgery["channels_removed"] > 0
    assert surgery["max_abs_diff"] <= surgery["accepted_diff"]  # masked and compacted outputs agree
    timed = run["speedup"]["eager_cpu"]["256"]
    assert timed["dense_ms"] > 0 and timed["compact_ms"] > 0
    assert timed["speedup"] == pytest.approx(timed["dense_ms"] / timed["compact_ms"])
    assert timed["speedup"] > 1.0  # a quarter of the MACs: faster even on a loaded machine
    assert run["accuracy"] > 0.8


def test_relief_prunes_by_its_own_rule(demo: tuple[Path, str]) -> None:
    """(b) NN-relief ran its rounds and chose a sparsity without losing the accuracy."""
    out, _ = demo
    run = _summary(out, "relief")
    assert run["method"] == "relief"
    assert 0.05 < run["targeted_sparsity"] < 0.95
    assert run["accuracy"] > _summary(out, "dense")["accuracy"] - 0.05
    assert (out / "relief" / "rounds.csv").is_file()


def test_interspace_and_standard_at_the_same_sparsity(demo: tuple[Path, str]) -> None:
    """(c) Both prune their own dense network to the same high sparsity; only the parametrization differs."""
    out, _ = demo
    ip, sp = _summary(out, "interspace"), _summary(out, "standard")
    assert ip["targeted_sparsity"] == pytest.approx(DEMO_SPARSITY, abs=1e-3)
    assert sp["targeted_sparsity"] == pytest.approx(DEMO_SPARSITY, abs=1e-3)
    configs = {n: yaml.safe_load((out / n / "config.yaml").read_text()) for n in ("interspace", "standard")}
    assert configs["interspace"]["prune"]["reparam"]["name"] == "interspace"
    assert configs["standard"]["prune"]["reparam"]["name"] == "none"
    assert configs["interspace"]["model"]["init"] == str(out / "dense-interspace")
    assert configs["standard"]["model"]["init"] == str(out / "dense")
    assert ip["accuracy"] > 0.2 and sp["accuracy"] > 0.2  # fine-tuned, not left at chance


def test_magnitude_baseline_at_relief_sparsity(demo: tuple[Path, str]) -> None:
    """(d) The magnitude baseline prunes to the sparsity relief reached, from the same dense network."""
    out, _ = demo
    run, relief = _summary(out, "magnitude"), _summary(out, "relief")
    assert run["method"] == "magnitude"
    assert run["targeted_sparsity"] == pytest.approx(relief["targeted_sparsity"], abs=1e-3)


def test_one_report_with_table_and_plots(demo: tuple[Path, str]) -> None:
    """One report over the demo's runs: every run in its table, and the accuracy plots beside it."""
    out, _ = demo
    report = (out / "report.md").read_text()
    for name, _ in PARTS:
        assert f"| {name} |" in report
    assert (out / "report.html").is_file()
    assert (out / "accuracy_vs_params.png").stat().st_size > 0


def test_threads_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A thread count below 1 is a one-line error before anything runs or is written."""
    from prunelab.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "prunelab: error: --threads: must be >= 1 (got 0)"
    assert not (tmp_path / "demo").exists()
