"""Shared plumbing for dataset readers: the data folder, the registry, raw arrays, downloads, archives.

A *reader* is a function registered in :data:`DATASETS`. It takes the data root, a ``download`` flag and
its own keyword options, and returns a :class:`RawData` — whole uint8 NHWC arrays plus class names and
the dataset's normalisation and augmentation defaults. Everything after that (validation split, subsets,
resizing, normalisation, batching) is shared code in :mod:`prunelab.data.splits` and
:mod:`prunelab.data.loader`, so a new dataset only has to get its pixels into memory.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunelab._io import download_url, file_digest
from prunelab.errors import DataNotFoundError
from prunelab.registry import Registry

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "RawData",
    "Reader",
    "Resource",
    "default_data_dir",
    "extract_archive",
    "fetch",
    "not_found",
    "read_npz",
    "resolve_data_dir",
]

#: Augmentation policies a dataset can default to (see :mod:`prunelab.data.loader`).
AUGMENTATIONS = ("none", "flip", "crop", "crop_flip")


def default_data_dir() -> Path:
    """The folder used when neither an argument nor ``$PRUNELAB_DATA`` names one: ``~/.cache/prunelab``."""
    return Path.home() / ".cache" / "prunelab"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir`` if given, else ``$PRUNELAB_DATA``, else ``~/.cache/prunelab``.

    The folder is not created here; readers create it only when they download.

    Args:
        data_dir: an explicit folder (``--data-dir`` on the command line), or ``None``.

    Returns:
        The absolute, user-expanded path.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("PRUNELAB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return default_data_dir()


@dataclass
class RawData:
    """A dataset as whole arrays, before any split, subset, resize or normalisation.

    Attributes:
        x_train: training images, ``uint8`` of shape ``(N, H, W, C)``.
        y_train: training labels, ``int64`` of shape ``(N,)``, values in ``[0, len(classes))``.
        x_test: test images, same layout as ``x_train``.
        y_test: test labels.
        classes: class names, index = label.
        mean: per-channel mean on the [0, 1] scale for ``normalize="dataset"``; ``None`` means "compute
            it from ``x_train``" (for folders of arbitrary images).
        std: per-channel standard deviation, as ``mean``.
        augment: the dataset's standard training augmentation, one of :data:`AUGMENTATIONS`.
        source: the file or folder the arrays were read from, for logs.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str = "none"
    source: str = ""

    def validate(self, name: str) -> None:
        """Check shapes, dtypes and label range; a bad file raises :class:`DataNotFoundError`."""
        where = self.source or name
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise DataNotFoundError(
                    f"{name}: x_{split} in {where} is {x.dtype} with shape {x.shape}, expected uint8 (N, H, W, C); "
                    "re-create the file in that layout"
                )
            if y.shape != (x.shape[0],):
                raise DataNotFoundError(
                    f"{name}: y_{split} in {where} has shape {y.shape} but there are {x.shape[0]} images; "
                    "re-create the file with one label per image"
                )
            if y.size and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise DataNotFoundError(
                    f"{name}: labels in {where} fall outside [0, {len(self.classes)}); "
                    "re-create the file with labels 0..num_classes-1"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataNotFoundError(
                f"{name}: train images {self.x_train.shape[1:]} and test images {self.x_test.shape[1:]} in {where} "
                "differ in size; re-create the file with one image size"
            )


#: The signature readers follow: ``reader(root, *, download, **options) -> RawData``.
Reader = Callable[..., RawData]

#: Registry of dataset readers; ``load_dataset(name)`` looks the name up here.
DATASETS: Registry[Reader] = Registry("dataset")


@dataclass(frozen=True)
class Resource:
    """One downloadable file of an official dataset release.

    Attributes:
        filename: the official file name, kept on disk unchanged so users can drop in their own copy.
        urls: where to get it, official location first, then mirrors that serve the identical file.
        md5: the checksum published with (or widely cited for) the official file.
    """

    filename: str
    urls: tuple[str, ...]
    md5: str


def fetch(resource: Resource, directory: Path) -> Path:
    """Download ``resource`` into ``directory`` (verified by MD5) unless a verified copy is already there.

    Each URL is tried in turn; a checksum mismatch or an unreachable host moves on to the next one, and
    nothing unverified is left on disk (see :func:`prunelab._io.download_url`).

    Raises:
        DataNotFoundError: when no URL produced a file with the right checksum.
    """
    dest = directory / resource.filename
    errors: list[str] = []
    for url in resource.urls:
        try:
            return download_url(url, dest, md5=resource.md5)
        except DataNotFoundError as exc:
            errors.append(str(exc))
    raise DataNotFoundError(" | ".join(errors) if errors else f"no URL known for {resource.filename}")


def verify_md5(path: Path, md5: str) -> bool:
    """Whether ``path`` has the MD5 ``md5`` (used before extracting a user-supplied archive)."""
    return file_digest(path, "md5") == md5.lower()


def _safe_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    # Python < 3.11.4 has no extraction filters; refuse absolute paths, "..", links and devices by hand
    # so a crafted archive cannot write outside the data folder.
    root = dest.resolve()
    members = []
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not (target == root or root in target.parents) or not (m.isfile() or m.isdir()):
            raise DataNotFoundError(
                f"archive member {m.name!r} is unsafe; the archive is corrupted or hostile"
            )
        members.append(m)
    return members


def extract_archive(archive: Path, dest: Path, expect: str) -> Path:
    """Extract ``archive`` (``.tar.gz``/``.tgz``/``.tar``/``.zip``) so that ``dest / expect`` appears.

    Extraction goes to a temporary folder beside ``dest`` and the top-level entry ``expect`` is renamed
    into place at the end, so an interrupted extraction never looks like a complete dataset and the
    expensive step happens once.

    Args:
        archive: the archive file.
        dest: the folder to hold the extracted tree.
        expect: the top-level name the archive is known to contain (e.g. ``cifar-10-batches-bin``).

    Returns:
        ``dest / expect``.

    Raises:
        DataNotFoundError: the archive is unreadable or does not contain ``expect``.
    """
    final = dest / expect
    if final.exists():
        return final
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{expect}.", suffix=".extract"))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    for name in zf.namelist():
                        target = (tmp / name).resolve()
                        if not (target == tmp.resolve() or tmp.resolve() in target.parents):
                            raise DataNotFoundError(f"archive member {name!r} in {archive} is unsafe")
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tar:
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(tmp, filter="data")
                    else:  # pragma: no cover - only on old Python patch releases
                        tar.extractall(tmp, members=_safe_members(tar, tmp))
        except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
            raise DataNotFoundError(
                f"cannot extract {archive} ({exc}); delete it and download again (--download)"
            ) from None
        found = tmp / expect
        if not found.exists():
            raise DataNotFoundError(
                f"{archive} does not contain {expect}; it is not the official archive — delete it and use --download"
            )
        os.replace(found, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_npz(path: Path, name: str, classes: Sequence[str] | None = None) -> RawData:
    """Read the offline layout: an ``.npz`` with ``x_train, y_train, x_test, y_test`` (NHWC uint8).

    Grey images stored as ``(N, H, W)`` get a channel axis. Class names come from a ``label_names`` or
    ``classes`` array in the file, else from ``classes``, else are the label numbers.

    Raises:
        DataNotFoundError: a key is missing or the file is unreadable.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files]
            if missing:
                raise DataNotFoundError(
                    f"{path} lacks {', '.join(missing)}; an offline dataset file needs x_train, y_train, "
                    "x_test, y_test (NHWC uint8)"
                )
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            stored = next((npz[k] for k in ("label_names", "classes") if k in npz.files), None)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataNotFoundError(f"cannot read {path} ({exc}); the file is corrupted — replace it") from None
    for split in ("train", "test"):
        if arrays[f"x_{split}"].ndim == 3:
            arrays[f"x_{split}"] = arrays[f"x_{split}"][..., None]
        arrays[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int64).reshape(-1)
    if stored is not None:
        names = [str(c) for c in stored.tolist()]
    elif classes is not None:
        names = list(classes)
    else:
        top = max(int(arrays["y_train"].max(initial=0)), int(arrays["y_test"].max(initial=0)))
        names = [str(i) for i in range(top + 1)]
    return RawData(classes=names, source=str(path), **arrays)


def not_found(
    name: str, looked_at: Sequence[Path], *, downloadable: bool = True, hint: str | None = None
) -> DataNotFoundError:
    """Build the one-line error for a dataset that is not on disk.

    Args:
        name: the dataset's registry name.
        looked_at: every path that was checked, in the order they were checked.
        downloadable: whether ``--download`` can fetch the dataset (mentioned as a fix when it can).
        hint: a replacement for the standard "how to get it" part of the message.

    Returns:
        The error (the caller raises it), naming the dataset, the paths and the fixes.
    """
    paths = ", ".join(str(p) for p in looked_at)
    if hint is None:
        how = "pass --download (download=True) when online, or " if downloadable else ""
        hint = f"{how}set PRUNELAB_DATA or --data-dir to a folder holding {name}.npz or the official files"
    return DataNotFoundError(f"dataset {name!r} not found (looked at: {paths}); {hint}")
