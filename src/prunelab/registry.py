"""Name → object registries, and the plugin entry points that extend them.

Every axis of prunelab (models, datasets, criteria, schedules, method presets, ...) is a
:class:`Registry`, so recipes name components by short snake_case keys, ``prunelab list`` can
enumerate them, and tests can be parametrised over everything that is registered.

A registry is complete by construction: the package that owns it (``prunelab.criteria``,
``prunelab.models``, ...) imports every built-in module in its ``__init__`` and then calls
:func:`load_plugins` with its own entry-point group, so whoever imports the registry first sees the
built-ins *and* the installed plugins. A third-party package adds components without touching
prunelab by declaring an entry point in that group, for example in its ``pyproject.toml``:

.. code-block:: toml

    [project.entry-points."prunelab.criteria"]
    taylor = "my_package.taylor"             # a module: importing it registers the criterion
    more = "my_package.setup:register_all"   # a callable: calling it registers things

The groups are ``prunelab.criteria``, ``prunelab.models``, ``prunelab.datasets`` and
``prunelab.methods``. Because the owning package loads its group on import, plugins work in every
process that uses the registry (``prunelab run``, ``prunelab validate``, sweep workers).
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
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


#: Entry points already loaded, as ``(group, name, value)``: each is loaded once per process.
_LOADED_PLUGINS: set[tuple[str, str, str]] = set()


def load_plugins(group: str) -> list[str]:
    """Load the Python entry points of ``group`` once per process; returns the names loaded now.

    Each entry point names a module (imported: its decorators register components) or a callable
    (called without arguments: it registers components). An entry point already loaded in this process
    is skipped, so calling this again (or from a plugin that imports the registry it extends) is a no-op.

    Args:
        group: the entry-point group, e.g. ``"prunelab.criteria"``.

    Raises:
        ConfigError: a plugin failed to import or to register; the message names the plugin and its
            distribution.
    """
    loaded: list[str] = []
    for point in entry_points(group=group):
        key = (group, point.name, point.value)
        if key in _LOADED_PLUGINS:
            continue
        # Marked before loading: a plugin that imports the package calling us must not load itself again,
        # and one that failed is reported once (a retry would re-run the registrations that succeeded).
        _LOADED_PLUGINS.add(key)
        try:
            target = point.load()
            if callable(target) and not isinstance(target, types.ModuleType):
                target()
        except Exception as exc:
            dist = getattr(getattr(point, "dist", None), "name", None)
            package = f"the package {dist!r}" if dist else "the package that declares it"
            raise ConfigError(
                f"plugin {point.name!r} (entry point group {group!r}, {point.value}) failed to load: "
                f"{type(exc).__name__}: {exc}; fix or uninstall {package}"
            ) from exc
        loaded.append(point.name)
    return loaded
