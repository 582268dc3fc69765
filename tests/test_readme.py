"""The README's promises: its Python example runs, its recipe examples validate, its error example is the
real message, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_python_examples_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    masking, channels = _blocks("python")
    monkeypatch.chdir(tmp_path)  # the structured example writes net_pruned.pt
    exec(compile(masking, "README.md", "exec"), {})  # noqa: S102 - the README is ours
    assert "0.900 of the conv/linear weights removed" in capsys.readouterr().out
    # The class must be importable by name for save_pruned: run the block as a module of its own.
    module = tmp_path / "readme_structured.py"
    module.write_text(channels)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.import_module("readme_structured")
    out = capsys.readouterr().out
    assert "MACs" in out and "max |diff|" in out
    assert (tmp_path / "net_pruned.pt").exists()


def test_ci_runs_the_readme_test_command() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in _blocks("bash") if b.strip() in quickstart]
    assert len(commands) == 2, "the Quickstart has exactly two commands"
    assert "prunelab demo" in commands[0]
    test_command = commands[1]
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci/run").read_text()


def test_recipe_examples_validate() -> None:
    from prunelab.experiments.schema import recipe_from_dict

    recipes = [yaml.safe_load(b) for b in _blocks("yaml")]
    recipes = [r for r in recipes if "prune" in r]  # the sweep example has no prune section
    assert recipes, "the Recipes section shows a recipe"
    for raw in recipes:
        recipe_from_dict(raw)


def test_moved_key_error_example_is_the_real_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prunelab.cli import main

    match = re.search(r"```\n\$ prunelab validate old\.yaml\n(.*?)\n```", README, flags=re.DOTALL)
    assert match, "the Recipes section shows the error of a moved key"
    shown = match.group(1).strip()
    old = tmp_path / "old.yaml"
    old.write_text("prune: {method: magnitude_iterative, sparsity: 0.98, rounds: 5}\n")
    assert main(["validate", str(old)]) == 2
    assert capsys.readouterr().err.strip() == shown.replace("old.yaml", str(old))
