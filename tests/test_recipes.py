"""Recipe validation: every shipped recipe validates; bad recipes fail with ``file: field.path: reason``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.experiments.schema import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
# Sweep files (*.sweep.yaml) are grids over recipes, validated by the sweep validator below.
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if not p.name.endswith(".sweep.yaml"))
SWEEPS = sorted((REPO / "recipes").rglob("*.sweep.yaml"))


def test_recipes_exist() -> None:
    assert (REPO / "recipes/magnitude/lenet300_mnist.yaml") in RECIPES
    assert (REPO / "recipes/magnitude/vgg16_cifar10.yaml") in RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.model.name and recipe.data.name


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_sweep_expands_and_validates(path: Path, tmp_path: Path) -> None:
    from prunelab.experiments.sweep_spec import expand_sweep, load_sweep

    runs = expand_sweep(load_sweep(path), tmp_path)  # every expanded recipe is validated
    assert runs and len({r.id for r in runs}) == len(runs)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BAD = [
    (
        "model: {name: lenet300_100}\nprune: {sparsty: 0.9}\n",
        "prune.sparsty: unknown key; did you mean 'sparsity'?",
    ),
    ("train: {epochs: ten}\n", "train.epochs: expected an integer"),
    ("prune: {sparsity: 1.5}\n", "prune.sparsity: 1.5 is impossible"),
    ("model: {name: resnet21}\n", "model.name: unknown model 'resnet21'"),
    ("data: {name: cifar11}\n", "data.name: unknown dataset 'cifar11'"),
    ("prune: {method: magnitud}\n", "prune.method: unknown method 'magnitud'; did you mean magnitude"),
    ("train: {optimizer: sdg}\n", "train.optimizer: 'sdg' is not one of"),
    ("train: {lr: -1}\n", "train.lr: must be a finite number > 0 (got -1.0)"),
    ("model: {name: vgg16, kwargs: {depth: 3}}\n", "model.kwargs:"),
    ("prune: {schedule: agp}\n", "finetune.epochs: agp prunes gradually"),
    ("prune: [1, 2]\n", "prune: expected a mapping"),
    ("model: {name: lenet5\n", "line"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_recipe_message(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_preset_fills_and_recipe_overrides() -> None:
    recipe = recipe_from_dict({"prune": {"method": "lottery_ticket", "rounds": 3}})
    assert recipe.prune.schedule == "iterative" and recipe.prune.rewind is True
    assert recipe.prune.rounds == 3


def test_set_overrides_dotted_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {name: lenet300_100}\ndata: {name: mnist}\n")
    recipe = load_recipe(
        path,
        [
            "prune.sparsity=0.95",
            "train.lr_schedule=multistep",
            "train.milestones=[10, 20]",
            "data.train_subset=500",
        ],
    )
    assert recipe.prune.sparsity == 0.95
    assert recipe.train.milestones == [10.0, 20.0]
    assert recipe.data.train_subset == 500


def test_float_written_without_dot_is_accepted(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, "train: {lr: 1e-3}\n"))
    assert recipe.train.lr == pytest.approx(1e-3)


def test_cli_validate_exit_code_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "prune: {sparsity: 2}\n")
    good = REPO / "recipes/magnitude/lenet300_mnist.yaml"
    assert main(["validate", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"ok: {good}" in captured.out
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("prunelab: error: ")


def test_cli_validate_expands_sweeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = REPO / "recipes/relief/lenet_gpu_grid.sweep.yaml"
    assert main(["validate", str(sweep)]) == 0
    assert f"ok: {sweep} (6 runs)" in capsys.readouterr().out
    # A grid value that breaks one expanded run is reported with that run's id.
    bad = tmp_path / "bad.sweep.yaml"
    bad.write_text(
        f"name: bad\nstages:\n  - name: s\n    base: {REPO / 'recipes/magnitude/lenet300_mnist.yaml'}\n"
        "    grid: {prune.sparsity: [0.5, 1.5]}\n"
    )
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune.sparsity" in err[0] and "1.5" in err[0]
    assert main(["validate", str(sweep), "--set", "seed=1"]) == 2
    assert "--set applies to recipes" in capsys.readouterr().err


def test_cli_run_bad_recipe_has_no_traceback(tmp_path: Path) -> None:
    bad = _write(tmp_path, "model: {name: lenet300_100}\ntrain: {epochs: -3}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab", "run", str(bad), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"prunelab: error: {bad}: train.epochs: must be >= 0 (got -3)"
    assert not (tmp_path / "run").exists()  # nothing started


def test_driver_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prune.options: schedule 'one_shot' takes no options"):
        load_recipe(_write(tmp_path, "prune: {schedule: one_shot, options: {alpha: 0.9}}\n"))
    with pytest.raises(ConfigError, match="prune.schedule: unknown prune schedule 'iterativ'"):
        load_recipe(_write(tmp_path, "prune: {schedule: iterativ}\n"))
