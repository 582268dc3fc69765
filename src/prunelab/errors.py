"""Exceptions for user errors.

Anything a user can fix (a typo in a recipe, a missing dataset, an impossible sparsity, an unsupported
layer, a corrupted checkpoint) raises a :class:`PrunelabError`. The CLI prints its message as one line
and exits with a non-zero code instead of showing a traceback; programming errors keep their traceback.
"""

from __future__ import annotations


class PrunelabError(Exception):
    """A user-facing error whose message names the problem and the fix.

    Attributes:
        exit_code: the process exit code the CLI uses for this error.
    """

    exit_code: int = 1


class ConfigError(PrunelabError):
    """A recipe or option is invalid; the message reads ``file: field.path: reason``.

    Validation collects every problem it can find in one pass (``errors``, one line each); the message
    is the first of them and says how many more there are, so a run still fails with one line while
    ``prunelab validate`` prints them all.

    Attributes:
        errors: every problem found, one line each (``[message]`` for a single one).
    """

    exit_code = 2

    def __init__(self, message: str = "", *, errors: list[str] | None = None) -> None:
        self.errors: list[str] = list(errors) if errors else [message]
        more = len(self.errors) - 1
        message = self.errors[0]
        if more:
            message = (
                f"{self.errors[0]} (and {more} more error{'s' if more > 1 else ''}; "
                "prunelab validate lists them all)"
            )
        super().__init__(message)

    def prefixed(self, prefix: str) -> ConfigError:
        """The same errors, each starting with ``prefix`` (a file name, a section path)."""
        return ConfigError(errors=[f"{prefix}{e}" for e in self.errors])


class ErrorCollector:
    """Gathers the :class:`ConfigError` s of independent checks, so one pass reports all of them.

    Example:
        >>> errors = ErrorCollector()
        >>> with errors:
        ...     raise ConfigError("a: bad")
        >>> with errors:
        ...     raise ConfigError("b: bad")
        >>> errors.messages
        ['a: bad', 'b: bad']
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __enter__(self) -> ErrorCollector:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, ConfigError):
            self.messages.extend(exc.errors)
            return True  # collected; the next check runs
        return False

    def raise_if_any(self) -> None:
        """Raise one :class:`ConfigError` carrying every collected message, if there are any."""
        if self.messages:
            raise ConfigError(errors=self.messages)


class DataNotFoundError(PrunelabError):
    """A dataset's files are missing; the message says where prunelab looked and how to get them."""


class UnsupportedModelError(PrunelabError):
    """A model contains a layer or structure that the requested operation cannot handle."""


class CheckpointError(PrunelabError):
    """A checkpoint or weights file is missing, corrupted or does not match the model."""


def error_line(exc: BaseException) -> tuple[str, int] | None:
    """The one ``prunelab: error:`` line and exit code a user-fixable error becomes; ``None`` for a bug.

    A :class:`PrunelabError` is its message; an ``OSError`` (a full disk, a permission, a vanished path:
    the environment, not prunelab) names the file and what to check. Anything else keeps its traceback.
    """
    if isinstance(exc, PrunelabError):
        return f"prunelab: error: {exc}", exc.exit_code
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return (
            f"prunelab: error: {exc.strerror or exc}{where}; check the path, its permissions and free space",
            1,
        )
    return None
