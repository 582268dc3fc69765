"""Calibration data and statistics for data-driven criteria (relief activations, PLS features, gradients).

Data-driven criteria score weights from statistics *accumulated* over a calibration set, never from
the last batch. :func:`calibration_batches` draws that set deterministically from the training split
(no augmentation), so every process of a DDP run sees the same samples unless it shards them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunelab.errors import ConfigError


def calibration_batches(
    dataset: object, num_samples: int = 1000, batch_size: int = 250, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """A fixed random subset of ``dataset`` as ``(x, y)`` batches, without augmentation.

    Args:
        dataset: a prunelab tensor dataset (``get_batch(indices)``) or any map-style dataset of
            ``(x, y)`` pairs.
        num_samples: how many samples (all of them if the dataset is smaller).
        batch_size: samples per batch.
        seed: seeds the choice of samples.

    Raises:
        ConfigError: for a non-positive ``num_samples`` or ``batch_size``, or an empty dataset.
    """
    if num_samples < 1 or batch_size < 1:
        raise ConfigError("calibration: num_samples and batch_size must be >= 1")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("calibration: the dataset is empty; check the data split and subsets")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=generator)[: min(num_samples, n)]
    batches = []
    for chunk in indices.split(batch_size):
        if hasattr(dataset, "get_batch"):
            x, y = dataset.get_batch(chunk)  # type: ignore[attr-defined]
        else:
            items = [dataset[int(i)] for i in chunk]  # type: ignore[index]
            x = torch.stack([item[0] for item in items])
            y = torch.as_tensor([int(item[1]) for item in items])
        batches.append((x, y))
    return batches
