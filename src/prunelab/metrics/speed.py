"""Measured speed-up of a compacted network over its dense original.

Latency on a shared machine is noisy, so the two models are timed side by side in one process,
*interleaved* (dense pass, compact pass, dense pass, ...) by prunelab's one latency timer,
:func:`prunelab.metrics.latency.interleaved_times`, and medians are compared: a load spike hits both.
Backends: eager PyTorch on the CPU, and ONNX Runtime when the optional extra ``prunelab[onnx]`` is
installed (otherwise the result says it was skipped and why).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import statistics
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from prunelab.metrics.latency import interleaved_times

__all__ = ["compare_latency", "onnxruntime_available"]


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` (and ``onnx``, needed by the exporter) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _onnx_sessions(models: Sequence[nn.Module], x: torch.Tensor, tmp: str) -> list[Any]:
    import onnxruntime as ort

    sessions = []
    for k, model in enumerate(models):
        path = os.path.join(tmp, f"m{k}.onnx")
        # The exporter narrates every step on stdout and warns about torchvision ops: keep run logs clean.
        onnx_log = logging.getLogger("torch.onnx")
        level = onnx_log.level
        onnx_log.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})  # fmt: skip
        finally:
            onnx_log.setLevel(level)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sessions.append(ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]))
    return sessions


@torch.no_grad()
def compare_latency(
    dense: nn.Module,
    compact: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 5,
    repeats: int = 30,
    onnx: bool = True,
) -> dict[str, Any]:
    """Median latency (ms) of ``dense`` and ``compact``, interleaved, per backend and batch size.

    Returns:
        ``{"eager_cpu": {bs: {"dense_ms", "compact_ms", "speedup"}}, "onnxruntime": {...} or
        {"skipped": reason}, "threads", "load_avg"}`` (batch sizes as strings, JSON-friendly), plus
        ``"eager_cuda"`` with the same fields when the models live on a GPU.
    """
    modes = [m.training for m in (dense, compact)]
    device = next(dense.parameters()).device
    # The CPU figures are the point of the comparison, so a model trained on a GPU is timed through
    # a CPU copy; the GPU's own figures are recorded beside them.
    models = [m if device.type == "cpu" else copy.deepcopy(m).cpu() for m in (dense, compact)]
    for m in (dense, compact, *models):
        m.eval()
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "repeats": repeats}
    try:
        out["load_avg_1min_before"] = os.getloadavg()[0]
    except OSError:
        pass
    out["eager_cpu"] = _eager(models, input_shape, batch_sizes, gen, warmup, repeats)
    if device.type == "cuda":
        out[f"eager_{device.type}"] = _eager([dense, compact], input_shape, batch_sizes, gen, warmup, repeats)
    if not onnx:
        out["onnxruntime"] = {"skipped": "disabled"}
    elif not onnxruntime_available():
        out["onnxruntime"] = {"skipped": "onnxruntime not installed; pip install 'prunelab[onnx]'"}
    else:
        rt: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            x0 = torch.randn((1, *input_shape), generator=gen)
            sessions = _onnx_sessions(models, x0, tmp)
            for bs in batch_sizes:
                feed = {"x": torch.randn((bs, *input_shape), generator=gen).numpy()}
                d, c = _medians([lambda s=s, feed=feed: s.run(None, feed) for s in sessions], warmup, repeats)
                rt[str(bs)] = {"dense_ms": d, "compact_ms": c, "speedup": d / c}
        out["onnxruntime"] = rt
    for m, mode in zip((dense, compact), modes, strict=True):
        m.train(mode)
    return out


def _eager(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    gen: torch.Generator,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    device = next(models[0].parameters()).device
    eager: dict[str, Any] = {}
    for bs in batch_sizes:
        x = torch.randn((bs, *input_shape), generator=gen).to(device)
        d, c = _medians([lambda m=m, x=x: m(x) for m in models], warmup, repeats, device)
        eager[str(bs)] = {"dense_ms": d, "compact_ms": c, "speedup": d / c}
    return eager


def _medians(
    fns: Sequence[Callable[[], object]], warmup: int, repeats: int, device: torch.device | None = None
) -> list[float]:
    """Median time (ms) of each of ``fns``, timed interleaved (see :func:`interleaved_times`)."""
    return [statistics.median(t) for t in interleaved_times(fns, warmup, repeats, device)]
