"""CIFAR-10 and CIFAR-100 from the official *binary* releases.

A. Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, Technical Report, University of
Toronto, 2009; https://www.cs.toronto.edu/~kriz/cifar.html.

The binary version is used rather than the Python one because its records are plain bytes (label
byte(s) + 3,072 pixel bytes, red plane, then green, then blue, each row-major), so reading never
unpickles anything and a whole file becomes an array with one ``np.fromfile`` and a reshape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prunelab.data.base import (
    DATASETS,
    LAYOUTS,
    Layout,
    RawData,
    Requirement,
    Resource,
    as_labels,
    extract_archive,
    fetch,
    not_found,
    read_npz,
    read_npz_arrays,
)
from prunelab.errors import ConfigError, DataNotFoundError

__all__ = ["CIFAR10_ARCHIVE", "CIFAR100_ARCHIVE", "read_cifar10", "read_cifar100", "read_cifar_bin"]

#: The official CIFAR-10 binary archive.
CIFAR10_ARCHIVE = Resource(
    "cifar-10-binary.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    "c32a1d4ab5d03f1284b67883e8d87530",
)
#: The official CIFAR-100 binary archive.
CIFAR100_ARCHIVE = Resource(
    "cifar-100-binary.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
    "03b5dce01913d631647c71ecec9e9cb8",
)

_CIFAR10_FOLDER = "cifar-10-batches-bin"
_CIFAR100_FOLDER = "cifar-100-binary"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

# Training-set channel statistics on the [0, 1] scale. CIFAR-10's are the exact values
# (125.30691805, 122.95039414, 113.86538318) / 255 and (62.99321928, 62.08870764, 66.70489964) / 255.
_CIFAR10_STATS = ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784))
_CIFAR100_STATS = ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047))

_PIXELS = 3 * 32 * 32


def read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR binary file into ``(images NHWC uint8, labels (N, label_bytes) uint8)``.

    Args:
        path: a ``.bin`` file of fixed-size records.
        label_bytes: 1 for CIFAR-10 (label), 2 for CIFAR-100 (coarse label, fine label).

    Raises:
        DataNotFoundError: the file size is not a whole number of records.
    """
    record = label_bytes + _PIXELS
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % record:
        raise DataNotFoundError(
            f"{path} is not a CIFAR binary file ({data.size} bytes is not a multiple of {record}); "
            "delete it and download again (--download)"
        )
    records = data.reshape(-1, record)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, :label_bytes].copy()


def _read_names(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _official_folder(
    name: str, root: Path, download: bool, archive: Resource, folder: str, npz: Path
) -> Path:
    # Extracted folder first, then the archive (extracted once, in place), then a download.
    base = root / name
    extracted = base / folder
    if extracted.is_dir():
        return extracted
    tarball = base / archive.filename
    if not tarball.is_file():
        if not download:
            raise not_found(name, [npz, extracted, tarball])
        tarball = fetch(archive, base)
    return extract_archive(tarball, base, folder)


def _cifar_layout(name: str, archive: Resource, folder: str, files: tuple[str, ...]) -> Layout:
    # The reader's order: <root>/<name>.npz, the extracted folder (then all its files), the archive.
    def alternatives(root: Path, _options: Mapping[str, Any]) -> list[list[Requirement]]:
        base = root / name
        extracted = [[base / folder], *([base / folder / f] for f in files)]
        return [[[root / f"{name}.npz"]], extracted, [[base / archive.filename]]]

    return Layout(alternatives)


LAYOUTS["cifar10"] = _cifar_layout(
    "cifar10", CIFAR10_ARCHIVE, _CIFAR10_FOLDER, (*_CIFAR10_TRAIN, "test_batch.bin")
)
LAYOUTS["cifar100"] = _cifar_layout("cifar100", CIFAR100_ARCHIVE, _CIFAR100_FOLDER, ("train.bin", "test.bin"))


@DATASETS.register("cifar10")
def read_cifar10(root: Path, *, download: bool = False) -> RawData:
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test colour 32×32 images in 10 classes.

    Args:
        root: data root; reads ``<root>/cifar10.npz``, else ``<root>/cifar10/cifar-10-batches-bin/``, else
            extracts ``<root>/cifar10/cifar-10-binary.tar.gz`` there.
        download: fetch the official binary archive (MD5-verified) when missing.
    """
    npz = root / "cifar10.npz"
    if npz.is_file():
        raw = read_npz(npz, "cifar10", _CIFAR10_CLASSES)
    else:
        folder = _official_folder("cifar10", root, download, CIFAR10_ARCHIVE, _CIFAR10_FOLDER, npz)
        missing = [f for f in (*_CIFAR10_TRAIN, "test_batch.bin") if not (folder / f).is_file()]
        if missing:
            raise DataNotFoundError(
                f"{folder} lacks {', '.join(missing)}; delete the folder and extract or download again (--download)"
            )
        train = [read_cifar_bin(folder / f, 1) for f in _CIFAR10_TRAIN]
        x_test, y_test = read_cifar_bin(folder / "test_batch.bin", 1)
        raw = RawData(
            x_train=np.concatenate([x for x, _ in train]),
            y_train=np.concatenate([y[:, 0] for _, y in train]).astype(np.int64),
            x_test=x_test,
            y_test=y_test[:, 0].astype(np.int64),
            classes=_read_names(folder / "batches.meta.txt") or list(_CIFAR10_CLASSES),
            source=str(folder),
        )
    raw.mean, raw.std = _CIFAR10_STATS
    raw.augment = "crop_flip"
    return raw


@DATASETS.register("cifar100")
def read_cifar100(
    root: Path, *, download: bool = False, label_type: Literal["fine", "coarse"] = "fine"
) -> RawData:
    """CIFAR-100 (Krizhevsky 2009): 50,000 train / 10,000 test colour 32×32 images, 100 or 20 classes.

    Args:
        root: data root; reads ``<root>/cifar100.npz`` (fine labels in ``y_train``/``y_test``, coarse ones in
            ``y_train_coarse``/``y_test_coarse``), else ``<root>/cifar100/cifar-100-binary/``, else
            extracts ``<root>/cifar100/cifar-100-binary.tar.gz`` there.
        download: fetch the official binary archive (MD5-verified) when missing.
        label_type: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
    """
    if label_type not in ("fine", "coarse"):
        raise ConfigError(f"cifar100: label_type must be 'fine' or 'coarse', got {label_type!r}")
    npz = root / "cifar100.npz"
    if npz.is_file():
        raw = read_npz(npz, "cifar100")
        if label_type == "coarse":
            coarse = read_npz_arrays(
                npz, (), optional=("y_train_coarse", "y_test_coarse", "coarse_label_names")
            )
            if "y_train_coarse" not in coarse or "y_test_coarse" not in coarse:
                raise DataNotFoundError(
                    f"{npz} has no y_train_coarse/y_test_coarse; add them or use label_type='fine'"
                )
            raw.y_train = as_labels(coarse["y_train_coarse"], f"cifar100: y_train_coarse in {npz}")
            raw.y_test = as_labels(coarse["y_test_coarse"], f"cifar100: y_test_coarse in {npz}")
            names = coarse["coarse_label_names"].tolist() if "coarse_label_names" in coarse else None
            top = int(max(raw.y_train.max(initial=0), raw.y_test.max(initial=0)))
            raw.classes = [str(c) for c in names] if names else [str(i) for i in range(top + 1)]
    else:
        folder = _official_folder("cifar100", root, download, CIFAR100_ARCHIVE, _CIFAR100_FOLDER, npz)
        missing = [f for f in ("train.bin", "test.bin") if not (folder / f).is_file()]
        if missing:
            raise DataNotFoundError(
                f"{folder} lacks {', '.join(missing)}; delete the folder and extract or download again (--download)"
            )
        column = 0 if label_type == "coarse" else 1  # records start with the coarse byte, then the fine one
        x_train, y_train = read_cifar_bin(folder / "train.bin", 2)
        x_test, y_test = read_cifar_bin(folder / "test.bin", 2)
        count = 20 if label_type == "coarse" else 100
        names = _read_names(folder / f"{label_type}_label_names.txt")
        raw = RawData(
            x_train=x_train,
            y_train=y_train[:, column].astype(np.int64),
            x_test=x_test,
            y_test=y_test[:, column].astype(np.int64),
            classes=names if names and len(names) == count else [str(i) for i in range(count)],
            source=str(folder),
        )
    raw.mean, raw.std = _CIFAR100_STATS
    raw.augment = "crop_flip"
    return raw
