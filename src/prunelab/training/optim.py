"""Optimizers and step-level learning-rate schedules for :func:`prunelab.training.train`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from prunelab.errors import ConfigError
from prunelab.training.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler"]

# One-cycle shape (Smith & Topin 2019, as in torch.optim.lr_scheduler.OneCycleLR): start at lr/25,
# rise to lr, fall to lr/(25·10⁴).
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4
_ONECYCLE_DEFAULT_RISE = 0.3


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> Optimizer:
    """Build the optimizer named by ``cfg.optimizer`` over the model's trainable parameters.

    Masked tensors are optimised through their unconstrained originals (the parametrization's
    parameter), so build the optimizer *after* attaching masks.

    Raises:
        ConfigError: if the model has no trainable parameter.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("train: the model has no trainable parameters; unfreeze some (requires_grad=True)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"TrainConfig.optimizer: unknown value {cfg.optimizer!r}")  # pragma: no cover


def _cosine(start: float, end: float, progress: float) -> float:
    # Half-cosine interpolation: start at progress 0, end at progress 1.
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Return ``f(t)``: the LR multiplier of optimizer step ``t`` (0-based) for ``cfg``'s schedule."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)

    if cfg.lr_schedule == "onecycle":
        rise = warmup if warmup > 0 else round(_ONECYCLE_DEFAULT_RISE * total)
        rise = min(max(rise, 1), total - 1) if total > 1 else 0
        low, final = 1.0 / _ONECYCLE_DIV, 1.0 / (_ONECYCLE_DIV * _ONECYCLE_FINAL_DIV)

        def onecycle(t: int) -> float:
            if total == 1:
                return 1.0
            if t <= rise:
                return _cosine(low, 1.0, t / rise)
            return _cosine(1.0, final, (t - rise) / max(1, total - 1 - rise))

        return onecycle

    milestone_steps = [round(m * steps_per_epoch) for m in cfg.milestones]

    def factor(t: int) -> float:
        # Linear warm-up multiplies whatever the main schedule gives: lr/W, 2·lr/W, ..., lr.
        scale = (t + 1) / warmup if t < warmup else 1.0
        if cfg.lr_schedule == "cosine":
            # Reaches exactly 0 after the last step; the last step itself uses a small positive LR.
            scale *= _cosine(1.0, 0.0, (t - warmup) / max(1, total - warmup)) if t >= warmup else 1.0
        elif cfg.lr_schedule == "multistep":
            scale *= cfg.gamma ** sum(t >= s for s in milestone_steps)
        return scale

    return factor


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """Build the step-level learning-rate schedule of ``cfg`` (stepped once per optimizer step).

    Schedules, with ``T = epochs × steps_per_epoch`` steps and ``W = round(warmup_epochs ×
    steps_per_epoch)`` warm-up steps (the LR of step ``t``, counted from 0):

    - ``constant``: ``lr``;
    - ``multistep``: ``lr · gamma^k``, ``k`` = milestones reached (milestone ``m`` epochs = step
      ``round(m × steps_per_epoch)``);
    - ``cosine``: ``lr · ½(1 + cos(π (t − W) / (T − W)))``, reaching 0 after the last step;
    - ``onecycle``: half-cosine from ``lr/25`` up to ``lr`` at step ``W`` (30 % of ``T`` when
      ``W = 0``), then down to ``lr/2.5e5`` at the last step (LR only; momentum is not cycled).

    The first three multiply a linear warm-up ``(t + 1) / W`` during the first ``W`` steps.

    Args:
        optimizer: the optimizer whose parameter groups' ``lr`` is scheduled (``cfg.lr`` is the base).
        cfg: the training config.
        steps_per_epoch: optimizer steps per epoch (batches per epoch per rank).
    """
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr
        group.pop("initial_lr", None)  # so LambdaLR takes cfg.lr as its base, not a stale value
    return LambdaLR(optimizer, _lr_factor(cfg, max(1, steps_per_epoch)))
