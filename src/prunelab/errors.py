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
    """A recipe or option is invalid; the message reads ``file: field.path: reason``."""

    exit_code = 2


class DataNotFoundError(PrunelabError):
    """A dataset's files are missing; the message says where prunelab looked and how to get them."""


class UnsupportedModelError(PrunelabError):
    """A model contains a layer or structure that the requested operation cannot handle."""


class CheckpointError(PrunelabError):
    """A checkpoint or weights file is missing, corrupted or does not match the model."""
