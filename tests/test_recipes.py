"""Recipe validation: every shipped recipe validates; bad recipes fail with ``file: field.path: reason``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.experiments.schema import load_recipe, recipe_from_dict
from prunelab.methods import DRIVERS, METHODS

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
    # The method's options are parsed once, at validation, into its driver's typed dataclass.
    options_class = DRIVERS.get(recipe.prune.driver).options
    if options_class is None:
        assert recipe.prune.options is None
    else:
        assert isinstance(recipe.prune.options, options_class)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_resolved_recipe_revalidates_to_itself(path: Path) -> None:
    """What a run writes as config.yaml (the resolved recipe, through YAML) validates to the same recipe."""
    recipe = load_recipe(path)
    resolved = yaml.safe_load(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    assert recipe_from_dict(resolved).to_dict() == recipe.to_dict()


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_sweep_expands_and_validates(path: Path, tmp_path: Path) -> None:
    from prunelab.experiments.sweep_spec import expand_sweep, load_sweep

    runs = expand_sweep(load_sweep(path), tmp_path)  # every expanded recipe is validated
    assert runs and len({r.id for r in runs}) == len(runs)


def _doc_snippets() -> list[tuple[str, str]]:
    """``(where, yaml)`` of every YAML block with a ``prune`` section in the docs and benchmark pages."""
    import re

    snippets = []
    for page in sorted([*(REPO / "docs").rglob("*.md"), *(REPO / "benchmarks").glob("*.md")]):
        blocks = re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.DOTALL)
        for i, block in enumerate(blocks):
            if "prune:" in block:
                snippets.append((f"{page.relative_to(REPO)}#{i}", block))
    return snippets


DOC_SNIPPETS = _doc_snippets()


def test_docs_show_recipe_snippets() -> None:
    pages = {where.split("#")[0] for where, _ in DOC_SNIPPETS}
    assert {"docs/methods/relief.md", "docs/methods/interspace.md", "docs/methods/slimming.md"} <= pages


@pytest.mark.parametrize("where,block", DOC_SNIPPETS, ids=[w for w, _ in DOC_SNIPPETS])
def test_every_doc_recipe_snippet_validates(where: str, block: str) -> None:
    # A snippet without a model is a prune fragment: check it on a small CNN with BatchNorm (the default
    # MLP has neither the BN scales slimming ranks nor the KxK convolutions interspace pruning needs).
    data = yaml.safe_load(block)
    data.setdefault("model", {"name": "small_cnn"})
    recipe_from_dict(data)


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
    ("prune: {method: agp}\n", "finetune.epochs: agp prunes gradually"),
    ("prune: {method: magnitude, options: {scop: layer}}\n", "prune.options.scop: unknown key"),
    ("prune: {method: magnitude, options: {scope: both}}\n", "prune.options.scope: 'both' is not one of"),
    ("prune: {method: magnitude, options: [1]}\n", "prune.options: expected a mapping"),
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
    recipe = recipe_from_dict({"prune": {"method": "lottery_ticket", "options": {"rounds": 3}}})
    assert recipe.prune.driver == "iterative" and recipe.prune.options.rewind is True
    assert recipe.prune.options.rounds == 3
    assert recipe.prune.sparsity == 0.9  # the preset's target
    assert recipe_from_dict({"prune": {"method": "lottery_ticket"}}).prune.options.rounds == 5


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
    shipped = load_recipe(REPO / "recipes/magnitude/lenet300_mnist.yaml", ["prune.options.rounds=3"])
    assert shipped.prune.options.rounds == 3 and shipped.prune.options.spacing == "geometric"


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
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"prunelab: error: {bad}: train.epochs: must be >= 0 (got -3)"
    assert not (tmp_path / "run").exists()  # nothing started


def test_driver_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prune.options: the 'none' driver takes no options"):
        load_recipe(_write(tmp_path, "prune: {method: dense, options: {alpha: 0.9}}\n"))
    with pytest.raises(ConfigError, match="prune.options.alpha: unknown key"):
        load_recipe(_write(tmp_path, "prune: {method: magnitude, options: {alpha: 0.9}}\n"))
    with pytest.raises(ConfigError, match="prune.options.rounds: must be >= 1"):
        load_recipe(_write(tmp_path, "prune: {method: magnitude_iterative, options: {rounds: 0}}\n"))


# ----------------------------------------------------------------------------------------------------
# The prune section: shared fields + method-owned options


#: Every key that left ``prune:`` for the method's options, a value it used to take, and where it went.
MOVED = [
    ("criterion", "random", "prune.options.criterion"),
    ("criterion_kwargs", "{p: 1}", "prune.options.criterion_kwargs"),
    ("granularity", "filter", "prune.options.granularity"),
    ("scope", "layer", "prune.options.scope"),
    ("rounds", "3", "prune.options.rounds"),
    ("spacing", "linear", "prune.options.spacing"),
    ("rewind", "true", "prune.options.rewind"),
    (
        "agp",
        "{start: 0.0, end: 0.5, frequency: 5}",
        "prune.options (initial_sparsity, start, end, frequency)",
    ),
    ("schedule", "iterative", "pick a method (prunelab list methods), e.g. method: magnitude_iterative"),
]


@pytest.mark.parametrize("key,value,new_home", MOVED, ids=[m[0] for m in MOVED])
def test_moved_key_names_its_new_home(tmp_path: Path, key: str, value: str, new_home: str) -> None:
    path = _write(tmp_path, f"prune: {{method: magnitude_iterative, sparsity: 0.9, {key}: {value}}}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: prune.{key}: ")
    assert new_home in message
    assert "\n" not in message


@pytest.mark.parametrize("key,value,new_home", MOVED, ids=[m[0] for m in MOVED])
def test_moved_key_in_a_set_override_names_its_new_home(key: str, value: str, new_home: str) -> None:
    path = REPO / "recipes/magnitude/lenet300_mnist.yaml"
    with pytest.raises(ConfigError) as info:
        load_recipe(path, [f"prune.{key}={value}"])
    message = str(info.value)
    assert message.startswith(f"{path}: prune.{key}: ") and new_home in message


def test_moved_key_in_a_sweep_grid_names_its_new_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "old.sweep.yaml"
    sweep.write_text(
        f"name: old\nstages:\n  - name: s\n    base: {REPO / 'recipes/magnitude/lenet300_mnist.yaml'}\n"
        "    grid: {prune.rounds: [2, 3]}\n"
    )
    assert main(["validate", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune.rounds: moved to prune.options.rounds" in err[0]


#: Methods that decide how much to remove themselves: a ``prune.sparsity`` is an error for them.
NO_SPARSITY = [
    "dense",
    "relief",
    "proximal_slimming",
    "pls_vip",
    "pls_vip_per_mac",
    "l1_filter_iterative",
    "l1_filter_layer_iterative",
    "random_filter_iterative",
]


@pytest.mark.parametrize("method", NO_SPARSITY)
def test_sparsity_for_a_method_that_does_not_read_it_is_an_error(method: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"prune": {"method": method, "sparsity": 0.3}})
    message = str(info.value)
    assert message.startswith("prune.sparsity: ") and repr(method) in message and "remove it" in message


def test_relief_rejects_the_mask_drivers_settings() -> None:
    """The issue's example: relief with a criterion used to validate "ok" and ignore it."""
    with pytest.raises(ConfigError, match=r"prune\.sparsity: method 'relief' does not read it"):
        recipe_from_dict({"prune": {"method": "relief", "sparsity": 0.3}})
    with pytest.raises(ConfigError, match=r"prune\.options\.criterion: unknown key"):
        recipe_from_dict({"prune": {"method": "relief", "options": {"criterion": "snip"}}})
    with pytest.raises(ConfigError, match=r"prune\.options\.granularity: unknown key"):
        recipe_from_dict({"prune": {"method": "relief", "options": {"granularity": "channel"}}})


@pytest.mark.parametrize(
    "prune,field",
    [
        ({"method": "network_slimming", "include": ["x"]}, "include"),
        ({"method": "l1_filter", "include": ["features.*"]}, "include"),
        ({"method": "pls_vip", "include": ["x"]}, "include"),
        ({"method": "network_slimming", "reparam": {"name": "interspace"}}, "reparam"),
        ({"method": "dense", "exclude": ["fc"]}, "exclude"),
        ({"method": "dense", "min_keep": 3}, "min_keep"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["method"],
)
def test_shared_field_the_method_does_not_read_is_an_error(prune: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"prune": prune})
    message = str(info.value)
    assert message.startswith(f"prune.{field}: method {prune['method']!r} does not read it")


def test_reparam_none_is_not_a_given_field() -> None:
    # ``reparam: {name: none}`` is the default (a resolved config.yaml repeats it), so it is no error.
    recipe = recipe_from_dict(
        {"model": {"name": "small_cnn"}, "prune": {"method": "network_slimming", "reparam": {"name": "none"}}}
    )
    assert recipe.prune.reparam.name == "none"


def test_method_without_a_target_needs_none_and_keeps_none() -> None:
    recipe = recipe_from_dict({"prune": {"method": "relief"}})
    assert recipe.prune.sparsity is None and recipe.prune.driver == "relief"


def test_options_deep_merge_keeps_the_presets_other_options() -> None:
    """Setting one option never drops the preset's others (l1_filter used to turn global silently)."""
    recipe = recipe_from_dict({"prune": {"method": "l1_filter", "options": {"speed_batch_sizes": []}}})
    assert recipe.prune.options.scope == "layer"
    assert recipe.prune.options.speed_batch_sizes == []
    masked = recipe_from_dict({"prune": {"method": "l1_filter_masked", "options": {"scope": "global"}}})
    assert masked.prune.options.scope == "global"
    assert masked.prune.options.granularity == "filter"
    assert masked.prune.options.criterion_kwargs == {"p": 1}
    shipped = load_recipe(REPO / "recipes/pretraining/mobilenet_cifar10_cpu_prune.yaml")
    assert shipped.prune.options.scope == "layer" and shipped.prune.options.frequency == 5


def test_merge_options_merges_nested_mappings_key_by_key() -> None:
    from prunelab.methods.base import merge_options

    base = {"criterion_kwargs": {"p": 1, "seed": 0}, "scope": "layer"}
    merged = merge_options(base, {"criterion_kwargs": {"p": 2}, "rounds": 3})
    assert merged == {"criterion_kwargs": {"p": 2, "seed": 0}, "scope": "layer", "rounds": 3}
    assert base == {"criterion_kwargs": {"p": 1, "seed": 0}, "scope": "layer"}  # not mutated


@pytest.mark.parametrize(
    "method,options_class",
    [
        ("magnitude", "MaskOptions"),
        ("lottery_ticket", "IterativeOptions"),
        ("agp", "AGPOptions"),
        ("snip", "AtInitOptions"),
        ("relief", "ReliefOptions"),
        ("network_slimming", "SlimmingOptions"),
        ("proximal_slimming", "ProximalSlimmingOptions"),
        ("l1_filter", "StructuredOptions"),
        ("pls_vip", "PlsVipOptions"),
    ],
)
def test_options_are_parsed_once_and_kept_typed(method: str, options_class: str) -> None:
    from prunelab.methods.base import parse_options

    # agp needs epochs; slimming needs a model with BatchNorm
    recipe = recipe_from_dict(
        {"model": {"name": "small_cnn"}, "prune": {"method": method}, "finetune": {"epochs": 1}}
    )
    options = recipe.prune.options
    assert type(options).__name__ == options_class
    assert isinstance(options, DRIVERS.get(recipe.prune.driver).options)
    assert parse_options(recipe.prune.driver, options) is options  # already parsed: passed through


def test_dense_has_no_options() -> None:
    recipe = recipe_from_dict({"prune": {"method": "dense"}})
    assert recipe.prune.driver == "none" and recipe.prune.options is None


@pytest.mark.parametrize("method", METHODS.names())
def test_resolved_recipe_of_every_method_revalidates_to_itself(method: str) -> None:
    finetune = {"epochs": 0 if method == "dense" else 1}  # agp needs epochs; dense refuses them
    recipe = recipe_from_dict(
        {"model": {"name": "small_cnn"}, "prune": {"method": method}, "finetune": finetune}
    )
    again = recipe_from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict(), sort_keys=False)))
    assert again.to_dict() == recipe.to_dict()
    assert again.prune.options == recipe.prune.options
