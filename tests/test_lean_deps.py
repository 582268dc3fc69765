"""Lean dependencies: digits ship in the package (identical to scikit-learn's copy, read without it), and
SVHN's .mat files ask for the optional SciPy in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prunelab.data.digits import BUNDLED_DIGITS, read_bundled_digits, read_digits


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (what was imported before stays out of it); never raises."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_bundled_array_equals_sklearn_exactly() -> None:
    """Every pixel and label of the shipped archive is scikit-learn's (where scikit-learn is installed)."""
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    images, target = read_bundled_digits()
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert target.dtype == np.uint8 and target.shape == (1797,)
    np.testing.assert_array_equal(images.astype(np.float64), bunch.images)
    np.testing.assert_array_equal(target.astype(np.int64), bunch.target)


def test_licence_ships_next_to_the_data() -> None:
    """The CC BY 4.0 attribution travels with the archive (package-data lists both)."""
    note = BUNDLED_DIGITS.with_name("digits_LICENSE.txt").read_text()
    assert "CC BY 4.0" in note and "Alpaydin" in note
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "data/digits.npz" in pyproject and "data/digits_LICENSE.txt" in pyproject
    assert "scikit-learn" not in pyproject.split("[project.optional-dependencies]")[0]


def test_split_and_scale(tmp_path: Path) -> None:
    """The fixed 80/20 split of 0-255 pixels: 1,438 train and 359 test images, every class in both."""
    raw = read_digits(tmp_path)  # an empty root: the shipped copy is read
    assert raw.x_train.shape == (1438, 8, 8, 1) and raw.x_test.shape == (359, 8, 8, 1)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() == 255
    assert set(raw.y_train.tolist()) == set(raw.y_test.tolist()) == set(range(10))
    assert raw.source == str(BUNDLED_DIGITS)


def test_reads_without_sklearn(tmp_path: Path) -> None:
    """A process where scikit-learn cannot be imported reads the same digits (it is no dependency)."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"  # any import of sklearn now fails
        "from pathlib import Path\n"
        "from prunelab.data.digits import read_digits\n"
        f"raw = read_digits(Path({str(tmp_path)!r}))\n"
        "print(int(raw.x_train.sum()), int(raw.x_test.sum()), int(raw.y_train.sum()))\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    raw = read_digits(tmp_path)
    assert proc.stdout.split() == [
        str(int(raw.x_train.sum())),
        str(int(raw.x_test.sum())),
        str(int(raw.y_train.sum())),
    ]


def test_svhn_mat_without_scipy_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """Without SciPy, reading (or downloading) the .mat files fails with the install command, no traceback."""
    folder = tmp_path / "svhn"
    folder.mkdir()
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (folder / name).write_bytes(b"MATLAB 5.0")  # never read: the check comes first
    recipe = tmp_path / "svhn.yaml"
    recipe.write_text("model: {name: small_cnn}\ndata: {name: svhn}\nprune: {method: dense}\n")
    code = (
        "import sys; sys.modules['scipy'] = None; sys.modules['scipy.io'] = None\n"  # SciPy not installed
        "from prunelab.cli import main\n"
        f"sys.exit(main(['run', {str(recipe)!r}, '--data-dir', {str(tmp_path)!r},"
        f" '--out', {str(tmp_path / 'run')!r}]))\n"
    )
    proc = _python(code)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("prunelab: error:") and "pip install 'prunelab[svhn]'" in lines[0]
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    core = pyproject.split("[project.optional-dependencies]")[0]
    assert "scipy" not in core and 'svhn = ["scipy' in pyproject


def test_validate_builds_the_meta_model_without_importing_the_compiler() -> None:
    """`prunelab validate` builds the recipe's model on the meta device; initialising it must not pull in
    torch._dynamo (about 4 s: normal_'s meta kernel is a Python decomposition that imports it)."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pretraining" / "cpu_protocol_dense.yaml"
    code = (
        "import sys\n"
        "from prunelab.cli import main\n"
        f"rc = main(['validate', {str(recipe)!r}])\n"
        "print(rc, 'torch' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-3:] == ["0", "True", "False"], proc.stdout
