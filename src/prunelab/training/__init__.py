"""The one training loop, its configuration and hooks (the DDP helpers are :mod:`prunelab.distributed`).

Example:
    >>> from prunelab.training import TrainConfig, train
    >>> result = train(model, data, TrainConfig(epochs=2, lr=0.05), out_dir="runs/x")  # doctest: +SKIP
"""

from prunelab.training.config import LR_SCHEDULES, OPTIMIZERS, SELECTIONS, TrainConfig
from prunelab.training.hooks import HOOK_METHODS, TrainHook
from prunelab.training.loop import (
    CHECKPOINT_FORMAT,
    TrainResult,
    build_optimizer,
    build_scheduler,
    checkpoint_path,
    evaluate,
    set_seed,
    train,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "HOOK_METHODS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "SELECTIONS",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_path",
    "evaluate",
    "set_seed",
    "train",
]
