"""The GPU fast path of the training loop (``TrainConfig.fast``) and its CPU fall-back.

On the CPU only ``device_data`` (a no-op there) and ``channels_last`` take effect; ``amp`` and ``compile``
fall back to float32 eager training with one logged line each. The fast path must train the same model
as the plain path: same batches, same schedule, and results equal up to float rounding (channels-last
convolutions sum in another order, and rounding differences grow over training). Tolerances used here,
after 15 steps: every epoch's training loss within 1e-4 relative, every weight and buffer within 1e-4
absolute + 1e-3 relative. Measured: losses differ by at most 1.4e-5 relative, weights by at most 9e-5
absolute (masked model) and 2e-6 relative (dense model).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from prunelab.core import masking
from prunelab.data import Augment, TensorImageDataset, make_loader
from prunelab.dataclass_yaml import build_section
from prunelab.errors import ConfigError
from prunelab.training import TrainConfig, set_seed, train
from prunelab.training import loop as loop_module
from prunelab.training.config import FastConfig, TrainSection

LOSS_RTOL = 1e-4
WEIGHT_RTOL, WEIGHT_ATOL = 1e-3, 1e-4
CPU_FAST = {"device_data": True, "channels_last": True, "amp": "bf16"}  # amp falls back on the CPU


def _splits(n: int = 192, seed: int = 0) -> SimpleNamespace:
    # Random 3×12×12 images in 4 classes whose mean brightness is the label, with the CIFAR policy
    # (zero-padded random crops and flips), so augmentation runs in every training batch.
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = (torch.rand(n, 3, 12, 12, generator=g) * 128 + labels.view(n, 1, 1, 1) * 32).to(torch.uint8)
    common: dict[str, Any] = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "classes": list("abcd")}
    train_set = TensorImageDataset(
        images[:160], labels[:160], augment=Augment(crop_padding=2, flip=True), **common
    )
    val_set = TensorImageDataset(images[160:], labels[160:], **common)
    return SimpleNamespace(train=train_set, val=val_set)


def _cnn(seed: int = 0) -> nn.Module:
    set_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )


def _masked_cnn(seed: int = 0) -> nn.Module:
    model = _cnn(seed)
    g = torch.Generator().manual_seed(1)
    for layer in (model[0], model[3], model[6]):
        masking.update_mask(layer, "weight", torch.rand(layer.weight.shape, generator=g) > 0.5)
    return model


def _cfg(fast: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {"epochs": 3, "lr": 0.05, "batch_size": 32, "progress": False}
    values.update(overrides)
    return TrainConfig(**values, fast=fast or {})


def _assert_close_runs(plain: Any, fast: Any, a: nn.Module, b: nn.Module) -> None:
    losses = [row["train_loss"] for row in plain.history], [row["train_loss"] for row in fast.history]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=LOSS_RTOL, atol=0)
    for (name, x), (_, y) in zip(masking.plain_state_dict(a).items(), masking.plain_state_dict(b).items()):
        torch.testing.assert_close(y.float(), x.float(), rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=name)


def test_fast_settings_train_the_same_model_as_the_plain_path() -> None:
    data = _splits()
    plain_model, fast_model = _cnn(), _cnn()
    plain = train(plain_model, data, _cfg(), seed=3)
    lines: list[str] = []
    fast = train(fast_model, data, _cfg(CPU_FAST), seed=3, log=lines.append)
    _assert_close_runs(plain, fast, plain_model, fast_model)
    # The protocol is unchanged: same number of steps and the same schedule.
    assert [r["step"] for r in fast.history] == [r["step"] for r in plain.history]
    assert [r["lr"] for r in fast.history] == [r["lr"] for r in plain.history]
    assert any(line.startswith("train.fast.amp: bf16 autocast is used on CUDA only") for line in lines)
    # The model comes back in the standard layout, whatever it trained in.
    assert all(p.is_contiguous() for p in fast_model.parameters())


def test_channels_last_is_in_effect_during_training() -> None:
    seen: list[bool] = []

    class Probe:
        def __init__(self, model: nn.Module) -> None:
            self.model = model

        def after_backward(self, model: nn.Module) -> None:
            w = masking.original(model[0], "weight")
            seen.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())

    model = _masked_cnn()
    train(model, _splits(), _cfg({"channels_last": True}, epochs=1), hooks=[Probe(model)])
    assert seen and all(seen)


def test_masked_training_under_channels_last_keeps_masks_and_matches_plain() -> None:
    data = _splits()
    plain_model, fast_model = _masked_cnn(), _masked_cnn()
    masks = {k: v.clone() for k, v in masking.masks_state_dict(fast_model).items()}
    plain = train(plain_model, data, _cfg(), seed=1)
    fast = train(fast_model, data, _cfg({"channels_last": True, "device_data": True}), seed=1)
    _assert_close_runs(plain, fast, plain_model, fast_model)
    after = masking.masks_state_dict(fast_model)
    assert after.keys() == masks.keys() and all(torch.equal(after[k], masks[k]) for k in masks)
    for layer in (fast_model[0], fast_model[3], fast_model[6]):
        assert torch.all(layer.weight[~masking.get_mask(layer)] == 0)


def test_compiled_masked_training_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.compile is CUDA-only in the loop; here it is forced on, with the compiler-free "aot_eager"
    # backend, to check that dynamo traces the mask parametrizations (with channels-last) correctly.
    real_compile = torch.compile
    monkeypatch.setattr(loop_module, "_effective_fast", lambda fast, device, say: fast)
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real_compile(model, backend="aot_eager"))
    data = _splits(n=96)
    eager_model, compiled_model = _masked_cnn(), _masked_cnn()
    eager = train(eager_model, data, _cfg(epochs=1), seed=2)
    compiled = train(compiled_model, data, _cfg({"compile": True, "channels_last": True}, epochs=1), seed=2)
    _assert_close_runs(eager, compiled, eager_model, compiled_model)


def test_cpu_fall_back_drops_amp_and_compile_with_one_line_each() -> None:
    lines: list[str] = []
    fast = FastConfig(device_data=True, channels_last=True, amp="bf16", compile=True)
    effective = loop_module._effective_fast(fast, torch.device("cpu"), lines.append)
    assert effective == FastConfig(device_data=True, channels_last=True)
    assert len(lines) == 2 and "amp" in lines[0] and "compile" in lines[1]
    assert loop_module._effective_fast(FastConfig(channels_last=True), torch.device("cpu"), lines.append) == (
        FastConfig(channels_last=True)
    )
    assert len(lines) == 2


def test_device_data_indexes_the_dataset_where_it_lives() -> None:
    ds = _splits().train
    assert ds.to("cpu") is ds  # already there: no copy
    plain = [x for x, _ in make_loader(ds, 32, train=True, seed=4)]
    moved = [x for x, _ in make_loader(ds.to(torch.device("cpu")), 32, train=True, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(plain, moved))


def test_fast_section_is_validated_like_the_rest() -> None:
    section = build_section(
        TrainSection, {"epochs": 1, "fast": {"device_data": True, "amp": "bf16"}}, "train"
    )
    assert section.fast == FastConfig(device_data=True, amp="bf16")
    assert section.to_train_config().fast == section.fast
    cases = {
        "train.fast.chanels_last: unknown key; did you mean 'channels_last'?": {"chanels_last": True},
        "train.fast.amp": {"amp": "fp16"},
        "train.fast.compile: expected true or false": {"compile": "yes"},
        "train.fast: expected a mapping": 3,
        "train.fast.compile_mode": {"compile_mode": "fast"},
    }
    for message, fast in cases.items():
        with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
            build_section(TrainSection, {"fast": fast}, "train")
    with pytest.raises(ConfigError, match="TrainConfig.fast.x: unknown option"):
        TrainConfig.from_dict({"epochs": 1, "lr": 0.1, "fast": {"x": 1}})
    with pytest.raises(ConfigError, match="FastConfig.amp: unknown mode"):
        FastConfig(amp="fp16")
    # A checkpoint's config (plain mapping) round-trips.
    cfg = _cfg({"channels_last": True})
    assert TrainConfig(**cfg.to_dict()) == cfg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fast_path_bf16_masked_training_stays_close() -> None:
    # On a GPU every setting is live: bf16 autocast rounds activations to 8 mantissa bits, so only the
    # loss curve is compared, loosely; masks must still hold exactly.
    data = _splits()
    plain_model, fast_model = _masked_cnn(), _masked_cnn()
    plain = train(plain_model, data, _cfg(), seed=1, device="cuda")
    fast = train(fast_model, data, _cfg(CPU_FAST), seed=1, device="cuda")
    losses = [torch.tensor([r["train_loss"] for r in run.history]) for run in (plain, fast)]
    torch.testing.assert_close(losses[1], losses[0], rtol=0.05, atol=0.02)
    for layer in (fast_model[0], fast_model[3], fast_model[6]):
        assert torch.all(layer.weight[~masking.get_mask(layer)] == 0)
