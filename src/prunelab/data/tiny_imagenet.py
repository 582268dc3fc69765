"""Tiny ImageNet (200 classes, 64×64) from the official ``tiny-imagenet-200/`` folder.

Y. Le and X. Yang, *Tiny ImageNet Visual Recognition Challenge*, CS231N course report, Stanford, 2015;
http://cs231n.stanford.edu/tiny-imagenet-200.zip.

The official test images have no public labels, so the labelled validation set (50 images per class,
``val/images`` + ``val/val_annotations.txt``) serves as the test split here; the validation split used for
model selection is carved from the training images by :func:`prunelab.data.load_dataset`, as for every
dataset. Classes follow the order of ``wnids.txt`` and are named by their WordNet ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data._images import decode_images, list_images
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
from prunelab.errors import DataNotFoundError

__all__ = ["TINY_IMAGENET_ARCHIVE", "read_tiny_imagenet"]

#: The official archive.
TINY_IMAGENET_ARCHIVE = Resource(
    "tiny-imagenet-200.zip",
    ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
    "90528d7ca1a48142e341f4ef8d21d0de",
)

_FOLDER = "tiny-imagenet-200"

# Training-set channel statistics on the [0, 1] scale (the commonly used constants).
_TINY_STATS = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))


def _locate(root: Path, download: bool, npz: Path) -> Path:
    base = root / "tiny_imagenet"
    folder = base / _FOLDER
    if folder.is_dir():
        return folder
    archive = base / TINY_IMAGENET_ARCHIVE.filename
    if not archive.is_file():
        if not download:
            raise not_found("tiny_imagenet", [npz, folder, archive])
        archive = fetch(TINY_IMAGENET_ARCHIVE, base)
    return extract_archive(archive, base, _FOLDER)


def _read_folder(folder: Path) -> RawData:
    wnids_file = folder / "wnids.txt"
    annotations = folder / "val" / "val_annotations.txt"
    for required in (wnids_file, annotations):
        if not required.is_file():
            raise DataNotFoundError(
                f"{required} is missing; {folder} is incomplete — delete it and extract again"
            )
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    train_files: list[Path] = []
    train_labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = list_images(folder / "train" / wnid / "images")
        train_files += images
        train_labels += [label] * len(images)
    test_files: list[Path] = []
    test_labels: list[int] = []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in index:
            raise DataNotFoundError(f"{annotations} names class {fields[1]!r}, which is not in {wnids_file}")
        test_files.append(folder / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])
    # All Tiny ImageNet images are 64×64; some are stored as greyscale JPEGs and are converted to RGB.
    return RawData(
        x_train=decode_images(train_files, (64, 64), "RGB"),
        y_train=np.asarray(train_labels, dtype=np.int64),
        x_test=decode_images(test_files, (64, 64), "RGB"),
        y_test=np.asarray(test_labels, dtype=np.int64),
        classes=wnids,
        source=str(folder),
    )


def _tiny_layout(root: Path, _options: Mapping[str, Any]) -> list[list[Requirement]]:
    # The reader's order: the .npz, the extracted folder, the official zip.
    base = root / "tiny_imagenet"
    return [[[root / "tiny_imagenet.npz"]], [[base / _FOLDER]], [[base / TINY_IMAGENET_ARCHIVE.filename]]]


LAYOUTS["tiny_imagenet"] = Layout(_tiny_layout)


@DATASETS.register("tiny_imagenet")
def read_tiny_imagenet(root: Path, *, download: bool = False) -> RawData:
    """Tiny ImageNet (Le & Yang 2015): 100,000 train / 10,000 labelled val colour 64×64 images, 200 classes.

    Args:
        root: data root; reads ``<root>/tiny_imagenet.npz``, else ``<root>/tiny_imagenet/tiny-imagenet-200/``,
            else extracts ``<root>/tiny_imagenet/tiny-imagenet-200.zip`` there.
        download: fetch the official zip (MD5-verified) when missing.
    """
    npz = root / "tiny_imagenet.npz"
    raw = read_npz(npz, "tiny_imagenet") if npz.is_file() else _read_folder(_locate(root, download, npz))
    raw.mean, raw.std = _TINY_STATS
    raw.augment = "crop_flip"
    return raw
