"""Two-process DDP training with masks: both ranks must end with bit-identical weights and masks.

Launches ``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py`` (gloo on the CPU) and
compares what each rank saved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

from prunelab import distributed
from prunelab.core import masking
from prunelab.data import load_dataset
from prunelab.training import evaluate

WORKER = Path(__file__).with_name("ddp_worker.py")

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)  # never inherit an outer launcher's group
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(out),
    ]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def load_rank(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


def test_ranks_end_with_identical_weights_and_masks(ddp_run: Path) -> None:
    r0, r1 = load_rank(ddp_run, 0), load_rank(ddp_run, 1)
    assert r0["active"] and r1["active"] and r0["world_size"] == 2
    assert r0["pruned_at"] is not None and r0["pruned_at"] == r1["pruned_at"]
    assert r0["model"].keys() == r1["model"].keys()
    for key in r0["model"]:  # weights and buffers (BN running statistics included)
        assert torch.equal(r0["model"][key], r1["model"][key]), f"{key} differs between ranks"
    assert r0["masks"].keys() == r1["masks"].keys() and len(r0["masks"]) == 3
    for key, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][key]), f"mask {key} differs between ranks"
        assert int(mask.sum()) == mask.numel() - mask.numel() // 2
        assert torch.count_nonzero(r0["model"][key][~mask]) == 0, f"masked entries of {key} are not zero"
    assert r0["final_val_accuracy"] == r1["final_val_accuracy"]


def test_sharded_evaluation_matches_single_process(ddp_run: Path) -> None:
    # The 359 test images do not split evenly over 2 ranks; padding must not be counted.
    sys.path.insert(0, str(WORKER.parent))
    from ddp_worker import build_model

    r0 = load_rank(ddp_run, 0)
    model = build_model()
    masking.load_plain_state_dict(model, r0["model"])
    data = load_dataset("digits", seed=0)
    assert len(data.test) % 2 == 1
    single = evaluate(model, data.test)
    assert r0["test_accuracy"] == pytest.approx(single["accuracy"], abs=1e-12)
    assert r0["test_loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert load_rank(ddp_run, 1)["test_accuracy"] == r0["test_accuracy"]


def test_only_rank_zero_writes_files(ddp_run: Path) -> None:
    run = ddp_run / "run"
    assert sorted(p.name for p in run.iterdir()) == ["ddp_last.pt", "ft_last.pt", "metrics.jsonl"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # One row per epoch and stage, not one per rank.
    assert [(row["tag"], row["epoch"]) for row in rows] == [("ddp", 1), ("ddp", 2), ("ft", 1)]
    checkpoint = torch.load(run / "ft_last.pt", weights_only=True)
    for key, value in load_rank(ddp_run, 0)["model"].items():
        assert torch.equal(checkpoint["model"][key], value)


def test_helpers_are_no_ops_in_a_single_process() -> None:
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main_process()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_(t) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
    with pytest.raises(ValueError, match="reduce op"):
        distributed.all_reduce_(t, op="mean")  # type: ignore[arg-type]
