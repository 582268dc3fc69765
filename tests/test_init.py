"""The initialisation switch of every recipe: scratch, registered pretrained, a weights file, a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prunelab.core import masking
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.experiments.runner import load_checkpoint, run_recipe, save_checkpoint
from prunelab.experiments.schema import recipe_from_dict
from prunelab.models import build_model

DIGITS_SHAPE = tuple(int(s) for s in load_dataset("digits", seed=0).input_shape)


def _run(
    out: Path, init: str, *, data_dir: Path | None = None, **sections: Any
) -> tuple[dict[str, Any], str]:
    """Run a no-training recipe with ``model.init = init``; returns the final state_dict and the log."""
    raw: dict[str, Any] = {
        "seed": 0,
        "model": {"name": "small_cnn", "init": init},
        "data": {"name": "digits"},
        "train": {"epochs": 0},
        "prune": {"method": "dense"},
        "eval": {"latency": False},
    }
    raw.update(sections)
    run_recipe(recipe_from_dict(raw), out, data_dir=str(data_dir) if data_dir else None, echo=None)
    return load_checkpoint(out)["state_dict"], (out / "log.txt").read_text()


def _small_cnn(num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=num_classes, input_shape=DIGITS_SHAPE)


def test_scratch_is_a_fresh_random_network_seeded_by_the_recipe(tmp_path: Path) -> None:
    first, log = _run(tmp_path / "a", "scratch")
    again, _ = _run(tmp_path / "b", "scratch")
    other, _ = _run(tmp_path / "c", "scratch", seed=1)
    assert "init:" not in log
    assert all(torch.equal(first[k], again[k]) for k in first)  # same seed, same initial network
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_local_weights_file_same_and_different_head(tmp_path: Path) -> None:
    same = _small_cnn(10, seed=1)
    torch.save(same.state_dict(), tmp_path / "same.pt")
    state, log = _run(tmp_path / "same", str(tmp_path / "same.pt"))
    assert f"init: weights file {tmp_path / 'same.pt'}" in log
    for key, value in same.state_dict().items():
        assert torch.equal(state[key], value), key  # the head too: its size matches

    other = _small_cnn(5, seed=2)  # a 5-class head: a new 10-class head is initialised instead
    torch.save({"state_dict": other.state_dict()}, tmp_path / "five.pt")
    state, _ = _run(tmp_path / "five", str(tmp_path / "five.pt"))
    from prunelab.core.targets import find_head

    head = find_head(other, DIGITS_SHAPE)
    for key, value in other.state_dict().items():
        if key.startswith(f"{head}."):
            assert state[key].shape[0] == 10
        else:
            assert torch.equal(state[key], value), key


def test_run_checkpoint_with_masks_and_another_class_count(tmp_path: Path) -> None:
    from prunelab.core.targets import find_head

    source = _small_cnn(5, seed=3)
    head = find_head(source, DIGITS_SHAPE)
    body = next(name for name, m in source.named_modules() if isinstance(m, torch.nn.Conv2d))
    masking.add_mask(source.get_submodule(body), "weight")
    masking.add_mask(source.get_submodule(head), "weight")
    keep = torch.rand_like(masking.original(source.get_submodule(body), "weight")) > 0.5
    masking.update_mask(source.get_submodule(body), "weight", keep)
    arch = {"model": "small_cnn", "kwargs": {}, "num_classes": 5, "input_shape": list(DIGITS_SHAPE)}
    (tmp_path / "src").mkdir()
    save_checkpoint(tmp_path / "src" / "checkpoint.pt", source, arch)

    state, log = _run(tmp_path / "dst", str(tmp_path / "src"))
    assert "(new head)" in log
    masks = load_checkpoint(tmp_path / "dst")["masks"]
    assert torch.equal(masks[f"{body}.weight"], keep)  # the body's mask survives
    assert f"{head}.weight" not in masks  # the 5-class head's mask does not fit 10 classes
    assert state[f"{head}.weight"].shape[0] == 10
    plain = masking.plain_state_dict(source)
    for key, value in plain.items():
        if not key.startswith(f"{head}."):
            assert torch.equal(state[key], value), key


def test_compacted_checkpoint_with_another_class_count(tmp_path: Path) -> None:
    """A physically pruned 5-class network initialises a 10-class run: narrow body, 10-way head."""
    from prunelab.core.targets import find_head
    from prunelab.surgery import ChannelGraph, arch_spec, compact

    source = _small_cnn(5, seed=4).eval()
    graph = ChannelGraph(source, DIGITS_SHAPE)
    keep = {g.name: torch.arange(g.size) % 2 == 0 for g in graph.groups}  # drop every other channel
    small, _ = compact(source, keep, DIGITS_SHAPE)
    arch = {"model": "small_cnn", "kwargs": {}, "num_classes": 5, "input_shape": list(DIGITS_SHAPE),
            "surgery": arch_spec(small)}  # fmt: skip
    (tmp_path / "src").mkdir()
    save_checkpoint(tmp_path / "src" / "checkpoint.pt", small, arch)

    state, log = _run(tmp_path / "dst", str(tmp_path / "src"))
    assert "(new head)" in log
    head = find_head(small, DIGITS_SHAPE)
    fresh = state[f"{head}.weight"]
    assert fresh.shape == (10, small.get_submodule(head).in_features)
    # A fresh nn.Linear initialisation (bound 1/sqrt(fan_in)), not the uninitialised memory of the resize.
    bound = fresh.shape[1] ** -0.5
    assert torch.isfinite(fresh).all() and fresh.abs().max() <= bound and fresh.std() > bound / 4
    for key, value in small.state_dict().items():
        if not key.startswith(f"{head}."):
            assert torch.equal(state[key], value), key  # the narrowed body is loaded unchanged


def test_registered_pretrained_gets_a_new_head(tmp_path: Path, shared_data_dir: Path) -> None:
    from prunelab.models import find_pretrained

    state, log = _run(
        tmp_path / "run",
        "pretrained",
        data_dir=shared_data_dir,
        model={
            "name": "mobilenet_v1",
            "kwargs": {"width": 0.75, "stem": "imagenet"},
            "init": "pretrained",
            "pretrained": "mobilenet_v1_075_imagenet",
        },
        data={
            "name": "cifar10",
            "train_subset": 64,
            "test_subset": 32,
            "image_size": 32,
            "normalize": "inception",
        },
    )
    assert "init: pretrained mobilenet_v1_075_imagenet" in log and "(new head)" in log
    stored = torch.load(
        find_pretrained("mobilenet_v1_075_imagenet", data_dir=shared_data_dir), weights_only=True
    )
    stored = stored.get("state_dict", stored)
    assert torch.equal(state["conv1.weight"], stored["conv1.weight"])
    assert state["fc.weight"].shape[0] == 10 and stored["fc.weight"].shape[0] == 1000


def test_unknown_init_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.init: .* is neither scratch, pretrained"):
        _run(tmp_path / "x", str(tmp_path / "missing.pt"))
