"""Atomic file writes and safe checkpoint loading.

Results are written to a temporary file in the same directory and renamed into place, so a crash or a
kill never leaves a half-written ``summary.json`` or checkpoint behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import CheckpointError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as CSV (header from the first row's keys) atomically; nothing for no rows."""
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    # Tensors, numpy scalars and paths show up in summaries; store them as plain JSON values.
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        CheckpointError: if the file is missing, truncated, corrupted, or holds pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files; all mean "unusable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({first[:160]}); "
            "it is corrupted or not a weights-only state_dict — re-create or re-download it"
        ) from None


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in chunks."""
    import hashlib

    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and verify its checksum before moving it into place.

    A file that already exists with the right checksum is not downloaded again. A checksum mismatch
    deletes the partial download and raises, so a corrupted file never reaches the data folder.

    Raises:
        prunelab.errors.DataNotFoundError: the URL cannot be reached or the checksum does not match.
    """
    import shutil
    import urllib.request

    from prunelab.errors import DataNotFoundError

    dest = Path(dest)

    def verified(path: Path) -> bool:
        if sha256 and not file_digest(path, "sha256").startswith(sha256.lower()):
            return False
        return not (md5 and file_digest(path, "md5") != md5.lower())

    if dest.is_file() and verified(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        if not verified(tmp):
            raise DataNotFoundError(
                f"checksum mismatch for {url}; the download is corrupted or the file changed upstream — "
                "retry, or place a verified copy at " + str(dest)
            )
        os.replace(tmp, dest)
    except DataNotFoundError:
        raise
    except OSError as exc:
        raise DataNotFoundError(
            f"cannot download {url} ({exc}); check the network, or place the file at {dest} by hand"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest
