"""Interspace pruning through the training loop and the recipe runner (tiny settings, digits)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from prunelab.checkpoint import build_from_checkpoint
from prunelab.core import masking
from prunelab.data import load_dataset
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import load_recipe, recipe_from_dict
from prunelab.models import build_model
from prunelab.pruning.pruner import Pruner
from prunelab.reparam.interspace import filter_basis_of
from prunelab.training import TrainConfig, evaluate, train

REPO = Path(__file__).resolve().parents[1]
FAST = {"epochs": 1, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


def _ip_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)
    Pruner(model, reparam="interspace", reparam_kwargs={"init": "dct"}).prepare().step(0.8)
    return model


class _Crash:
    """Raises at the end of epoch ``at`` (after that epoch's row, before its checkpoint)."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        if epoch == self.at:
            raise RuntimeError("simulated crash")


def test_interrupted_ip_training_resumes_to_the_same_weights_and_basis(tmp_path: Path) -> None:
    data = load_dataset("digits")
    cfg = TrainConfig(epochs=3, optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, progress=False)
    full = _ip_model()
    train(full, data, cfg, hooks=[_Crash(None)], out_dir=tmp_path / "full", seed=0)
    crashed = _ip_model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, data, cfg, hooks=[_Crash(2)], out_dir=tmp_path / "run", seed=0)
    resumed = _ip_model()
    train(resumed, data, cfg, hooks=[_Crash(None)], out_dir=tmp_path / "run", seed=0, resume=True)
    for name in ("features.0", "features.3"):
        a, b = filter_basis_of(full.get_submodule(name)), filter_basis_of(resumed.get_submodule(name))
        assert a is not None and b is not None
        torch.testing.assert_close(b.basis, a.basis)
    x = data.test.get_batch(torch.arange(32))[0]
    torch.testing.assert_close(resumed(x), full(x))


def _ip_recipe(**prune: Any) -> Any:
    return recipe_from_dict(
        {
            "name": "ip",
            "seed": 0,
            "device": "cpu",
            "model": {"name": "small_cnn", "kwargs": {"width": 0.5}},
            "data": {"name": "digits"},
            "train": FAST,
            "finetune": FAST,
            "prune": prune,
            "eval": {"latency": False},
        }
    )


def test_lottery_ticket_recipe_with_ip_reports_ip_costs_and_reloads(tmp_path: Path) -> None:
    recipe = _ip_recipe(
        method="lottery_ticket",
        sparsity=0.9,
        options={"rounds": 2},
        reparam={"name": "interspace", "init": "dct"},
    )
    summary = run_recipe(recipe, tmp_path, echo=None)
    ip = summary["interspace"]
    assert ip["ip_layers"] == 3 and ip["basis_params"] == 3 * 81
    assert ip["coefficients_nonzero"] < 0.2 * ip["coefficients"]
    model = build_from_checkpoint(tmp_path)
    assert filter_basis_of(model.get_submodule("features.0")) is not None
    assert evaluate(model, load_dataset("digits").test)["accuracy"] == pytest.approx(
        summary["accuracy"], abs=1e-9
    )


def test_same_recipe_without_reparam_is_standard_pruning(tmp_path: Path) -> None:
    summary = run_recipe(_ip_recipe(method="magnitude", sparsity=0.8), tmp_path, echo=None)
    assert "interspace" not in summary
    model = build_from_checkpoint(tmp_path)
    assert not any(filter_basis_of(m) is not None for m in model.modules())


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_at_init_driver_prunes_before_training_with_ip(method: str, tmp_path: Path) -> None:
    recipe = _ip_recipe(method=method, sparsity=0.9, options={"rounds": 3}, reparam={"name": "interspace"})
    recipe.train.epochs = 0
    summary = run_recipe(recipe, tmp_path, echo=None)
    assert summary["targeted_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert summary["accuracy_before_finetune"] is not None
    model = build_from_checkpoint(tmp_path)
    assert masking.has_mask(model.get_submodule("features.0"))


def test_agp_with_ip_reaches_the_target(tmp_path: Path) -> None:
    recipe = _ip_recipe(method="agp", sparsity=0.9, reparam={"name": "interspace"}, options={"frequency": 5})
    recipe.train.epochs = 0
    summary = run_recipe(recipe, tmp_path, echo=None)
    assert summary["targeted_sparsity"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize("path", sorted((REPO / "recipes/interspace").glob("*.yaml")), ids=lambda p: p.name)
def test_interspace_recipes_validate(path: Path, tmp_path: Path) -> None:
    if path.name.endswith(".sweep.yaml"):
        from prunelab.experiments.sweep_spec import expand_sweep, load_sweep

        runs = expand_sweep(load_sweep(path), tmp_path)  # validates every expanded recipe
        modes = {r.recipe["prune"]["reparam"]["name"] for r in runs}
        assert modes == {"none", "interspace"}
    else:
        assert load_recipe(path).prune.reparam.name in ("none", "interspace")


def test_snip_after_training_with_the_one_shot_driver(tmp_path: Path) -> None:
    recipe = _ip_recipe(
        method="magnitude", options={"criterion": "snip"}, sparsity=0.8, reparam={"name": "interspace"}
    )
    summary = run_recipe(recipe, tmp_path, echo=None)
    assert summary["targeted_sparsity"] == pytest.approx(0.8, abs=1e-3)
