"""The hook ownership shared by the statistics collectors (relief activations, PLS features)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["ForwardHooks"]


class ForwardHooks:
    """Mixin for a context manager that owns forward hooks in ``self._handles`` and always removes them.

    A collector registers its hooks in ``__enter__``; leaving the ``with`` block, normally or by an
    exception, removes every hook, so a failed calibration pass never leaves a model instrumented.
    """

    _handles: list[Any]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove every hook, whether or not the block raised (exceptions propagate)."""
        self.remove()

    def remove(self) -> None:
        """Remove the hooks now (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
