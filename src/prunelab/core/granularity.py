"""Granularity: the unit a pruning decision keeps or removes.

A granularity groups the entries of a tensor of shape ``(out, in, *rest)`` into units and moves
between entry level and unit level:

- ``reduce(S)`` sums per-entry scores over each unit, keeping every dimension (``keepdim``), so the
  result broadcasts back onto the tensor: ``U[u] = Σ_{i ∈ u} S[i]``;
- ``expand(M_u, shape)`` broadcasts a boolean unit mask back to a full-size entry mask.

+-------------+-------------------------------+-----------------------------+------------------------+
| name        | unit of a conv ``(o, i, kh, kw)`` | unit of a Linear ``(o, i)``  | unit shape (conv)      |
+=============+===============================+=============================+========================+
| ``element`` | one weight                    | one weight                  | ``(o, i, kh, kw)``     |
| ``kernel``  | one ``kh × kw`` kernel        | one weight                  | ``(o, i, 1, 1)``       |
| ``filter``  | one output unit (dim 0)       | one output neuron (row)     | ``(o, 1, 1, 1)``       |
| ``channel`` | one input channel (dim 1)     | one input feature (column)  | ``(1, i, 1, 1)``       |
+-------------+-------------------------------+-----------------------------+------------------------+

The definitions only use the tensor's shape (dim 0 = output, dim 1 = input, the rest = kernel), so
they also apply to any tensor laid out the same way, e.g. interspace filter-basis coefficients
``(out, in, basis)``. One-dimensional tensors (biases, BatchNorm scales) have one entry per channel,
so every granularity treats each entry as a unit there, except ``channel``, which needs an input
dimension. With the magnitude criterion, ``filter`` reduce gives the L1 norm (``p=1``) or the squared
L2 norm (``p=2``) of each filter (Li et al. 2017, "Pruning Filters for Efficient ConvNets").

All granularities are pure and stateless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import ConfigError
from prunelab.registry import Registry


def _element_dims(ndim: int) -> tuple[int, ...]:
    return ()


def _kernel_dims(ndim: int) -> tuple[int, ...]:
    return tuple(range(2, ndim))


def _filter_dims(ndim: int) -> tuple[int, ...]:
    return tuple(range(1, ndim))


def _channel_dims(ndim: int) -> tuple[int, ...]:
    if ndim < 2:
        raise ConfigError(
            "channel granularity needs a tensor with an input dimension (dim 1); a 1-D tensor such as a "
            "BatchNorm scale is pruned per entry: use element or filter"
        )
    return (0, *range(2, ndim))


@dataclass(frozen=True)
class Granularity:
    """Groups tensor entries into units by summing over fixed dimensions.

    A unit is the set of entries that agree on every dimension that is not summed.

    Attributes:
        name: registry name.
        dims: maps a tensor's rank to the dimensions summed into one unit (``()`` = element-wise).

    Example:
        >>> import torch
        >>> filters = GRANULARITIES.get("filter")
        >>> scores = torch.ones(4, 3, 2, 2)
        >>> filters.reduce(scores).flatten().tolist()  # L1 norm of each all-ones filter
        [12.0, 12.0, 12.0, 12.0]
        >>> filters.expand(torch.tensor([True, False, True, True]).reshape(4, 1, 1, 1), scores.shape).sum()
        tensor(36)
    """

    name: str
    dims: Callable[[int], tuple[int, ...]]

    def summed_dims(self, ndim: int) -> tuple[int, ...]:
        """The dimensions collapsed into one unit for a tensor of rank ``ndim``.

        Raises:
            ConfigError: if the granularity does not apply to tensors of that rank.
        """
        if ndim < 1:
            raise ConfigError(f"cannot prune a scalar tensor with {self.name} granularity; target a weight")
        return self.dims(ndim)

    def unit_shape(self, shape: Sequence[int]) -> torch.Size:
        """The ``keepdim`` shape of the unit tensor for a tensor of ``shape``."""
        dims = set(self.summed_dims(len(shape)))
        return torch.Size(1 if d in dims else int(n) for d, n in enumerate(shape))

    def num_units(self, shape: Sequence[int]) -> int:
        """How many units a tensor of ``shape`` has."""
        return int(self.unit_shape(shape).numel())

    def reduce(self, scores: Tensor) -> Tensor:
        """Sum per-entry ``scores`` over each unit (``keepdim``: broadcastable onto the tensor)."""
        dims = self.summed_dims(scores.dim())
        if not dims:
            return scores
        return scores.sum(dim=dims, keepdim=True)

    def expand(self, unit_mask: Tensor, shape: Sequence[int]) -> Tensor:
        """Broadcast a boolean ``unit_mask`` (shape :meth:`unit_shape`) to a full mask of ``shape``.

        Raises:
            ValueError: if ``unit_mask`` does not have this granularity's unit shape for ``shape``.
        """
        expected = self.unit_shape(shape)
        if unit_mask.shape != expected:
            raise ValueError(
                f"{self.name} unit mask of shape {tuple(unit_mask.shape)} does not fit a tensor of shape "
                f"{tuple(shape)} (expected {tuple(expected)})"
            )
        return unit_mask.to(torch.bool).expand(torch.Size(shape)).contiguous()


GRANULARITIES: Registry[Granularity] = Registry("granularity")
for _name, _dims, _help in (
    ("element", _element_dims, "Each weight is a unit (unstructured pruning)."),
    ("kernel", _kernel_dims, "Each kh x kw kernel of a conv is a unit (a single weight for Linear)."),
    ("filter", _filter_dims, "Each output unit (dim 0: conv filter, Linear row) is a unit."),
    ("channel", _channel_dims, "Each input channel (dim 1: conv input channel, Linear column) is a unit."),
):
    GRANULARITIES.register(_name, help=_help)(Granularity(_name, _dims))
