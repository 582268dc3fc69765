"""Thin helpers over ``torch.distributed`` so the same code runs single-process and under ``torchrun``.

prunelab uses plain data parallelism: ``torchrun --nproc_per_node N ...`` starts N processes, each calls
:func:`init_distributed`, and :func:`prunelab.training.train` wraps the model in
``DistributedDataParallel`` and shards the training set. Every helper here is a no-op (or the identity)
when the process group is not initialised, so library code calls them unconditionally.

Pruning under DDP — the one rule:
    **every pruning decision must be identical on every rank.** A mask that differs between ranks makes
    the replicas silently diverge (DDP only averages gradients; it never compares weights). Two ways keep
    decisions identical:

    1. compute them from state that DDP already keeps synchronised — the weights (identical after every
       optimizer step because gradients are all-reduced) and buffers broadcast from rank 0 — with a
       deterministic criterion, or all-reduce data-dependent statistics (activations, gradients) with
       :func:`all_reduce_` before scoring; or
    2. compute them on rank 0 only and send them to the others with :func:`broadcast_object`.

    Masks are mask *buffers*; ``DistributedDataParallel(broadcast_buffers=True)`` re-broadcasts rank 0's
    buffers at every forward, which hides but does not fix a divergent decision (the pruned originals
    are zeroed per rank), so follow the rule rather than relying on it.
"""

from __future__ import annotations

import os
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_",
    "barrier",
    "broadcast_object",
    "cleanup",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "rank_device",
    "uses_gpu",
    "world_size",
]

T = TypeVar("T")

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
}


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group described by the ``torchrun`` environment variables, if any.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. When
    ``WORLD_SIZE`` is absent or 1, nothing happens and the process runs alone. Calling it again after the
    group exists is harmless.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; by default NCCL when CUDA is available, else gloo. On CUDA the
            process is also bound to ``cuda:LOCAL_RANK``.

    Returns:
        Whether the process is now part of a multi-process group.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if backend is None:
        backend = "nccl" if uses_gpu() else "gloo"
    if backend == "nccl":
        # NCCL needs each process pinned to its own GPU before the first collective.
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return dist.get_world_size() > 1


def uses_gpu() -> bool:
    """Whether each local process can have a GPU of its own (CUDA present and enough devices).

    More processes than GPUs on one machine (for example two ranks on a one-GPU machine) cannot share
    a device under NCCL, so such a group runs on the CPU with gloo instead of failing at start-up.
    """
    if not torch.cuda.is_available():
        return False
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return local_world <= torch.cuda.device_count()


def rank_device() -> torch.device:
    """The device of this process: its own GPU (``cuda:LOCAL_RANK``) when :func:`uses_gpu`, else CPU."""
    return torch.device("cuda", local_rank()) if uses_gpu() else torch.device("cpu")


def is_distributed() -> bool:
    """Whether a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 when not launched by ``torchrun``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0, the only one that writes files and prints."""
    return rank() == 0


def all_reduce_(tensor: torch.Tensor, op: Literal["sum", "max", "min", "product"] = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place across all ranks and return it (unchanged when single-process).

    Args:
        tensor: the tensor to reduce; on NCCL it must live on this rank's GPU.
        op: ``"sum"``, ``"max"``, ``"min"`` or ``"product"``. (An average is a sum divided by
            :func:`world_size`; gloo has no AVG.)

    Raises:
        ValueError: for an unknown ``op``.
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"unknown reduce op {op!r}; use one of {', '.join(_REDUCE_OPS)}")
    if is_distributed():
        dist.all_reduce(tensor, op=_REDUCE_OPS[op])
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Return ``src``'s ``obj`` on every rank (any picklable object; the identity when single-process).

    Use it to share decisions made on one rank, e.g. a mask dictionary computed on rank 0.
    """
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every rank reaches this point (no-op when single-process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave and destroy the process group, if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
