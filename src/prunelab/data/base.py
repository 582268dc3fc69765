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
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunelab._io import download_url, file_digest
from prunelab.errors import DataNotFoundError
from prunelab.registry import Registry

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "LAYOUTS",
    "NPZ_KEYS",
    "Layout",
    "RawData",
    "Reader",
    "Requirement",
    "Resource",
    "as_labels",
    "default_data_dir",
    "extract_archive",
    "fetch",
    "not_found",
    "npz_corrupted",
    "one_line",
    "read_npz",
    "read_npz_arrays",
    "resolve_data_dir",
]

#: Augmentation policies a dataset can default to (see :mod:`prunelab.data.loader`).
AUGMENTATIONS = ("none", "flip", "crop", "crop_flip")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace and line breaks collapsed), for a one-line error.

    Decoders (tarfile, zlib, Pillow) report several lines; the user gets them as one.
    """
    text = " ".join(str(exc).split())
    return (text[:limit] + "…" if len(text) > limit else text) or type(exc).__name__


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
        """Check shapes, dtypes and labels (in place: labels become ``int64``); a bad file raises :class:`DataNotFoundError`.

        Labels must be whole numbers in ``[0, len(classes))`` (:func:`as_labels`), so float labels such as
        ``1.7`` are refused rather than truncated.
        """
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
            setattr(self, f"y_{split}", as_labels(y, f"{name}: y_{split} in {where}", len(self.classes)))
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataNotFoundError(
                f"{name}: train images {self.x_train.shape[1:]} and test images {self.x_test.shape[1:]} in {where} "
                "differ in size; re-create the file with one image size"
            )


#: The signature readers follow: ``reader(root, *, download, **options) -> RawData``.
Reader = Callable[..., RawData]

#: Registry of dataset readers; ``load_dataset(name)`` looks the name up here.
DATASETS: Registry[Reader] = Registry("dataset")


#: One requirement of a :class:`Layout`: paths of which any one present (file or folder) will do.
Requirement = Sequence[Path]


@dataclass(frozen=True)
class Layout:
    """Where a reader finds its dataset under the data root: for checking presence without reading.

    Attributes:
        alternatives: ``alternatives(root, options)`` returns the ways the dataset can lie on disk, in the
            order the reader tries them; each way is a sequence of requirements. The reader takes the
            first way whose first requirement is met, and then needs all of that way's requirements. An
            empty way is always taken (data bundled with a package).
        downloadable: whether ``download=True`` fetches the files when they are absent.
        options: reader options the locations depend on (``path`` of ``image_folder``): without them the
            locations are unknown, so such a dataset is checked only when its options are given.
        hint: the "how to get it" part of the not-found message, when the standard one does not fit.
    """

    alternatives: Callable[[Path, Mapping[str, Any]], Sequence[Sequence[Requirement]]]
    downloadable: bool = True
    options: frozenset[str] = frozenset()
    hint: str | None = None


#: Layouts of the built-in readers, by dataset name (each registered beside its reader). A plugin's reader
#: may add one; without it its presence is not checked ahead of loading.
LAYOUTS: dict[str, Layout] = {}


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
        except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise DataNotFoundError(
                f"cannot extract {archive} ({one_line(exc)}); delete it and download again (--download)"
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


#: The arrays every offline ``.npz`` dataset file holds.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# What a broken offline file's message tells the user to do (one wording for every way it can break).
_NPZ_FIX = "delete it, then re-create it (arrays x_train, y_train, x_test, y_test) or re-download the dataset (--download)"


def npz_corrupted(path: Path, why: str) -> DataNotFoundError:
    """The one-line error for an unusable offline ``.npz`` file: what is wrong, and the fix."""
    return DataNotFoundError(f"{path} {why}; {_NPZ_FIX}")


def as_labels(
    y: np.ndarray,
    where: str,
    num_classes: int | None = None,
    error: type[Exception] = DataNotFoundError,
) -> np.ndarray:
    """``y`` as an ``int64`` label vector, refusing what a cast would silently change.

    Integer labels pass; floating-point labels pass only when every value is a whole number (``1.0``),
    so ``1.7`` is never truncated to ``1``; booleans, strings and other kinds are refused. With
    ``num_classes``, every label must also lie in ``[0, num_classes)``.

    Args:
        y: the labels (any shape; flattened).
        where: what the labels are, for the message (``"y_train in /data/mnist.npz"``).
        num_classes: the class count to check the range against, or ``None`` (only ``>= 0`` is checked).
        error: the exception class raised (a file's labels: :class:`DataNotFoundError`).

    Raises:
        error: non-integral, non-numeric, negative or out-of-range labels (the first bad value named).
    """
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise error(
                f"{where}: label {y[i]!r} at index {i} is not a whole number; labels must be class "
                "indices 0..num_classes-1 (store them as integers)"
            )
    elif y.dtype.kind not in "iu":
        raise error(f"{where}: labels are of type {y.dtype}, expected integers 0..num_classes-1")
    labels = y.astype(np.int64)
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            value = low if low < 0 else high
            bound = f"[0, {num_classes})" if num_classes is not None else "[0, num_classes)"
            raise error(
                f"{where}: label {value} is outside {bound}; labels must be class indices "
                "0..num_classes-1 (one class name per index)"
            )
    return labels


# Every way numpy, zipfile and zlib report an unreadable .npz: a broken file, never a prunelab bug.
_NPZ_READ_ERRORS = (
    OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError, MemoryError,
    zipfile.BadZipFile, zlib.error,
)  # fmt: skip


def read_npz(path: Path, name: str, classes: Sequence[str] | None = None) -> RawData:
    """Read the offline layout: an ``.npz`` with ``x_train, y_train, x_test, y_test`` (NHWC uint8).

    Grey images stored as ``(N, H, W)`` get a channel axis. Class names come from a ``label_names`` or
    ``classes`` array in the file, else from ``classes``, else are the label numbers. Labels go through
    :func:`as_labels` (whole numbers only). The file is only read, never changed or deleted.

    Raises:
        DataNotFoundError: the file is empty, not a zip archive, truncated or otherwise corrupted, lacks a
            key, stores pickled objects, or holds non-integer labels — one line naming the file and the fix.
    """
    path = Path(path)
    arrays = read_npz_arrays(path, NPZ_KEYS, optional=("label_names", "classes"))
    stored = next((arrays.pop(k) for k in ("label_names", "classes") if k in arrays), None)
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.ndim == 3:
            arrays[f"x_{split}"] = x[..., None]
        arrays[f"y_{split}"] = as_labels(arrays[f"y_{split}"], f"{name}: y_{split} in {path}")
    if stored is not None:
        names = [str(c) for c in stored.reshape(-1).tolist()]
    elif classes is not None:
        names = list(classes)
    else:
        top = max(int(arrays["y_train"].max(initial=0)), int(arrays["y_test"].max(initial=0)))
        names = [str(i) for i in range(top + 1)]
    return RawData(classes=names, source=str(path), **arrays)


def read_npz_arrays(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all required) and ``optional`` (when present) of the ``.npz`` file ``path``.

    Every failure to read is one :func:`npz_corrupted` error: the zip and npy layers fail lazily, when an
    array is read, so the arrays are read here, inside the one ``try``.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise npz_corrupted(path, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise npz_corrupted(path, "is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        # np.load would try a .npy or a pickle here and say "pickled data ... load it unsafely": wrong advice.
        raise npz_corrupted(
            path, f"is not an .npz (zip) archive ({size} bytes; truncated or not this format)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                found = ", ".join(npz.files) or "nothing"
                raise npz_corrupted(path, f"lacks {', '.join(missing)} (it holds {found})")
            return {k: npz[k] for k in (*keys, *(k for k in optional if k in npz.files))}
    except DataNotFoundError:
        raise
    except _NPZ_READ_ERRORS as exc:
        text = one_line(exc, 160)
        if "pickle" in text:
            text = "an array holds Python objects, which are never unpickled"
        raise npz_corrupted(path, f"is corrupted ({text})") from None


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
