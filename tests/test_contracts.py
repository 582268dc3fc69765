"""Contract tests driven by the registries (timm style): every registered method writes a complete run.

Every method preset in :data:`prunelab.methods.METHODS` runs end to end on a seconds-long digits recipe
through :func:`~prunelab.experiments.runner.run_recipe` and must leave the whole run-directory contract
behind: ``config.yaml`` (which validates again, to the same recipe), ``summary.json`` with the documented
keys and consistent values, ``layers.csv``, ``metrics.jsonl``, ``rounds.csv`` (for drivers that record
rounds), ``log.txt`` and a ``checkpoint.pt`` that :func:`~prunelab.checkpoint.build_from_checkpoint`
rebuilds into the run's final model (same parameter counts, same test accuracy).

Each driver gets its small settings from :data:`SETUPS`; a method whose driver is not in the table fails,
so a new method cannot go untested: add its driver there.

The other registries have their contracts elsewhere, parametrised over the registry in the same way:
every model's forward and backward pass in ``tests/test_models.py`` (``test_forward_backward``,
``test_classifier_name_is_the_layer_producing_the_logits``) and its channel surgery against the masked
model in ``tests/test_surgery.py`` (``test_compact_matches_masked_model_on_every_zoo_model``); every
criterion in ``tests/test_core_criteria.py``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from prunelab.checkpoint import build_from_checkpoint, load_checkpoint
from prunelab.experiments.runner import load_recipe_data, run_recipe
from prunelab.experiments.schema import Recipe, recipe_from_dict
from prunelab.methods import DRIVERS, METHODS
from prunelab.metrics import count_parameters
from prunelab.training import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

#: One epoch of Adam: every training stage of the contract runs.
TINY: dict[str, Any] = {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}
#: No speed comparison: latency is not part of the contract and costs seconds.
NO_SPEED: dict[str, Any] = {"speed_batch_sizes": []}


@dataclass(frozen=True)
class Setup:
    """How the contract runs the methods of one driver.

    Attributes:
        options: ``prune.options`` merged over the preset's, to keep the run seconds long.
        model: the registered model (structured drivers need BatchNorm and channel surgery).
        train_epochs: dense training epochs (0 for the drivers that prune at initialisation).
        rounds: whether the driver records ``rounds.csv`` rows.
        prunes: whether the run must end with fewer non-zero parameters than the dense network.
    """

    options: dict[str, Any] = field(default_factory=dict)
    model: str = "small_cnn"
    train_epochs: int = 1
    rounds: bool = True
    prunes: bool = True


#: The contract's settings, keyed by driver. A registered method whose driver is missing here fails.
SETUPS: dict[str, Setup] = {
    "none": Setup(rounds=False, prunes=False),
    "one_shot": Setup(),
    "iterative": Setup(options={"rounds": 2}),
    "agp": Setup(options={"frequency": 2}, rounds=False),
    "at_init": Setup(options={"rounds": 2, "calibration_samples": 64}, train_epochs=0),
    "relief": Setup(options={"rounds": 1, "calibration_samples": 128, "calibration_batch_size": 64}),
    "pls_vip": Setup(options={"rounds": 1, "calibration_samples": 128}),
    "slimming": Setup(options={**NO_SPEED, "sparsity_train": TINY}),
    # λ large enough for ξ to reach 0 within one short epoch (α = 1/lr under Adam), so channels go.
    "proximal_slimming": Setup(options={**NO_SPEED, "sparsity_train": TINY, "lam": 100.0}),
    "structured": Setup(options=NO_SPEED),
}

#: The files every run directory holds (``rounds.csv`` only for drivers that record rounds).
RUN_FILES = ("config.yaml", "summary.json", "layers.csv", "metrics.jsonl", "checkpoint.pt", "log.txt")

#: The documented ``summary.json`` keys every method writes.
SUMMARY_KEYS = (
    "model",
    "dataset",
    "method",
    "seed",
    "accuracy",
    "accuracy_dense",
    "params_total",
    "params_nonzero",
    "sparsity",
    "compression",
    "macs_dense",
    "macs_effective",
    "wall_time_s",
)


def _setup(method: str) -> Setup:
    driver = METHODS.get(method).driver
    assert driver in SETUPS, (
        f"method {method!r} uses the driver {driver!r}, which tests/test_contracts.py::SETUPS does not "
        "know: add a seconds-long setup for it"
    )
    return SETUPS[driver]


def _recipe(method: str, setup: Setup) -> Recipe:
    """A seconds-long digits recipe for ``method`` (the preset's sparsity, the setup's options)."""
    train = {**TINY, "epochs": setup.train_epochs}
    return recipe_from_dict(
        {
            "name": f"contract-{method}",
            "seed": 0,
            "device": "cpu",
            "model": {"name": setup.model},
            "data": {"name": "digits", "train_subset": 300, "test_subset": 120},
            "train": train,
            "prune": {"method": method, "options": setup.options},
            # dense never fine-tunes, and a finetune section there is refused as ignored
            "finetune": TINY if setup.prunes else {"epochs": 0},
            "eval": {"latency": False},
        }
    )


def test_every_driver_in_the_table_is_registered() -> None:
    # A stale entry would hide that a driver was renamed (and its methods then fail the lookup above).
    assert set(SETUPS) <= set(DRIVERS.names()), sorted(set(SETUPS) - set(DRIVERS.names()))


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_writes_the_run_directory_contract(method: str, tmp_path: Path) -> None:
    setup = _setup(method)
    driver = DRIVERS.get(METHODS.get(method).driver)
    recipe = _recipe(method, setup)
    summary = run_recipe(recipe, tmp_path, echo=None, progress=False)

    # Files.
    for name in RUN_FILES:
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "rounds.csv").is_file() == setup.rounds
    assert not list(tmp_path.glob("*_last.pt")), "stage checkpoints must be gone once the run is complete"

    # summary.json: what run_recipe returned, with the documented keys and consistent values.
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    missing = [key for key in SUMMARY_KEYS if key not in on_disk]
    assert not missing, f"summary.json lacks {missing}"
    assert (on_disk["model"], on_disk["dataset"], on_disk["method"], on_disk["seed"]) == (
        setup.model,
        "digits",
        method,
        0,
    )
    assert 0.0 <= on_disk["accuracy"] <= 1.0 and 0.0 <= on_disk["accuracy_dense"] <= 1.0
    total, nonzero = on_disk["params_total"], on_disk["params_nonzero"]
    assert 0 < nonzero <= total
    # Headline numbers are against the dense network (a compacted model has fewer parameters in all).
    dense_total = on_disk["params_dense_total"]
    assert total <= dense_total
    assert on_disk["sparsity"] == pytest.approx(1.0 - nonzero / dense_total)
    assert on_disk["compression"] == pytest.approx(dense_total / nonzero)
    assert on_disk["macs_ratio"] == pytest.approx(on_disk["macs_dense"] / on_disk["macs_effective"])
    assert 0 < on_disk["macs_effective"] <= on_disk["macs_dense"]
    assert on_disk["wall_time_s"] > 0
    if driver.uses_sparsity:
        assert on_disk["target_sparsity"] == pytest.approx(recipe.prune.sparsity)
    else:  # the method decides how much to remove (or, dense, removes nothing)
        assert on_disk["target_sparsity"] in (None, 0.0)
    if setup.prunes:
        assert nonzero < on_disk["params_dense_nonzero"], "the method removed nothing"
    else:
        assert nonzero == on_disk["params_dense_nonzero"]

    # Per-round and per-layer tables, the metrics stream and the log.
    if setup.rounds:
        rows = list(csv.DictReader((tmp_path / "rounds.csv").read_text().splitlines()))
        assert [int(r["round"]) for r in rows] == list(range(1, len(rows) + 1))
        for key in ("sparsity", "accuracy_before_finetune", "accuracy_after_finetune", "remaining_percent"):
            assert key in rows[0], f"rounds.csv lacks {key}"
        # The last round describes the final model.
        assert float(rows[-1]["remaining_percent"]) == pytest.approx(100.0 * nonzero / dense_total, abs=1e-3)
    layers = list(csv.DictReader((tmp_path / "layers.csv").read_text().splitlines()))
    assert layers and {"name", "sparsity", "macs_dense", "macs_effective"} <= set(layers[0])
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all("tag" in m for m in metrics)
    assert "wrote" in (tmp_path / "log.txt").read_text()

    # The checkpoint rebuilds the final model: the same parameter counts and the same test accuracy.
    assert load_checkpoint(tmp_path)["arch"]["model"] == setup.model
    model = build_from_checkpoint(tmp_path)
    counts = count_parameters(model)
    assert (counts.total, counts.nonzero) == (total, nonzero)
    data = load_recipe_data(recipe)
    rebuilt = evaluate(model, data.test, batch_size=recipe.eval.batch_size)["accuracy"]
    assert rebuilt == pytest.approx(on_disk["accuracy"], abs=1e-9)

    # config.yaml is the resolved recipe: it validates again, to the same recipe.
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert recipe_from_dict(config).to_dict() == config
    assert config == json.loads(json.dumps(recipe.to_dict()))
