"""What the sweep tests share: a tiny base recipe and "kill -9 a running sweep mid-run"."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

#: A one-epoch training section of the tiny runs.
TINY = {"epochs": 1, "optimizer": "adam", "lr": 3.0e-3, "weight_decay": 0.0, "batch_size": 64}
#: A tiny recipe (small CNN on the bundled digits, magnitude pruning) the sweep files build on.
BASE: dict[str, Any] = {
    "model": {"name": "small_cnn"},
    "data": {"name": "digits", "val_fraction": 0.0},
    "train": TINY,
    "prune": {"method": "magnitude", "sparsity": 0.5},
    "finetune": TINY,
    "eval": {"latency": False},
}


def kill_mid_run(command: list[str], out: Path, timeout_s: float) -> None:
    """Start the sweep ``command`` (writing to ``out``) and SIGKILL its whole process group as soon as
    one run has finished and another is training (its ``metrics.jsonl`` exists)."""
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + timeout_s

    def in_progress() -> bool:
        done = {p.parent for p in out.glob("runs/*/summary.json")}
        return bool(done) and any(p.parent not in done for p in out.glob("runs/*/metrics.jsonl"))

    while time.time() < deadline and proc.poll() is None and not in_progress():
        time.sleep(0.02)
    assert proc.poll() is None, (
        "the sweep finished (or failed) before it could be killed; make the runs longer"
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the run it was executing, at once
    proc.wait()
