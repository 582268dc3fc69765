"""The command line: help for every subcommand, listings, report, and the offline demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.cli import LISTABLE, build_parser, main

SUBCOMMANDS = ["demo", "run", "sweep", "validate", "list", "report"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: prunelab {command}")


@pytest.mark.parametrize("kind", LISTABLE)
def test_list(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 1
    expected = {
        "models": "resnet20",
        "datasets": "cifar10",
        "methods": "lottery_ticket",
        "drivers": "iterative",
        "criteria": "magnitude",
        "schedules": "agp",
        "granularities": "filter",
        "reparams": "interspace",
        "pretrained": "resnet20_cifar10",
    }[kind]
    assert any(line.split()[0] == expected for line in lines)


def test_report_on_missing_dir_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_demo_end_to_end(tmp_path: Path) -> None:
    """The README's demo command: offline, four runs, a table, report.md and its plot."""
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab", "demo", "--out", str(tmp_path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=1800,  # only a hang takes this long; speed is measured in benchmarks
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| sparsity |" in proc.stdout.replace("| run | sparsity |", "| sparsity |")
    assert (tmp_path / "report.md").is_file() and (tmp_path / "accuracy_vs_params.png").is_file()
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("summary.json"))]
    assert len(summaries) == 4
    by_name = {s["name"]: s for s in summaries}
    assert by_name["dense"]["accuracy"] > 0.85
    for s in (0.5, 0.8, 0.95):
        run = by_name[f"magnitude-{s:.2f}"]
        assert run["targeted_sparsity"] == pytest.approx(s, abs=1e-3)
        assert run["params_nonzero"] < by_name["dense"]["params_nonzero"]
        assert run["macs_effective"] < run["macs_dense"]
    assert by_name["magnitude-0.50"]["accuracy"] > 0.85
