"""Measured inference latency and size on disk, and the one latency timer of prunelab.

:func:`interleaved_times` is the timer: the functions it is given are called alternately, round after
round (``f, g, f, g, ...``), each call timed with ``time.perf_counter`` after a warm-up (which absorbs
one-off costs: allocator growth, oneDNN/cuDNN kernel selection, lazy initialisation). Interleaving makes
a load spike on a shared machine hit every timed function alike. :func:`measure_latency` times one model
with it; :func:`prunelab.metrics.speed.compare_latency` times a dense and a compacted model side by side.

The median over repeats is the headline figure because it is robust to the occasional scheduler
hiccup; the 10th and 90th percentiles show the spread.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunelab.core.modules import eval_mode
from prunelab.errors import ConfigError

__all__ = ["cpu_name", "file_size", "interleaved_times", "machine", "measure_latency"]


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, str]:
    """The CPU a figure was measured (or a model trained) on: its model name and the vector instruction
    set torch's CPU kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``: ``"AVX2"``,
    ``"AVX512"``, ...). Timings depend on both, and so do trained weights: kernels of another instruction
    set round differently, so the same recipe and seed train to other weights on another CPU."""
    return {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def interleaved_times(
    fns: Sequence[Callable[[], object]],
    warmup: int,
    repeats: int,
    device: torch.device | None = None,
) -> list[list[float]]:
    """Wall-clock times (ms) of ``repeats`` calls of each function of ``fns``, the functions alternating.

    ``warmup`` untimed rounds come first; then each round calls every function once, in the given order,
    and times each call on its own.

    Args:
        fns: the functions to time (called without arguments).
        warmup: untimed rounds.
        repeats: timed rounds.
        device: with a CUDA device, each call is followed by a synchronisation inside the timed region.

    Returns:
        One list of ``repeats`` times per function, in the order of ``fns``.
    """
    # CUDA kernels run asynchronously; without a synchronisation the timer would measure the launch only.
    cuda = device is not None and device.type == "cuda"
    for _ in range(warmup):
        for fn in fns:
            fn()
            if cuda:
                torch.cuda.synchronize(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times[k].append((time.perf_counter() - start) * 1000.0)
    return times


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time ``repeats`` forward passes of a random batch in eval mode without gradients.

    Masked (parametrized) models are timed as they would run once baked: the masked weights are computed
    once, outside the timed region (``parametrize.cached()``), so the figure does not include the
    mask multiplication that only training needs. Note that dense kernels do not get faster with zeros:
    unstructured sparsity shows up here only after structural surgery.

    Args:
        model: the model; its training/eval mode and the torch thread count are restored afterwards.
        input_shape: ``(C, H, W)`` of one input.
        batch_size: inputs per forward pass.
        warmup: untimed passes before measuring.
        repeats: timed passes.
        threads: intra-op CPU threads during the measurement (``None`` keeps the current setting).

    Returns:
        ``{"median_ms", "p10_ms", "p90_ms", "mean_ms", "repeats", "batch_size", "threads", "device"}``.

    Raises:
        ConfigError: for a non-positive ``batch_size``, ``repeats`` or ``threads``, or a negative ``warmup``.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise ConfigError(
            f"measure_latency: need batch_size >= 1, repeats >= 1, warmup >= 0, threads >= 1 "
            f"(got {batch_size}, {repeats}, {warmup}, {threads})"
        )
    ref = next((t for t in model.parameters() if t.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    # A fixed generator: the input values do not matter for dense kernels, but reruns should be identical.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *tuple(int(s) for s in input_shape)), generator=gen).to(device, dtype)
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with eval_mode(model), torch.no_grad(), parametrize.cached():
            (times,) = interleaved_times([lambda: model(x)], warmup, repeats, device)
    finally:
        torch.set_num_threads(old_threads)
    p10, median, p90 = np.percentile(np.asarray(times), [10, 50, 90]).tolist()
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mean_ms": float(np.mean(times)),
        "repeats": repeats,
        "batch_size": batch_size,
        "threads": threads if threads is not None else old_threads,
        "device": str(device),
    }


def file_size(path: str | os.PathLike[str]) -> int:
    """Size in bytes of a file, or of all files under a folder (e.g. a saved model directory).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise FileNotFoundError(f"file_size: {p} does not exist")
