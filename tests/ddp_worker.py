"""Worker launched by ``tests/test_distributed.py`` under ``torchrun --nproc_per_node 2``.

Trains a small masked CNN on the offline ``digits`` dataset with the real :func:`prunelab.training.train`,
prunes half of each masked weight by magnitude halfway through training (from a hook, on the
DDP-synchronised weights, so every rank takes the same decision), fine-tunes for one more epoch in a
second ``train`` call, then saves what this rank ended with to ``<out_dir>/rank<r>.pt`` for the test to
compare.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from prunelab import distributed
from prunelab._io import atomic_torch_save
from prunelab.core import masking
from prunelab.data import load_dataset
from prunelab.training import TrainConfig, TrainHook, evaluate, set_seed, train


class HalfwayMagnitudePrune(TrainHook):
    """Prune the smallest-magnitude half of every masked weight once, at the middle step of training."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.pruned_at: int | None = None

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.pruned_at is not None or step < total_steps // 2:
            return
        for _, module, name, mask in list(masking.iter_masks(self.model)):
            weight = getattr(module, name).detach().abs().flatten()
            k = weight.numel() // 2
            # Rank by (magnitude, index): a deterministic order even with ties.
            order = torch.argsort(weight, stable=True)
            keep = torch.ones_like(weight, dtype=torch.bool)
            keep[order[:k]] = False
            masking.update_mask(module, name, keep.view_as(mask))
        self.pruned_at = step


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def main(out_dir: Path) -> None:
    active = distributed.init_distributed()
    rank = distributed.rank()
    data = load_dataset("digits", seed=0)
    # Different seeds per rank on purpose: DDP must broadcast rank 0's initial weights.
    set_seed(100 + rank)
    model = build_model()
    for module in (model[0], model[3], model[8]):
        masking.add_mask(module, "weight")
    hook = HalfwayMagnitudePrune(model)
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=64, lr_schedule="cosine", progress=False)
    result = train(model, data, cfg, hooks=[hook], out_dir=out_dir / "run", seed=0, tag="ddp")
    # A second stage re-wraps the same module in a new DDP, as iterative pruning rounds do.
    finetune = TrainConfig(epochs=1, lr=0.01, batch_size=64, lr_schedule="constant", progress=False)
    train(model, data, finetune, out_dir=out_dir / "run", seed=1, tag="ft")
    test = evaluate(model, data.test)
    atomic_torch_save(
        {
            "active": active,
            "world_size": distributed.world_size(),
            "model": masking.plain_state_dict(model),
            "masks": masking.masks_state_dict(model),
            "pruned_at": hook.pruned_at,
            "final_val_accuracy": result.final_val_accuracy,
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
        },
        out_dir / f"rank{rank}.pt",
    )
    distributed.barrier()
    distributed.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
