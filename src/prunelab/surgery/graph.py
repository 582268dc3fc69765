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
parameter-free 1×1 selection conv), or together when the layer sets ``couples_channels = True``.

What the graph reaches, the adapter reaches: ordinary, grouped and depthwise convolutions, transposed
convolutions, Linear layers (also over channels-last tensors), BatchNorm (and its subclasses, e.g. timm's
``BatchNormAct2d``), LayerNorm/GroupNorm over channels, PReLU, bare ``nn.Parameter`` s used in
``forward`` (pruned along the channel dimension Torch-Pruning infers), concatenations, residual
additions, a flatten into a Linear, models with several inputs (a tuple or dict of example inputs) and
several outputs (every output layer keeps its outputs). Grouped convolutions and GroupNorm constrain a
group: its channels can only be removed in *periodic* sets — the same position in each of the
:attr:`ChannelGroup.divisions` blocks — so every conv group or norm group keeps the same width.
A model Torch-Pruning cannot trace, and a layer type it couples but the surgery cannot verify
(embeddings, recurrent and attention layers), give a one-line :class:`~prunelab.errors.UnsupportedModelError`.

Torch-Pruning's search for the channels coupled to one layer can fail to end: on timm's ``rexnet_100``
(a residual added to a slice of the channels, then concatenated with the rest) it keeps revisiting the
same layers with new channel indices, and its group grows without bound (20,000 entries after 25 s,
each check scanning the whole group). Every search here is bounded (:func:`_bounded_search`): one that
adds more than :data:`SEARCH_BUDGET_PER_NODE` entries per graph node (the largest group of the 27 other zoo
models needs 1.6) is stopped, its layer and every layer it had reached keep their channels, recorded in
:attr:`ChannelGraph.refused` with the reason, and the other groups are found as usual. Around the same
constructs a search can end with a mapping that cannot be right (a channel mapped past the end of a layer,
or channels no layer produces: ``ghostnet_100``, ``mixnet_s``); such a group is refused the same way when
it is parsed (``ChannelGraph._mismatch``), before any removal is tried.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
import torch_pruning.dependency.graph as tp_graph
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from prunelab.core.inputs import ExampleInputs, as_call, is_shape
from prunelab.core.masking import require_real_weights
from prunelab.core.modules import eval_mode
from prunelab.core.targets import check_head_name, output_layers
from prunelab.errors import PrunelabError, UnsupportedModelError
from prunelab.surgery.layers import ChannelMappingLayer, channel_mapping_types, is_channel_mapping

__all__ = [
    "PRODUCER_KINDS",
    "ChannelGraph",
    "ChannelGroup",
    "CoupledShortcutPruner",
    "GroupMember",
    "ShortcutPruner",
]


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


class CoupledShortcutPruner(ShortcutPruner):
    """Torch-Pruning handler for channel-mapping layers with ``couples_channels = True``.

    Input channel ``i`` is output channel ``i`` (a per-channel layer, like BatchNorm): removing one
    removes both, so the graph couples the layer's input and output groups.
    """

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove channels ``idxs``: one call of ``prune_outputs`` (input ``i`` is output ``i``)."""
        _mapping(layer).prune_outputs(list(idxs))
        return layer

    prune_in_channels = prune_out_channels


def _mapping(layer: nn.Module) -> ChannelMappingLayer:
    """``layer`` as a channel-mapping layer (Torch-Pruning only hands this pruner such layers)."""
    assert isinstance(layer, ChannelMappingLayer)
    return layer


@dataclass
class GroupMember:
    """One layer touched by a channel group.

    Attributes:
        name: qualified module name (for a bare parameter: the parameter's qualified name).
        kind: the layer's class name (``Conv2d``, ``ConvTranspose2d``, ``Linear``, ``BatchNorm2d``,
            ``BatchNormAct2d``, ``LayerNorm``, ``GroupNorm``, ``PReLU``, a channel-mapping layer's class),
            ``DepthwiseConv2d`` / ``GroupedConv2d`` for a ``Conv2d`` with ``groups > 1``, ``Parameter``
            for a bare parameter.
        role: ``"out"`` (output channels / features / per-channel entries) or ``"in"`` (input channels).
        pairs: ``(group channel, member index)`` pairs; a group channel may map to several member
            indices (a flatten into a Linear maps one channel to ``H·W`` inputs).
        channel_map: whether the layer is a :class:`~prunelab.surgery.layers.ChannelMappingLayer`.
        dim: for a bare parameter, the dimension its entries are removed along.
    """

    name: str
    kind: str
    role: str
    pairs: list[tuple[int, int]]
    channel_map: bool = False
    dim: int | None = None
    _indices: dict[tuple[int, ...], list[int]] = field(default_factory=dict, repr=False, compare=False)

    def indices(self, channels: Sequence[int]) -> list[int]:
        """Member indices of the given group channels (a fresh list)."""
        # One surgery asks each member for the same channels several times (zeroing, observation, the
        # short-path proof): computed once per set of channels.
        key = tuple(int(c) for c in channels)
        found = self._indices.get(key)
        if found is None:
            wanted = set(key)
            found = self._indices[key] = sorted({i for c, i in self.pairs if c in wanted})
        return list(found)


@dataclass
class ChannelGroup:
    """A set of channels that can only be removed together.

    Attributes:
        name: the root layer (the first layer, in module order, whose output channels are the group).
        size: number of channels.
        members: every layer the group touches.
        coupling: ``"plain"``, ``"residual"`` (several producers summed), ``"concat"`` (offset into a
            concatenation), ``"depthwise"`` (passes through a depthwise conv), ``"grouped"`` (a grouped
            conv or GroupNorm), ``"norm"`` (a LayerNorm/GroupNorm over the channels) — possibly several,
            joined by ``+``.
        divisions: the channels form ``divisions`` equal blocks (a grouped conv's or GroupNorm's
            groups) and can only be removed in periodic sets: channel ``p`` of one block together with
            channel ``p`` of every other block (1 = no constraint).
    """

    name: str
    size: int
    members: list[GroupMember] = field(default_factory=list)
    coupling: str = "plain"
    divisions: int = 1

    def bns(self) -> list[GroupMember]:
        """The BatchNorm members (their scale γ is the network-slimming score)."""
        return [m for m in self.members if m.kind.startswith("BatchNorm")]

    def producers(self) -> list[GroupMember]:
        """Conv/Linear members whose output channels are the group (:data:`PRODUCER_KINDS`)."""
        return [m for m in self.members if m.role == "out" and m.kind in PRODUCER_KINDS]

    def periodic_keep(self, keep: Any) -> Any:
        """A keep mask made removable: a position is kept in every block if any block keeps it."""
        if self.divisions == 1:
            return keep
        return keep.reshape(self.divisions, -1).any(dim=0).repeat(self.divisions)

    def periodic(self, positions: Sequence[int]) -> list[int]:
        """The group channels of block positions ``positions`` in every one of the :attr:`divisions` blocks."""
        block = self.size // self.divisions
        return sorted(int(p) + b * block for b in range(self.divisions) for p in positions)

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
            "divisions": self.divisions,
        }


#: Member kinds whose output channels a group is made of (the layers that produce the channels).
PRODUCER_KINDS = frozenset(
    {"Conv2d", "GroupedConv2d", "ConvTranspose2d", "Conv1d", "ConvTranspose1d", "Linear"}
)

#: Module types whose output channels root a group.
PRODUCER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

#: Layer types the graph may couple that the surgery cannot verify or resize (not CNN channel layers).
_REFUSED_TYPES = (nn.Embedding, nn.EmbeddingBag, nn.RNNBase, nn.MultiheadAttention)

#: Norms whose statistics run over the channels: removing a channel changes the others' outputs.
CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Parameter):
        return "Parameter"
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        if module.groups == module.in_channels == module.out_channels:
            return "DepthwiseConv2d"
        return "GroupedConv2d"
    return type(module).__name__


def _owner(member: GroupMember) -> str:
    """The module a member belongs to (a bare parameter's owner module)."""
    return member.name.rpartition(".")[0] if member.kind == "Parameter" else member.name


def _construct(exc: BaseException) -> str:
    """The graph construct a Torch-Pruning failure happened in, from the innermost frame's function name."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1].name.lower() if frames else ""
    for key, what in (
        ("reshape", "a reshape/view over the channels (e.g. a channel shuffle)"),
        ("split", "a split of the channels"),
        ("slice", "a slice of the channels"),
        ("concat", "a concatenation"),
        ("unbind", "an unbind over the channels"),
    ):
        if key in where:
            return f" at {what}"
    return ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _require_real_weights(model: nn.Module) -> None:
    """:func:`~prunelab.core.masking.require_real_weights` for the graph, screened by one sum per tensor.

    A NaN or inf entry makes its tensor's sum NaN or inf, so a finite sum of every floating tensor (and
    no meta tensor) proves the weights real, at a fraction of the cost of an element-wise ``isfinite``
    (a quarter of a second on vgg19's 20 M weights, one thread). Only a tensor failing the screen (a NaN,
    an inf, or finite values whose sum overflows) pays for the exact check, which gives the message.
    """
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        require_real_weights(model, "ChannelGraph")
        return
    sums: dict[torch.device, list[Tensor]] = {}
    for tensor in tensors:
        if tensor.is_floating_point():
            sums.setdefault(tensor.device, []).append(tensor.detach().sum().float())
    # One read of the result per device, not one per tensor (each read waits for the device).
    if not all(bool(torch.stack(group).isfinite().all()) for group in sums.values()):
        require_real_weights(model, "ChannelGraph")


def _tp_input(model: nn.Module, example: ExampleInputs) -> Any:
    """Example inputs in the form Torch-Pruning calls the model with (a tensor, a tuple, or a dict)."""
    args, kwargs = as_call(example, model)
    if kwargs:
        return kwargs
    return args[0] if len(args) == 1 else args


#: A channel-group search that adds more than this many entries per node of the dependency graph (and
#: more than :data:`SEARCH_BUDGET_FLOOR`) is taken not to end. The largest group of the 27 other zoo models and
#: 22 constructs needs 1.6 per node (timm's repvgg_a0: 276 entries, 170 nodes); the search that does not
#: end (timm's rexnet_100) passes 8 per node in about 0.3 s, against 25 s for 20,000 entries.
SEARCH_BUDGET_PER_NODE = 8
SEARCH_BUDGET_FLOOR = 1000


class _RunawaySearch(Exception):
    """Torch-Pruning's search from ``root`` added more than ``budget`` entries to its group."""

    def __init__(self, root: Any, reached: list[Any], budget: int) -> None:
        super().__init__(f"channel-group search passed {budget} entries")
        self.root = root
        self.reached = reached  # the modules whose output channels the search had coupled to ``root``
        self.budget = budget


@contextlib.contextmanager
def _bounded_search(dg: Any, per_node: int = SEARCH_BUDGET_PER_NODE) -> Any:
    """Inside, every channel-group search of ``dg`` raises :class:`_RunawaySearch` past its budget:
    ``per_node`` entries per node of ``dg`` (at least :data:`SEARCH_BUDGET_FLOOR`).

    Torch-Pruning's ``get_pruning_group`` collects a group by appending every dependency it reaches to a
    fresh ``Group`` (``add_dep``), each time after a scan of the whole group, so a search that does not end
    also slows down quadratically. The class it instantiates is swapped, for the duration, for a subclass
    that counts its entries; this bounds the search without re-implementing it. Torch-Pruning used from
    another thread at the same time would see the subclass too (prunelab builds its graphs on one thread).
    torch-pruning is pinned to the version whose ``get_pruning_group`` this relies on
    (``tests/test_surgery.py`` and ``tests/zoo/test_constructs.py`` check the bound and the restore).
    Yields the budget.
    """
    budget = max(SEARCH_BUDGET_FLOOR, per_node * len(dg.module2node))
    base = tp_graph.Group

    class BoundedGroup(base):  # type: ignore[misc, valid-type]
        def add_dep(self, dep: Any, idxs: Any) -> None:
            entries = self.__dict__.setdefault("_entries", [])
            entries.append(dep)
            if len(entries) > budget:
                reached = [d.target.module for d in entries if dg.is_out_channel_pruning_fn(d.handler)]
                raise _RunawaySearch(entries[0].target.module, reached, budget)
            super().add_dep(dep, idxs)

    tp_graph.Group = BoundedGroup
    try:
        yield budget
    finally:
        tp_graph.Group = base


def _trace(model: nn.Module, example: ExampleInputs, pruners: dict[type, Any]) -> tuple[Any, list[str]]:
    """Torch-Pruning's dependency graph of ``model`` and its output layers, from one forward pass.

    The pass serves Torch-Pruning's trace and the output-layer (head) search
    (:func:`~prunelab.core.targets.output_layers`): the search runs the model under Torch-Pruning's hooks,
    and its output is what Torch-Pruning traces back. Both read only the autograd graph and the tensors'
    channel and spatial sizes, never values, so for a shape the pass runs on an *empty* batch: the same
    graph for the cost of the Python dispatch, without the arithmetic (vgg19 at 3×32×32: 1.5 ms instead
    of 37 ms, one thread). A model that cannot run on an empty batch (a ``view`` over the batch size, a
    batch statistic, a data-dependent branch that fails) is traced on the usual zero batch of one; its
    errors there are the ones reported.
    """
    if is_shape(example):
        # Whatever fails on the empty batch is retried as the caller asked, whose errors are the ones reported.
        with contextlib.suppress(Exception), _EmptyBatchNorm():
            return _trace_once(model, as_call(example, model, batch=0)[0][0], pruners)
    return _trace_once(model, example, pruners)


def call_arguments(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{parameter name: value}`` of a call ``func(*args, **kwargs)``, defaults filled in.

    For the ``TorchFunctionMode`` overrides of the surgery, which see a ``torch.nn.functional`` call as the
    caller wrote it (positionally or by keyword) and read its arguments by name.
    """
    bound = _signature(func).bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    return bound.arguments


@functools.cache
def _signature(func: Any) -> inspect.Signature:
    return inspect.signature(func)


class _EmptyBatchNorm(TorchFunctionMode):
    """Inside it, an eval-mode batch norm of an empty batch is the one ATen kernel it is on a real batch.

    On an empty input, ``F.batch_norm`` computes ``clone · γ[0] + β[0]`` instead (four autograd nodes
    where a real batch has one), so Torch-Pruning's graph would carry four more element-wise nodes per
    norm: the same groups, at about twice the graph work on a ResNet-56. ``native_batch_norm`` gives the
    real batch's single node.
    """

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        if func is F.batch_norm:
            a = call_arguments(func, args, kwargs)
            x = a["input"]
            if x.numel() == 0 and not a["training"] and a["running_mean"] is not None:
                return torch.ops.aten.native_batch_norm(
                    x,
                    a["weight"],
                    a["bias"],
                    a["running_mean"],
                    a["running_var"],
                    False,
                    float(a["momentum"]),
                    float(a["eps"]),
                )[0]
        return func(*args, **(kwargs or {}))


def _trace_once(model: nn.Module, inputs: ExampleInputs, pruners: dict[type, Any]) -> tuple[Any, list[str]]:
    outputs: list[str] = []

    def forward(traced: nn.Module, _inputs: Any) -> Any:
        result: list[Any] = []
        handle = traced.register_forward_hook(lambda _m, _a, out: result.append(out))
        try:
            outputs.extend(output_layers(traced, inputs))
        finally:
            handle.remove()
        return result[0]

    # Torch-Pruning removes its recording hooks only after a pass that succeeds: on a failure, take them
    # off here, so that neither the caller's model nor the retry on a batch of one carries them.
    hooks = {m: set(m._forward_hooks) for m in model.modules()}
    try:
        dg = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=_tp_input(model, inputs),
            forward_fn=forward,
            customized_pruners=pruners,
            verbose=False,
        )
    except BaseException:
        for module, keep in hooks.items():
            for key in set(module._forward_hooks) - keep:
                del module._forward_hooks[key]
        raise
    return dg, outputs


class ChannelGraph:
    """The channel groups of ``model``, traced once on its example inputs.

    One forward pass: Torch-Pruning's trace runs the output-layer (head) search's pass
    (:func:`~prunelab.core.targets.output_layers`), so both see the same call.

    Args:
        model: the network (not modified by building the graph).
        example_inputs: what the model is called with (:mod:`prunelab.core.inputs`): a tensor, a tuple
            of tensors, a dict of keyword tensors, or the shape ``(C, H, W)`` of one input (an empty
            batch of that shape is traced, or a zero batch of one where the model cannot run on an empty
            one: see :func:`_trace`).
        exclude: module names whose output channels must stay (the classifier head and every other
            layer producing a model output are always excluded).
        head: the classifier head's module name; ``None`` = found from the graph (the last layer with
            weights producing the first output, :func:`~prunelab.core.targets.find_head`). Kept as
            :attr:`head`.

    Attributes:
        groups: the prunable :class:`ChannelGroup` s, in module order; :attr:`by_name` maps names to them.
        excluded: ``{module name: why its output channels stay}``.
        refused: ``{group name: why its channels cannot be removed}`` — groups the surgery found it
            cannot remove (see :meth:`refuse`); they are no longer in :attr:`groups`.

    Raises:
        UnsupportedModelError: Torch-Pruning cannot trace the model, a layer type it couples is not a
            CNN channel layer (named, with the fix), or the model has no real weights (meta device, NaN/inf).
        ConfigError: ``head`` is not a layer of ``model``; the model cannot run on ``example_inputs``.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        exclude: Sequence[str] = (),
        *,
        head: str | None = None,
    ) -> None:
        # A meta model traces, but every group built from it would be useless: refuse it here, first.
        _require_real_weights(model)
        self.model = model
        self.example_inputs = example_inputs
        self._names = {m: n for n, m in model.named_modules()}
        self._order = {n: i for i, n in enumerate(self._names.values())}  # module order, by name
        self._param_names = {p: n for n, p in model.named_parameters()}
        for name, module in model.named_modules():
            if isinstance(module, _REFUSED_TYPES):
                raise UnsupportedModelError(
                    f"layer {name!r} is a {type(module).__name__}, which the channel surgery does not handle; "
                    "exclude it from structured pruning (exclude=[...]) or prune the model with masks"
                )
        if head is not None:
            check_head_name(model, head)
        self.refused: dict[str, str] = {}
        self._runaway: dict[str, str] = {}  # layer: the refused layer whose endless search had reached it
        pruners = {
            t: (CoupledShortcutPruner() if getattr(t, "couples_channels", False) else ShortcutPruner())
            for t in channel_mapping_types(model)
        }
        with eval_mode(model):
            try:
                self.dg, outputs = _trace(model, example_inputs, pruners)
                self.head = head if head is not None else outputs[0]
                self.excluded: dict[str, str] = {self.head: "classifier head: its outputs are the classes"}
                for name in outputs:
                    self.excluded.setdefault(
                        name, "produces a model output: its channels are part of the output"
                    )
                for name in exclude:
                    self.excluded.setdefault(name, "excluded by the caller")
                modules = dict(model.named_modules())
                raw = self._all_groups([modules[n] for n in self.excluded if n in modules])
            except PrunelabError:
                raise  # the head search's own one-line errors (the model cannot run, no layer reaches an output)
            except Exception as exc:  # noqa: BLE001 - Torch-Pruning's own failure, said in one line
                raise UnsupportedModelError(
                    f"Torch-Pruning cannot trace the channel dependencies of {type(model).__name__}"
                    f"{_construct(exc)} ({type(exc).__name__}: {_one_line(exc)}); prune it with masks "
                    "(prunelab.prune), or exclude the layers around that construct"
                ) from None
        self._ops: dict[str, list[str]] = {}
        # Per group, Torch-Pruning's handler for each module/parameter of the model it touches, with the
        # (group channel, index) pairs it removes: what :meth:`remove` replays on a copy of the model.
        self._handlers: dict[str, list[tuple[str, bool, Any, Any, list[tuple[int, int]]]]] = {}
        self.by_name: dict[str, ChannelGroup] = {}
        for group in raw:
            parsed = self._parse(group)
            if parsed is None or parsed.name in self.by_name:
                continue
            wrong = self._mismatch(parsed)
            if wrong is not None:
                self.refused[parsed.name] = wrong
                continue
            self.by_name[parsed.name] = parsed
        self.groups: list[ChannelGroup] = sorted(self.by_name.values(), key=lambda g: self._order[g.name])
        self.by_name = {g.name: g for g in self.groups}

    def _all_groups(self, ignored: list[nn.Module]) -> list[Any]:
        """Torch-Pruning's group of every producer not in ``ignored``, each search bounded.

        A search that does not end (:func:`_bounded_search`) is refused: its layer is recorded in
        :attr:`refused`, and it and the layers it had coupled to it join ``ignored`` (they share its
        channels, so a search from any of them would not end either, and a group holding one of them is
        not prunable). The enumeration then starts again; the searches that ended are quick to repeat.
        """
        ignored = list(ignored)
        with _bounded_search(self.dg) as budget:
            while True:
                try:
                    return list(
                        self.dg.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCER_TYPES)
                    )
                except _RunawaySearch as exc:
                    coupled = [
                        m for m in dict.fromkeys(exc.reached) if m in self._names and m is not exc.root
                    ]
                    ignored.extend([exc.root, *coupled])
                    root = self._names[exc.root]
                    self.refused[root] = (
                        f"Torch-Pruning's search for the channels coupled to this layer does not end (stopped "
                        f"after {budget} entries: {SEARCH_BUDGET_PER_NODE} per graph node, at least "
                        f"{SEARCH_BUDGET_FLOOR}); its channels stay"
                        + (
                            f", and so do those of the {len(coupled)} layers it had coupled to it"
                            if coupled
                            else ""
                        )
                    )
                    for module in coupled:
                        self._runaway[self._names[module]] = root

    def _mismatch(self, group: ChannelGroup) -> str | None:
        """Why Torch-Pruning's mapping of ``group`` cannot be right, or None when it is consistent.

        Two signs, both seen around slices and concatenations (timm's ``rexnet_100`` and ``ghostnet_100``):
        a channel mapped to an index past the end of a layer (the group could be neither scored nor
        removed), and a channel that no layer produces (removing it would remove nothing, so a criterion
        that ranks it first would spend the pruning budget on it).
        """
        produced: set[int] = set()
        for member in group.members:
            if not member.pairs:
                continue
            if member.role == "out":
                produced.update(c for c, _ in member.pairs)
            if member.kind == "Parameter":
                width = int(self.model.get_parameter(member.name).shape[member.dim])
            else:
                module = self.model.get_submodule(member.name)
                pruner = self.dg.get_pruner_of_module(module)
                if pruner is None:
                    continue
                width = (
                    pruner.get_out_channels(module)
                    if member.role == "out"
                    else pruner.get_in_channels(module)
                )
                if width is None:
                    continue
            top = max(i for _, i in member.pairs)
            if top >= width:
                return (
                    f"Torch-Pruning maps a channel of this group to index {top} of {member.name!r} ({member.role}put "
                    f"channels), which has {width}: a wrong channel mapping; its channels stay"
                )
        if len(produced) < group.size:
            return (
                f"Torch-Pruning maps only {len(produced)} of this group's {group.size} channels to a layer that "
                "produces them: a wrong channel mapping; its channels stay"
            )
        return None

    def _member(self, item: Any) -> tuple[str, str, str, bool, int | None] | None:
        """``(name, kind, role, channel_map, dim)`` of one Torch-Pruning group item, or None for graph ops."""
        target = item.dep.target
        module = target.module
        role = "out" if self.dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
        if isinstance(module, nn.Parameter):
            name = self._param_names.get(module)
            if name is None:
                return None
            return name, "Parameter", "out", False, int(getattr(target, "pruning_dim", -1))
        if not isinstance(module, nn.Module) or module not in self._names:
            return None
        channel_map = is_channel_mapping(module)
        owns = any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        )
        if not channel_map and not owns:
            return None
        kind = _kind(module)
        pruner = self.dg.get_pruner_of_module(module)
        single = pruner is not None and getattr(pruner.prune_in_channels, "__func__", None) is getattr(
            pruner.prune_out_channels, "__func__", 0
        )
        if single:
            role = "out"  # one channel dimension (a norm, a depthwise conv): in and out are the same
        return self._names[module], kind, role, channel_map, None

    def _parse(self, group: Any) -> ChannelGroup | None:
        members: dict[tuple[str, str], GroupMember] = {}
        adds = concat = norm = False
        out_producers = 0
        ops: list[str] = []
        divisions = 1
        handlers: list[tuple[str, bool, Any, Any, list[tuple[int, int]]]] = []
        for item in group.items:
            module = item.dep.target.module
            owner = (
                self._param_names.get(module) if isinstance(module, nn.Parameter) else self._names.get(module)
            )
            pairs: list[tuple[int, int]] = []
            if owner is not None:  # a layer or parameter of the model (not one of Torch-Pruning's graph ops)
                # (group channel, index) pairs: once per item, for model layers only (their Python cost
                # dominated the parse)
                pairs = list(zip(map(int, item.root_idxs), map(int, item.idxs), strict=True))
                handlers.append(
                    (owner, isinstance(module, nn.Parameter), item.dep.handler, item.dep.target, pairs)
                )
            type_name = type(module).__name__
            if "ElementWise" in type_name and "add" in str(getattr(module, "_grad_fn", "")).lower():
                adds = True
            if "Concat" in type_name:
                concat = True
            for op in ("Split", "Slice", "Reshape", "Unbind", "Expand"):
                if op in type_name and op.lower() not in ops:
                    ops.append(op.lower())
            parsed = self._member(item)
            if parsed is None:
                continue
            name, kind, role, channel_map, dim = parsed
            if isinstance(module, CROSS_CHANNEL_NORMS):
                norm = True
            if isinstance(module, nn.GroupNorm):
                divisions = math.lcm(divisions, int(module.num_groups))
            if (
                isinstance(module, nn.modules.conv._ConvNd)
                and module.groups > 1
                and kind != "DepthwiseConv2d"
            ):
                divisions = math.lcm(divisions, int(module.groups))  # type: ignore[union-attr]
            if role == "out" and (kind in PRODUCER_KINDS or channel_map):
                out_producers += 1
            key = (name, role)
            if key in members:
                members[key].pairs = sorted(set(members[key].pairs) | set(pairs))
            else:
                members[key] = GroupMember(name, kind, role, sorted(pairs), channel_map, dim)
        # The first producer in module order names the group (stable across rebuilds).
        order = self._order
        producers = [m for m in members.values() if m.role == "out" and m.kind in PRODUCER_KINDS]
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
        if divisions > 1:
            coupling.append("grouped")
        if norm:
            coupling.append("norm")
        size = len(group[0].idxs)
        root_name = self._names.get(group[0].dep.target.module)
        if name != root_name:
            # Re-express the pairs relative to the named producer's channel order.
            named = next(m for m in producers if m.name == name)
            to_named = {r: i for r, i in named.pairs}
            for m in members.values():
                m.pairs = sorted((to_named[r], i) for r, i in m.pairs if r in to_named)
            handlers = [
                (o, p, h, t, [(to_named[r], i) for r, i in pairs if r in to_named])
                for o, p, h, t, pairs in handlers
            ]
        if size % divisions:
            divisions = 1  # cannot happen for a traced model (each block divides the channels)
        self._ops[name] = ops
        self._handlers[name] = handlers
        return ChannelGroup(
            name,
            size,
            sorted(members.values(), key=lambda m: (order.get(_owner(m), 0), m.role)),
            "+".join(coupling) or "plain",
            divisions,
        )

    def graph_ops(self, name: str) -> list[str]:
        """The channel-remapping graph operations group ``name`` passes through (``split``, ``slice``, ``reshape``…)."""
        return list(self._ops.get(name, []))

    def refuse(self, name: str, reason: str) -> None:
        """Take group ``name`` out of the prunable groups (its channels stay), recording ``reason``."""
        group = self.by_name.pop(name, None)
        if group is not None:
            self.groups.remove(group)
        self.refused[name] = reason

    def remove(self, target: nn.Module, removed: Mapping[str, Sequence[int]]) -> None:
        """Physically remove channels from ``target``, a copy of the traced model (same module names).

        The graph and its model stay as they are, so one trace serves any number of copies. For every
        group of ``removed`` (``{group: channels}``, indices in the traced model's channel order),
        Torch-Pruning's handlers for its layers and bare parameters are applied to the same-named
        objects of ``target``; a layer reached by several groups with the same handler (a concatenation's
        consumer) is resized once, with the union of the indices, so every index stays one of the traced
        model. Torch-Pruning's own graph operations (its bookkeeping for later pruning) are not replayed:
        ``target`` is not pruned again through this graph.

        Raises:
            UnsupportedModelError: Torch-Pruning fails on a group (one line, naming it).
        """
        plan: dict[tuple[str, bool, Any], tuple[Any, set[int], list[str]]] = {}
        for name, channels in removed.items():
            wanted = {int(c) for c in channels}
            for owner, is_param, handler, node, pairs in self._handlers[name]:
                idx = {i for r, i in pairs if r in wanted}
                if idx:
                    _, acc, groups = plan.setdefault((owner, is_param, handler), (node, set(), []))
                    acc.update(idx)
                    groups.append(name)
        for (owner, is_param, handler), (node, idx, groups) in plan.items():
            try:
                # What Torch-Pruning's Dependency.__call__ does: the handler reads the node's pruning dim.
                handler.__self__.pruning_dim = node.pruning_dim
                if is_param:
                    parent, _, leaf = owner.rpartition(".")
                    holder = target.get_submodule(parent)
                    setattr(holder, leaf, handler(getattr(holder, leaf), sorted(idx)))
                else:
                    handler(target.get_submodule(owner), sorted(idx))
            except Exception as exc:  # noqa: BLE001 - Torch-Pruning's own failure, said in one line
                raise UnsupportedModelError(
                    f"Torch-Pruning cannot remove channels of group {groups[0]!r} ({type(exc).__name__}: "
                    f"{_one_line(exc)}); exclude it (exclude=[{groups[0]!r}])"
                ) from None

    def report(self) -> dict[str, Any]:
        """The prunability report: coupled groups, excluded layers and why, layers in no group, refused groups."""
        grouped = {m.name for g in self.groups for m in g.members}
        untouched = []
        for name, module in self.model.named_modules():
            if isinstance(module, PRODUCER_TYPES) and name not in grouped and name not in self.refused:
                untouched.append(name)
        excluded = dict(self.excluded)
        for name in untouched:
            if name in self._runaway:
                why = f"coupled to {self._runaway[name]!r}, whose channel-group search does not end (refused)"
            else:
                why = "no prunable output channels (only coupled to the input or the head)"
            excluded.setdefault(name, why)
        no_bn = [g.name for g in self.groups if not g.bns()]
        return {
            "groups": [g.to_dict() for g in self.groups],
            "excluded": excluded,
            "refused": dict(self.refused),
            "groups_without_batchnorm": no_bn,
            "notes": {
                name: "BN-scale criteria cannot score this group (no BatchNorm); L1-filter can"
                for name in no_bn
            },
            "channels_total": sum(g.size for g in self.groups),
        }
