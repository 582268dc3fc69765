"""Checks of a dataset request that read no data: its options, and whether its files are on disk.

``prunelab validate`` and recipe loading call them, so a typo in ``data.kwargs`` or a missing dataset is
reported in one line before any training starts; :func:`prunelab.data.load_dataset` uses the same option
check, so the validator and the loader never disagree.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import os
import types
import typing
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from prunelab.data.base import DATASETS, LAYOUTS, not_found, npz_corrupted, resolve_data_dir
from prunelab.errors import ConfigError, DataNotFoundError

__all__ = ["check_dataset_options", "check_dataset_present", "dataset_options"]

# Arguments of load_dataset itself: under data.kwargs they would clash with the data section's own fields.
_LOADER_ARGS = frozenset(
    {"data_dir", "val_fraction", "train_subset", "test_subset", "seed", "augment", "normalize", "image_size",
     "download"}
)  # fmt: skip


def dataset_options(name: str) -> dict[str, inspect.Parameter]:
    """The options a dataset's reader takes through ``data.kwargs``: its keyword-only parameters.

    ``download`` and ``image_size`` are left out: they are arguments of
    :func:`~prunelab.data.load_dataset` (``data.download``, ``data.image_size``), which passes them on.

    Raises:
        ConfigError: an unknown dataset name (with close matches).
    """
    reader = DATASETS.get(name)
    params = inspect.signature(reader).parameters
    return {
        k: p for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in ("download", "image_size")
    }


def _hints(name: str) -> dict[str, Any]:
    # Readers use postponed annotations (strings); resolve them, and give up quietly on ones that do not
    # resolve (a plugin's forward reference): an unresolved option is then not type-checked.
    try:
        return typing.get_type_hints(DATASETS.get(name))
    except Exception:  # noqa: BLE001 - any failure to resolve only turns the type check off
        return {}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a recipe value (YAML scalar, list or mapping) can be passed where ``hint`` is annotated."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is os.PathLike or origin is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if origin in (Sequence, list, tuple) or hint in (Sequence, list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and args[0] is not Ellipsis else Any
        return all(_fits(v, item) for v in value)
    return True  # a type this check does not know: the reader checks it when loading


def _describe(hint: Any) -> str:
    """``hint`` in words for the message: ``'fine' or 'coarse'``, ``an int or a list of int``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    if hint is os.PathLike or origin is os.PathLike:
        return "a path"
    if origin in (Sequence, list, tuple):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def check_dataset_options(name: str, kwargs: Mapping[str, Any], *, prefix: str = "data.kwargs.") -> None:
    """Check a dataset's options (a recipe's ``data.kwargs``) against its reader, without loading data.

    What is checked, for every key of ``kwargs``, in order:

    1. the dataset ``name`` is registered;
    2. the key is not an argument of :func:`~prunelab.data.load_dataset` (``image_size``, ``download``,
       ``val_fraction``, ...), which belongs in the data section itself;
    3. the key is a keyword-only parameter of the reader (:func:`dataset_options`), else the message
       suggests the closest known options (``difflib``) and lists them all;
    4. the value fits the parameter's annotation (``Literal`` choices, ``int``, ``float``, ``str``,
       ``bool``, paths, lists, unions, ``None``); values of types this check does not know pass, and value
       ranges (``test_fraction`` in (0, 1)) are left to the reader.

    Args:
        name: the dataset's registry name.
        kwargs: the options, as the recipe gives them.
        prefix: what the keys are called in messages (``"data.kwargs."``; ``""`` for the Python API).

    Raises:
        ConfigError: one line, ``data.kwargs.<key>: <problem>; <fix>``, for the first bad key.
    """
    options = dataset_options(name)
    hints = _hints(name)
    for key, value in kwargs.items():
        if key in _LOADER_ARGS:
            raise ConfigError(
                f"{prefix}{key}: is an argument of load_dataset, not an option of dataset {name}; "
                f"set it in the data section (data.{key}) instead"
            )
        if key not in options:
            known = ", ".join(sorted(options)) or "none"
            close = difflib.get_close_matches(str(key), options, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"{prefix}{key}: unknown option of dataset {name}; {hint}known: {known}")
        hint_type = hints.get(key, options[key].annotation)
        if isinstance(hint_type, str):  # an annotation that did not resolve: not checked
            continue
        if not _fits(value, hint_type):
            raise ConfigError(
                f"{prefix}{key}: expected {_describe(hint_type)} for dataset {name}, got {value!r}"
            )


def _check_not_empty(path: Path) -> None:
    """A file the reader would read is not empty, and an ``.npz`` is a zip archive (cheap: no data read)."""
    if not path.is_file():
        return
    size = path.stat().st_size
    if path.suffix == ".npz" and (size == 0 or not zipfile.is_zipfile(path)):
        raise npz_corrupted(path, "is empty (0 bytes)" if size == 0 else "is not an .npz (zip) archive")
    if size == 0:
        raise DataNotFoundError(f"{path} is empty (0 bytes); delete it and download again (--download)")


def check_dataset_present(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    *,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Check that the files dataset ``name`` would be read from are on disk, without reading them.

    The data root is :func:`~prunelab.data.resolve_data_dir` of ``data_dir`` (then ``$PRUNELAB_DATA``,
    then ``~/.cache/prunelab``). The dataset's :class:`~prunelab.data.base.Layout` lists the ways its files
    can lie there, in the order its reader tries them. The reader takes the first way whose first path
    exists: every other path of that way must exist too (else the dataset is incomplete, unless
    ``download`` can fetch the rest), and its files must be non-empty (an ``.npz`` also a zip archive,
    which reads only its directory). Nothing is read, created or downloaded.

    Passes without checking: a dataset without a registered layout (a plugin's), and one whose locations
    depend on options (``image_folder``'s ``path``) when ``options`` is ``None``. With ``download`` true, a
    downloadable dataset that is absent passes (the run fetches it); the network is not probed.

    Args:
        name: the dataset's registry name.
        data_dir: the data root (``--data-dir``), or ``None``.
        download: whether the run may download (``data.download``).
        options: the dataset's options (``data.kwargs``), for datasets whose location depends on them.

    Raises:
        ConfigError: an unknown dataset name.
        DataNotFoundError: one line: the files are absent (every path looked at, and how to get them),
            incomplete (the missing ones named), or a file the reader would read is empty or not an
            archive (delete it and re-create/re-download).
    """
    DATASETS.get(name)
    layout = LAYOUTS.get(name)
    if layout is None or (options is None and layout.options):
        return
    root = resolve_data_dir(data_dir)
    ways = layout.alternatives(root, dict(options or {}))
    for way in ways:
        found = [next((p for p in req if p.exists()), None) for req in way]
        if way and found[0] is None:
            continue  # the reader does not take this way
        missing = [str(req[0]) for req, p in zip(way, found) if p is None]
        if missing and not (download and layout.downloadable):
            raise DataNotFoundError(
                f"dataset {name!r} is incomplete at {found[0]}: {', '.join(missing)} missing; delete the partial "
                "files, then extract or download them again (--download)"
            )
        for p in found:
            if p is not None:
                _check_not_empty(p)
        return
    if download and layout.downloadable:
        return
    looked = list(dict.fromkeys(p for way in ways for req in way for p in req))
    raise not_found(name, looked, downloadable=layout.downloadable, hint=layout.hint)
