"""What ``prunelab list`` shows beyond the registries: the shipped recipes and the pretrained weights' files.

Recipes are not part of the installed package: they ship with the source repository (``recipes/`` beside
``src/``). :func:`find_recipes_dir` looks there (a source checkout or an editable install), then in
``./recipes``; ``--dir`` names any other folder. Each recipe's one line is its own description: the
first sentence of the comment block at the top of the file, or, where a file has none, what it runs
(method on model/dataset, or a sweep's grid).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from prunelab.errors import ConfigError

__all__ = ["describe_pretrained", "describe_recipes", "find_recipes_dir", "recipe_line"]

#: The longest recipe description printed (the rest is in the file).
_WIDTH = 200


def find_recipes_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The folder of shipped recipes: ``explicit``, else the source checkout's ``recipes/``, else ``./recipes``.

    Raises:
        ConfigError: none of them is a folder (one line: where it looked and the fix).
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise ConfigError(f"--dir {path}: not a folder; pass the folder that holds the recipe files")
        return path
    # src/prunelab/experiments/catalog.py -> the repository root holds recipes/ beside src/.
    candidates = [Path(__file__).resolve().parents[3] / "recipes", Path.cwd() / "recipes"]
    for path in candidates:
        if path.is_dir():
            return path
    looked = " and ".join(str(p) for p in candidates)
    raise ConfigError(
        f"no recipes folder found (looked for {looked}); recipes ship with the source repository, not the "
        "installed package: clone it, or pass --dir DIR"
    )


def _leading_comment(text: str) -> str:
    """The comment block at the top of a YAML file, as one string (no ``#``)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines).strip()


def _first_sentence(text: str) -> str:
    """Up to the first full stop followed by a space (``2.5``, ``e.g.`` and ``et al.`` do not end it)."""
    match = re.search(r"(?<!\bet al)(?<!\be\.g)(?<!\bi\.e)\.(?=\s|$)", text)
    sentence = text[: match.end()] if match else text
    if len(sentence) > _WIDTH:
        sentence = sentence[: _WIDTH - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def _what_it_runs(data: Any) -> str:
    """For a file without a comment: the method on model/dataset, or the sweep's base and grid."""
    if not isinstance(data, dict):
        return "(not a recipe: no mapping at the top level)"
    if "grid" in data or "stages" in data:
        grid = data.get("grid") or {}
        stages = data.get("stages") or []
        over = " × ".join(grid) if grid else f"{len(stages)} stages"
        base = f" of {data['base']}" if "base" in data else ""
        return f"sweep over {over}{base}"
    prune = data.get("prune") or {}
    model = (data.get("model") or {}).get("name", "?")
    dataset = (data.get("data") or {}).get("name", "?")
    return f"{prune.get('method', 'dense')} on {model} / {dataset}"


def recipe_line(path: Path) -> str:
    """The one-line description of the recipe or sweep file ``path`` (from its own text)."""
    text = path.read_text(encoding="utf-8")
    comment = _leading_comment(text)
    if comment:
        return _first_sentence(comment)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return "(not valid YAML)"
    return _what_it_runs(data)


def describe_recipes(folder: Path) -> list[tuple[str, str]]:
    """``(path relative to folder, one line)`` for every ``*.yaml`` under ``folder``, sorted by path."""
    files = sorted(p for p in folder.rglob("*.yaml") if p.is_file())
    return [(p.relative_to(folder).as_posix(), recipe_line(p)) for p in files]


def describe_pretrained(data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, str, str, Path]]:
    """``(name, description, status, path)`` of every registered pretrained weights file.

    ``status`` is ``present`` (a non-empty file; its sha256 is checked when a run loads it), ``empty`` or
    ``missing (download with --download)`` / ``missing (no download: copy it by hand)``.
    """
    from prunelab.models.pretrained import PRETRAINED, _weights_path

    rows = []
    for name, text in PRETRAINED.describe():
        spec = PRETRAINED.get(name)
        path = _weights_path(spec, data_dir)
        if path.is_file():
            status = "present" if path.stat().st_size > 0 else "empty"
        else:
            status = (
                "missing (download with --download)" if spec.url else "missing (no download: copy it by hand)"
            )
        rows.append((name, text, status, path))
    return rows
