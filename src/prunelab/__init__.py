"""prunelab: prune convolutional networks and measure what the pruning bought."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunelab._version import __version__

__all__ = ["Pruner", "__version__", "load_pruned", "prune", "prune_channels", "save_pruned"]

if TYPE_CHECKING:
    from prunelab.channels import prune_channels
    from prunelab.checkpoint import load_pruned, save_pruned
    from prunelab.pruning.pruner import Pruner, prune

# Importing prunelab stays cheap (no torch import) until one of these is used.
_LAZY = {
    "prune": "prunelab.pruning",
    "Pruner": "prunelab.pruning",
    "prune_channels": "prunelab.channels",
    "save_pruned": "prunelab.checkpoint",
    "load_pruned": "prunelab.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")
