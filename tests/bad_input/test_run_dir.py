"""Bad run directories and output paths cost one line, never a result (issue 14).

A finished run is never destroyed (``prunelab run`` into it is refused without ``--overwrite``;
``--resume`` on it changes nothing), an ``--out`` that cannot be written is refused before the data is
loaded, ``prunelab report`` names the malformed file of a run, checkpoints that carry pickled code are
refused without running it, and a killed run leaves nothing behind that a resume does not clean up.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunelab import _io
from prunelab.errors import ConfigError
from prunelab.experiments import runner
from prunelab.experiments.report import write_report
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import load_recipe
from tests.bad_input.conftest import (
    TINY_RECIPE,
    assert_one_line_error,
    assert_one_line_message,
    cli,
    tree,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: Exists on Linux, cannot hold new directories even for root.
UNCREATABLE = Path("/sys/prunelab-bad-input/run")


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (trained once per module); tests copy it."""
    root = tmp_path_factory.mktemp("finished")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(TINY_RECIPE)
    run_recipe(load_recipe(recipe_path), root / "run", echo=None, progress=False)
    return root / "run"


@pytest.fixture
def finished(workdir: Path, finished_template: Path) -> Path:
    """A copy of the finished tiny run at ``workdir/run``."""
    return Path(shutil.copytree(finished_template, workdir / "run"))


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the runner gets as far as loading data (the check must come before)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the run loaded data and trained before refusing its output directory")

    monkeypatch.setattr(runner, "_load_data_and_model", refuse)


class _WritesMarker:
    """Unpickling this runs ``open(marker, 'w')``: the code a malicious checkpoint smuggles in."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.save pickles the object; a full unpickle (weights_only=False) would create the marker.
    torch.save({"format": "prunelab.checkpoint", "version": 1, "payload": _WritesMarker(marker)}, path)
    assert not marker.exists()
    return path


# --------------------------------------------------------------------------------------------------
# a finished run is never destroyed


@pytest.mark.parametrize(
    "extra",
    [[], ["--quiet"], ["--set", "prune.sparsity=0.3"], ["--download"]],
    ids=["plain", "quiet", "other-sparsity", "download"],
)
def test_run_into_finished_run_is_refused(
    finished: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str], no_training: None, extra: list[str]
) -> None:
    before = tree(finished)
    code, _, err = cli(["run", tiny_recipe, "--out", finished, *extra], capsys)
    assert_one_line_error(code, err, str(finished), "finished run", "--overwrite", "--out", exit_code=2)
    assert tree(finished) == before


def test_resume_of_finished_run_changes_nothing(
    finished: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str], no_training: None
) -> None:
    before = tree(finished)
    summary = json.loads((finished / "summary.json").read_text())
    code, out, err = cli(["run", tiny_recipe, "--out", finished, "--resume", "--quiet"], capsys)
    assert code == 0 and not err.strip(), err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "already finished" in lines[0], out
    assert f"accuracy {summary['accuracy']:.4f}" in lines[0] and str(finished) in lines[0]
    assert tree(finished) == before


def test_resume_and_overwrite_together_are_refused(
    finished: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str], no_training: None
) -> None:
    before = tree(finished)
    code, _, err = cli(["run", tiny_recipe, "--out", finished, "--resume", "--overwrite"], capsys)
    assert_one_line_error(code, err, "--resume", "--overwrite", exit_code=2)
    assert tree(finished) == before


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2, 3]", b'{"accuracy": 0.5}', b"\x00\x01PK\x03\x04binary", b'{"name": "x"'],
    ids=["invalid-json", "a-list", "missing-keys", "binary", "truncated"],
)
def test_run_into_damaged_summary_is_refused(
    finished: Path,
    tiny_recipe: Path,
    capsys: pytest.CaptureFixture[str],
    no_training: None,
    content: bytes,
) -> None:
    (finished / "summary.json").write_bytes(content)
    before = tree(finished)
    code, _, err = cli(["run", tiny_recipe, "--out", finished], capsys)
    assert_one_line_error(code, err, str(finished / "summary.json"), "--resume", "--overwrite", exit_code=2)
    assert tree(finished) == before


def test_api_run_into_finished_run_is_refused(finished: Path, tiny_recipe: Path, no_training: None) -> None:
    before = tree(finished)
    with pytest.raises(ConfigError) as info:
        run_recipe(load_recipe(tiny_recipe), finished, echo=None)
    assert_one_line_message(info.value, str(finished), "--overwrite")
    assert tree(finished) == before


def test_api_resume_of_finished_run_returns_its_summary(
    finished: Path, tiny_recipe: Path, no_training: None
) -> None:
    before = tree(finished)
    summary = run_recipe(load_recipe(tiny_recipe), finished, echo=None, resume=True)
    assert summary == json.loads((finished / "summary.json").read_text())
    assert tree(finished) == before


def test_api_resume_with_overwrite_is_refused(finished: Path, tiny_recipe: Path, no_training: None) -> None:
    before = tree(finished)
    with pytest.raises(ConfigError) as info:
        run_recipe(load_recipe(tiny_recipe), finished, echo=None, resume=True, overwrite=True)
    assert_one_line_message(info.value, "exclude each other")
    assert tree(finished) == before


def test_overwrite_replaces_the_finished_run_and_writes_only_there(
    finished: Path, workdir: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (finished / "summary.json").write_text(
        json.dumps({**json.loads((finished / "summary.json").read_text()), "name": "old"})
    )
    (finished / ".checkpoint.pt.stale123.tmp").write_bytes(b"half a checkpoint")
    outside = {k: v for k, v in tree(workdir).items() if not k.startswith("run/")}
    code, out, err = cli(["run", tiny_recipe, "--out", finished, "--overwrite", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((finished / "summary.json").read_text())["name"] == "tiny"
    assert not list(finished.glob(".*.tmp"))
    assert str(finished) in out
    # Nothing was written beside the chosen run directory.
    assert {k: v for k, v in tree(workdir).items() if not k.startswith("run/")} == outside
    assert sorted(p.name for p in workdir.iterdir()) == ["run", "tiny.yaml"]


# --------------------------------------------------------------------------------------------------
# --out that cannot be written, refused before the data is loaded


def _blockers(workdir: Path) -> dict[str, Path]:
    (workdir / "file.txt").write_text("not a directory\n")
    return {
        "existing-file": workdir / "file.txt",
        "under-a-file": workdir / "file.txt" / "run",
        "deep-under-a-file": workdir / "file.txt" / "a" / "b",
        "dev-null": Path("/dev/null"),
        "under-dev-null": Path("/dev/null/run"),
        "uncreatable": UNCREATABLE,
        "unwritable-existing-dir": Path("/proc/1"),
    }


BAD_OUT = {
    "existing-file": "existing file",
    "under-a-file": "lies under",
    "deep-under-a-file": "lies under",
    "dev-null": "existing file",
    "under-dev-null": "lies under",
    "uncreatable": "cannot create",
    "unwritable-existing-dir": "not writable",
}


@pytest.mark.parametrize("case", sorted(BAD_OUT))
def test_run_with_unwritable_out_is_refused_before_training(
    workdir: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str], no_training: None, case: str
) -> None:
    out = _blockers(workdir)[case]
    before = tree(workdir)
    code, _, err = cli(["run", tiny_recipe, "--out", out], capsys)
    assert_one_line_error(code, err, str(out), BAD_OUT[case], "--out", exit_code=2)
    assert tree(workdir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_run_into_read_only_directory_is_refused(
    workdir: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str], no_training: None
) -> None:
    out = workdir / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, _, err = cli(["run", tiny_recipe, "--out", out], capsys)
    finally:
        out.chmod(0o700)
    assert_one_line_error(code, err, str(out), "not writable", "permissions", exit_code=2)
    assert not any(out.iterdir())


def test_default_runs_folder_that_is_a_file_is_refused(
    workdir: Path, tiny_recipe: Path, capsys: pytest.CaptureFixture[str], no_training: None
) -> None:
    (workdir / "runs").write_text("a file named runs\n")
    before = tree(workdir)
    code, _, err = cli(["run", tiny_recipe], capsys)
    assert_one_line_error(code, err, "runs", "lies under", "--out", exit_code=2)
    assert tree(workdir) == before


@pytest.mark.parametrize("case", ["existing-file", "under-a-file", "uncreatable"])
def test_api_run_with_unwritable_out_is_refused(
    workdir: Path, tiny_recipe: Path, no_training: None, case: str
) -> None:
    out = _blockers(workdir)[case]
    before = tree(workdir)
    with pytest.raises(ConfigError) as info:
        run_recipe(load_recipe(tiny_recipe), out, echo=None)
    assert_one_line_message(info.value, str(out), BAD_OUT[case])
    assert tree(workdir) == before


# --------------------------------------------------------------------------------------------------
# prunelab report on malformed or missing runs

BAD_SUMMARIES = {
    "invalid-json": b"{accuracy: 0.9",
    "a-list": b"[0.9, 0.8]",
    "a-string": b'"finished"',
    "missing-keys": b'{"name": "tiny", "accuracy": 0.9}',
    "binary": b"\x80\x04\x95\x00\x00\x00binary\x00",
    "not-utf8": b'{"name": "t\xe9"}',
    "accuracy-not-a-number": json.dumps(
        {"name": "t", "method": "m", "accuracy": "high", "accuracy_dense": 1, "sparsity": 0, "compression": 1}
    ).encode(),
    "latency-malformed": json.dumps(
        {
            "name": "t",
            "method": "m",
            "accuracy": 0.5,
            "accuracy_dense": 0.6,
            "sparsity": 0.5,
            "compression": 2.0,
            "latency_ms": {"fast": "1 ms"},
        }
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(BAD_SUMMARIES))
def test_report_on_malformed_summary_names_the_file(
    finished: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    (finished / "summary.json").write_bytes(BAD_SUMMARIES[case])
    before = tree(finished.parent)
    code, _, err = cli(["report", finished], capsys)
    assert_one_line_error(code, err, str(finished / "summary.json"), "--overwrite", exit_code=2)
    assert tree(finished.parent) == before


BAD_CONFIGS = {
    "invalid-yaml": b"name: [unclosed\nseed: 0\n",
    "a-list": b"- name\n- seed\n",
    "binary": b"\x00\x01\x02config",
    "not-utf8": b"name: t\xe9\n",
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_report_on_malformed_config_names_the_file(
    finished: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    (finished / "config.yaml").write_bytes(BAD_CONFIGS[case])
    before = tree(finished.parent)
    code, _, err = cli(["report", finished], capsys)
    assert_one_line_error(code, err, str(finished / "config.yaml"), exit_code=2)
    assert tree(finished.parent) == before


def test_report_on_a_sweep_folder_with_one_damaged_run_names_it(
    workdir: Path, finished_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = shutil.copytree(finished_template, workdir / "sweep" / "runs" / "a")
    bad = Path(shutil.copytree(finished_template, workdir / "sweep" / "runs" / "b"))
    (bad / "summary.json").write_text("{}")
    before = tree(workdir)
    code, _, err = cli(["report", workdir / "sweep"], capsys)
    line = assert_one_line_error(code, err, str(bad / "summary.json"), "not a run summary", exit_code=2)
    assert str(good) not in line
    assert tree(workdir) == before


@pytest.mark.parametrize(
    "case,needle",
    [
        ("empty-dir", "holds no finished run"),
        ("unfinished-run", "holds no finished run"),
        ("missing", "no such"),
    ],
)
def test_report_without_runs_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str], case: str, needle: str
) -> None:
    target = workdir / case
    if case == "empty-dir":
        target.mkdir()
    elif case == "unfinished-run":
        target.mkdir()
        (target / "config.yaml").write_text(TINY_RECIPE)
        (target / "log.txt").write_text("[0.0s] recipe tiny\n")
    before = tree(workdir)
    code, _, err = cli(["report", target], capsys)
    assert_one_line_error(code, err, str(target), needle, exit_code=2)
    assert tree(workdir) == before


def test_report_on_a_file_is_refused(
    tiny_recipe: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(workdir)
    code, _, err = cli(["report", tiny_recipe], capsys)
    assert_one_line_error(code, err, str(tiny_recipe), "is a file", exit_code=2)
    assert tree(workdir) == before


@pytest.mark.parametrize("case", ["a-directory", "html-name", "under-a-file", "uncreatable"])
def test_report_with_bad_out_is_refused(
    finished: Path, workdir: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    (workdir / "file.txt").write_text("x\n")
    (workdir / "reports").mkdir()
    out, needle = {
        "a-directory": (workdir / "reports", "is a directory"),
        "html-name": (workdir / "reports" / "r.html", "markdown"),
        "under-a-file": (workdir / "file.txt" / "report.md", "lies under"),
        "uncreatable": (UNCREATABLE / "report.md", "cannot create"),
    }[case]
    before = tree(workdir)
    code, _, err = cli(["report", finished, "--out", out], capsys)
    assert_one_line_error(code, err, "--out", needle, exit_code=2)
    assert tree(workdir) == before


def test_api_report_on_malformed_summary_is_one_line(finished: Path) -> None:
    (finished / "summary.json").write_text('{"name": 1}')
    with pytest.raises(ConfigError) as info:
        write_report([finished])
    assert_one_line_message(info.value, str(finished / "summary.json"), "not a run summary")
    assert not (finished / "report.md").exists()


# --------------------------------------------------------------------------------------------------
# pickled code in checkpoints is refused without running it


def test_export_of_malicious_checkpoint_file_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = workdir / "pwned"
    source = _malicious_checkpoint(workdir / "evil" / "checkpoint.pt", marker)
    before = tree(workdir)
    code, _, err = cli(["export", source, "--no-latency"], capsys)
    assert_one_line_error(code, err, str(source), "cannot be loaded safely")
    assert not marker.exists()
    assert tree(workdir) == before


def test_export_of_run_dir_with_malicious_checkpoint_is_refused(
    finished: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = workdir / "pwned"
    _malicious_checkpoint(finished / "checkpoint.pt", marker)
    before = tree(workdir)
    code, _, err = cli(["export", finished, "--no-latency"], capsys)
    assert_one_line_error(code, err, "checkpoint.pt", "cannot be loaded safely")
    assert not marker.exists()
    assert tree(workdir) == before


def test_malicious_checkpoint_as_model_init_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = workdir / "pwned"
    evil = _malicious_checkpoint(workdir / "evil.pt", marker)
    recipe = workdir / "init.yaml"
    recipe.write_text(
        TINY_RECIPE.replace("model: {name: small_cnn}", f"model: {{name: small_cnn, init: {evil}}}")
    )
    code, _, err = cli(["run", recipe, "--out", workdir / "out", "--quiet"], capsys)
    assert_one_line_error(code, err, str(evil), "cannot be loaded safely")
    assert not marker.exists()
    assert not (workdir / "out" / "summary.json").exists()


def test_malicious_run_dir_as_model_init_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = workdir / "pwned"
    _malicious_checkpoint(workdir / "evil_run" / "checkpoint.pt", marker)
    recipe = workdir / "init.yaml"
    recipe.write_text(
        TINY_RECIPE.replace(
            "model: {name: small_cnn}", f"model: {{name: small_cnn, init: {workdir / 'evil_run'}}}"
        )
    )
    code, _, err = cli(["run", recipe, "--out", workdir / "out", "--quiet"], capsys)
    assert_one_line_error(code, err, "checkpoint.pt", "cannot be loaded safely")
    assert not marker.exists()


@pytest.mark.parametrize("case", ["a-directory", "under-a-file", "uncreatable"])
def test_export_with_bad_out_is_refused(
    finished: Path, workdir: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    (workdir / "file.txt").write_text("x\n")
    (workdir / "exports").mkdir()
    out, needle = {
        "a-directory": (workdir / "exports", "is a directory"),
        "under-a-file": (workdir / "file.txt" / "model.onnx", "lies under"),
        "uncreatable": (UNCREATABLE / "model.onnx", "cannot create"),
    }[case]
    before = tree(workdir)
    code, _, err = cli(["export", finished, "--out", out, "--format", "torchscript", "--no-latency"], capsys)
    assert_one_line_error(code, err, "--out", needle, exit_code=2)
    assert tree(workdir) == before


# --------------------------------------------------------------------------------------------------
# residue of killed writes, permissions


def test_failed_atomic_save_leaves_the_old_file_and_no_temp(workdir: Path) -> None:
    target = workdir / "checkpoint.pt"
    target.write_bytes(b"the old checkpoint")
    before = tree(workdir)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        _io.atomic_torch_save({"fn": lambda: None}, target)  # a lambda cannot be pickled
    assert tree(workdir) == before


def test_stale_temps_are_removed_and_results_kept(workdir: Path) -> None:
    for name in ("summary.json", "checkpoint.pt", ".hidden", "notes.tmp", ".x.tmp"):
        (workdir / name).write_text(name)
    stale = [workdir / ".checkpoint.pt.abc12345.tmp", workdir / ".summary.json.zz9.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    assert _io.remove_stale_temps(workdir) == sorted(stale)
    assert sorted(p.name for p in workdir.iterdir()) == sorted(
        ["summary.json", "checkpoint.pt", ".hidden", "notes.tmp", ".x.tmp"]
    )


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_result_files_follow_the_umask(workdir: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        assert _io.current_umask() == umask
        _io.atomic_write_json(workdir / "summary.json", {"a": 1})
        _io.atomic_torch_save({"w": [1.0]}, workdir / "checkpoint.pt")
        (workdir / "plain.txt").write_text("x")  # what open() gives, the reference
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("summary.json", "checkpoint.pt", "plain.txt"):
        assert (workdir / name).stat().st_mode & 0o777 == expected, name


def test_finished_run_files_are_not_private(finished_template: Path) -> None:
    expected = 0o666 & ~_io.current_umask()
    for path in finished_template.iterdir():
        assert path.stat().st_mode & 0o777 == expected, path.name


def test_killed_run_resumes_cleanly_to_the_same_summary(tmp_path: Path) -> None:
    """kill -9 during dense training, a stale temp file, then ``--resume``: the uninterrupted summary."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: killed\nseed: 1\nmodel: {name: small_cnn}\ndata: {name: digits}\n"
        "train: {epochs: 5, optimizer: adam, lr: 3.0e-3, weight_decay: 0.0, batch_size: 64}\n"
        "prune: {method: magnitude, sparsity: 0.6}\n"
        "finetune: {epochs: 1, optimizer: adam, lr: 1.0e-3, weight_decay: 0.0, batch_size: 64}\n"
        "eval: {latency: false}\n"
    )
    command = [sys.executable, "-m", "prunelab", "run", str(recipe), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--out", str(tmp_path / "full")], check=True, timeout=1800, env=env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out", str(killed)], env=env)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 1800
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and '"epoch": 1,' in metrics.read_text():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    (killed / ".checkpoint.pt.abc.tmp").write_bytes(b"what a kill mid-write leaves")

    done = subprocess.run(
        [*command, "--out", str(killed), "--resume"],
        check=False,
        timeout=1800,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    full = json.loads((tmp_path / "full/summary.json").read_text())
    resumed = json.loads((killed / "summary.json").read_text())
    for summary in (full, resumed):
        summary.pop("wall_time_s")
    assert resumed == full
    assert not list(killed.glob(".*.tmp")) and not list(killed.glob("*_last.pt"))
