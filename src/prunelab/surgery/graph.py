"""Channel groups of a CNN, found through Torch-Pruning's dependency graph (Fang et al., CVPR 2023).

Removing an output channel of one layer forces the removal of the matching channels of every layer
that shares it: the following BatchNorm, the input channels of consumers, every branch of a residual
addition, the offset position inside a concatenation, the matching filter of a depthwise convolution,
and the ``C·H·W`` inputs of a Linear head after a flatten. DepGraph (G. Fang, X. Ma, M. Song, M. B. Mi
and X. Wang, *DepGraph: Towards Any Structural Pruning*, CVPR 2023) finds these couplings by tracing
one forward pass. This module wraps it behind a narrow interface of our own: a :class:`ChannelGraph`
lists :class:`ChannelGroup` objects, each naming its member layers and, for every member, which
member channel each group channel maps to. Nothing outside :mod:`prunelab.surgery` touches
Torch-Pruning objects.

Layers that map channels by a fixed map, such as the option-A shortcut of the CIFAR ResNets (an index
map), cannot be traced through by Torch-Pruning. Surgery recognises them by the channel-mapping protocol
(:class:`~prunelab.surgery.layers.ChannelMappingLayer`) and registers :class:`ShortcutPruner` for each
such module type found in the model: their input and output channels are pruned independently (like a
parameter-free 1×1 selection conv).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunelab.errors import UnsupportedModelError
from prunelab.surgery.layers import ChannelMappingLayer, channel_mapping_types

__all__ = ["ChannelGraph", "ChannelGroup", "GroupMember", "ShortcutPruner"]


class ShortcutPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning handler for channel-mapping layers: inputs and outputs are pruned independently.

    Registered for every module type of the traced model that implements
    :class:`~prunelab.surgery.layers.ChannelMappingLayer`.
    """

    TARGET_MODULES = ChannelMappingLayer

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove output channels ``idxs`` of the layer."""
        _mapping(layer).prune_outputs(list(idxs))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove input channels ``idxs`` of the layer (outputs that read them become zero)."""
        _mapping(layer).prune_inputs(list(idxs))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        """Output channels of the layer."""
        return int(_mapping(layer).channel_counts()[1])

    def get_in_channels(self, layer: nn.Module) -> int:
        """Input channels of the layer."""
        return int(_mapping(layer).channel_counts()[0])


def _mapping(layer: nn.Module) -> ChannelMappingLayer:
    """``layer`` as a channel-mapping layer (Torch-Pruning only hands this pruner such layers)."""
    assert isinstance(layer, ChannelMappingLayer)
    return layer


@dataclass
class GroupMember:
    """One layer touched by a channel group.

    Attributes:
        name: qualified module name.
        kind: ``Conv2d``, ``DepthwiseConv2d``, ``Linear``, ``BatchNorm2d``, ``BatchNorm1d``, or the class
            name of a channel-mapping layer (e.g. ``PadShortcut``).
        role: ``"out"`` (output channels / features / BN channels) or ``"in"`` (input channels).
        pairs: ``(group channel, member index)`` pairs; a group channel may map to several member
            indices (a flatten into a Linear maps one channel to ``H·W`` inputs).
        channel_map: whether the layer is a :class:`~prunelab.surgery.layers.ChannelMappingLayer`.
    """

    name: str
    kind: str
    role: str
    pairs: list[tuple[int, int]]
    channel_map: bool = False

    def indices(self, channels: Sequence[int]) -> list[int]:
        """Member indices of the given group channels."""
        wanted = {int(c) for c in channels}
        return sorted({i for c, i in self.pairs if c in wanted})


@dataclass
class ChannelGroup:
    """A set of channels that can only be removed together.

    Attributes:
        name: the root layer (the first layer, in module order, whose output channels are the group).
        size: number of channels.
        members: every layer the group touches.
        coupling: ``"plain"``, ``"residual"`` (several producers summed), ``"concat"`` (offset into a
            concatenation), ``"depthwise"`` (passes through a depthwise conv) — possibly several,
            joined by ``+``.
    """

    name: str
    size: int
    members: list[GroupMember] = field(default_factory=list)
    coupling: str = "plain"

    def bns(self) -> list[GroupMember]:
        """The BatchNorm members (their scale γ is the network-slimming score)."""
        return [m for m in self.members if m.kind.startswith("BatchNorm")]

    def producers(self) -> list[GroupMember]:
        """Conv/Linear members whose output channels are the group."""
        return [m for m in self.members if m.role == "out" and m.kind in ("Conv2d", "Linear")]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (used by the prunability report)."""
        return {
            "name": self.name,
            "channels": self.size,
            "coupling": self.coupling,
            "producers": [m.name for m in self.producers()],
            "batchnorms": [m.name for m in self.bns()],
            "consumers": [m.name for m in self.members if m.role == "in"],
            "depthwise": [m.name for m in self.members if m.kind == "DepthwiseConv2d"],
            "shortcuts": [m.name for m in self.members if m.channel_map],
        }


#: The layers the surgery can resize: the standard ones, and any layer implementing the protocol.
_KNOWN_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, ChannelMappingLayer)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        if module.groups == module.in_channels == module.out_channels:
            return "DepthwiseConv2d"
        return "GroupedConv2d"
    return type(module).__name__


class ChannelGraph:
    """The channel groups of ``model`` (traced once on a zero batch of ``input_shape``).

    Args:
        model: the network (not modified by building the graph).
        input_shape: ``(C, H, W)`` of one input.
        exclude: module names whose output channels must stay (the classifier head is always
            excluded: its outputs are the classes).
        head: the classifier head's module name; ``None`` = found from the graph (the last layer with
            weights producing the output, :func:`~prunelab.core.targets.find_head`). Kept as
            :attr:`head`.

    Raises:
        UnsupportedModelError: for a layer type the surgery cannot resize (named, with the fix).
        ConfigError: ``head`` is not a layer of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        exclude: Sequence[str] = (),
        *,
        head: str | None = None,
    ) -> None:
        from prunelab.core.targets import find_head

        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self._names = {m: n for n, m in model.named_modules()}
        for name, module in model.named_modules():
            has_params = any(True for _ in module.parameters(recurse=False))
            if has_params and not isinstance(module, _KNOWN_LEAVES):
                raise UnsupportedModelError(
                    f"layer {name!r} ({type(module).__name__}) has parameters the channel surgery cannot resize; "
                    "use Conv2d/Linear/BatchNorm layers or exclude the model from structured pruning"
                )
            if _kind(module) == "GroupedConv2d":
                raise UnsupportedModelError(
                    f"layer {name!r} is a grouped conv (groups={module.groups}) that is not depthwise; "  # type: ignore[union-attr]
                    "only groups=1 and depthwise convs are supported by the channel surgery"
                )
        self.head = find_head(model, self.input_shape, head)
        self.excluded: dict[str, str] = {self.head: "classifier head: its outputs are the classes"}
        for name in exclude:
            self.excluded.setdefault(name, "excluded by the caller")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        example = torch.zeros(1, *self.input_shape, device=device)
        self.dg = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example,
            customized_pruners=dict.fromkeys(channel_mapping_types(model), ShortcutPruner()),
        )
        model.train(was_training)
        ignored = [model.get_submodule(n) for n in self.excluded]
        self.groups: list[ChannelGroup] = []
        self._roots: dict[str, nn.Module] = {}
        for group in self.dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
            parsed = self._parse(group)
            if parsed is not None:
                self.groups.append(parsed)
        order = {n: i for i, n in enumerate(self._names.values())}
        self.groups.sort(key=lambda g: order[g.name])
        self.by_name = {g.name: g for g in self.groups}

    def _parse(self, group: Any) -> ChannelGroup | None:
        members: dict[tuple[str, str], GroupMember] = {}
        root_module = group[0].dep.target.module
        root_name = self._names[root_module]
        adds = concat = False
        out_producers = 0
        for item in group.items:
            module = item.dep.target.module
            type_name = type(module).__name__
            if "ElementWise" in type_name and "add" in str(getattr(module, "_grad_fn", "")).lower():
                adds = True
            if "Concat" in type_name:
                concat = True
            if (
                not isinstance(module, nn.Module)
                or module not in self._names
                or not isinstance(module, _KNOWN_LEAVES)
            ):
                continue
            name = self._names[module]
            role = "out" if self.dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
            kind = _kind(module)
            if kind.startswith("BatchNorm") or kind == "DepthwiseConv2d":
                role = "out"  # one channel dimension: in and out are the same
            channel_map = isinstance(module, ChannelMappingLayer)
            if role == "out" and (kind in ("Conv2d", "Linear") or channel_map):
                out_producers += 1
            key = (name, role)
            pairs = list(zip((int(r) for r in item.root_idxs), (int(i) for i in item.idxs), strict=True))
            if key in members:
                members[key].pairs = sorted(set(members[key].pairs) | set(pairs))
            else:
                members[key] = GroupMember(name, kind, role, sorted(pairs), channel_map)
        # The first producer in module order names the group (stable across rebuilds).
        order = {n: i for i, n in enumerate(self._names.values())}
        producers = [m for m in members.values() if m.role == "out" and m.kind in ("Conv2d", "Linear")]
        if not producers:
            return None
        name = min((m.name for m in producers), key=lambda n: order[n])
        coupling = []
        if adds or out_producers > 1:
            coupling.append("residual")
        if concat:
            coupling.append("concat")
        if any(m.kind == "DepthwiseConv2d" for m in members.values()):
            coupling.append("depthwise")
        size = len(group[0].idxs)
        if name != root_name:
            # Re-express the pairs relative to the named producer's channel order.
            named = next(m for m in producers if m.name == name)
            to_named = {r: i for r, i in named.pairs}
            for m in members.values():
                m.pairs = sorted((to_named[r], i) for r, i in m.pairs)
        self._roots[name] = self.model.get_submodule(name)
        return ChannelGroup(
            name,
            size,
            sorted(members.values(), key=lambda m: (order[m.name], m.role)),
            "+".join(coupling) or "plain",
        )

    def prune(self, name: str, channels: Sequence[int]) -> None:
        """Physically remove ``channels`` (indices in the group's current channel order) of group ``name``."""
        if not channels:
            return
        root = self._roots[name]
        fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        group = self.dg.get_pruning_group(root, fn, sorted(int(c) for c in channels))
        group.prune()

    def report(self) -> dict[str, Any]:
        """The prunability report: coupled groups, excluded layers and why, layers in no group."""
        grouped = {m.name for g in self.groups for m in g.members}
        untouched = []
        for name, module in self.model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in grouped:
                untouched.append(name)
        excluded = dict(self.excluded)
        for name in untouched:
            excluded.setdefault(name, "no prunable output channels (only coupled to the input or the head)")
        no_bn = [g.name for g in self.groups if not g.bns()]
        return {
            "groups": [g.to_dict() for g in self.groups],
            "excluded": excluded,
            "groups_without_batchnorm": no_bn,
            "notes": {
                name: "BN-scale criteria cannot score this group (no BatchNorm); L1-filter can"
                for name in no_bn
            },
            "channels_total": sum(g.size for g in self.groups),
        }
