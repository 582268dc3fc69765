"""What the benchmark scripts record about the machine they ran on, and how they time on a shared one
(imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prunelab.metrics.latency import cpu_name, machine

__all__ = ["cpu_name", "cpu_timed", "machine_record"]

R = TypeVar("R")


def cpu_timed(fn: Callable[[], R], into: list[float], *, scale: float = 1000.0) -> Callable[[], R]:
    """``fn``, appending the calling thread's CPU time of each call to ``into`` (ms; seconds with ``scale=1``).

    With one intra-op thread every kernel runs in the calling thread, so this CPU time leaves out what
    the wall clock counts while other processes hold the cores of a shared machine. Passed to
    :func:`prunelab.metrics.latency.interleaved_times`, it records both clocks of the same calls (its
    warm-up calls included: drop the first ``warmup`` entries).
    """

    def timed() -> R:
        start = time.thread_time()
        out = fn()
        into.append((time.thread_time() - start) * scale)
        return out

    return timed


def machine_record(load_before: tuple[float, ...] | list[float], **extra: Any) -> dict[str, Any]:
    """The ``machine`` block of a benchmark record: load before (given) and after (now), CPU, threads,
    versions; ``extra`` adds script-specific entries (e.g. the ONNX Runtime version)."""
    import torch

    return {
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        **machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **extra,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
