"""Bad input to ``prunelab sweep``: one line, the right exit code, nothing written outside the sweep.

Every error case runs the real CLI on a bad sweep file or option and checks that it fails before
anything is written (not even the sweep directory). The index cases run a real two-run sweep, damage
its ``sweep.db`` and run it again: the index is moved aside and rebuilt from the runs' ``summary.json``,
and no finished run is executed again or touched.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from prunelab.cli import main
from prunelab.experiments.sweep_index import SweepIndex

from .conftest import TINY_RECIPE, assert_one_line_error, cli, tree

#: A sweep of two tiny runs over the recipe ``tiny.yaml`` beside it.
SWEEP = "name: t\nbase: tiny.yaml\nworkers: 1\nthreads: 1\ngrid: {seed: [0, 1]}\n"

#: Two stages, so that ``--stage`` has something to choose from.
STAGES = (
    "name: st\nbase: tiny.yaml\nstages:\n"
    "  - {name: dense, grid: {seed: [0]}, id: 'dense-s{seed}'}\n"
    "  - {name: prune, grid: {seed: [0]}, id: 'prune-s{seed}'}\n"
)


def _snapshot(root: Path) -> tuple[dict[str, str], set[str]]:
    """Every file (with its digest) and every folder under ``root``."""
    return tree(root), {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def _fails(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    root: Path,
    *needles: str,
    exit_code: int = 2,
) -> str:
    """``prunelab ARGV`` fails with one line holding every needle and writes nothing under ``root``."""
    before = _snapshot(root)
    code, _, err = cli(argv, capsys)
    line = assert_one_line_error(code, err, *needles, exit_code=exit_code)
    assert _snapshot(root) == before, "a rejected sweep wrote or removed files"
    return line


def _sweep_file(workdir: Path, text: str, name: str = "s.sweep.yaml") -> Path:
    """``text`` as a sweep file in ``workdir``, beside the tiny recipe."""
    (workdir / "tiny.yaml").write_text(TINY_RECIPE)
    path = workdir / name
    path.write_text(text)
    return path


# --- names become directories: they must be one safe path component --------------------------------

BAD_NAMES = [
    pytest.param("name: ../../x\n", "sweep.name", id="sweep-name-dotdot"),
    pytest.param("name: /tmp/prunelab-abs-sweep\n", "sweep.name", id="sweep-name-absolute"),
    pytest.param("name: ''\n", "sweep.name", id="sweep-name-empty"),
    pytest.param("name: a/b\n", "sweep.name", id="sweep-name-separator"),
    pytest.param("name: '..'\n", "sweep.name", id="sweep-name-dotdot-only"),
    pytest.param("name: [x]\n", "sweep.name", id="sweep-name-not-a-string"),
]


@pytest.mark.parametrize("head,needle", BAD_NAMES)
def test_bad_sweep_name_is_refused_before_anything_is_written(
    workdir: Path, capsys: pytest.CaptureFixture[str], head: str, needle: str
) -> None:
    sweep = _sweep_file(workdir, head + "base: tiny.yaml\ngrid: {seed: [0]}\n")
    for extra in ([], ["--dry-run"]):
        _fails(["sweep", sweep, *extra], capsys, workdir.parent, str(sweep), needle, "not a valid name")
    assert not (workdir / "sweeps").exists()
    assert not Path("/tmp/prunelab-abs-sweep").exists()


def test_a_file_name_that_is_no_name_needs_a_name_key(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``name:`` the sweep is named after its file; ``.sweep.yaml`` gives no name at all."""
    sweep = _sweep_file(workdir, "base: tiny.yaml\ngrid: {seed: [0]}\n", name=".sweep.yaml")
    _fails(["sweep", sweep], capsys, workdir.parent, "sweep.name", "from the file name", "add a name:")


BAD_STAGE_NAMES = [
    pytest.param("../s", id="dotdot"),
    pytest.param("/tmp/prunelab-abs-stage", id="absolute"),
    pytest.param("", id="empty"),
    pytest.param("a b", id="space"),
]


@pytest.mark.parametrize("stage", BAD_STAGE_NAMES)
def test_bad_stage_name(workdir: Path, capsys: pytest.CaptureFixture[str], stage: str) -> None:
    sweep = _sweep_file(
        workdir, f"name: t\nbase: tiny.yaml\nstages:\n  - {{name: '{stage}', grid: {{seed: [0]}}}}\n"
    )
    _fails(["sweep", sweep], capsys, workdir.parent, "sweep.stages[0].name", "not a valid name")


BAD_IDS = [
    pytest.param("id: '../{seed}'\n", "", id="template-dotdot"),
    pytest.param("id: '/tmp/prunelab-abs-run-{seed}'\n", "", id="template-absolute"),
    pytest.param("id: ''\n", "", id="template-empty"),
    pytest.param("id: 'x/{seed}'\n", "", id="template-separator"),
    # The template is fine; the value it takes from the grid puts a separator in the id.
    pytest.param("id: 'r-{label}'\n", "  vars.label: [ok, ../../up]\n", id="grid-value-escapes"),
]


@pytest.mark.parametrize("template,extra_grid", BAD_IDS)
def test_bad_run_id(
    workdir: Path, capsys: pytest.CaptureFixture[str], template: str, extra_grid: str
) -> None:
    sweep = _sweep_file(workdir, f"name: t\nbase: tiny.yaml\n{template}grid:\n  seed: [0]\n{extra_grid}")
    for extra in ([], ["--dry-run"]):
        _fails(["sweep", sweep, *extra], capsys, workdir.parent, "stage main: id", "not a valid name")
    assert not Path("/tmp/prunelab-abs-run-0").exists()


def test_every_run_dir_is_under_runs(workdir: Path) -> None:
    """The ids a sweep derives itself (no ``id:``) are names too, even from odd labels and long stages."""
    from prunelab.experiments.sweep_spec import expand_sweep, load_sweep

    long_stage = "s" * 100
    sweep = _sweep_file(
        workdir,
        f"name: t\nbase: tiny.yaml\nstages:\n  - name: {long_stage}\n"
        "    grid: {seed: [0], vars.label: ['../../a b/c', '/abs']}\n  - {name: b, grid: {seed: [0]}}\n",
    )
    runs = expand_sweep(load_sweep(sweep), workdir / "sweeps" / "t")
    runs_dir = (workdir / "sweeps" / "t" / "runs").resolve()
    for run in runs:
        assert (runs_dir / run.id).resolve().parent == runs_dir and len(run.id) <= 128


# --- options: refused before any run starts ------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_unknown_stage_lists_the_stages(
    workdir: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    sweep = _sweep_file(workdir, STAGES)
    extra = ["--dry-run"] if dry_run else []
    _fails(
        ["sweep", sweep, "--stage", "unknown", *extra],
        capsys,
        workdir.parent,
        "--stage unknown",
        "dense, prune",
    )
    _fails(
        ["sweep", sweep, "--stage", "dense,prun", *extra],
        capsys,
        workdir.parent,
        "--stage prun",
        "dense, prune",
    )


def test_empty_stage_list(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep_file(workdir, STAGES)
    _fails(["sweep", sweep, "--stage", ",", "--dry-run"], capsys, workdir.parent, "--stage", "dense, prune")


def test_dry_run_lists_only_the_chosen_stage(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep_file(workdir, STAGES)
    code, out, err = cli(["sweep", sweep, "--stage", "prune", "--dry-run"], capsys)
    assert code == 0 and err == ""
    assert [line.split("\t")[1] for line in out.splitlines()] == ["prune-s0"]
    assert not (workdir / "sweeps").exists()


@pytest.mark.parametrize("workers", ["0", "-3"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_workers_must_be_positive(
    workdir: Path, capsys: pytest.CaptureFixture[str], workers: str, dry_run: bool
) -> None:
    sweep = _sweep_file(workdir, SWEEP)
    extra = ["--dry-run"] if dry_run else []
    _fails(
        ["sweep", sweep, "--workers", workers, *extra],
        capsys,
        workdir.parent,
        f"--workers {workers}",
        "positive",
    )


def test_out_is_an_existing_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep_file(workdir, SWEEP)
    (workdir / "taken").write_text("not a folder\n")
    _fails(
        ["sweep", sweep, "--out", "taken"], capsys, workdir.parent, "taken", "is an existing file", "--out"
    )


def test_out_under_a_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep_file(workdir, SWEEP)
    (workdir / "taken").write_text("not a folder\n")
    _fails(
        ["sweep", sweep, "--out", "taken/deeper/sweep"],
        capsys,
        workdir.parent,
        "lies under",
        "taken",
        "--out",
    )


def test_default_out_under_a_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sweeps`` itself being a file is the same mistake without ``--out``."""
    sweep = _sweep_file(workdir, SWEEP)
    (workdir / "sweeps").write_text("not a folder\n")
    _fails(["sweep", sweep], capsys, workdir.parent, "lies under", "sweeps")


def test_out_that_cannot_be_written(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/proc takes no new folders, whoever asks (permission bits would not stop root)."""
    sweep = _sweep_file(workdir, SWEEP)
    _fails(["sweep", sweep, "--out", "/proc/prunelab-sweep"], capsys, workdir.parent, "cannot create /proc")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_out_in_a_read_only_folder(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep_file(workdir, SWEEP)
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(["sweep", sweep, "--out", "locked/s"], capsys, workdir.parent, "cannot create", "--out")
    finally:
        locked.chmod(0o700)


def test_out_is_checked_after_the_runs(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad sweep with a bad --out: the sweep's error comes first and no folder is made."""
    sweep = _sweep_file(workdir, "name: t\nbase: tiny.yaml\ngrid: {prune.sparsity: [2.0]}\n")
    _fails(["sweep", sweep, "--out", "fresh/sweep"], capsys, workdir.parent, "prune.sparsity: 2")
    assert not (workdir / "fresh").exists()


# --- the sweep file ----------------------------------------------------------------------------------------

BAD_FILES = [
    pytest.param("grid: {}\n", "sweep.grid: empty", id="grid-empty"),
    pytest.param("", "sweep.grid: empty", id="grid-missing"),
    pytest.param(
        "grid: {seed: 3}\n", "sweep.grid.seed: expected a non-empty list", id="grid-value-not-a-list"
    ),
    pytest.param(
        "grid: {seed: []}\n", "sweep.grid.seed: expected a non-empty list", id="grid-value-empty-list"
    ),
    pytest.param("grid: [seed]\n", "sweep.grid: expected a mapping", id="grid-is-a-list"),
    pytest.param("grid: {seed: [0]}\nwrkers: 2\n", "sweep.wrkers: unknown sweep key", id="unknown-key"),
    pytest.param("grid: {seed: [0]}\nworkers: 0\n", "sweep.workers: 0", id="workers-zero-in-file"),
    pytest.param("grid: {seed: [0]}\nid: '{sed}'\n", "unknown placeholder {sed}", id="unknown-placeholder"),
    pytest.param("grid: {prune.sparsity: [0.5, 1.5]}\n", "prune.sparsity: 1.5", id="one-run-invalid"),
    pytest.param("grid: {train.epochs: [1, -1]}\n", "train.epochs", id="one-run-invalid-epochs"),
    pytest.param("grid: {modle.name: [small_cnn]}\n", "modle", id="grid-key-typo"),
    pytest.param("grid: {seed: [0]}\nstages: []\n", "sweep.stages", id="stages-empty"),
    # Not a later stage's run directory, so it must exist now, as 'prunelab run' would require.
    pytest.param(
        "grid: {seed: [0]}\nset: {model.init: nowhere/w.pt}\n", "model.init: 'nowhere/w.pt'", id="init-typo"
    ),
    pytest.param(
        "grid: {seed: [0]}\nset: {train.epochs: -1, prune.sparsity: 2.0}\n",
        "(and 1 more error",
        id="two-problems-one-line",
    ),
]


@pytest.mark.parametrize("body,needle", BAD_FILES)
def test_bad_sweep_file(workdir: Path, capsys: pytest.CaptureFixture[str], body: str, needle: str) -> None:
    """Bad content: one line naming the field; nothing started (not even for the valid grid points)."""
    sweep = _sweep_file(workdir, "name: t\nbase: tiny.yaml\n" + body)
    _fails(["sweep", sweep], capsys, workdir.parent, str(sweep), needle)
    assert not (workdir / "sweeps").exists()


BAD_BASES = [
    pytest.param(None, None, "sweep.base: missing", id="base-missing"),
    pytest.param("nowhere.yaml", None, "sweep.base", id="base-file-not-found"),
    pytest.param("broken.yaml", "model: {name: [unclosed\n", "fix the YAML syntax", id="base-invalid-yaml"),
    pytest.param("empty.yaml", "", "expected a recipe mapping, got an empty file", id="base-empty-file"),
    pytest.param("list.yaml", "- a\n- b\n", "expected a recipe mapping, got list", id="base-is-a-list"),
    pytest.param(
        "3", None, "sweep.base: expected a recipe path or an inline recipe mapping", id="base-a-number"
    ),
    pytest.param("bad.yaml", "train: {epochs: -1}\n", "train.epochs", id="base-invalid-recipe"),
    pytest.param("latin1.yaml", b"name: caf\xe9\n", "not UTF-8", id="base-not-utf8"),
]


@pytest.mark.parametrize("base,content,needle", BAD_BASES)
def test_bad_base_recipe(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    base: str | None,
    content: str | bytes | None,
    needle: str,
) -> None:
    if content is not None:
        target = workdir / base
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    head = "name: t\n" + (f"base: {base}\n" if base is not None else "")
    sweep = _sweep_file(workdir, head + "grid: {seed: [0]}\n")
    _fails(["sweep", sweep], capsys, workdir.parent, needle)
    assert not (workdir / "sweeps").exists()


def test_sweep_file_not_utf8(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = workdir / "latin.sweep.yaml"
    sweep.write_bytes(b"name: t\nbase: tiny.yaml\n# r\xe9glage\ngrid: {seed: [0]}\n")
    _fails(["sweep", sweep], capsys, workdir.parent, "not UTF-8", "0xe9")


def test_sweep_file_binary(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = workdir / "model.sweep.yaml"
    sweep.write_bytes(b"PK\x03\x04\x00\x00binary\x00\xff" * 20)
    _fails(["sweep", sweep, "--dry-run"], capsys, workdir.parent, "binary file")


def test_sweep_file_alias_bomb(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A "billion laughs" grid is refused on reading, before it could be expanded (or hang)."""
    lines = ["name: t", "base: tiny.yaml", "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines.append("grid: {seed: *a8}")
    sweep = _sweep_file(workdir, "\n".join(lines) + "\n")
    _fails(["sweep", sweep], capsys, workdir.parent, "aliases expand to more than")


def test_sweep_file_missing(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["sweep", workdir / "absent.sweep.yaml"], capsys, workdir.parent, "absent.sweep.yaml", "not found")


def test_sweep_file_is_a_list(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep_file(workdir, "- seed\n- 0\n")
    _fails(["sweep", sweep], capsys, workdir.parent, "expected a mapping at the top level")


# --- a damaged index is moved aside and rebuilt from the runs' summary.json ------------------------------


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-run tiny sweep, run to the end once: its directory (copied by each test)."""
    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.yaml").write_text(TINY_RECIPE)
    (root / "s.sweep.yaml").write_text(SWEEP)
    out = root / "t"
    assert main(["sweep", str(root / "s.sweep.yaml"), "--out", str(out), "--quiet"]) == 0
    assert [r["status"] for r in SweepIndex(out / "sweep.db").rows()] == ["done", "done"]
    return out


def _garbage(db: Path) -> None:
    db.write_bytes(os.urandom(4096))


def _truncated(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the main file, which is then cut
    conn.close()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _wrong_schema(db: Path) -> None:
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE runs (id TEXT, state TEXT)")
    conn.execute("INSERT INTO runs VALUES ('x', 'done')")
    conn.commit()
    conn.close()


def _directory(db: Path) -> None:
    db.unlink()
    db.mkdir()
    (db / "note.txt").write_text("someone's file\n")


@pytest.mark.parametrize(
    "damage",
    [_garbage, _truncated, _wrong_schema, _directory],
    ids=["garbage-bytes", "truncated", "wrong-schema", "directory"],
)
def test_damaged_index_is_moved_aside_and_rebuilt(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    finished_sweep: Path,
    damage: Callable[[Path], None],
) -> None:
    sweep = _sweep_file(workdir, SWEEP)
    out = workdir / "sweeps" / "t"
    shutil.copytree(finished_sweep, out)
    for side in ("sweep.db-wal", "sweep.db-shm"):
        (out / side).unlink(missing_ok=True)
    db = out / "sweep.db"
    damage(db)
    damaged = tree(db) if db.is_dir() else {"": tree(out)["sweep.db"]}
    runs_before = tree(out / "runs")
    outside_before = {k: v for k, v in tree(workdir.parent).items() if not k.startswith("work/sweeps/")}

    code, stdout, err = cli(["sweep", sweep, "--quiet"], capsys)

    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), err
    assert "sweep.db" in warnings[0] and "moved it to sweep.db.corrupt-" in warnings[0]
    assert "summary.json" in warnings[0]
    assert "2/2 done (2 already finished, 0 started), 0 failed" in stdout
    # Nothing of the finished runs changed: no run executed again (its log would grow), no file rewritten.
    assert tree(out / "runs") == runs_before
    for run_dir in (out / "runs").iterdir():
        assert (run_dir / "sweep_output.txt").read_text().count("$ ") == 1
    rows = SweepIndex(db).rows()
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [r["accuracy"] is not None for r in rows] == [True, True]
    # The damaged file was moved, not deleted.
    (aside,) = out.glob("sweep.db.corrupt-*[0-9]")
    assert (tree(aside) if aside.is_dir() else {"": tree(out)[aside.name]}) == damaged
    outside_after = {k: v for k, v in tree(workdir.parent).items() if not k.startswith("work/sweeps/")}
    assert outside_after == outside_before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only file anyway")
def test_read_only_index_is_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], finished_sweep: Path
) -> None:
    """An index that cannot be written is the user's to fix (not damage): one line, nothing moved aside."""
    sweep = _sweep_file(workdir, SWEEP)
    out = workdir / "sweeps" / "t"
    shutil.copytree(finished_sweep, out)
    (out / "sweep.db").chmod(0o444)
    try:
        _fails(["sweep", sweep, "--quiet"], capsys, out / "runs", "sweep.db", "cannot use the sweep index")
    finally:
        (out / "sweep.db").chmod(0o644)
    assert not list(out.glob("sweep.db.corrupt-*"))


def test_runs_folder_is_a_file(
    workdir: Path, capsys: pytest.CaptureFixture[str], finished_sweep: Path
) -> None:
    sweep = _sweep_file(workdir, SWEEP)
    out = workdir / "sweeps" / "t"
    shutil.copytree(finished_sweep, out)
    shutil.rmtree(out / "runs")
    (out / "runs").write_text("not a folder\n")
    _fails(["sweep", sweep, "--quiet"], capsys, workdir.parent, "runs folder", "is an existing file")


def test_a_run_folder_that_is_a_file_fails_that_run_only(
    workdir: Path, capsys: pytest.CaptureFixture[str], finished_sweep: Path
) -> None:
    """One run's folder is a file: that run fails in one line, the other one still runs and finishes."""
    sweep = _sweep_file(workdir, SWEEP)
    out = workdir / "sweeps" / "t"
    shutil.copytree(finished_sweep, out)
    blocked, rerun = sorted(p.name for p in (out / "runs").iterdir())
    shutil.rmtree(out / "runs" / blocked)
    (out / "runs" / blocked).write_text("someone's file\n")
    shutil.rmtree(out / "runs" / rerun)
    code, stdout, err = cli(["sweep", sweep, "--quiet"], capsys)
    assert code == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"failed: {blocked}: cannot write ") and "move what is there away" in line
    assert "1/2 done (0 already finished, 2 started), 1 failed" in stdout
    assert (out / "runs" / blocked).read_text() == "someone's file\n"
    assert (out / "runs" / rerun / "summary.json").is_file()
    rows = {r["id"]: r["status"] for r in SweepIndex(out / "sweep.db").rows()}
    assert rows == {blocked: "failed", rerun: "done"}


def test_restarting_a_finished_sweep_touches_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], finished_sweep: Path
) -> None:
    """A finished sweep run again (as after a kill, or by habit) leaves every run file as it was."""
    sweep = _sweep_file(workdir, SWEEP)
    out = workdir / "sweeps" / "t"
    shutil.copytree(finished_sweep, out)
    runs_before = tree(out / "runs")
    code, stdout, err = cli(["sweep", sweep, "--quiet"], capsys)
    assert code == 0 and err == ""
    assert "2/2 done (2 already finished, 0 started)" in stdout
    assert tree(out / "runs") == runs_before
    assert not list(out.glob("sweep.db.corrupt-*"))
