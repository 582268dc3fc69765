"""Live progress of a run: the per-epoch line in a pipe, the bar on a terminal, the run-level ETA and
TensorBoard, each checked on a real run of a tiny recipe (small_cnn on the digits data) via the CLI."""

from __future__ import annotations

import csv
import fcntl
import itertools
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.experiments.runner import planned_epochs, run_recipe
from prunelab.experiments.schema import recipe_from_dict
from prunelab.training.progress import RunProgress, format_eta

ADAM = {"optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}
# Dense 2 epochs, then 2 rounds of prune -> fine-tune 1 epoch: 4 epochs planned in all.
RECIPE = {
    "name": "tiny",
    "seed": 0,
    "model": {"name": "small_cnn"},
    "data": {"name": "digits", "train_subset": 300},
    "train": {**ADAM, "epochs": 2},
    "finetune": {**ADAM, "epochs": 1},
    "prune": {"method": "magnitude_iterative", "sparsity": 0.8, "options": {"rounds": 2}},
    "eval": {"latency": False},
}
STAGES = [("dense", 1, 2), ("dense", 2, 2), ("finetune1", 1, 1), ("finetune2", 1, 1)]
LINE = re.compile(
    r"(?P<tag>\w+) epoch (?P<k>\d+)/(?P<n>\d+): train_loss \d+\.\d{4}, train_acc \d\.\d{4}, "
    r"val_acc \d\.\d{4}, lr [0-9.e+-]+, \d+\.\ds; run epoch (?P<d>\d+)/(?P<N>\d+), "
    r"ETA (?P<eta>\d+:\d\d:\d\d)$"
)


def _cli(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prunelab", "run", str(recipe), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _epoch_lines(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := LINE.search(line))]


def _seconds(eta: str) -> int:
    h, m, s = (int(p) for p in eta.split(":"))
    return 3600 * h + 60 * m + s


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


@pytest.fixture(scope="module")
def piped_run(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One run with ``--tensorboard``, stdout and stderr both pipes: (run dir, stdout, stderr)."""
    out = tmp_path_factory.mktemp("piped") / "run"
    proc = subprocess.run(
        _cli(recipe_file, out, "--tensorboard"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout, proc.stderr


def test_pipe_gets_one_plain_line_per_epoch(piped_run: tuple[Path, str, str]) -> None:
    out, stdout, stderr = piped_run
    assert "\r" not in stdout and "\r" not in stderr
    assert "step/s" not in stderr and "%|" not in stderr + stdout  # no bar anywhere
    lines = _epoch_lines(stdout)
    assert [(m["tag"], int(m["k"]), int(m["n"])) for m in lines] == STAGES
    # The run-level count spans every stage, the pruning rounds' fine-tuning included.
    assert [(int(m["d"]), int(m["N"])) for m in lines] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert _seconds(lines[-1]["eta"]) == 0
    # log.txt holds the same lines (the echo is the run log's).
    assert [m.group(0) for m in _epoch_lines((out / "log.txt").read_text())] == [m.group(0) for m in lines]


def test_terminal_gets_a_bar_with_loss_accuracy_and_lr(recipe_file: Path, tmp_path: Path) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 240, 0, 0))  # a 240-column terminal
    # Every update redraws (tqdm reads TQDM_* overrides), so the running postfix shows even when an epoch
    # of this tiny recipe is over within tqdm's default 0.1 s redraw interval on a quiet machine.
    env = {**_env(), "TQDM_MININTERVAL": "0"}
    proc = subprocess.Popen(_cli(recipe_file, tmp_path / "run"), stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=600) == 0
    screen = b"".join(chunks).decode(errors="replace")
    # Each epoch's bar ends (and stays, a newline after it) with the epoch's figures and the run's ETA.
    finals = re.findall(r"(\w+ \d/\d):\s+100%\|[^\r\n]*?\[([^\]]*)\]\r?\n", screen)
    assert [desc for desc, _ in finals] == [f"{tag} {k}/{n}" for tag, k, n in STAGES]
    for _, postfix in finals:
        assert re.search(r"loss=\d\.\d{4}, acc=\d\.\d{4}, val_acc=\d\.\d{4}, lr=[0-9.e+-]+", postfix), postfix
        assert re.search(r"run=\d/4, ETA=\d+:\d\d:\d\d", postfix), postfix
    # While an epoch runs the postfix shows the running loss, accuracy and lr.
    assert re.search(r"\r\w+ \d/\d:\s+\d+%\|[^\r\n]*loss=\d\.\d{4}, acc=\d\.\d{4}, lr=", screen)
    # The bar is the line on a terminal; the plain line goes to log.txt only.
    assert not _epoch_lines(screen)
    assert len(_epoch_lines((tmp_path / "run" / "log.txt").read_text())) == len(STAGES)


def test_tensorboard_holds_the_epoch_scalars_and_sparsity_per_round(piped_run: tuple[Path, str, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = piped_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    epoch_tags = {"train/loss", "train/accuracy", "train/lr", "val/accuracy", "val/loss", "time/eta_s"}
    assert epoch_tags | {"model/sparsity", "rounds/sparsity"} <= tags
    metrics = [yaml.safe_load(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for tag in epoch_tags - {"time/eta_s"}:
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3, 4], tag
    column = {
        "train/loss": "train_loss",
        "train/accuracy": "train_acc",
        "val/accuracy": "val_acc",
        "train/lr": "lr",
    }
    for tag, key in column.items():
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([row[key] for row in metrics]), tag
    with open(out / "rounds.csv") as fh:
        rounds = list(csv.DictReader(fh))
    points = events.Scalars("rounds/sparsity")
    assert [e.step for e in points] == [1, 2]
    assert [e.value for e in points] == pytest.approx([float(r["sparsity"]) for r in rounds], abs=1e-6)
    # The per-epoch sparsity is dense-relative: 0 while dense, then rising with each round.
    sparsity = [e.value for e in events.Scalars("model/sparsity")]
    assert sparsity[:2] == [0.0, 0.0] and 0.0 < sparsity[2] < sparsity[3] < 1.0
    eta = [e.value for e in events.Scalars("time/eta_s")]
    assert len(eta) == 4 and eta[-1] == 0.0 and all(v >= 0 for v in eta)


def test_eta_counts_every_stage_and_decreases_with_steady_epochs() -> None:
    now = [0.0]
    progress = RunProgress(planned=6, clock=lambda: now[0])
    assert progress.eta_s() is None  # nothing timed yet
    etas = []
    for epochs in (2, 2, 2):  # dense, then two fine-tuning rounds
        progress.begin_stage(epochs)
        for _ in range(epochs):
            progress.begin_epoch()
            now[0] += 10.0  # each epoch takes 10 s
            progress.end_epoch()
            etas.append(progress.eta_s())
        now[0] += 5.0  # pruning between stages: its time counts in the rate
    assert etas[0] == pytest.approx(50.0)
    assert all(later < earlier for earlier, later in itertools.pairwise(etas))
    assert etas[-1] == 0.0 and progress.done == progress.planned == 6
    assert format_eta(3725.4) == "1:02:05" and format_eta(None) == "?"


def test_eta_on_resume_and_beyond_the_plan() -> None:
    now = [0.0]
    progress = RunProgress(planned=4, clock=lambda: now[0])
    progress.begin_stage(2, already_done=2)  # a finished stage restored from its checkpoint
    assert progress.done == 2 and progress.eta_s() is None  # restored epochs took no time here
    progress.begin_stage(5)  # a stage longer than the plan raises the plan instead of overrunning
    assert progress.planned == 7
    progress.begin_epoch()
    now[0] += 3.0
    progress.end_epoch()
    assert progress.eta_s() == pytest.approx(3.0 * 4)


@pytest.mark.parametrize(
    ("prune", "finetune", "expected"),
    [
        ({"method": "magnitude", "sparsity": 0.5}, 3, 2 + 3),
        ({"method": "magnitude_iterative", "sparsity": 0.8, "options": {"rounds": 3}}, 2, 2 + 3 * 2),
        ({"method": "synflow", "sparsity": 0.5}, 3, 2 + 3),  # 100 scoring rounds, one training stage
        ({"method": "network_slimming", "options": {"sparsity_train": {"epochs": 4}}}, 1, 2 + 4 + 1),
        ({"method": "pls_vip", "options": {"rounds": 2, "finetune_epochs": 3}}, 1, 2 + 2 * 3),
        ({"method": "dense"}, 0, 2),
        ({"method": "relief", "options": {"rounds": 4}}, 2, 2 + 4 * 2),
        ({"method": "proximal_slimming", "options": {"sparsity_train": {"epochs": 3}}}, 2, 2 + 3 + 2),
    ],
)
def test_planned_epochs_cover_the_whole_recipe(prune: dict, finetune: int, expected: int) -> None:
    recipe = recipe_from_dict({**RECIPE, "finetune": {**ADAM, "epochs": finetune}, "prune": prune})
    assert planned_epochs(recipe) == expected


def test_missing_tensorboard_is_one_line_before_anything_runs(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry in sys.modules is what Python reports for a package that cannot be imported.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "run"
    assert main(["run", str(recipe_file), "--out", str(out), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelab: error: train.tensorboard:") and "\n" not in err
    assert "pip install 'prunelab[tensorboard]'" in err
    assert not (out / "config.yaml").exists()  # refused before the run directory was opened
    with pytest.raises(ConfigError, match=r"finetune\.tensorboard: .*prunelab\[tensorboard\]"):
        recipe = recipe_from_dict({**RECIPE, "finetune": {**ADAM, "epochs": 1, "tensorboard": True}})
        run_recipe(recipe, tmp_path / "other", echo=None)


def test_a_fresh_start_drops_the_earlier_attempts_event_files(tmp_path: Path) -> None:
    dense = {**RECIPE, "train": {**ADAM, "epochs": 1, "tensorboard": True}, "finetune": {**ADAM, "epochs": 0},
             "prune": {"method": "dense"}}  # fmt: skip
    for _ in range(2):
        run_recipe(recipe_from_dict(dense), tmp_path, echo=None, overwrite=True)
    # One file: the second run's; two would draw two curves over the same steps.
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
