"""The protocol through which channel surgery handles special layers: :class:`ChannelMappingLayer`.

The channel surgery (:class:`~prunelab.surgery.graph.ChannelGraph`, :func:`~prunelab.surgery.compact`,
:func:`~prunelab.surgery.arch_spec`) resizes Conv2d, Linear and BatchNorm layers by itself. Any other
layer that carries channels from its input to its output by a fixed map, such as the option-A shortcut
of the CIFAR ResNets (an index map that subsamples and zero-pads channels), takes part by implementing
the methods below; surgery finds such layers with ``isinstance(module, ChannelMappingLayer)`` (a
structural check: no base class and no import of prunelab is needed, so a model package stays
independent of the surgery).

A channel-mapping layer behaves like a fixed 1×1 selection whose input and output channels are pruned
*independently*: removing input channels does not remove output channels, and vice versa (the output
channels that read a removed input become all-zero). Torch-Pruning's dependency graph cannot trace
through such a layer, so the surgery registers its handler (:class:`~prunelab.surgery.ShortcutPruner`)
for every module type in the model that implements the protocol.

What a user's own layer must implement (indices are positions in the layer's *current* channels):

``channel_counts() -> tuple[int, int]``
    ``(input channels, output channels)`` as they are now.
``prune_inputs(idxs)`` / ``prune_outputs(idxs)``
    physically remove input / output channels ``idxs`` (the layer shrinks; the remaining channels keep
    their order).
``zero_inputs(idxs)`` / ``zero_outputs(idxs)``
    make the output channels that read input channels ``idxs`` / the output channels ``idxs`` all-zero,
    without changing any shape (the surgery's reference model, which the compacted model must match).
``arch_entry() -> dict``
    the layer's current configuration as plain JSON values (stored in the architecture spec under the
    layer's name, beside ``"type"``: the class name).
``load_arch_entry(entry)``
    resize the layer in place to the configuration of ``entry`` (an ``arch_entry()`` result, possibly
    with the ``"type"`` key); called on the layer of a freshly built model of the same class.

``couples_channels`` (optional class attribute, default ``False``)
    ``True`` for a per-channel layer whose input channel ``i`` *is* its output channel ``i`` (like a
    BatchNorm): the graph then couples its input and output groups, and the surgery calls only
    ``prune_outputs`` / ``zero_outputs`` (once per removal), never the input methods.

The layer is otherwise an ordinary ``nn.Module``; if it has parameters, its prune methods must resize
them consistently with :meth:`load_arch_entry`, so that the compacted ``state_dict`` loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn

__all__ = ["ChannelMappingLayer", "channel_mapping_types", "is_channel_mapping"]


@runtime_checkable
class ChannelMappingLayer(Protocol):
    """A layer that maps input channels to output channels by a fixed map (see the module docstring)."""

    def channel_counts(self) -> tuple[int, int]:
        """``(input channels, output channels)`` of the layer as it is now."""
        ...

    def prune_inputs(self, idxs: Sequence[int]) -> None:
        """Remove input channels ``idxs``; the output channels that read them become all-zero."""
        ...

    def prune_outputs(self, idxs: Sequence[int]) -> None:
        """Remove output channels ``idxs``."""
        ...

    def zero_inputs(self, idxs: Sequence[int]) -> None:
        """Make the output channels that read input channels ``idxs`` all-zero (shapes unchanged)."""
        ...

    def zero_outputs(self, idxs: Sequence[int]) -> None:
        """Make output channels ``idxs`` all-zero (shapes unchanged)."""
        ...

    def arch_entry(self) -> dict[str, Any]:
        """The layer's configuration as plain JSON values (without the ``"type"`` key)."""
        ...

    def load_arch_entry(self, entry: Mapping[str, Any]) -> None:
        """Resize the layer in place to the configuration ``entry`` written by :meth:`arch_entry`."""
        ...


#: ``{module class: implements the protocol}``, filled by :func:`is_channel_mapping`.
_IMPLEMENTS: dict[type, bool] = {}


def is_channel_mapping(module: object) -> bool:
    """``isinstance(module, ChannelMappingLayer)``, decided once per class.

    A runtime-checkable protocol's ``isinstance`` looks up every protocol method on every call; the
    surgery asks it for every module of every group, which made it a measurable share of a trace.
    """
    cls = type(module)
    found = _IMPLEMENTS.get(cls)
    if found is None:
        found = _IMPLEMENTS[cls] = isinstance(module, ChannelMappingLayer)
    return found


def channel_mapping_types(model: nn.Module) -> list[type[nn.Module]]:
    """The distinct module types of ``model`` that implement :class:`ChannelMappingLayer`, in module order."""
    found: dict[type[nn.Module], None] = {}
    for module in model.modules():
        if is_channel_mapping(module):
            found.setdefault(type(module))
    return list(found)
