"""What the benchmark scripts record about the machine they ran on (imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_record(load_before: tuple[float, ...] | list[float], **extra: Any) -> dict[str, Any]:
    """The ``machine`` block of a benchmark record: load before (given) and after (now), CPU, threads,
    versions; ``extra`` adds script-specific entries (e.g. the ONNX Runtime version)."""
    import torch

    return {
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **extra,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
