"""Any folder of class-labelled images: ``<path>/train/<class>/*`` and ``<path>/test/<class>/*``.

This is the ``ImageFolder`` convention (one sub-folder per class, as popularised by torchvision and used
by many dataset exports). ``val/`` is accepted in place of ``test/``. Classes are the sorted training
sub-folder names; a test folder may lack some classes but may not add new ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prunelab.data._images import class_folders, decode_images, list_images
from prunelab.data.base import DATASETS, LAYOUTS, Layout, RawData, Requirement, not_found, read_npz
from prunelab.errors import ConfigError, DataNotFoundError

__all__ = ["read_image_folder"]


def _files(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        if (folder / name).is_dir():
            images = list_images(folder / name)
            files += images
            labels += [label] * len(images)
    return files, np.asarray(labels, dtype=np.int64)


_HINT = (
    "pass path=<folder with train/<class>/ and test/<class>/ images> (or an .npz file), "
    "or place image_folder.npz or image_folder/ in the data folder (PRUNELAB_DATA or --data-dir)"
)


def _locations(root: Path, path: str | os.PathLike[str] | None) -> tuple[Path | None, Path]:
    """``(offline .npz file or None, image folder)`` the reader looks at, for ``path`` (or the default)."""
    if path is not None:
        target = Path(path).expanduser()
        return (target if target.suffix == ".npz" else None), target
    return root / "image_folder.npz", root / "image_folder"


def _layout(root: Path, options: Mapping[str, Any]) -> list[list[Requirement]]:
    npz, folder = _locations(root, options.get("path"))
    images = [[folder / "train"], [folder / "test", folder / "val"]]
    return ([[[npz]]] if npz is not None else []) + [images]


LAYOUTS["image_folder"] = Layout(_layout, downloadable=False, options=frozenset({"path"}), hint=_HINT)


@DATASETS.register("image_folder")
def read_image_folder(
    root: Path,
    *,
    download: bool = False,
    path: str | os.PathLike[str] | None = None,
    image_size: int | Sequence[int] | None = None,
    mode: Literal["RGB", "L"] = "RGB",
) -> RawData:
    """A folder of images sorted into ``train/<class>/`` and ``test/<class>/`` (or ``val/<class>/``).

    Args:
        root: data root; without ``path`` the dataset is ``<root>/image_folder.npz`` or
            ``<root>/image_folder/``.
        download: not supported (there is nothing to download); must be false.
        path: the dataset folder (absolute, or relative to the working directory), or an ``.npz`` file in
            the offline layout.
        image_size: ``(height, width)`` or a side to resize every image to; without it all images must
            already share one size.
        mode: ``"RGB"`` or ``"L"`` (greyscale, one channel).
    """
    if download:
        raise ConfigError("image_folder: download is not supported; point path at a folder of images")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    size = tuple(int(s) for s in image_size) if image_size is not None else None
    npz, folder = _locations(root, path)
    if npz is not None and npz.is_file():
        raw = read_npz(npz, "image_folder")
    else:
        train_dir = folder / "train"
        test_dir = next((folder / s for s in ("test", "val") if (folder / s).is_dir()), folder / "test")
        if not train_dir.is_dir() or not test_dir.is_dir():
            looked = [p for p in (npz, train_dir, folder / "test", folder / "val") if p is not None]
            raise not_found(
                "image_folder",
                looked,
                hint=_HINT,
            )
        classes = class_folders(train_dir)
        extra = sorted(set(class_folders(test_dir)) - set(classes))
        if extra:
            raise DataNotFoundError(
                f"{test_dir} has classes {', '.join(extra)} that {train_dir} lacks; add training images for them"
            )
        train_files, y_train = _files(train_dir, classes)
        test_files, y_test = _files(test_dir, classes)
        if not train_files:
            raise DataNotFoundError(f"{train_dir} holds no images in class sub-folders; check the layout")
        # Without image_size every image must match the first training image (checked, not resized).
        x_train = decode_images(train_files, size, mode, resize=size is not None)  # type: ignore[arg-type]
        x_test = decode_images(
            test_files, (x_train.shape[1], x_train.shape[2]), mode, resize=size is not None
        )
        raw = RawData(x_train, y_train, x_test, y_test, classes=classes, source=str(folder))
    raw.mean = raw.std = None  # computed from the training images at load time
    raw.augment = "crop_flip"
    return raw
