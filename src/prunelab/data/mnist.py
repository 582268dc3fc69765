"""MNIST and Fashion-MNIST from their official IDX files.

* MNIST: Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, *Gradient-based learning applied to document
  recognition*, Proc. IEEE 86(11), 1998; http://yann.lecun.com/exdb/mnist/.
* Fashion-MNIST: H. Xiao, K. Rasul and R. Vollgraf, *Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms*, arXiv:1708.07747, 2017.

Both ship as four gzip-compressed IDX files. They are read from ``<root>/<name>/`` (compressed or
already decompressed), after ``<root>/<name>.npz`` if that exists.
"""

from __future__ import annotations

import gzip
import zlib
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
    fetch,
    not_found,
    one_line,
    read_npz,
)
from prunelab.errors import DataNotFoundError

__all__ = ["FASHION_MNIST_FILES", "MNIST_FILES", "read_fashion_mnist", "read_idx", "read_mnist"]

_MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

# (role, official file name, MD5 of the .gz file as published with the dataset)
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

#: The official MNIST files, official server first, then the PyTorch mirror of identical files.
MNIST_FILES: tuple[Resource, ...] = tuple(
    Resource(f, tuple(u + f for u in _MNIST_URLS), md5) for f, md5 in _MNIST_MD5.items()
)
#: The official Fashion-MNIST files.
FASHION_MNIST_FILES: tuple[Resource, ...] = tuple(
    Resource(f, tuple(u + f for u in _FASHION_URLS), md5) for f, md5 in _FASHION_MD5.items()
)

_FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# Channel statistics of the training sets on the [0, 1] scale (the commonly used constants).
_MNIST_STATS = ((0.1307,), (0.3081,))
_FASHION_STATS = ((0.2860,), (0.3530,))


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) of unsigned bytes into an array.

    The header is two zero bytes, a type code (``0x08`` = uint8), the number of dimensions, then one
    big-endian int32 per dimension; the data follows in C order.

    Raises:
        DataNotFoundError: the file is truncated or not a uint8 IDX file.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataNotFoundError(
            f"cannot read {path} ({one_line(exc)}); delete it and download again (--download)"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataNotFoundError(f"{path} is not a uint8 IDX file; delete it and download again (--download)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataNotFoundError(f"{path} is truncated; delete it and download again (--download)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataNotFoundError(f"{path} is truncated; delete it and download again (--download)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _read_idx_dataset(
    name: str, root: Path, download: bool, files: tuple[Resource, ...], classes: list[str]
) -> RawData:
    npz = root / f"{name}.npz"
    if npz.is_file():
        return read_npz(npz, name, classes)
    folder = root / name

    def locate(resource: Resource) -> Path | None:
        # Accept the official .gz file or the same file already decompressed by the user.
        for candidate in (folder / resource.filename, folder / resource.filename[: -len(".gz")]):
            if candidate.is_file():
                return candidate
        return None

    paths = [locate(r) for r in files]
    if any(p is None for p in paths):
        if not download:
            raise not_found(name, [npz] + [folder / r.filename for r in files])
        paths = [p if p is not None else fetch(r, folder) for p, r in zip(paths, files)]
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)  # type: ignore[arg-type]
    return RawData(
        x_train=np.ascontiguousarray(x_train[..., None]),
        y_train=y_train.astype(np.int64),
        x_test=np.ascontiguousarray(x_test[..., None]),
        y_test=y_test.astype(np.int64),
        classes=classes,
        source=str(folder),
    )


def _idx_layout(name: str, files: tuple[Resource, ...]) -> Layout:
    # The reader's order: <root>/<name>.npz, else the four IDX files (official .gz or decompressed).
    def alternatives(root: Path, _options: Mapping[str, Any]) -> list[list[Requirement]]:
        folder = root / name
        idx = [[folder / r.filename, folder / r.filename[: -len(".gz")]] for r in files]
        return [[[root / f"{name}.npz"]], idx]

    return Layout(alternatives)


LAYOUTS["mnist"] = _idx_layout("mnist", MNIST_FILES)
LAYOUTS["fashion_mnist"] = _idx_layout("fashion_mnist", FASHION_MNIST_FILES)


@DATASETS.register("mnist")
def read_mnist(root: Path, *, download: bool = False) -> RawData:
    """MNIST handwritten digits (LeCun et al. 1998): 60,000 train / 10,000 test grey 28×28 images.

    Args:
        root: data root; reads ``<root>/mnist.npz`` or the four IDX files in ``<root>/mnist/``.
        download: fetch the official ``.gz`` files (MD5-verified) when missing.
    """
    raw = _read_idx_dataset("mnist", root, download, MNIST_FILES, [str(i) for i in range(10)])
    raw.mean, raw.std = _MNIST_STATS
    raw.augment = "none"
    return raw


@DATASETS.register("fashion_mnist")
def read_fashion_mnist(root: Path, *, download: bool = False) -> RawData:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train / 10,000 test grey 28×28 images of clothing.

    Args:
        root: data root; reads ``<root>/fashion_mnist.npz`` or the IDX files in ``<root>/fashion_mnist/``.
        download: fetch the official ``.gz`` files (MD5-verified) when missing.
    """
    raw = _read_idx_dataset("fashion_mnist", root, download, FASHION_MNIST_FILES, list(_FASHION_CLASSES))
    raw.mean, raw.std = _FASHION_STATS
    raw.augment = "none"
    return raw
