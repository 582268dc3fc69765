"""Seeding, RNG capture, and the files a training run keeps: the resumable checkpoint and ``metrics.jsonl``.

Everything saved is made of tensors and plain Python values, so checkpoints load with
``torch.load(..., weights_only=True)`` (:func:`prunelab._io.safe_torch_load`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab._io import atomic_write_text, safe_torch_load
from prunelab.errors import CheckpointError
from prunelab.training.config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "append_row",
    "checkpoint_path",
    "load_resume_state",
    "restore_rng_state",
    "rewrite_metrics",
    "rng_state",
    "set_seed",
]

#: Value of the ``"format"`` key of a resumable training checkpoint.
CHECKPOINT_FORMAT = "prunelab-train-state-v1"


def set_seed(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    On the CPU this alone makes training bit-reproducible at a fixed thread count.

    Args:
        seed: the seed.
        deterministic: also ask cuDNN and torch for deterministic kernels (slower on GPU; needs
            ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for some CUDA ops). Leaves the flags alone when false.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global RNGs (CPU and CUDA), weights-only safe."""
    # Everything stored as tensors and plain Python values so the checkpoint loads with weights_only=True.
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def checkpoint_path(out_dir: str | os.PathLike[str], tag: str = "train") -> Path:
    """Where :func:`train` keeps the resumable checkpoint of stage ``tag``: ``<out_dir>/<tag>_last.pt``."""
    return Path(out_dir) / f"{tag}_last.pt"


def rewrite_metrics(path: Path, tag: str, keep_through_epoch: int) -> None:
    """Drop this stage's rows after ``keep_through_epoch`` (all of them for a fresh start).

    Rows of other stages (tags) sharing the file are kept. A resumed run would otherwise repeat the rows
    of epochs written after the last checkpoint, and a restarted one would mix two runs.
    """
    if not path.is_file():
        return
    kept: list[str] = []
    changed = False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            changed = True  # a line cut short by a crash
            continue
        if isinstance(row, dict) and row.get("tag") == tag and int(row.get("epoch", 0)) > keep_through_epoch:
            changed = True
            continue
        kept.append(line)
    if changed:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON row to ``path`` and flush it to disk (a crash loses at most the current row)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def load_resume_state(path: Path, tag: str, cfg: TrainConfig) -> dict[str, Any]:
    """Load and check the checkpoint of stage ``tag`` for resuming a run of ``cfg``.

    Raises:
        CheckpointError: the file is unreadable, not a training checkpoint, of another stage, or further
            along than ``cfg.epochs``.
    """
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a prunelab training checkpoint; delete it or resume=False to start over"
        )
    if state.get("tag") != tag:
        raise CheckpointError(
            f"{path} belongs to stage {state.get('tag')!r}, not {tag!r}; pass the right tag"
        )
    if int(state["epoch"]) > cfg.epochs:
        raise CheckpointError(
            f"{path} has {state['epoch']} epochs done, more than the {cfg.epochs} requested; "
            "raise epochs or start over with resume=False"
        )
    return state
