"""Shared checks of the bad-input suite.

Every case runs the real CLI (``prunelab.cli.main``, in process, or ``python -m prunelab`` where a
process must be killed) or the real Python API on a bad input and asserts three things: a non-zero
exit (or a :class:`~prunelab.errors.PrunelabError`), one line of message naming the problem, and that
nothing was lost or written elsewhere (:func:`tree` snapshots before and after).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from prunelab.cli import main

#: A recipe that trains in about a second (digits, small CNN, one epoch, no latency timing).
TINY_RECIPE = (
    "name: tiny\nseed: 0\nmodel: {name: small_cnn}\ndata: {name: digits}\n"
    "train: {epochs: 1, batch_size: 64}\n"
    "prune: {method: magnitude, sparsity: 0.5}\n"
    "finetune: {epochs: 0}\neval: {latency: false}\n"
)


def cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``prunelab ARGV`` in this process; returns (exit code, stdout, stderr).

    An exception escaping ``main`` (a traceback for the user) fails the test by propagating.
    """
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str, exit_code: int | None = None) -> str:
    """The CLI failed with exactly one ``prunelab: error:`` line containing every needle (case-insensitive)."""
    assert code != 0, f"exit code 0 for a bad input; stderr: {err!r}"
    if exit_code is not None:
        assert code == exit_code, (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning")]
    errors = [line for line in lines if line.startswith("prunelab: error:")]
    assert len(errors) == 1 and len(lines) == 1, f"expected one error line, got: {err!r}"
    for needle in needles:
        assert needle.lower() in errors[0].lower(), (needle, errors[0])
    return errors[0]


def assert_one_line_message(exc: BaseException, *needles: str) -> str:
    """An API error's message is one line containing every needle (case-insensitive)."""
    message = str(exc)
    assert message and "\n" not in message.strip(), f"not one line: {message!r}"
    for needle in needles:
        assert needle.lower() in message.lower(), (needle, message)
    return message


def tree(root: str | Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its content: compare before and after a bad input."""
    root = Path(root)
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (the CLI's default ``runs/`` and ``sweeps/`` land here)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def tiny_recipe(workdir: Path) -> Path:
    """The tiny recipe written to ``workdir/tiny.yaml``."""
    path = workdir / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path
