"""Name → object registries.

Every axis of prunelab (models, datasets, criteria, schedules, method presets, ...) is a
:class:`Registry`, so recipes name components by short snake_case keys, ``prunelab list`` can
enumerate them, and tests can be parametrised over everything that is registered.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from prunelab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of components of one kind.

    Args:
        kind: what is registered (``"model"``, ``"dataset"``, ...); used in error messages.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(num_classes: int = 10): ...
        >>> MODELS.names()
        ['tiny']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``.

        Raises:
            ValueError: if ``name`` is already taken (a silent override would hide a bug).
        """

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            doc = help if help is not None else (getattr(obj, "__doc__", None) or "")
            self._help[name] = doc.strip().splitlines()[0] if doc.strip() else ""
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the component registered as ``name``.

        Raises:
            ConfigError: for an unknown name, listing the closest known names.
        """
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The one-line message for an unknown ``name``, with close matches as the fix."""
        close = difflib.get_close_matches(str(name), self._items, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.names())}"
        return f"unknown {self.kind} {name!r}; {hint}"

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the component registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def describe(self) -> list[tuple[str, str]]:
        """``(name, first docstring line)`` pairs, sorted by name, for ``prunelab list``."""
        return [(n, self._help[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
