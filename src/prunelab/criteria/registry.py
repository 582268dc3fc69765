"""The one registry of criteria, of both levels, and building a criterion by name for a level.

Every criterion — entry level (scores a tensor's entries, for the :class:`~prunelab.pruning.Pruner`),
group level (scores the channels of a coupled group, for structured pruning) or both — is registered in
:data:`CRITERIA` by the module that defines it. Importing this module imports the
:mod:`prunelab.criteria` package first, which imports every built-in criterion module and the
installed plugins (entry-point group ``prunelab.criteria``), so the registry is complete whoever
imports it first.

Which level a registered factory has is read from the factory itself
(:func:`~prunelab.core.criterion.criterion_levels`): a ``score`` method makes it entry level, a
``score_group`` method group level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prunelab.core.criterion import LEVELS, Level, criterion_levels
from prunelab.errors import ConfigError
from prunelab.registry import Registry

__all__ = [
    "CRITERIA",
    "build_criterion",
    "check_criterion",
    "check_level",
    "describe_criteria",
    "levels_of",
    "names_at",
]

#: Criterion factories by name, both levels: ``build_criterion("magnitude", "entry", p=2)``.
CRITERIA: Registry[Callable[..., Any]] = Registry("criterion")

_SCORES = {"entry": "tensor entries (entry level)", "group": "channel groups (group level)"}
_NEEDS = {
    "entry": "the pruner needs an entry-level criterion",
    "group": "structured (channel) pruning needs a group-level criterion",
}


def _check_level_name(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"criterion level {level!r} is unknown; use one of {', '.join(LEVELS)}")


def levels_of(name: str) -> tuple[Level, ...]:
    """The levels of the criterion registered as ``name``.

    Raises:
        ConfigError: an unknown name (with close matches).
    """
    return criterion_levels(CRITERIA.get(name))


def names_at(level: Level) -> list[str]:
    """The registered criteria that score at ``level``, sorted."""
    _check_level_name(level)
    return [name for name in CRITERIA.names() if level in levels_of(name)]


def check_level(name: str, level: Level) -> None:
    """Fail unless ``name`` is a registered criterion with the ``level`` level (for recipe validation).

    Raises:
        ConfigError: an unknown name, or one without that level; the message says which level(s) it has
            and lists the criteria of the level asked for, e.g. ``criterion 'bn_scale' scores channel
            groups (group level); the pruner needs an entry-level criterion: grasp, magnitude, ...``.
    """
    _check_level_name(level)
    levels = levels_of(name)
    if level not in levels:
        has = " and ".join(_SCORES[lv] for lv in levels) or "nothing (it has neither score nor score_group)"
        raise ConfigError(f"criterion {name!r} scores {has}; {_NEEDS[level]}: {', '.join(names_at(level))}")


def build_criterion(name: str, level: Level, /, **kwargs: Any) -> Any:
    """Build the criterion registered as ``name`` with options ``kwargs``, for use at ``level``.

    Example:
        >>> build_criterion("magnitude", "entry", p=2)
        Magnitude(p=2)
        >>> build_criterion("l1_filter", "group", reduction="max")
        L1Filter(p=1, reduction='max')

    Raises:
        ConfigError: an unknown name, a criterion without ``level`` (see :func:`check_level`), or options
            the criterion does not accept.
    """
    check_level(name, level)
    try:
        return CRITERIA.get(name)(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"criterion {name!r}: bad options {kwargs} ({exc})") from None


def check_criterion(name: str, level: Level, kwargs: Mapping[str, Any] | None = None) -> None:
    """Fail at validation unless ``name`` is a criterion of ``level`` that accepts the options ``kwargs``.

    Building checks the name, the level and the options at once (criteria are cheap to construct), so a
    typo in ``criterion_kwargs`` fails before anything trains.

    Raises:
        ConfigError: ``criterion: reason``; the options section adds its path.
    """
    try:
        build_criterion(name, level, **dict(kwargs or {}))
    except ConfigError as exc:
        raise ConfigError(f"criterion: {exc}") from None


def describe_criteria() -> list[tuple[str, tuple[Level, ...], str]]:
    """``(name, levels, one-line help)`` for every registered criterion, sorted by name (``prunelab list``)."""
    return [(name, levels_of(name), text) for name, text in CRITERIA.describe()]
