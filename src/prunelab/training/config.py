"""Training configuration, validated when it is built so a bad value fails before any work starts."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prunelab.errors import ConfigError

__all__ = [
    "AMP_MODES",
    "COMPILE_MODES",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "SELECTIONS",
    "FastConfig",
    "TrainConfig",
    "TrainSection",
]

#: Optimizer names accepted by :class:`TrainConfig`.
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Learning-rate schedules accepted by :class:`TrainConfig` (see :func:`prunelab.training.build_scheduler`).
LR_SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
#: Ways to pick the weights a training run returns.
SELECTIONS = ("last", "best_val")
#: Mixed-precision modes of :class:`FastConfig` (``none`` = float32 throughout).
AMP_MODES = ("none", "bf16")
#: ``torch.compile`` modes of :class:`FastConfig`; ``reduce-overhead`` replays CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _is_number(value: Any) -> bool:
    # bool is an int subclass; "epochs: true" in a recipe is a typo, not 1 epoch.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice_hint(value: Any, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(choices)}"


@dataclass(kw_only=True)
class FastConfig:
    """How a training stage runs on the hardware (the recipe's ``train.fast``); never what it computes.

    The protocol (batch size, schedule, epochs, augmentation draws) is the same with or without these
    settings; only speed and float rounding change. Settings that need a CUDA device are turned off,
    with one logged line, when training runs elsewhere, so a recipe written for a GPU also runs on a
    laptop (see :func:`prunelab.training.loop.train`).

    Attributes:
        device_data: copy the training set (uint8 images and labels) to the training device once, and
            shuffle, crop, flip and normalise batches there; without it, every batch is assembled on the
            CPU and copied over. A no-op on the CPU; needs an in-memory image dataset (other datasets
            keep the CPU path).
        channels_last: train with the model's 4-D weights and the input batches in channels-last
            (NHWC) memory order, which tensor-core convolutions prefer; the model is handed back in the
            standard layout. Works on every device.
        amp: ``"bf16"`` runs the forward pass and the loss under ``torch.autocast`` with bfloat16
            (weights, gradients and the optimizer stay float32, so no loss scaling is needed); CUDA only,
            turned off on other devices. ``"none"`` keeps float32.
        compile: wrap the training forward pass in ``torch.compile`` (evaluation stays eager); CUDA only.
        compile_mode: the ``torch.compile`` mode; ``"reduce-overhead"`` captures CUDA graphs.
    """

    device_data: bool = False
    channels_last: bool = False
    amp: Literal["none", "bf16"] = "none"
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"

    def __post_init__(self) -> None:
        for name in ("device_data", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "must be true or false")
        if self.amp not in AMP_MODES:
            self._fail("amp", f"unknown mode; {_choice_hint(self.amp, AMP_MODES)} (fp16 is not offered)")
        if self.compile_mode not in COMPILE_MODES:
            self._fail("compile_mode", f"unknown mode; {_choice_hint(self.compile_mode, COMPILE_MODES)}")

    def _fail(self, name: str, reason: str) -> None:
        raise ConfigError(f"FastConfig.{name}: {reason} (got {getattr(self, name)!r})")

    @property
    def active(self) -> bool:
        """Whether any setting departs from the plain path."""
        return self.device_data or self.channels_last or self.amp != "none" or self.compile


def _refuse_unknown(values: Mapping[str, Any], cls: type, where: str) -> None:
    """Raise for the first key of ``values`` that is not a field of ``cls``, with the closest field named."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise ConfigError(f"{where}.{key}: unknown option; {hint}")


def _fast_from_mapping(values: Mapping[str, Any]) -> FastConfig:
    _refuse_unknown(values, FastConfig, "TrainConfig.fast")
    return FastConfig(**dict(values))


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation settings of one training stage.

    Attributes:
        epochs: passes over the training set; 0 trains nothing (the model is only validated).
        lr: peak learning rate (the value after warm-up; the maximum of ``onecycle``).
        batch_size: global batch size; under DDP each of the N ranks gets ``batch_size // N`` samples.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        momentum: SGD momentum (ignored by Adam/AdamW).
        weight_decay: L2 penalty (SGD, Adam) or decoupled decay (AdamW), applied to every parameter.
        nesterov: Nesterov momentum for SGD (needs ``momentum > 0``).
        lr_schedule: ``"multistep"`` (× ``gamma`` at each milestone), ``"cosine"`` (to 0 at the end),
            ``"onecycle"`` (cosine up to ``lr`` then down to ``lr / 2.5e5``) or ``"constant"``.
        milestones: epochs at which ``multistep`` multiplies the LR by ``gamma``, counted from the start
            of training (warm-up included). Non-integer epochs are allowed (``0.5`` = halfway through the
            first epoch); each milestone is converted to the nearest optimizer step.
        gamma: multistep decay factor, in (0, 1].
        warmup_epochs: linear warm-up over the ``W`` optimizer steps of this many epochs (may be
            fractional): step ``t < W`` uses ``lr · (t + 1) / W``; for ``onecycle`` it sets the length of
            the rising phase instead (default 30 % of training).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        grad_clip: clip the global gradient 2-norm to this value; ``None`` disables clipping.
        select: ``"last"`` returns the final weights; ``"best_val"`` restores the weights of the epoch
            with the highest *validation* accuracy (never the test set) among the epochs that share the
            final masks.
        eval_every: validate every this many epochs (the last epoch is always validated).
        progress: show a progress bar per epoch, with loss, accuracy, learning rate and the ETA as its
            postfix (only on rank 0, and only when stderr is a terminal; elsewhere one plain line per
            epoch goes to the log).
        tensorboard: also write the per-epoch figures as TensorBoard scalars, into
            ``<out_dir>/tensorboard`` (needs the ``tensorboard`` package: ``pip install
            'prunelab[tensorboard]'``). In a run, ``train.tensorboard`` or ``finetune.tensorboard``
            turns it on for every stage of the run (``prunelab run --tensorboard`` sets the first).
        fast: how the stage runs on the hardware (data on the device, channels-last, bf16, compile); a
            :class:`FastConfig` or a mapping of its fields. It never changes the protocol.
    """

    epochs: int
    lr: float
    batch_size: int = 128
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: Literal["multistep", "cosine", "onecycle", "constant"] = "cosine"
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    select: Literal["last", "best_val"] = "last"
    eval_every: int = 1
    progress: bool = True
    tensorboard: bool = False
    fast: FastConfig = field(default_factory=FastConfig)

    def __post_init__(self) -> None:
        if isinstance(self.fast, Mapping):
            # from_dict, to_train_config and checkpoints carry the section as a plain mapping.
            self.fast = _fast_from_mapping(self.fast)
        elif not isinstance(self.fast, FastConfig):
            self._fail("fast", "must be a mapping of FastConfig fields")
        self.milestones = (
            list(self.milestones) if isinstance(self.milestones, (list, tuple)) else self.milestones
        )
        for check in (
            self._check_counts,
            self._check_rates,
            self._check_choices,
            self._check_schedule,
        ):
            check()

    # Each check raises ConfigError("TrainConfig.<field>: <reason>") for the first bad field it finds.
    def _fail(self, name: str, reason: str) -> None:
        raise ConfigError(f"TrainConfig.{name}: {reason} (got {getattr(self, name)!r})")

    def _check_counts(self) -> None:
        for name, low in (("epochs", 0), ("batch_size", 1), ("eval_every", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                self._fail(name, "must be an integer")
            if value < low:
                self._fail(name, f"must be >= {low}")

    def _check_rates(self) -> None:
        if not _is_number(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            self._fail("lr", "must be a finite number > 0")
        if not _is_number(self.momentum) or not 0.0 <= self.momentum < 1.0:
            self._fail("momentum", "must be in [0, 1)")
        if not _is_number(self.weight_decay) or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            self._fail("weight_decay", "must be a finite number >= 0")
        if not _is_number(self.label_smoothing) or not 0.0 <= self.label_smoothing < 1.0:
            self._fail("label_smoothing", "must be in [0, 1)")
        if self.grad_clip is not None and (
            not _is_number(self.grad_clip) or not math.isfinite(self.grad_clip) or self.grad_clip <= 0
        ):
            self._fail("grad_clip", "must be a number > 0, or null to disable clipping")
        if not _is_number(self.gamma) or not 0.0 < self.gamma <= 1.0:
            self._fail("gamma", "must be in (0, 1]")

    def _check_choices(self) -> None:
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", LR_SCHEDULES),
            ("select", SELECTIONS),
        ):
            value = getattr(self, name)
            if value not in choices:
                self._fail(name, f"unknown value; {_choice_hint(value, choices)}")
        for name in ("nesterov", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "must be true or false")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            self._fail("nesterov", "needs optimizer 'sgd' with momentum > 0")

    def _check_schedule(self) -> None:
        if not _is_number(self.warmup_epochs) or self.warmup_epochs < 0:
            self._fail("warmup_epochs", "must be a number >= 0")
        if self.epochs > 0 and self.warmup_epochs >= self.epochs:
            self._fail("warmup_epochs", f"must be shorter than the {self.epochs} training epochs")
        if not isinstance(self.milestones, list) or not all(_is_number(m) for m in self.milestones):
            self._fail("milestones", "must be a list of epoch numbers")
        if any(m <= 0 for m in self.milestones):
            self._fail("milestones", "must be > 0 (epochs counted from the start of training)")
        if list(self.milestones) != sorted(self.milestones):
            self._fail("milestones", "must be in increasing order")
        if self.epochs > 0 and any(m > self.epochs for m in self.milestones):
            self._fail("milestones", f"must not exceed epochs={self.epochs}; a later milestone never fires")
        if self.milestones and self.lr_schedule != "multistep":
            self._fail("milestones", f"only apply to lr_schedule 'multistep', not {self.lr_schedule!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping (e.g. a recipe section), rejecting unknown or missing keys.

        Raises:
            ConfigError: for an unknown key (with the closest known name), a missing required key, or an
                invalid value.
        """
        _refuse_unknown(values, cls, "TrainConfig")
        for required in ("epochs", "lr"):
            if required not in values:
                raise ConfigError(f"TrainConfig.{required}: missing; it has no default, set it explicitly")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/YAML-friendly values."""
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class TrainSection(TrainConfig):
    """One training stage of a recipe (dense training or fine-tuning): a :class:`TrainConfig` whose
    ``epochs`` default to 0 (the stage is skipped) so a recipe can leave the section out."""

    epochs: int = 0
    lr: float = 0.1

    def to_train_config(self, progress: bool = True) -> TrainConfig:
        """The equivalent :class:`prunelab.training.TrainConfig` (progress bars off unless both allow)."""
        values = dataclasses.asdict(self)
        values["progress"] = self.progress and progress
        return TrainConfig(**values)
