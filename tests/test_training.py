"""Behaviour of the training loop: determinism, resume, hook order, penalties, schedules, selection, files."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from prunelab.core import masking
from prunelab.data import DataSplits, TensorImageDataset, load_dataset, make_loader
from prunelab.errors import CheckpointError, ConfigError
from prunelab.training import (
    CHECKPOINT_FORMAT,
    TrainConfig,
    TrainHook,
    build_optimizer,
    build_scheduler,
    checkpoint_path,
    evaluate,
    set_seed,
    train,
)

ROW_FIELDS = {"tag", "epoch", "step", "lr", "train_loss", "train_acc", "val_acc", "val_loss", "time_s"}


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    # A 600-image training subset keeps each epoch around 10 optimizer steps.
    return load_dataset("digits", seed=0, train_subset=600)


def small_cnn(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    set_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(6 * 8 * 8, 10),
    )


def cfg(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {"epochs": 2, "lr": 0.05, "batch_size": 64, "progress": False}
    values.update(overrides)
    return TrainConfig(**values)


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{key} differs"


def steps_per_epoch(data: DataSplits, batch_size: int = 64) -> int:
    return len(make_loader(data.train, batch_size, train=True))


class HalfwayPrune(TrainHook):
    """Once, at a given step, prunes the smallest half of the conv weights that are still unmasked.

    Its ``done`` flag is checkpointed; pruning twice would remove another half, so a resumed run that
    forgot the flag would end with different masks.
    """

    def __init__(self, model: nn.Module, at_step: int) -> None:
        self.model, self.at_step, self.done = model, at_step, False

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.done or step < self.at_step:
            return
        conv = self.model[0]
        alive = masking.get_mask(conv).flatten()
        score = torch.where(alive, conv.weight.detach().abs().flatten(), torch.tensor(-1.0))
        keep = torch.ones_like(alive)
        keep[torch.argsort(score, stable=True)[: int((~alive).sum()) + int(alive.sum()) // 2]] = False
        masking.update_mask(conv, "weight", keep.view_as(conv.weight))
        self.done = True

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state["done"])


class Interrupt(Exception):
    pass


class InterruptAt:
    """A duck-typed hook (no TrainHook base) that simulates a crash at a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int, total_steps: int) -> None:
        if step == self.step:
            raise Interrupt


# --------------------------------------------------------------------------------------------------
# Determinism and resume


def test_same_seed_gives_bit_identical_weights(digits: DataSplits) -> None:
    states = []
    for _ in range(2):
        model = small_cnn(seed=0, dropout=0.2)
        train(model, digits, cfg(), seed=3)
        states.append(masking.plain_state_dict(model))
    assert_same_state(states[0], states[1])

    other = small_cnn(seed=0, dropout=0.2)
    train(other, digits, cfg(), seed=4)  # a different data order and dropout must change the result
    assert not torch.equal(masking.plain_state_dict(other)["5.weight"], states[0]["5.weight"])


def test_resume_after_interruption_equals_uninterrupted_run(digits: DataSplits, tmp_path: Path) -> None:
    spe = steps_per_epoch(digits)
    settings = cfg(lr_schedule="multistep", milestones=[1.5], momentum=0.9)

    def masked_model() -> nn.Module:
        model = small_cnn(seed=0, dropout=0.3)
        masking.add_mask(model[0])
        return model

    reference = masked_model()
    train(
        reference, digits, settings, hooks=[HalfwayPrune(reference, spe // 2)], out_dir=tmp_path / "a", seed=1
    )

    first = masked_model()
    with pytest.raises(Interrupt):
        train(
            first,
            digits,
            settings,
            hooks=[HalfwayPrune(first, spe // 2), InterruptAt(spe + 3)],
            out_dir=tmp_path / "b",
            seed=1,
        )
    assert torch.load(checkpoint_path(tmp_path / "b"), weights_only=True)["epoch"] == 1

    # A fresh process would rebuild an unmasked model from another seed; resume must fix all of it.
    resumed = small_cnn(seed=123, dropout=0.3)
    hook = HalfwayPrune(resumed, spe // 2)
    result = train(resumed, digits, settings, hooks=[hook], out_dir=tmp_path / "b", seed=1, resume=True)

    assert hook.done  # restored from the checkpoint, so it did not prune a second time
    assert_same_state(masking.masks_state_dict(resumed), masking.masks_state_dict(reference))
    assert_same_state(masking.plain_state_dict(resumed), masking.plain_state_dict(reference))
    assert result.epochs_run == 2 and [row["epoch"] for row in result.history] == [1, 2]
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # no duplicated or stale rows


def test_resume_with_gradual_pruning_hook(digits: DataSplits, tmp_path: Path) -> None:
    # The real Pruner + AGP hook: its pruner state travels in the checkpoint (weights_only) and the
    # resumed run prunes exactly as the uninterrupted one.
    from prunelab.core.schedules import SCHEDULES
    from prunelab.pruning.pruner import GradualPruningHook, Pruner

    spe = steps_per_epoch(digits)

    def run(out: Path, *, model_seed: int = 0, resume: bool = False, crash_at: int = -1) -> Pruner:
        model = small_cnn(seed=model_seed)
        pruner = Pruner(model, criterion="magnitude")
        pruner.prepare()
        agp = SCHEDULES.build("agp", sparsity=0.8, initial_sparsity=0.0, start=0.0, end=0.8, frequency=3)
        hooks = [GradualPruningHook(pruner, agp), InterruptAt(crash_at)]
        train(model, digits, cfg(), hooks=hooks, out_dir=out, seed=5, resume=resume)
        return pruner

    reference = run(tmp_path / "a")
    with pytest.raises(Interrupt):
        run(tmp_path / "b", crash_at=spe + 2)
    resumed = run(tmp_path / "b", model_seed=7, resume=True)
    assert reference.sparsity() == pytest.approx(0.8, abs=0.01)
    assert resumed.sparsity() == reference.sparsity()
    assert_same_state(masking.masks_state_dict(resumed.model), masking.masks_state_dict(reference.model))
    assert_same_state(masking.plain_state_dict(resumed.model), masking.plain_state_dict(reference.model))


def test_resume_without_checkpoint_starts_afresh_and_needs_out_dir(
    digits: DataSplits, tmp_path: Path
) -> None:
    fresh, resumed = small_cnn(), small_cnn()
    train(fresh, digits, cfg(epochs=1), seed=2)
    train(resumed, digits, cfg(epochs=1), seed=2, out_dir=tmp_path, resume=True)
    assert_same_state(masking.plain_state_dict(fresh), masking.plain_state_dict(resumed))
    with pytest.raises(ConfigError, match="out_dir"):
        train(small_cnn(), digits, cfg(epochs=1), resume=True)


def test_resume_refuses_checkpoint_of_longer_run(digits: DataSplits, tmp_path: Path) -> None:
    train(small_cnn(), digits, cfg(epochs=2), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="epochs"):
        train(small_cnn(), digits, cfg(epochs=1), out_dir=tmp_path, resume=True)


# --------------------------------------------------------------------------------------------------
# Hooks


class Recorder(TrainHook):
    """Records every hook call and checks what each one can see."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.before_step: Tensor | None = None

    def penalty(self, model: nn.Module) -> Tensor | None:
        # zero_grad(set_to_none=True) ran before the forward pass, backward has not run yet.
        assert model[5].weight.grad is None
        self.calls.append(("penalty",))
        return None

    def after_backward(self, model: nn.Module) -> None:
        assert model[5].weight.grad is not None
        self.before_step = model[5].weight.detach().clone()
        self.calls.append(("after_backward",))

    def after_step(self, model: nn.Module, lr: float) -> None:
        assert self.before_step is not None
        assert not torch.equal(model[5].weight, self.before_step)  # the optimizer step already happened
        self.calls.append(("after_step", lr))

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.calls.append(("on_step_end", step, total_steps))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.calls.append(("on_epoch_end", epoch, metrics["val_acc"]))


def test_hooks_run_in_order_with_the_step_lr(digits: DataSplits) -> None:
    spe = steps_per_epoch(digits)
    recorder = Recorder()
    result = train(
        small_cnn(), digits, cfg(lr=0.1, lr_schedule="multistep", milestones=[1], gamma=0.1), hooks=[recorder]
    )
    total = 2 * spe
    expected: list[tuple[Any, ...]] = []
    for step in range(1, total + 1):
        lr = 0.1 if step <= spe else 0.1 * 0.1
        expected += [("penalty",), ("after_backward",), ("after_step", lr), ("on_step_end", step, total)]
        if step % spe == 0:
            expected.append(("on_epoch_end", step // spe, result.history[step // spe - 1]["val_acc"]))
    assert len(recorder.calls) == len(expected)
    for got, want in zip(recorder.calls, expected, strict=True):
        assert got[0] == want[0]
        if got[0] == "after_step":
            assert got[1] == pytest.approx(want[1], rel=1e-12)
        else:
            assert got == want


def test_duck_typed_hook_with_only_some_methods(digits: DataSplits) -> None:
    class Counter:
        steps = 0

        def on_step_end(self, step: int, total_steps: int) -> None:
            self.steps += 1

    counter = Counter()
    train(small_cnn(), digits, cfg(epochs=1), hooks=[counter])
    assert counter.steps == steps_per_epoch(digits)


def test_penalty_adds_its_gradient(digits: DataSplits) -> None:
    lam = 0.5

    class L1OnOneWeight(TrainHook):
        def penalty(self, model: nn.Module) -> Tensor:
            return lam * model[5].weight[3, 7].abs()

    class FirstGrad(TrainHook):
        grad: Tensor | None = None

        def after_backward(self, model: nn.Module) -> None:
            if self.grad is None:
                self.grad = model[5].weight.grad.detach().clone()

    grads = []
    for extra in ([], [L1OnOneWeight()]):
        model = small_cnn(seed=0)
        weight_before = model[5].weight.detach().clone()
        probe = FirstGrad()
        train(model, digits, cfg(epochs=1), hooks=[*extra, probe])
        grads.append(probe.grad)
    diff = grads[1] - grads[0]
    expected = torch.zeros_like(diff)
    expected[3, 7] = lam * torch.sign(weight_before[3, 7])
    torch.testing.assert_close(diff, expected, rtol=0, atol=1e-6)


def test_after_step_proximal_edit_is_kept(digits: DataSplits) -> None:
    # A proximal operator that clamps the bias to zero after every step must leave it exactly zero.
    class ZeroBias(TrainHook):
        def after_step(self, model: nn.Module, lr: float) -> None:
            with torch.no_grad():
                model[5].bias.zero_()

    model = small_cnn()
    train(model, digits, cfg(epochs=1), hooks=[ZeroBias()])
    assert torch.count_nonzero(model[5].bias) == 0


# --------------------------------------------------------------------------------------------------
# Learning-rate schedules


def lr_trace(settings: TrainConfig, spe: int) -> list[float]:
    """The LR of every step of the run, plus the LR after the last step."""
    opt = build_optimizer(nn.Linear(1, 1), settings)
    sched = build_scheduler(opt, settings, spe)
    lrs = []
    for _ in range(settings.epochs * spe):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [*lrs, opt.param_groups[0]["lr"]]


def test_multistep_schedule_decays_at_milestones() -> None:
    lrs = lr_trace(cfg(epochs=4, lr=0.1, lr_schedule="multistep", milestones=[1, 3], gamma=0.1), spe=10)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.01) and lrs[29] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.001) and lrs[39] == pytest.approx(0.001)
    half = lr_trace(cfg(epochs=2, lr=0.1, lr_schedule="multistep", milestones=[0.5], gamma=0.5), spe=10)
    assert half[4] == pytest.approx(0.1) and half[5] == pytest.approx(0.05)


def test_cosine_schedule_endpoints() -> None:
    lrs = lr_trace(cfg(epochs=4, lr=0.2, lr_schedule="cosine"), spe=10)
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[39] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 39 / 40)), rel=1e-9)
    assert lrs[40] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    warm = lr_trace(cfg(epochs=4, lr=0.2, lr_schedule="cosine", warmup_epochs=1), spe=10)
    assert warm[0] == pytest.approx(0.02) and warm[9] == pytest.approx(0.2) and warm[10] == pytest.approx(0.2)


def test_onecycle_schedule_endpoints() -> None:
    lrs = lr_trace(cfg(epochs=4, lr=0.4, lr_schedule="onecycle"), spe=10)
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 12  # 30 % of 40 steps
    assert lrs[39] == pytest.approx(0.4 / 25 / 1e4, rel=1e-9)


def test_constant_schedule() -> None:
    assert set(lr_trace(cfg(epochs=2, lr=0.03, lr_schedule="constant"), spe=5)) == {0.03}


# --------------------------------------------------------------------------------------------------
# Selection, files


class SnapshotAndSabotage(TrainHook):
    """Keeps the weights of every epoch; in epoch 3 it wipes the classifier so validation collapses."""

    def __init__(self, model: nn.Module, spe: int) -> None:
        self.model, self.spe, self.snapshots = model, spe, {}

    def after_step(self, model: nn.Module, lr: float) -> None:
        self.last_lr = lr

    def on_step_end(self, step: int, total_steps: int) -> None:
        if step > 2 * self.spe:
            with torch.no_grad():
                self.model[5].weight.zero_()

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.snapshots[epoch] = {k: v.clone() for k, v in masking.plain_state_dict(self.model).items()}


@pytest.mark.parametrize("select", ["best_val", "last"])
def test_best_val_selection_restores_best_validation_weights(digits: DataSplits, select: str) -> None:
    spe = steps_per_epoch(digits)
    model = small_cnn()
    hook = SnapshotAndSabotage(model, spe)
    result = train(model, digits, cfg(epochs=3, lr_schedule="constant", select=select), hooks=[hook])
    val = [row["val_acc"] for row in result.history]
    assert val[2] < max(val[:2]) - 0.3  # the sabotaged epoch is far worse on validation
    best_epoch = 1 + max(range(3), key=lambda i: (val[i], -i))
    assert result.best_val_accuracy == pytest.approx(max(val))
    if select == "best_val":
        assert result.best_epoch == best_epoch
        assert_same_state(masking.plain_state_dict(model), hook.snapshots[best_epoch])
        assert result.final_val_accuracy == pytest.approx(max(val))
        assert evaluate(model, digits.val)["accuracy"] == pytest.approx(max(val), abs=1e-12)
    else:
        assert result.best_epoch is None
        assert_same_state(masking.plain_state_dict(model), hook.snapshots[3])
        assert result.final_val_accuracy == pytest.approx(val[2])


def test_best_val_ignores_epochs_before_masks_changed(digits: DataSplits) -> None:
    class PruneAfterEpoch2(TrainHook):
        def __init__(self, model: nn.Module) -> None:
            self.model = model

        def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
            if epoch == 2:
                w = self.model[0].weight.detach()
                masking.update_mask(self.model[0], "weight", w.abs() > w.abs().median())

    model = small_cnn()
    masking.add_mask(model[0])
    result = train(model, digits, cfg(epochs=3, select="best_val"), hooks=[PruneAfterEpoch2(model)])
    assert result.best_epoch == 3  # only epoch 3 was validated under the final masks
    mask = masking.get_mask(model[0])
    assert 0 < int(mask.sum()) <= mask.numel() // 2
    assert torch.count_nonzero(model[0].weight[~mask]) == 0


def test_best_val_needs_a_validation_split(digits: DataSplits) -> None:
    no_val = DataSplits(
        digits.name, digits.train, None, digits.test, digits.num_classes, digits.input_shape, digits.classes
    )
    with pytest.raises(ConfigError, match="select"):
        train(small_cnn(), no_val, cfg(select="best_val"))
    result = train(small_cnn(), no_val, cfg(epochs=1))
    assert result.history[0]["val_acc"] is None and result.final_val_accuracy is None


def test_metrics_jsonl_rows(digits: DataSplits, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    stale = {"tag": "dense", "epoch": 9}
    other = {"tag": "pretrain", "epoch": 1}
    metrics.write_text(json.dumps(stale) + "\n" + json.dumps(other) + "\n")
    spe = steps_per_epoch(digits)
    result = train(small_cnn(), digits, cfg(epochs=3, eval_every=2), out_dir=tmp_path, tag="dense")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert rows[0] == other  # other stages kept, the stale row of this stage dropped
    ours = rows[1:]
    assert ours == result.history
    assert [set(row) for row in ours] == [ROW_FIELDS] * 3
    assert [row["epoch"] for row in ours] == [1, 2, 3]
    assert [row["step"] for row in ours] == [spe, 2 * spe, 3 * spe]
    assert [row["val_acc"] is None for row in ours] == [True, False, False]  # every 2nd epoch and the last
    for row in ours:
        assert row["tag"] == "dense" and 0.0 <= row["train_acc"] <= 1.0 and row["train_loss"] > 0
        assert row["time_s"] >= 0 and row["lr"] > 0


def test_checkpoint_loads_weights_only(digits: DataSplits, tmp_path: Path) -> None:
    model = small_cnn()
    masking.add_mask(model[0])
    masking.update_mask(model[0], "weight", torch.rand(model[0].weight.shape) > 0.3)
    train(model, digits, cfg(epochs=1, optimizer="adamw", lr=0.01), out_dir=tmp_path, tag="ft")
    state = torch.load(tmp_path / "ft_last.pt", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["tag"] == "ft" and state["epoch"] == 1
    assert {"model", "masks", "optimizer", "scheduler", "rng", "best", "history", "step"} <= set(state)
    assert_same_state(state["masks"], masking.masks_state_dict(model))
    plain = small_cnn(seed=9)
    plain.load_state_dict(state["model"])  # a plain, unmasked copy of the architecture loads it
    assert_same_state(plain.state_dict(), masking.plain_state_dict(model))


def test_keep_checkpoint_false_removes_it_after_completion(digits: DataSplits, tmp_path: Path) -> None:
    result = train(small_cnn(), digits, cfg(epochs=1), out_dir=tmp_path, keep_checkpoint=False)
    assert result.checkpoint is None and not checkpoint_path(tmp_path).exists()
    assert (tmp_path / "metrics.jsonl").is_file()


def test_progress_bar_stays_off_when_stderr_is_not_a_terminal(
    digits: DataSplits, capsys: pytest.CaptureFixture[str]
) -> None:
    train(small_cnn(), digits, cfg(epochs=1, progress=True))
    assert capsys.readouterr().err == ""


def test_log_receives_one_line_per_epoch(digits: DataSplits) -> None:
    lines: list[str] = []
    train(small_cnn(), digits, cfg(epochs=2), log=lines.append, tag="dense")
    assert len(lines) == 2 and lines[0].startswith("dense epoch 1/2")
    # A lone call plans its own epochs: the last line's ETA is zero.
    assert "run epoch 1/2, ETA " in lines[0] and lines[1].endswith("run epoch 2/2, ETA 0:00:00")


def test_tensorboard_of_a_lone_train_call(digits: DataSplits, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pytest.raises(ConfigError, match=r"TrainConfig\.tensorboard: needs out_dir"):
        train(small_cnn(), digits, cfg(epochs=1, tensorboard=True))
    result = train(small_cnn(), digits, cfg(epochs=2, tensorboard=True), out_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    points = events.Scalars("train/loss")
    assert [e.step for e in points] == [1, 2]
    assert [e.value for e in points] == pytest.approx([row["train_loss"] for row in result.history])
    assert (
        "model/sparsity" not in events.Tags()["scalars"]
    )  # the run adds it; a lone call has no dense reference


def test_zero_epochs_only_validates(digits: DataSplits) -> None:
    model = small_cnn()
    before = masking.plain_state_dict(model)
    before = {k: v.clone() for k, v in before.items()}
    result = train(model, digits, cfg(epochs=0))
    assert result.epochs_run == 0 and result.history == []
    assert result.final_val_accuracy == pytest.approx(evaluate(model, digits.val)["accuracy"])
    assert_same_state(masking.plain_state_dict(model), before)


# --------------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_counts_exactly() -> None:
    class Uniform(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(()))

        def forward(self, x: Tensor) -> Tensor:
            return torch.zeros(x.shape[0], 4) * self.scale  # equal logits: argmax is class 0

    labels = torch.tensor([0, 1, 0, 2, 3, 0, 1])
    images = torch.zeros(7, 1, 2, 2, dtype=torch.uint8)
    dataset = TensorImageDataset(images, labels, mean=(0.0,), std=(1.0,), classes=["a", "b", "c", "d"])
    model = Uniform()
    model.train()
    result = evaluate(model, dataset, batch_size=3)
    assert result["accuracy"] == pytest.approx(3 / 7, abs=1e-12)
    assert result["loss"] == pytest.approx(math.log(4), rel=1e-6)
    assert model.training  # the mode is restored


# --------------------------------------------------------------------------------------------------
# TrainConfig validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", -1),
        ("epochs", 2.5),
        ("epochs", True),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("batch_size", 0),
        ("optimizer", "sgdd"),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("lr_schedule", "step"),
        ("milestones", [3, 1]),
        ("milestones", [12]),
        ("gamma", 0.0),
        ("warmup_epochs", 10),
        ("label_smoothing", 1.0),
        ("grad_clip", 0.0),
        ("select", "best_test"),
        ("eval_every", 0),
        ("nesterov", "yes"),
        ("progress", 1),
        ("tensorboard", "yes"),
    ],
)
def test_config_rejects_bad_field(field: str, value: Any) -> None:
    values: dict[str, Any] = {"epochs": 10, "lr": 0.1}
    if field == "milestones":
        values["lr_schedule"] = "multistep"
    values[field] = value
    with pytest.raises(ConfigError, match=rf"TrainConfig\.{field}:"):
        TrainConfig(**values)


def test_config_cross_field_rules_and_from_dict() -> None:
    with pytest.raises(ConfigError, match="nesterov"):
        TrainConfig(epochs=1, lr=0.1, optimizer="adam", nesterov=True)
    with pytest.raises(ConfigError, match="milestones"):
        TrainConfig(epochs=4, lr=0.1, lr_schedule="cosine", milestones=[2])
    with pytest.raises(ConfigError, match="did you mean 'lr_schedule'"):
        TrainConfig.from_dict({"epochs": 1, "lr": 0.1, "lr_shedule": "cosine"})
    with pytest.raises(ConfigError, match=r"TrainConfig\.lr: missing"):
        TrainConfig.from_dict({"epochs": 1})
    good = TrainConfig.from_dict({"epochs": 4, "lr": 0.1, "lr_schedule": "multistep", "milestones": [2, 3]})
    assert TrainConfig.from_dict(good.to_dict()) == good
