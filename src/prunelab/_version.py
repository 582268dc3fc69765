"""The prunelab version (a ground module, so any layer can record it without importing the package facade)."""

__version__ = "0.1.0"
