"""prunelab: prune convolutional networks and measure what the pruning bought."""

__version__ = "0.1.0"
