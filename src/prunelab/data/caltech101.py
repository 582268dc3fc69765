"""Caltech-101 from the official ``101_ObjectCategories/<class>/*.jpg`` folders.

L. Fei-Fei, R. Fergus and P. Perona, *Learning generative visual models from few training examples: an
incremental Bayesian approach tested on 101 object categories*, CVPR Workshop on Generative-Model Based
Vision, 2004; https://data.caltech.edu/records/mzrjq-6wc02.

The images vary in size, so they are decoded straight to one ``image_size`` (a plain resize to a square
by default, as is usual for classification benchmarks on this dataset). The ``BACKGROUND_Google`` folder
is clutter rather than an object class and is left out. There is no official train/test split; a
stratified split with a fixed seed (independent of the run seed) keeps the test set identical across runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data._images import class_folders, decode_images, list_images
from prunelab.data.base import (
    DATASETS,
    LAYOUTS,
    Layout,
    RawData,
    Requirement,
    Resource,
    extract_archive,
    fetch,
    not_found,
    read_npz,
)
from prunelab.data.splits import stratified_split
from prunelab.errors import ConfigError, DataNotFoundError

__all__ = ["CALTECH101_ARCHIVE", "CALTECH101_SPLIT_SEED", "read_caltech101"]

#: The official CaltechDATA release: a zip holding ``caltech-101/101_ObjectCategories.tar.gz``.
CALTECH101_ARCHIVE = Resource(
    "caltech-101.zip",
    ("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",),
    "3138e1922a9193bfa496528edbbc45d0",
)
#: Seed of the fixed train/test split (a constant, so the test set never changes between runs).
CALTECH101_SPLIT_SEED = 1_012_004

_FOLDER = "101_ObjectCategories"
_INNER_ARCHIVE = "101_ObjectCategories.tar.gz"
_EXCLUDED = ("BACKGROUND_Google",)


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ConfigError(f"caltech101: image_size must be an int or [height, width], got {image_size!r}")
    if min(size) < 1:
        raise ConfigError(f"caltech101: image_size must be positive, got {image_size!r}")
    return size


def _locate(root: Path, download: bool, npz: Path) -> Path:
    base = root / "caltech101"
    folder = base / _FOLDER
    if folder.is_dir():
        return folder
    inner = base / _INNER_ARCHIVE
    if not inner.is_file():
        unpacked = base / "caltech-101" / _INNER_ARCHIVE
        if not unpacked.is_file():
            outer = base / CALTECH101_ARCHIVE.filename
            if not outer.is_file():
                if not download:
                    raise not_found("caltech101", [npz, folder, inner, outer])
                outer = fetch(CALTECH101_ARCHIVE, base)
            extract_archive(outer, base, "caltech-101")
        inner = unpacked
    return extract_archive(inner, base, _FOLDER)


def _caltech_layout(root: Path, _options: Mapping[str, Any]) -> list[list[Requirement]]:
    # The reader's order: the .npz, the extracted folder, the inner archive (beside it or unpacked from the
    # official zip), the official zip.
    base = root / "caltech101"
    inner = [base / _INNER_ARCHIVE, base / "caltech-101" / _INNER_ARCHIVE]
    return [[[root / "caltech101.npz"]], [[base / _FOLDER]], [inner], [[base / CALTECH101_ARCHIVE.filename]]]


LAYOUTS["caltech101"] = Layout(_caltech_layout)


@DATASETS.register("caltech101")
def read_caltech101(
    root: Path,
    *,
    download: bool = False,
    image_size: int | Sequence[int] = 64,
    test_fraction: float = 0.2,
) -> RawData:
    """Caltech-101 (Fei-Fei et al. 2004): about 8,700 colour images of 101 object classes.

    Args:
        root: data root; reads ``<root>/caltech101.npz``, else ``<root>/caltech101/101_ObjectCategories/``,
            else extracts ``101_ObjectCategories.tar.gz`` or the official ``caltech-101.zip`` found in
            ``<root>/caltech101/``.
        download: fetch the official zip (MD5-verified) when missing.
        image_size: side (or ``(height, width)``) every image is resized to when decoding.
        test_fraction: fraction of each class held out as the fixed test split.
    """
    size = _size(image_size)
    if not 0 < test_fraction < 1:
        raise ConfigError(f"caltech101: test_fraction must be in (0, 1), got {test_fraction!r}")
    npz = root / "caltech101.npz"
    if npz.is_file():
        raw = read_npz(npz, "caltech101")
    else:
        folder = _locate(root, download, npz)
        classes = class_folders(folder, exclude=_EXCLUDED)
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            images = list_images(folder / name)
            files += images
            labels += [label] * len(images)
        if not files:
            raise DataNotFoundError(f"{folder} holds no images; delete it and extract or download again")
        x = decode_images(files, size, "RGB")
        y = np.asarray(labels, dtype=np.int64)
        n_test = round(test_fraction * y.shape[0])
        test, train = stratified_split(y, n_test, np.random.default_rng(CALTECH101_SPLIT_SEED))
        raw = RawData(x[train], y[train], x[test], y[test], classes=classes, source=str(folder))
    raw.mean = raw.std = None  # computed from the training images at load time
    raw.augment = "crop_flip"
    return raw
