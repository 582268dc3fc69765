"""The recipe runner end to end on the offline digits data: run records, schedules, checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from prunelab.checkpoint import build_from_checkpoint, load_checkpoint
from prunelab.cli import main
from prunelab.core import masking
from prunelab.errors import CheckpointError, ConfigError
from prunelab.experiments.runner import run_device, run_recipe
from prunelab.experiments.schema import recipe_from_dict

REQUIRED = [
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
]

FAST = {"epochs": 2, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}


def _recipe(finetune_epochs: int = 1, **prune):
    return recipe_from_dict(
        {
            "name": "t",
            "seed": 0,
            "model": {"name": "small_cnn"},
            "data": {"name": "digits"},
            "train": FAST,
            "finetune": {**FAST, "epochs": finetune_epochs},
            "prune": prune,
            "eval": {"latency_batch_sizes": [1, 8], "latency_repeats": 3},
        }
    )


def test_one_shot_run_directory(tmp_path: Path) -> None:
    summary = run_recipe(_recipe(method="magnitude", sparsity=0.7), tmp_path, echo=None)
    for name in ("config.yaml", "summary.json", "layers.csv", "metrics.jsonl", "checkpoint.pt", "log.txt"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(REQUIRED) <= set(on_disk)
    assert on_disk == json.loads(json.dumps(summary))
    # Unstructured: the dense and final totals are equal, so the dense-relative figures are the plain ones.
    assert on_disk["params_dense_total"] == on_disk["params_total"]
    assert on_disk["sparsity"] == pytest.approx(1 - on_disk["params_nonzero"] / on_disk["params_total"])
    assert on_disk["compression"] == pytest.approx(on_disk["params_total"] / on_disk["params_nonzero"])
    assert 0.0 <= on_disk["accuracy"] <= 1.0
    assert on_disk["targeted_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert on_disk["compression"] == pytest.approx(on_disk["params_total"] / on_disk["params_nonzero"])
    assert on_disk["macs_effective"] < on_disk["macs_dense"]
    assert set(on_disk["latency_ms"]) == {"1", "8"}
    rows = list(csv.DictReader((tmp_path / "layers.csv").read_text().splitlines()))
    assert {"name", "sparsity", "macs_dense", "macs_effective"} <= set(rows[0])
    tags = {json.loads(line)["tag"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()}
    assert {"dense", "finetune1"} <= tags
    # config.yaml is the resolved recipe: every option of the driver, and it re-validates to itself.
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["prune"]["options"] == {
        "criterion": "magnitude",
        "criterion_kwargs": {},
        "granularity": "element",
        "scope": "global",
    }
    assert recipe_from_dict(config).to_dict() == config


def test_structured_run_numbers_are_relative_to_the_dense_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Channel pruning + surgery: the compacted model is smaller, and the headline numbers show it."""
    recipe = tmp_path / "l1.yaml"
    # No driver-side speed comparison (speed_batch_sizes: []): the runner times dense and final itself.
    prune = {"method": "l1_filter", "sparsity": 0.5, "options": {"speed_batch_sizes": []}}
    recipe.write_text(yaml.safe_dump(_recipe(**prune).to_dict()))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    dense, final = s["params_dense_total"], s["params_nonzero"]
    assert s["params_total"] < dense  # surgery removed channels
    assert s["sparsity"] == pytest.approx(1 - final / dense) and s["sparsity"] > 0.5
    assert s["compression"] == pytest.approx(dense / final)
    assert s["macs_ratio"] == pytest.approx(s["macs_dense"] / s["macs_effective"]) and s["macs_ratio"] > 1.5
    assert set(s["latency_speedup"]) == set(s["latency_ms"]) == set(s["latency_dense_ms"]) == {"1", "8"}
    for bs, speedup in s["latency_speedup"].items():
        assert speedup == pytest.approx(s["latency_dense_ms"][bs] / s["latency_ms"][bs])
    assert "params_dense_total" in s["parameter_convention"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"sparsity {s['sparsity']:.4f}, compression {s['compression']:.2f}x" in line
    assert f"MACs {s['macs_ratio']:.2f}x" in line
    with open(out / "rounds.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["remaining_percent"]) == pytest.approx(100 * final / dense, abs=1e-3)
    assert float(row["compression"]) == pytest.approx(dense / final, abs=1e-3)
    assert float(row["macs_ratio"]) == pytest.approx(s["macs_ratio"], abs=1e-3)


def test_checkpoint_round_trip_reproduces_accuracy(tmp_path: Path) -> None:
    summary = run_recipe(_recipe(method="magnitude", sparsity=0.8), tmp_path, echo=None)
    model = build_from_checkpoint(tmp_path)
    from prunelab.data import load_dataset
    from prunelab.training import evaluate

    data = load_dataset("digits", seed=0)
    assert evaluate(model, data.test)["accuracy"] == pytest.approx(summary["accuracy"], abs=1e-9)
    masks = load_checkpoint(tmp_path)["masks"]
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert 1 - kept / total == pytest.approx(0.8, abs=1e-3)


def test_iterative_rounds_with_rewind(tmp_path: Path) -> None:
    summary = run_recipe(
        _recipe(method="lottery_ticket", sparsity=0.9, options={"rounds": 3}), tmp_path, echo=None
    )
    rows = list(csv.DictReader((tmp_path / "rounds.csv").read_text().splitlines()))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    sparsities = [float(r["sparsity"]) for r in rows]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.9, abs=1e-3)
    assert float(rows[-1]["compression"]) == pytest.approx(summary["compression"], rel=1e-3)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["prune"]["options"]["rounds"] == 3 and config["prune"]["options"]["rewind"] is True
    assert recipe_from_dict(config).to_dict() == config


def test_agp_reaches_final_sparsity(tmp_path: Path) -> None:
    recipe = _recipe(method="agp", sparsity=0.85, options={"start": 0.0, "end": 0.6, "frequency": 5})
    recipe.finetune.epochs = 2
    summary = run_recipe(recipe, tmp_path, echo=None)
    assert summary["targeted_sparsity"] == pytest.approx(0.85, abs=1e-3)
    assert summary["accuracy_before_finetune"] is None


def test_init_from_run_checkpoint_keeps_masks(tmp_path: Path) -> None:
    run_recipe(_recipe(method="magnitude", sparsity=0.5), tmp_path / "a", echo=None)
    recipe = _recipe(finetune_epochs=0, method="dense")  # dense never fine-tunes
    recipe.model.init = str(tmp_path / "a")
    recipe.train.epochs = 0
    summary = run_recipe(recipe, tmp_path / "b", echo=None)
    assert summary["targeted_sparsity"] == pytest.approx(0.5, abs=1e-3)
    first = json.loads((tmp_path / "a/summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(first["accuracy"], abs=1e-9)


def test_corrupted_checkpoint_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(bad)


def test_missing_dataset_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: lenet300_100}\ndata: {name: mnist}\nprune: {method: dense}\n")
    code = main(
        ["run", str(recipe), "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), "--quiet"]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("prunelab: error: ") and "\n" not in err
    assert str(tmp_path / "empty") in err


def test_masks_survive_fine_tuning(tmp_path: Path) -> None:
    run_recipe(_recipe(method="magnitude", sparsity=0.6), tmp_path, echo=None)
    payload = load_checkpoint(tmp_path)
    for fqn, mask in payload["masks"].items():
        weight = payload["state_dict"][fqn]
        assert torch.all(weight[~mask] == 0), fqn
    model = build_from_checkpoint(tmp_path)
    assert len(list(masking.iter_masks(model))) == len(payload["masks"])


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    """kill -9 during fine-tuning, then ``prunelab run --resume``: same result as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "seed: 3\nmodel: {name: small_cnn}\ndata: {name: digits}\n"
        "train: {epochs: 6, optimizer: adam, lr: 3.0e-3, weight_decay: 0.0, batch_size: 32}\n"
        "prune: {method: lottery_ticket, sparsity: 0.8, options: {rounds: 2}}\n"
        "finetune: {epochs: 30, optimizer: adam, lr: 1.0e-3, weight_decay: 0.0, batch_size: 32}\n"
        "eval: {latency: false}\n"
    )
    command = [sys.executable, "-m", "prunelab", "run", str(recipe), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--out", str(tmp_path / "full")], check=True, timeout=1800, env=env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out", str(killed)], env=env)
    deadline = time.time() + 1800
    metrics = killed / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and '"tag": "finetune1", "epoch": 3,' in metrics.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert (killed / "finetune1_last.pt").exists()

    subprocess.run([*command, "--out", str(killed), "--resume"], check=True, timeout=1800, env=env)
    full = json.loads((tmp_path / "full/summary.json").read_text())
    resumed = json.loads((killed / "summary.json").read_text())
    for key in ("accuracy", "accuracy_dense", "params_nonzero", "macs_effective"):
        assert resumed[key] == full[key], key
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 + 2 * 30  # no epoch duplicated or lost
    assert not list(killed.glob("*_last.pt"))


def test_recipe_runs_under_torchrun(tmp_path: Path) -> None:
    """``torchrun -m prunelab run``: 2 gloo processes, one run directory, the same pruned model."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: small_cnn}\ndata: {name: digits}\n"
        "train: {epochs: 2, optimizer: adam, lr: 3.0e-3, weight_decay: 0.0, batch_size: 64}\n"
        "prune: {method: magnitude, sparsity: 0.7}\n"
        "finetune: {epochs: 1, optimizer: adam, lr: 1.0e-3, weight_decay: 0.0, batch_size: 64}\n"
        "eval: {latency: false}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "prunelab", "run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("accuracy ") == 1  # only rank 0 reports
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["environment"]["world_size"] == 2
    assert summary["targeted_sparsity"] == pytest.approx(0.7, abs=1e-3)
    from prunelab.data import load_dataset
    from prunelab.training import evaluate

    model = build_from_checkpoint(tmp_path / "run")
    assert evaluate(model, load_dataset("digits").test)["accuracy"] == pytest.approx(
        summary["accuracy"], abs=1e-9
    )


def test_device_typo_is_a_validation_error() -> None:
    with pytest.raises(ConfigError, match="device: 'gpu' is not a device"):
        recipe_from_dict({"device": "gpu", "model": {"name": "small_cnn"}, "data": {"name": "digits"}})


def test_device_auto_is_cpu_without_cuda_and_explicit_cuda_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_device("cuda:0")


def test_run_records_its_device_and_cpu(tmp_path: Path) -> None:
    recipe = _recipe(method="magnitude", sparsity=0.5)
    recipe.device = "cpu"
    recipe.eval.latency = False
    summary = run_recipe(recipe, tmp_path, echo=None)
    env = summary["environment"]
    assert env["device"] == "cpu"
    # The CPU and its kernels' instruction set: the same seed trains to other weights on another one.
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    assert env["cpu"] and env["cpu"] != "unknown"
