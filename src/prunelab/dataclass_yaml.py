"""Typed dataclasses from plain YAML data: the checking that every recipe section goes through.

:func:`build_section` builds a dataclass from a mapping and checks every key and value against the
field annotations (``int``, ``float``, ``bool``, ``str``, ``Literal``, ``list``, ``dict``, unions,
nested dataclasses), so a typo fails with one line ``field.path: reason`` (with a did-you-mean hint)
before anything runs. :func:`set_dotted` and :func:`parse_overrides` apply ``--set key.path=value``;
:func:`load_yaml_file` reads a recipe or sweep file (UTF-8 text, alias expansion capped) and
:func:`check_name` keeps a name that becomes a directory one safe path component. It imports nothing of prunelab but the errors, so the recipe schema and every method's options
dataclass can use it without importing each other.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal

import yaml

from prunelab.errors import ConfigError, ErrorCollector

__all__ = ["build_section", "check_name", "load_yaml_file", "parse_overrides", "set_dotted"]

#: The most values a YAML document may expand to once its aliases are followed. A recipe has a few
#: hundred; a "billion laughs" alias bomb has 10**9 and would hang whatever walks it unshared.
MAX_YAML_VALUES = 100_000

#: A name that becomes a directory (a recipe's, a sweep's, a stage's, a run id): one path component.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


def check_name(value: Any, where: str) -> str:
    """``value`` if it is a safe name, one path component (letters, digits, ``. _ + = -``, no leading
    dot or dash, at most 128 characters); otherwise :class:`ConfigError` naming ``where``.

    Names become directories (``runs/<name>-<time>``, ``sweeps/<name>``, ``runs/<id>``), so ``../x``,
    an absolute path or a separator would write outside the output folder.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value.endswith("."):
        raise ConfigError(
            f"{where}: {value!r} is not a valid name; use letters, digits, '.', '_', '+', '=' or '-' "
            "(one path component, no '/', not starting with '.' or '-')"
        )
    return value


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """The number of values ``node`` expands to with aliases followed, counting stops past ``limit``."""
    total = 0
    stack = [node]
    while stack:
        current = stack.pop()
        total += 1
        if total > limit:
            break
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend((key, value))
    return total


def load_yaml_file(path: Any, what: str = "recipe file") -> Any:
    """The data of YAML file ``path`` (``what`` names it in errors: recipe file, sweep file, ...).

    Raises:
        ConfigError: one line ``path: reason; fix`` when the file is missing, unreadable, binary, not
            UTF-8, not valid YAML, or expands through aliases to more than :data:`MAX_YAML_VALUES` values.
    """
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a {what}; give the YAML file's path")
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found; check the path")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror}); check its permissions") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: is a binary file, not a YAML {what}; check the path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}: its YAML aliases expand to more than {MAX_YAML_VALUES} values; "
                "write the values out or use fewer nested aliases"
            )
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {where}{problem}; fix the YAML syntax") from None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (ints → floats etc.)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{path}: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads 1e-3 (no dot) as a string; accept it as the number the user meant.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a schema bug, not a user error


def build_section(cls: Any, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys and types; errors name ``path.field``."""
    if data is None:
        data = {}
    where = path or "recipe"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    # Every key is checked, so one pass reports all the section's mistakes (nested sections included).
    errors = ErrorCollector()
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        with errors:
            if key not in fields:
                close = difflib.get_close_matches(str(key), sorted(fields), n=1)
                hint = (
                    f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(fields))}"
                )
                raise ConfigError(f"{sub}: unknown key{hint}")
            kwargs[key] = _convert(value, hints[key], sub)
    errors.raise_if_any()
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ messages start with the field name (some with a "ClassName." prefix);
        # make them full dotted paths.
        message = re.sub(r"^[A-Z]\w*\.", "", str(exc))
        raise ConfigError(f"{path}.{message}" if path else message) from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"``, creating mappings on the way."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.path=value`` strings; values are read as YAML (``0.9``, ``true``, ``[1, 2]``)."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key.path=value, e.g. prune.sparsity=0.9")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out
