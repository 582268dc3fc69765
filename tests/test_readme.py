"""The README's promises: its Python example runs, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (example,) = _blocks("python")
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the README is ours
    out = capsys.readouterr().out
    assert "0.900 of the conv/linear weights removed" in out


def test_ci_runs_the_readme_test_command() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in _blocks("bash") if b.strip() in quickstart]
    assert len(commands) == 2, "the Quickstart has exactly two commands"
    assert "prunelab demo" in commands[0]
    test_command = commands[1]
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci/run").read_text()
