"""Honest measurement: parameters, non-zeros, dense and effective MACs, measured latency, size on disk.

Every function accepts masked (parametrized) models as they are, without baking them.
"""

from prunelab.metrics.counting import (
    WEIGHTED_LAYERS,
    ParamCount,
    channel_macs,
    count_parameters,
    dense_macs,
    effective_macs,
    effective_parameters,
    layer_table,
)
from prunelab.metrics.latency import file_size, measure_latency

__all__ = [
    "WEIGHTED_LAYERS",
    "ParamCount",
    "channel_macs",
    "count_parameters",
    "dense_macs",
    "effective_macs",
    "effective_parameters",
    "file_size",
    "layer_table",
    "measure_latency",
]
