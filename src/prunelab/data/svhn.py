"""SVHN (Street View House Numbers), cropped-digits format, from the official ``.mat`` files.

Y. Netzer, T. Wang, A. Coates, A. Bissacco, B. Wu and A. Y. Ng, *Reading Digits in Natural Images with
Unsupervised Feature Learning*, NIPS Workshop on Deep Learning and Unsupervised Feature Learning, 2011;
http://ufldl.stanford.edu/housenumbers/.

The ``*_32x32.mat`` files hold ``X`` as ``(32, 32, 3, N)`` uint8 and ``y`` as ``(N, 1)`` with the digit 0
stored as label 10; labels are mapped back to 0–9. The ``extra`` set is not used. Reading them needs SciPy,
an optional extra (``pip install 'prunelab[svhn]'``); ``svhn.npz`` needs nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data.base import (
    DATASETS,
    LAYOUTS,
    Layout,
    RawData,
    Requirement,
    Resource,
    as_labels,
    fetch,
    not_found,
    one_line,
    read_npz,
)
from prunelab.errors import DataNotFoundError

__all__ = ["SVHN_FILES", "read_svhn", "read_svhn_mat"]

_BASE_URL = "http://ufldl.stanford.edu/housenumbers/"

#: The official train and test files.
SVHN_FILES: tuple[Resource, Resource] = (
    Resource("train_32x32.mat", (_BASE_URL + "train_32x32.mat",), "e26dedcc434d2e4c54c9b2d4a06d8373"),
    Resource("test_32x32.mat", (_BASE_URL + "test_32x32.mat",), "eb5a983be6a315427106f1b69d80f17d"),
)

# Training-set channel statistics on the [0, 1] scale (the commonly used constants).
_SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


def _require_scipy() -> None:
    """Refuse, in one line with the fix, to read (or download) ``.mat`` files without SciPy."""
    try:
        import scipy.io  # noqa: F401 - only whether it imports matters here
    except ImportError:
        raise DataNotFoundError(
            "svhn: the official .mat files need SciPy, which is not installed; pip install 'prunelab[svhn]' "
            "(or convert them once to svhn.npz)"
        ) from None


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one cropped-digits ``.mat`` file into ``(images NHWC uint8, labels int64 in 0..9)``.

    Raises:
        DataNotFoundError: the file is unreadable or lacks ``X``/``y``; SciPy is not installed.
    """
    _require_scipy()
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (OSError, ValueError, NotImplementedError, EOFError, TypeError, MatReadError) as exc:
        raise DataNotFoundError(
            f"cannot read {path} ({one_line(exc)}); delete it and download again (--download)"
        ) from None
    if "X" not in mat or "y" not in mat or mat["X"].ndim != 4:
        raise DataNotFoundError(f"{path} lacks X (32, 32, 3, N) or y; it is not an SVHN cropped-digits file")
    if mat["X"].dtype != np.uint8:
        raise DataNotFoundError(
            f"{path}: X is {mat['X'].dtype}, not uint8; it is not an official SVHN file — delete it and "
            "download again (--download)"
        )
    images = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2))
    labels = as_labels(mat["y"], f"svhn: y in {path}")
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
    return images, labels


def _svhn_layout(root: Path, _options: Mapping[str, Any]) -> list[list[Requirement]]:
    # The reader's order: <root>/svhn.npz, else both official .mat files.
    return [[[root / "svhn.npz"]], [[root / "svhn" / r.filename] for r in SVHN_FILES]]


LAYOUTS["svhn"] = Layout(_svhn_layout)


@DATASETS.register("svhn")
def read_svhn(root: Path, *, download: bool = False) -> RawData:
    """SVHN cropped digits (Netzer et al. 2011): 73,257 train / 26,032 test colour 32×32 images.

    Args:
        root: data root; reads ``<root>/svhn.npz`` or ``<root>/svhn/{train,test}_32x32.mat``.
        download: fetch the official ``.mat`` files (MD5-verified) when missing.
    """
    npz = root / "svhn.npz"
    classes = [str(i) for i in range(10)]
    if npz.is_file():
        raw = read_npz(npz, "svhn", classes)
    else:
        folder = root / "svhn"
        paths = [folder / r.filename for r in SVHN_FILES]
        if not all(p.is_file() for p in paths):
            if not download:
                raise not_found("svhn", [npz, *paths])
            _require_scipy()  # before a 600 MB download that could not be read
            paths = [p if p.is_file() else fetch(r, folder) for p, r in zip(paths, SVHN_FILES)]
        (x_train, y_train), (x_test, y_test) = (read_svhn_mat(p) for p in paths)
        raw = RawData(x_train, y_train, x_test, y_test, classes=classes, source=str(folder))
    raw.mean, raw.std = _SVHN_STATS
    raw.augment = "crop"  # digits are not mirror-symmetric, so no flips
    return raw
