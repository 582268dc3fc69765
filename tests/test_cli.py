"""The command line: help for every subcommand, listings and report (the demo: tests/test_demo.py)."""

from __future__ import annotations

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
