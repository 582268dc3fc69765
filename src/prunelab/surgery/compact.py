"""Channel surgery: turn channel masks into a physically smaller network, verified.

``compact(model, keep, input_shape)`` removes, for every channel group of the
:class:`~prunelab.surgery.graph.ChannelGraph`, the channels whose ``keep`` entry is ``False``, and
returns the smaller network with a :class:`SurgeryReport`. Three models take part:

* the *γ-masked* model — the removed channels' BN scales set to 0, everything else untouched. This is
  what network slimming means by "pruning a channel": the channel then carries the constant
  ``act(β)`` (its BN shift) into the next layers;
* the *reference* model — after folding those constants into the consumers (see below), every member
  of every removed channel set to zero (producer filters, BN γ and β, consumer inputs, shortcut
  entries): removing such a channel cannot change any output;
* the *compacted* model — Torch-Pruning's physical removal on the folded model.

Verification: the compacted model must reproduce the reference on a batch to ``tolerance`` (max
absolute output difference); otherwise :class:`SurgeryMismatchError` is raised — a wrong model is
never returned silently.

Shift folding: a removed channel that enters a consumer as a constant ``c`` contributes
``c · Σ_spatial W[:, i]`` to each output. For a Linear layer or a convolution without padding that
is a constant per output, folded exactly into the consumer's bias (a bias is added if it had none).
With zero padding, border outputs see fewer copies of ``c``, so the fold is only exact in the
interior: it is still applied (the better approximation) and reported as inexact, with the resulting
difference to the γ-masked model measured (``shift_max_abs_diff``). Channels that are not constant at
the consumer (e.g. a residual stream that also carries kept channels) are not folded and are reported.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import ConfigError, PrunelabError
from prunelab.surgery.graph import ChannelGraph, ChannelGroup
from prunelab.surgery.layers import ChannelMappingLayer

__all__ = ["SurgeryMismatchError", "SurgeryReport", "check_equivalence", "compact", "zero_channels"]

#: Maximum absolute output difference accepted between the compacted and the reference model.
DEFAULT_TOLERANCE = 1e-4


class SurgeryMismatchError(PrunelabError):
    """The compacted network does not reproduce the masked one (a surgery bug, never silently accepted)."""


@dataclass
class SurgeryReport:
    """What one surgery did and how it was verified.

    Attributes:
        channels_before: prunable channels before.
        channels_removed: channels removed.
        groups: ``{group: [channels before, channels after]}``.
        max_abs_diff: max |compacted − reference| on the verification batch.
        tolerance: the accepted maximum.
        folds_exact: consumers whose constant inputs were folded exactly.
        folds_inexact: ``{consumer: reason}`` where folding is approximate or impossible.
        shift_max_abs_diff: max |compacted − γ-masked| (the effect of the inexact folds; ~0 when all
            folds are exact).
    """

    channels_before: int
    channels_removed: int
    groups: dict[str, list[int]]
    max_abs_diff: float
    tolerance: float
    folds_exact: list[str] = field(default_factory=list)
    folds_inexact: dict[str, str] = field(default_factory=dict)
    shift_max_abs_diff: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (goes into ``summary.json``)."""
        return {
            "channels_before": self.channels_before,
            "channels_removed": self.channels_removed,
            "groups": self.groups,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "folds_exact": self.folds_exact,
            "folds_inexact": self.folds_inexact,
            "shift_max_abs_diff": self.shift_max_abs_diff,
        }


def _removed(graph: ChannelGraph, keep: Mapping[str, Tensor], min_keep: int = 1) -> dict[str, list[int]]:
    removed: dict[str, list[int]] = {}
    for name, mask in keep.items():
        if name not in graph.by_name:
            raise ConfigError(
                f"channel mask for {name!r}: no such prunable group; see the prunability report"
            )
        group = graph.by_name[name]
        mask = torch.as_tensor(mask).bool().flatten()
        if mask.numel() != group.size:
            raise ConfigError(
                f"channel mask for {name!r} has {mask.numel()} entries, the group has {group.size}"
            )
        if int(mask.sum()) < min(min_keep, group.size):
            raise ConfigError(
                f"channel mask for {name!r} keeps {int(mask.sum())} channels; keep at least {min_keep}"
            )
        gone = torch.nonzero(~mask).flatten().tolist()
        if gone:
            removed[name] = gone
    return removed


@torch.no_grad()
def zero_channels(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    removed: Mapping[str, Sequence[int]],
    *,
    keep_shift: bool = False,
) -> None:
    """Mask channels in place, without changing shapes.

    Args:
        model: a model with the same module names as the one the groups were traced on.
        groups: the channel groups.
        removed: ``{group: channels to mask}``.
        keep_shift: ``True`` gives the γ-masked model (producers' filters and BN γ zeroed, BN β kept);
            ``False`` zeroes every member entry so that the channel is exactly 0 everywhere.
    """
    by_name = {g.name: g for g in groups}
    for name, channels in removed.items():
        for member in by_name[name].members:
            idx = member.indices(channels)
            if not idx:
                continue
            module = model.get_submodule(member.name)
            ix = torch.tensor(idx, dtype=torch.long)
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.weight[ix] = 0.0
                if not keep_shift:
                    module.bias[ix] = 0.0
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                if member.role == "out":
                    module.weight[ix] = 0.0
                    if module.bias is not None and not keep_shift:
                        module.bias[ix] = 0.0
                elif not keep_shift:
                    module.weight[:, ix] = 0.0
            elif isinstance(module, ChannelMappingLayer) and not keep_shift:
                if member.role == "out":
                    module.zero_outputs(idx)
                else:
                    module.zero_inputs(idx)


def _batch(input_shape: Sequence[int], batch: Tensor | None, device: torch.device) -> Tensor:
    if batch is not None:
        return batch.to(device)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, *input_shape, generator=gen).to(device)


@torch.no_grad()
def _fold_shifts(
    work: nn.Module,
    masked: nn.Module,
    groups: Sequence[ChannelGroup],
    removed: Mapping[str, Sequence[int]],
    x: Tensor,
) -> tuple[list[str], dict[str, str]]:
    # Consumer inputs of removed channels, observed on the γ-masked model.
    wanted: dict[str, list[int]] = {}
    by_name = {g.name: g for g in groups}
    for name, channels in removed.items():
        for member in by_name[name].members:
            if member.role == "in" and member.kind in ("Conv2d", "Linear"):
                wanted.setdefault(member.name, []).extend(member.indices(channels))
    seen: dict[str, Tensor] = {}
    handles = []
    for name in wanted:

        def hook(_m: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            seen[name] = args[0].detach()

        handles.append(masked.get_submodule(name).register_forward_pre_hook(hook))
    try:
        masked(x)
    finally:
        for h in handles:
            h.remove()
    exact: list[str] = []
    inexact: dict[str, str] = {}
    for name, idx in wanted.items():
        idx = sorted(set(idx))
        inp = seen[name][:, idx]
        flat = inp.transpose(0, 1).reshape(len(idx), -1)
        const = flat.mean(dim=1)
        spread = (flat - const[:, None]).abs().amax() if flat.numel() else torch.tensor(0.0)
        if float(spread) > 1e-5 * (1.0 + float(const.abs().max())):
            inexact[name] = (
                "removed channels are not constant here (residual stream with kept channels); not folded"
            )
            continue
        if float(const.abs().max()) == 0.0:
            continue
        layer = work.get_submodule(name)
        ix = torch.tensor(idx, dtype=torch.long)
        if isinstance(layer, nn.Linear):
            delta = layer.weight[:, ix] @ const
            padded = False
        else:
            assert isinstance(layer, nn.Conv2d)
            delta = torch.einsum("oikl,i->o", layer.weight[:, ix], const)
            padded = any(int(p) > 0 for p in layer.padding) if not isinstance(layer.padding, str) else True
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(delta))
        layer.bias += delta
        if padded:
            inexact[name] = (
                f"zero padding: BN shift of {len(idx)} removed channels (max |shift| {float(const.abs().max()):.3g}) "
                "folded into the bias, exact only away from the border"
            )
        else:
            exact.append(name)
    return exact, inexact


def check_equivalence(
    reference: nn.Module, candidate: nn.Module, x: Tensor, tolerance: float = DEFAULT_TOLERANCE
) -> float:
    """Max absolute output difference of two models on ``x`` (eval mode).

    Raises:
        SurgeryMismatchError: if the difference exceeds ``tolerance``.
    """
    modes = (reference.training, candidate.training)
    reference.eval()
    candidate.eval()
    # TF32 convolutions/matmuls (cuDNN's default on Ampere+ GPUs) round to ~1e-3, and the two models
    # accumulate in different orders: compare in full float32 so that only a real mismatch fails.
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            diff = float((reference(x) - candidate(x)).abs().max())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    reference.train(modes[0])
    candidate.train(modes[1])
    if not diff <= tolerance:
        raise SurgeryMismatchError(
            f"compacted model differs from the masked model by {diff:.3g} > tolerance {tolerance:g}; "
            "this is a surgery bug for this architecture, please report it"
        )
    return diff


def compact(
    model: nn.Module,
    keep: Mapping[str, Tensor],
    input_shape: Sequence[int],
    *,
    graph: ChannelGraph | None = None,
    batch: Tensor | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    fold_shifts: bool = True,
    min_keep: int = 1,
    head: str | None = None,
) -> tuple[nn.Module, SurgeryReport]:
    """Physically remove the masked channels of ``model`` and verify the result.

    Args:
        model: the network (left unchanged).
        keep: ``{group name: bool keep mask of the group's channels}``; groups not named keep all.
        input_shape: ``(C, H, W)`` of one input.
        graph: a :class:`ChannelGraph` of ``model`` (built when not given).
        batch: verification inputs (default: 8 standard-normal inputs, seed 0).
        tolerance: maximum accepted output difference to the reference model.
        fold_shifts: fold removed channels' constant BN shifts into the consumers.
        min_keep: channels every group keeps at least.
        head: the classifier head's module name (its outputs, the classes, stay); ``None`` = the
            ``graph``'s head, or found from the graph (:func:`~prunelab.core.targets.find_head`).

    Returns:
        ``(compacted model, report)``.

    Raises:
        ConfigError: a mask names an unknown group, has the wrong length or keeps too few channels.
        SurgeryMismatchError: the compacted model does not match the reference.
    """
    work = copy.deepcopy(model)
    # Torch-Pruning edits the modules its graph was traced on, so the graph used for pruning is traced
    # on the copy; a caller's graph (traced on `model`, same module names) is only used for checking.
    if graph is not None:
        wgraph = ChannelGraph(work, input_shape, exclude=list(graph.excluded), head=head or graph.head)
    else:
        wgraph = ChannelGraph(work, input_shape, head=head)
    graph = graph or wgraph
    removed = _removed(graph, keep, min_keep)
    was_training = model.training
    work.eval()
    device = next(model.parameters()).device
    x = _batch(input_shape, batch, device)
    masked = copy.deepcopy(work)
    zero_channels(masked, graph.groups, removed, keep_shift=True)
    exact: list[str] = []
    inexact: dict[str, str] = {}
    if fold_shifts and removed:
        exact, inexact = _fold_shifts(work, masked, graph.groups, removed, x)
    reference = copy.deepcopy(work)
    zero_channels(reference, graph.groups, removed, keep_shift=False)
    sizes = {g.name: [g.size, g.size] for g in graph.groups}
    for name, channels in removed.items():
        wgraph.prune(name, channels)
        sizes[name][1] = graph.by_name[name].size - len(channels)
    diff = check_equivalence(reference, work, x, tolerance)
    with torch.no_grad():
        shift = float((masked(x) - work(x)).abs().max())
    work.train(was_training)
    report = SurgeryReport(
        channels_before=sum(g.size for g in graph.groups),
        channels_removed=sum(len(c) for c in removed.values()),
        groups=sizes,
        max_abs_diff=diff,
        tolerance=tolerance,
        folds_exact=exact,
        folds_inexact=inexact,
        shift_max_abs_diff=shift,
    )
    return work, report
