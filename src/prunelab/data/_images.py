"""Decoding folders of image files (JPEG, PNG, ...) into one uint8 NHWC array with Pillow.

Used by the readers of datasets distributed as individual image files (Caltech-101, Tiny ImageNet, any
``train/<class>/`` folder). Decoding is the one place where a per-image loop is unavoidable; it runs in a
small thread pool because Pillow releases the GIL while decoding and resizing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from prunelab.data.base import one_line
from prunelab.errors import ConfigError, DataNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "class_folders", "decode_images", "list_images"]

#: File suffixes treated as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; hidden files are skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def class_folders(folder: Path, exclude: Sequence[str] = ()) -> list[str]:
    """Names of the sub-folders of ``folder`` (one per class), sorted; hidden and excluded names skipped."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in exclude
    )


def _undecodable(path: Path, exc: BaseException) -> DataNotFoundError:
    """The one-line error for an image file Pillow cannot decode (its message can span lines)."""
    return DataNotFoundError(f"cannot decode image {path} ({one_line(exc, 160)}); remove or replace the file")


def decode_images(
    paths: Sequence[Path], size: tuple[int, int] | None, mode: str = "RGB", *, resize: bool = True
) -> np.ndarray:
    """Decode ``paths`` into a ``(N, H, W, C)`` uint8 array.

    Args:
        paths: image files.
        size: ``(height, width)`` of the output, or ``None`` for the size of the first image.
        mode: ``"RGB"`` (3 channels; grey and CMYK images are converted) or ``"L"`` (1 grey channel).
        resize: resize images of another size (bilinear; Pillow antialiases when shrinking); when false,
            every image must already have ``size``.

    Raises:
        DataNotFoundError: a file cannot be decoded.
        ConfigError: ``resize`` is false and an image has another size.
    """
    from PIL import Image, UnidentifiedImageError

    if mode not in ("RGB", "L"):
        raise ConfigError(f"mode: must be 'RGB' or 'L', got {mode!r}")
    channels = 3 if mode == "RGB" else 1
    decode_errors = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)
    if not paths:
        h, w = size if size is not None else (1, 1)
        return np.zeros((0, h, w, channels), dtype=np.uint8)
    if size is None:
        try:
            with Image.open(paths[0]) as first:
                size = (first.height, first.width)
        except decode_errors as exc:
            raise _undecodable(paths[0], exc) from None
    out = np.empty((len(paths), size[0], size[1], channels), dtype=np.uint8)

    def load(i: int) -> None:
        path = paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if (img.height, img.width) != size:
                    if not resize:
                        raise ConfigError(
                            f"{path} is {img.width}x{img.height}, not {size[1]}x{size[0]} like the other images; "
                            "pass image_size to resize all images to one size"
                        )
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                out[i] = np.asarray(img, dtype=np.uint8).reshape(size[0], size[1], channels)
        except decode_errors as exc:
            raise _undecodable(path, exc) from None

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first error of any worker here, in the calling thread.
        list(pool.map(load, range(len(paths))))
    return out
