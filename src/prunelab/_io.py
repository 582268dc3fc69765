"""Atomic file writes, output-folder checks and safe checkpoint loading.

Results are written to a temporary file ``.<name>.XXXXXXXX.tmp`` in the same directory and renamed into
place, so a crash or a kill never leaves a half-written ``summary.json`` or checkpoint behind; a kill
between the two leaves only the temporary file, which :func:`remove_stale_temps` clears when the folder
is opened again. Renamed files get the permissions of a plain ``open()`` (``0o666`` less the umask),
not the ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import CheckpointError, ConfigError

#: Suffix of the temporary files of atomic writes (and of the writability probe).
TMP_SUFFIX = ".tmp"


def _umask_from_proc() -> int | None:
    # Linux >= 4.7 reports the umask here: reading it does not change it, so no other thread can
    # create a file under a wrong umask meanwhile (os.umask can only read by setting).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    umask = _umask_from_proc()
    if umask is None:  # no /proc: set-and-restore once, at import, before any worker thread exists
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _umask_at_import()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (else the one at import)."""
    umask = _umask_from_proc()
    return _UMASK_AT_IMPORT if umask is None else umask


@contextlib.contextmanager
def _replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it gets umask permissions and replaces ``path``.

    On any error (or a ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes left directly in ``folder``; returns them.

    Only names of the form ``.<name>.<random>.tmp`` are touched, so the folder's results never are.
    Call it only where no other process is writing into ``folder``.
    """
    removed = []
    for path in sorted(Path(folder).glob(f".*{TMP_SUFFIX}")):
        if path.is_file() and not path.is_symlink() and path.name.count(".") >= 3:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _blocking_file(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` (or itself) when it is not a directory."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def ensure_writable_dir(
    folder: str | os.PathLike[str], what: str, fix: str, *, for_file: str | os.PathLike[str] | None = None
) -> Path:
    """Create ``folder`` (with its parents) and prove a file can be written in it, before any work.

    Args:
        folder: the output folder.
        what: how the message names the output, e.g. ``"--out"`` or ``"report folder"``.
        fix: what the user can do instead, e.g. ``"choose another --out"``.
        for_file: the output file in ``folder`` the user named, when it is a file: messages name it.

    Raises:
        ConfigError: one line naming the output, why it cannot be written and ``fix``: it is a file, it
            lies under a file, its folder cannot be created, or a probe file cannot be created there.
    """
    folder = Path(folder)
    named = Path(for_file) if for_file is not None else folder
    blocker = _blocking_file(folder)
    if blocker is not None and blocker == named:
        raise ConfigError(f"{what} {named}: is an existing file, not a directory; {fix}")
    if blocker is not None:
        raise ConfigError(f"{what} {named}: lies under {blocker}, which is a file, not a directory; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {named}: cannot create {folder} ({exc.strerror or exc}); {fix}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if named == folder else f" ({folder})"
        raise ConfigError(
            f"{what} {named}: not writable{where} ({exc.strerror or exc}); fix its permissions or {fix}"
        ) from None
    return folder


def read_json_object(path: str | os.PathLike[str], fix: str) -> dict[str, Any]:
    """The JSON object stored in ``path``.

    Raises:
        ConfigError: one line naming ``path``, what is wrong (missing, unreadable, binary, not UTF-8,
            invalid JSON, not an object) and ``fix``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: does not exist; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); {fix}") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: is a binary file, not JSON; {fix}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: is not UTF-8 text (offset {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``), with umask permissions."""
    with _replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


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
    """``torch.save`` to ``path`` atomically, with umask permissions."""
    with _replacing(path) as tmp:
        torch.save(obj, tmp)


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
        os.chmod(tmp, 0o666 & ~current_umask())
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
