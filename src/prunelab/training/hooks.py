"""Training hooks: the extension points of the one training loop.

Per optimizer step, :func:`prunelab.training.train` calls, in this order::

    loss = cross_entropy + Σ hook.penalty(model)      # regularizers that fit in the loss
    loss.backward()
    hook.after_backward(model)                        # gradient edits, e.g. L1 subgradient on BN γ
    clip gradients; optimizer.step()
    hook.after_step(model, lr)                        # proximal edits, with the LR of that step
    hook.on_step_end(step, total_steps)               # gradual pruning schedules
    scheduler.step()

and after each epoch's validation ``hook.on_epoch_end(epoch, metrics)``. Hooks always receive the
unwrapped module (never the ``DistributedDataParallel`` wrapper). Under DDP every rank runs every hook on
identical weights and gradients, so hooks must be deterministic to keep the replicas identical (see
:mod:`prunelab.distributed`).

Any object with some of these methods works as a hook; missing methods are skipped. A hook that also
has ``state_dict()`` / ``load_state_dict(state)`` gets its state saved in the resumable checkpoint and
restored on ``resume=True`` (the state must be made of tensors and plain Python values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["HOOK_METHODS", "TrainHook"]

#: The method names the training loop looks up on each hook.
HOOK_METHODS = ("penalty", "after_backward", "after_step", "on_step_end", "on_epoch_end")


class TrainHook:
    """No-op base class for training hooks; override only what you need.

    Subclassing is optional — the loop duck-types hooks — but it documents intent and gives sensible
    defaults.
    """

    def penalty(self, model: nn.Module) -> Tensor | None:
        """Return a scalar added to the loss before ``backward`` (``None`` adds nothing).

        Args:
            model: the unwrapped model, in training mode.
        """
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Edit gradients after ``backward`` and before clipping and the optimizer step.

        Under DDP the gradients are already averaged across ranks here.
        """

    def after_step(self, model: nn.Module, lr: float) -> None:
        """Edit parameters right after ``optimizer.step()`` (e.g. a proximal soft-threshold).

        Args:
            model: the unwrapped model.
            lr: the learning rate of the step just taken (first parameter group).
        """

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called once per optimizer step, after :meth:`after_step`.

        Args:
            step: optimizer steps completed so far, counted from 1 over the whole run (a resumed run
                continues the count).
            total_steps: optimizer steps of the whole run (``epochs × batches per epoch``).
        """

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Called after each epoch's validation, before the checkpoint is written.

        Args:
            epoch: epochs completed so far, counted from 1.
            metrics: the epoch's ``metrics.jsonl`` row (``val_acc``/``val_loss`` are ``None`` on epochs
                that were not validated).
        """
