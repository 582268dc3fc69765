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
absolute output difference, per unit of output: :func:`prunelab.core.inputs.accepted_diff`); otherwise
:class:`SurgeryMismatchError` is raised — a wrong model is never returned silently. Cost: one deep copy and three forward passes (γ-masked, reference, compacted;
``fold_shifts=False`` skips the γ-masked one). When the γ-masked model provably computes the reference
(the removed channels' shifts are 0, e.g. freshly initialised BN layers, and reach every consumer as
exact zeros: see ``_masked_is_reference``), its one pass serves as the reference and nothing needs
folding, so two passes run, on one sample for a shape.

Shift folding: a removed channel that enters a consumer as a constant ``c`` contributes
``c · Σ_spatial W[:, i]`` to each output. For a Linear layer or a convolution without padding that
is a constant per output, folded exactly into the consumer's bias (a bias is added if it had none).
With zero padding, border outputs see fewer copies of ``c``, so the fold is only exact in the
interior: it is still applied (the better approximation) and reported as inexact, with the resulting
difference to the γ-masked model measured (``shift_max_abs_diff``). Channels that are not constant at
the consumer (e.g. a residual stream that also carries kept channels) are not folded and are reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from prunelab.core.inputs import (
    ExampleInputs,
    accepted_diff,
    as_call,
    max_abs_diff,
    output_tensors,
    random_like,
)
from prunelab.core.masking import require_real_weights
from prunelab.core.modules import copy_model, eval_mode
from prunelab.errors import ConfigError, PrunelabError, UnsupportedModelError
from prunelab.surgery.graph import CROSS_CHANNEL_NORMS, ChannelGraph, ChannelGroup, call_arguments
from prunelab.surgery.layers import is_channel_mapping

__all__ = [
    "ChannelRemovalError",
    "SurgeryMismatchError",
    "SurgeryReport",
    "check_equivalence",
    "compact",
    "find_unremovable",
    "zero_channels",
]

#: Maximum absolute output difference accepted between the compacted and the reference model.
DEFAULT_TOLERANCE = 1e-4


class SurgeryMismatchError(PrunelabError):
    """The compacted network does not reproduce the masked one (a surgery bug, never silently accepted)."""


class ChannelRemovalError(UnsupportedModelError):
    """Some channel groups cannot be removed from this model; :attr:`groups` maps each to why.

    Found by compacting the groups one at a time after a joint compaction failed: a group whose removal
    breaks the model's forward pass, or changes its outputs, passes through a construct Torch-Pruning
    cannot map channels through (a split or slice of constant width, a channel shuffle, a reshape over
    the channels). Excluding those groups (``exclude=[...]``) prunes the rest.
    """

    def __init__(self, groups: Mapping[str, str]) -> None:
        self.groups = dict(groups)
        first, why = next(iter(self.groups.items()))
        more = f" (and {len(self.groups) - 1} more group(s))" if len(self.groups) > 1 else ""
        super().__init__(
            f"channels of group {first!r} cannot be removed: {why}{more}; exclude them: "
            f"exclude={sorted(self.groups)!r}"
        )


#: How a removal that cannot work shows: a wrong result, Torch-Pruning's refusal, or the compacted model
#: failing to run (wrong widths).
_REMOVAL_FAILURES = (SurgeryMismatchError, UnsupportedModelError, RuntimeError, ValueError, IndexError)


@dataclass
class SurgeryReport:
    """What one surgery did and how it was verified.

    Attributes:
        channels_before: prunable channels before.
        channels_removed: channels removed.
        groups: ``{group: [channels before, channels after]}``.
        max_abs_diff: max |compacted − reference| on the verification batch.
        tolerance: the tolerance asked for, per unit of output.
        accepted_diff: the largest ``max_abs_diff`` it accepted, ``tolerance × max(1, largest |output|)``
            (:func:`prunelab.core.inputs.accepted_diff`).
        folds_exact: consumers whose constant inputs were folded exactly.
        folds_inexact: ``{consumer: reason}`` where folding is approximate or impossible.
        shift_max_abs_diff: max |compacted − γ-masked| (the effect of the inexact folds; ~0 when all
            folds are exact); ``None`` with ``fold_shifts=False``, where the γ-masked model is not run.
    """

    channels_before: int
    channels_removed: int
    groups: dict[str, list[int]]
    max_abs_diff: float
    tolerance: float
    accepted_diff: float
    folds_exact: list[str] = field(default_factory=list)
    folds_inexact: dict[str, str] = field(default_factory=dict)
    shift_max_abs_diff: float | None = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (goes into ``summary.json``)."""
        return {
            "channels_before": self.channels_before,
            "channels_removed": self.channels_removed,
            "groups": self.groups,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "accepted_diff": self.accepted_diff,
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
        kept = int(mask.sum())
        if kept == 0:
            # Whatever min_keep says: a layer without output channels is no layer (its consumers would
            # get no input), so this is refused before any surgery.
            raise ConfigError(
                f"channel mask for {name!r} removes all {group.size} channels of layer {name!r}; a layer must "
                "keep at least one: use min_keep >= 1 or a lower amount (sparsity)"
            )
        if kept < min(min_keep, group.size):
            raise ConfigError(
                f"channel mask for {name!r} keeps {kept} channels; keep at least {min_keep} (min_keep) — "
                "lower the amount or min_keep"
            )
        gone = torch.nonzero(~mask).flatten().tolist()
        if group.divisions > 1 and gone != group.periodic(
            sorted({c % (group.size // group.divisions) for c in gone})
        ):
            raise ConfigError(
                f"channel mask for {name!r} must remove the same positions in each of its {group.divisions} "
                "blocks (a grouped conv or GroupNorm); remove channel p of every block together "
                "(select_channels(..., divisions=...) does)"
            )
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
        keep_shift: ``True`` gives the γ-masked model (producers' filters and norm scales zeroed, their
            shifts kept); ``False`` zeroes every member entry so that the channel is exactly 0 everywhere.

    Raises:
        UnsupportedModelError: a member layer of a type the surgery cannot mask.
    """
    _zero(model, groups, removed, "scales" if keep_shift else "all")


def _zero(
    model: nn.Module, groups: Sequence[ChannelGroup], removed: Mapping[str, Sequence[int]], part: str
) -> None:
    """Zero ``part`` of the removed channels' entries: ``"scales"`` (what the γ-mask zeroes), ``"rest"``
    (the shifts and consumer inputs the γ-mask keeps) or ``"all"`` (both)."""
    by_name = {g.name: g for g in groups}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, channels in removed.items():
            for member in by_name[name].members:
                idx = member.indices(channels)
                if not idx:
                    continue
                ix = torch.tensor(idx, dtype=torch.long)
                if member.kind == "Parameter":
                    if part != "rest":  # a bare parameter scales or shifts its channel: zeroed by the γ-mask
                        param = params[member.name]
                        param.index_fill_(int(member.dim or 0) % param.dim(), ix.to(param.device), 0.0)
                    continue
                _zero_module(model.get_submodule(member.name), member.role, ix, part)


def _kept_shift(module: nn.Module, role: str) -> tuple[Tensor, int] | None:
    """The shift (bias) of ``module``'s channels that the γ-mask keeps, with its channel dim; None if none."""
    if isinstance(module, (nn.modules.batchnorm._NormBase, *CROSS_CHANNEL_NORMS)):
        bias = getattr(module, "bias", None)
        # LayerNorm's parameters run along its normalized (last) dims; the others' along the channels.
        return None if bias is None else (bias, -1 if isinstance(module, nn.LayerNorm) else 0)
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        out = role == "out" or depthwise
        return (module.bias, 0) if out and module.bias is not None else None
    if isinstance(module, nn.Linear) and role == "out" and module.bias is not None:
        return module.bias, 0
    return None


def _zero_module(module: nn.Module, role: str, ix: Tensor, part: str) -> None:
    """Zero ``part`` (see :func:`_zero`) of what channels ``ix`` of ``module`` contribute (``role`` "out":
    its outputs, "in": its inputs)."""
    ix = ix.to(next(iter(module.parameters()), torch.empty(0)).device)
    scales, rest = part != "rest", part != "scales"
    if is_channel_mapping(module):
        if rest:
            (module.zero_outputs if role == "out" else module.zero_inputs)(ix.tolist())
        return
    shift = _kept_shift(module, role) if rest else None
    if shift is not None:
        shift[0].index_fill_(shift[1], ix, 0.0)
    if isinstance(module, (nn.modules.batchnorm._NormBase, *CROSS_CHANNEL_NORMS)):
        weight = getattr(module, "weight", None)
        if weight is not None and scales:
            weight.index_fill_(-1 if isinstance(module, nn.LayerNorm) else 0, ix, 0.0)
        return
    if isinstance(module, nn.modules.conv._ConvNd):
        _zero_conv(module, role, ix, scales, rest)
        return
    if isinstance(module, nn.Linear):
        # index_fill_ rather than indexed assignment: the same zeros, without the advanced-indexing cost.
        if role == "out" and scales:
            module.weight.index_fill_(0, ix, 0.0)
        elif role == "in" and rest:
            module.weight.index_fill_(1, ix, 0.0)
        return
    if isinstance(module, nn.PReLU):
        return  # PReLU(0) = 0: a zero channel stays zero
    raise UnsupportedModelError(
        f"layer {type(module).__name__} is coupled to a channel group but the surgery cannot mask it; "
        "implement prunelab.surgery.ChannelMappingLayer for it or exclude the group"
    )


def _zero_conv(conv: nn.modules.conv._ConvNd, role: str, ix: Tensor, scales: bool, rest: bool) -> None:
    """Zero the filters (``scales``) or the input columns (``rest``) of channels ``ix`` of a (grouped,
    depthwise, transposed) convolution; its bias is :func:`_kept_shift`'s."""
    w, groups = conv.weight, conv.groups
    depthwise = groups > 1 and groups == conv.in_channels == conv.out_channels
    if role == "out" or depthwise:
        if not scales:
            return
        if not conv.transposed:
            w.index_fill_(0, ix, 0.0)  # rows are output channels, for every groups value
        else:
            # Transposed weight: (in, out/groups, k...); output o is column o % (out/groups) of its group's rows.
            per_out, per_in = conv.out_channels // groups, conv.in_channels // groups
            for o in ix.tolist():
                g, p = divmod(o, per_out)
                w[g * per_in : (g + 1) * per_in, p] = 0.0
        return
    if not rest:
        return
    if conv.transposed:
        w.index_fill_(0, ix, 0.0)  # rows are input channels
        return
    if groups == 1:
        w.index_fill_(1, ix, 0.0)  # columns are input channels
        return
    # Weight (out, in/groups, k...): input c is column c % (in/groups) of its group's output rows.
    per_in, per_out = conv.in_channels // groups, conv.out_channels // groups
    for c in ix.tolist():
        g, p = divmod(c, per_in)
        w[g * per_out : (g + 1) * per_out, p] = 0.0


class _KeptStatistics(TorchFunctionMode):
    """Inside it, LayerNorm / GroupNorm calls on the given weights normalise over the kept channels only.

    A removed channel is absent from the compacted model's norm statistics; zeroing it in the reference
    would still count it in the mean and variance. This mode makes the reference compute what removal
    means: the norm of the kept channels (the removed ones output 0).
    """

    def __init__(self, kept: Mapping[int, Tensor]) -> None:
        super().__init__()
        self.kept = kept

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        if func is F.layer_norm or func is F.group_norm:
            a = call_arguments(func, args, kwargs)
            weight = a["weight"]
            keep = self.kept.get(id(weight)) if weight is not None else None
            if keep is not None:
                x, bias, eps = a["input"], a["bias"], a["eps"]
                out = torch.zeros_like(x)
                b = None if bias is None else bias[keep]
                if func is F.layer_norm:
                    out[..., keep] = F.layer_norm(x[..., keep], (len(keep),), weight[keep], b, eps)
                else:
                    out[:, keep] = F.group_norm(x[:, keep], a["num_groups"], weight[keep], b, eps)
                return out
        return func(*args, **(kwargs or {}))


class _Reference(nn.Module):
    """The reference model: ``model`` with channels zeroed, its cross-channel norms over kept channels only."""

    def __init__(self, model: nn.Module, kept: Mapping[int, Tensor]) -> None:
        super().__init__()
        self.model = model
        self._kept = dict(kept)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward under :class:`_KeptStatistics`."""
        if not self._kept:
            return self.model(*args, **kwargs)
        with _KeptStatistics(self._kept):
            return self.model(*args, **kwargs)


def _norm_keeps(
    model: nn.Module, groups: Sequence[ChannelGroup], removed: Mapping[str, Sequence[int]]
) -> dict:
    """``{id(norm weight): kept channel indices}`` for the cross-channel norms that lose channels."""
    by_name = {g.name: g for g in groups}
    gone: dict[str, set[int]] = {}
    for name, channels in removed.items():
        for member in by_name[name].members:
            module = None if member.kind == "Parameter" else model.get_submodule(member.name)
            if isinstance(module, CROSS_CHANNEL_NORMS):
                gone.setdefault(member.name, set()).update(member.indices(channels))
    kept: dict[int, Tensor] = {}
    for name, idx in gone.items():
        norm = model.get_submodule(name)
        if norm.weight is None:
            raise UnsupportedModelError(
                f"norm {name!r} has no affine weight; the surgery cannot verify removing its channels"
            )
        size = int(norm.weight.shape[-1] if isinstance(norm, nn.LayerNorm) else norm.weight.shape[0])
        kept[id(norm.weight)] = torch.tensor(
            [c for c in range(size) if c not in idx], dtype=torch.long, device=norm.weight.device
        )
    return kept


def _batch(example: ExampleInputs, batch: ExampleInputs | None, size: int = 2) -> ExampleInputs:
    """The verification inputs: ``batch`` if given, else seeded standard-normal inputs like ``example``.

    A shape gives ``size`` inputs: random inputs reach every channel at every position, so a wrong channel
    mapping shows on any of them, and two samples are what the shift folding needs to tell a constant
    channel from one that varies from input to input (after a global pooling there is nothing else to
    compare); with nothing to fold one suffices. Tensors keep their shapes (:func:`_call` moves them to
    the model's device).
    """
    return random_like(example, batch=size, seed=0) if batch is None else batch


def _call(model: nn.Module, x: ExampleInputs) -> Any:
    args, kwargs = as_call(x, model)
    return model(*args, **kwargs)


@torch.no_grad()
def _observe_and_fold(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    removed: Mapping[str, Sequence[int]],
    x: ExampleInputs,
    fold: bool,
) -> tuple[list[Tensor], list[str], dict[str, str], bool]:
    """Run the γ-masked ``model`` once: its outputs, and (``fold``) its removed channels' shifts folded in.

    The consumers' inputs of removed channels are recorded on the way (forward pre-hooks); with ``fold``,
    where they are constant, ``c · Σ W[:, i]`` is then added to the consumer's bias in place (see the
    module docstring).
    Returns ``(γ-masked outputs, exact folds, {inexact fold: reason}, zero)``; ``zero``: every recorded
    input of a removed channel was exactly 0 (so nothing was folded), and so were the removed input and
    output channels of every channel-mapping layer (recorded too, for :func:`_masked_is_reference`).
    """
    wanted: dict[str, list[int]] = {}
    maps: dict[tuple[str, str], list[int]] = {}  # (channel-mapping layer, role): removed channels
    by_name = {g.name: g for g in groups}
    for name, channels in removed.items():
        for member in by_name[name].members:
            if member.role == "in" and member.kind in ("Conv2d", "Linear"):
                wanted.setdefault(member.name, []).extend(member.indices(channels))
            elif member.channel_map:
                maps.setdefault((member.name, member.role), []).extend(member.indices(channels))
    # A member may read none of the removed channels (a consumer of a slice of a concatenation: timm's
    # ghostnet): there is nothing of them to observe or fold.
    wanted = {name: idx for name, idx in wanted.items() if idx}
    maps = {key: idx for key, idx in maps.items() if idx}
    seen: dict[str, Tensor] = {}
    calls: dict[str, int] = {}
    map_zero = [True]
    handles = []
    for name in wanted:

        def hook(_m: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            seen[name] = args[0].detach()
            calls[name] = calls.get(name, 0) + 1

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    for (name, role), idx in maps.items():
        ix = torch.tensor(sorted(set(idx)), dtype=torch.long)

        def watch(
            _m: nn.Module, args: tuple[Any, ...], out: Any = None, ix: Tensor = ix, role: str = role
        ) -> None:
            t = out if role == "out" else args[0]
            width = _m.channel_counts()[1 if role == "out" else 0]
            # Channels along dim 1 (NCHW); anything else is not proven zero.
            ok = isinstance(t, Tensor) and t.dim() > 1 and t.shape[1] == width
            map_zero[0] = map_zero[0] and ok and not bool(t.detach().index_select(1, ix.to(t.device)).any())

        module = model.get_submodule(name)
        handles.append(
            module.register_forward_hook(watch) if role == "out" else module.register_forward_pre_hook(watch)
        )
    try:
        with _full_precision():
            masked_out = output_tensors(_call(model, x))
    finally:
        for h in handles:
            h.remove()
    exact: list[str] = []
    inexact: dict[str, str] = {}
    # A consumer called more than once (a shared layer) is only seen at its last call: not proven zero.
    zero = map_zero[0] and all(n == 1 for n in calls.values()) and calls.keys() == wanted.keys()
    nonzero: list[Tensor] = []
    for name, idx in wanted.items():
        idx = sorted(set(idx))
        layer = model.get_submodule(name)
        # A Linear reads its features from the last dim (also over channels-last maps), a conv from dim 1.
        dim = -1 if isinstance(layer, nn.Linear) else 1
        inp = seen[name].index_select(dim, torch.tensor(idx, device=seen[name].device))
        if not fold:
            nonzero.append(inp.any())  # read once for all consumers, below
            continue
        flat = inp.movedim(dim, 0).reshape(len(idx), -1)
        const = flat.mean(dim=1)
        zero = zero and not bool(flat.any())
        spread = (flat - const[:, None]).abs().amax() if flat.numel() else torch.tensor(0.0)
        if float(spread) > 1e-5 * (1.0 + float(const.abs().max())):
            inexact[name] = (
                "removed channels are not constant here (residual stream with kept channels); not folded"
            )
            continue
        if float(const.abs().max()) == 0.0:
            continue
        ix = torch.tensor(idx, dtype=torch.long, device=layer.weight.device)
        if isinstance(layer, nn.Linear):
            delta = layer.weight.index_select(1, ix) @ const
            padded = False
        else:
            assert isinstance(layer, nn.Conv2d)
            # index_select, not weight[:, ix]: the same columns, at a third of the advanced-indexing cost.
            delta = torch.einsum("oikl,i->o", layer.weight.index_select(1, ix), const)
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
    if nonzero:
        zero = zero and not bool(torch.stack([t.to(nonzero[0].device) for t in nonzero]).any())
    return masked_out, exact, inexact, zero


@contextmanager
def _full_precision() -> Iterator[None]:
    """No TF32 inside: the verification compares in full float32 (see :func:`check_equivalence`)."""
    # TF32 convolutions/matmuls (cuDNN's default on Ampere+ GPUs) round to ~1e-3, and the two models
    # accumulate in different orders: compare in full float32 so that only a real mismatch fails.
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@torch.no_grad()
def _outputs(model: nn.Module, x: ExampleInputs) -> list[Tensor]:
    """The output tensors of ``model`` on ``x``, in eval mode and full float32 (its mode restored)."""
    with eval_mode(model), _full_precision():
        return output_tensors(_call(model, x))


def _verified_diff(want: Sequence[Tensor], got: Sequence[Tensor], tolerance: float) -> tuple[float, float]:
    """Max absolute difference of two models' outputs and the accepted one; :class:`SurgeryMismatchError`
    beyond ``tolerance`` (per unit of output: :func:`prunelab.core.inputs.accepted_diff`)."""
    shapes = [tuple(t.shape) for t in want], [tuple(t.shape) for t in got]
    if shapes[0] != shapes[1]:
        raise SurgeryMismatchError(
            f"compacted model's outputs have shapes {shapes[1]}, the masked model's {shapes[0]}; "
            "a model output lost channels (name that layer as the head or exclude it)"
        )
    diff, _ = max_abs_diff(want, got)
    limit = accepted_diff(tolerance, want)
    if not diff <= limit:
        raise SurgeryMismatchError(
            f"compacted model differs from the masked model by {diff:.3g} > {limit:.3g} (tolerance "
            f"{tolerance:g} × output scale); "
            "this is a surgery bug for this architecture, please report it"
        )
    return diff, limit


def check_equivalence(
    reference: nn.Module, candidate: nn.Module, x: ExampleInputs, tolerance: float = DEFAULT_TOLERANCE
) -> float:
    """Max absolute output difference of two models on inputs ``x`` (eval mode), over every output tensor.

    Args:
        reference, candidate: the two models.
        x: inputs in any form of :mod:`prunelab.core.inputs` (a tensor, a tuple, a dict); outputs may be
            tensors, tuples, lists or dicts.
        tolerance: the accepted difference per unit of output (:func:`prunelab.core.inputs.accepted_diff`).

    Raises:
        SurgeryMismatchError: if the difference exceeds ``tolerance`` × the output scale, or the outputs differ
            in number or shape.
    """
    return _verified_diff(_outputs(reference, x), _outputs(candidate, x), tolerance)[0]


def compact(
    model: nn.Module,
    keep: Mapping[str, Tensor],
    example_inputs: ExampleInputs,
    *,
    graph: ChannelGraph | None = None,
    batch: ExampleInputs | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    fold_shifts: bool = True,
    min_keep: int = 1,
    head: str | None = None,
    diagnose: bool = True,
) -> tuple[nn.Module, SurgeryReport]:
    """Physically remove the masked channels of ``model`` and verify the result.

    Args:
        model: the network (left unchanged).
        keep: ``{group name: bool keep mask of the group's channels}``; groups not named keep all.
        example_inputs: what the model is called with (:mod:`prunelab.core.inputs`: a tensor, a tuple,
            a dict of keyword tensors) or the shape ``(C, H, W)`` of one input.
        graph: a :class:`ChannelGraph` of ``model`` (built when not given).
        batch: verification inputs, of the same form as ``example_inputs`` (default: seeded
            standard-normal inputs like them; 2 inputs for a shape).
        tolerance: maximum accepted output difference to the reference model.
        fold_shifts: fold removed channels' constant BN shifts into the consumers (one forward pass of
            the γ-masked model, which also gives ``shift_max_abs_diff``; ``False`` skips it).
        min_keep: channels every group keeps at least.
        head: the classifier head's module name (its outputs, the classes, stay); ``None`` = the
            ``graph``'s head, or found from the graph (:func:`~prunelab.core.targets.find_head`).
        diagnose: when the compaction fails, find which groups fail alone (:func:`find_unremovable`)
            and name them; ``False`` names the groups of the failed compaction without testing them.

    Returns:
        ``(compacted model, report)``.

    Raises:
        ConfigError: a mask names an unknown group, has the wrong length, keeps no channel at all (even
            with ``min_keep=0``: a layer keeps at least one) or fewer than ``min_keep``, or breaks the
            periodic structure of a grouped conv / GroupNorm group.
        UnsupportedModelError: the model has no real weights (meta device, NaN/inf values): checked when
            the graph is traced (here, when ``graph`` is not given), and again if the surgery fails.
        ChannelRemovalError: some groups cannot be removed from this model (named, each with why).
        SurgeryMismatchError: the compacted model does not match the reference.
    """
    if graph is None:
        graph = ChannelGraph(model, example_inputs, head=head)  # refuses a model without real weights
    removed = _removed(graph, keep, min_keep)
    try:
        return _compact(model, graph, removed, example_inputs, batch, tolerance, fold_shifts)
    except _REMOVAL_FAILURES as exc:
        # A given graph checked the weights when it was traced; if they went bad since (NaN/inf from a
        # diverged training run, reaching the outputs), that is the reason, not the surgery.
        require_real_weights(model, "compact")
        if not diagnose or (len(removed) < 2 and not isinstance(exc, SurgeryMismatchError)):
            bad = {name: _why(exc, graph, name) for name in removed}
            raise ChannelRemovalError(bad) from None
        bad = find_unremovable(model, graph, example_inputs, removed, batch=batch, tolerance=tolerance)
        if not bad:
            raise
        raise ChannelRemovalError(bad) from None


def _why(exc: BaseException, graph: ChannelGraph, name: str) -> str:
    """Why removing group ``name`` failed, in words: the error, and the graph ops its channels pass through."""
    ops = graph.graph_ops(name)
    through = f"; its channels pass through {', '.join(ops)}, which Torch-Pruning cannot map" if ops else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, SurgeryMismatchError):
        text = text.split(";")[0]
    return f"{text[:160]}{through}"


def find_unremovable(
    model: nn.Module,
    graph: ChannelGraph,
    example_inputs: ExampleInputs,
    removed: Mapping[str, Sequence[int]] | None = None,
    *,
    batch: ExampleInputs | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, str]:
    """``{group: why}`` for the groups whose channels cannot be removed from ``model``.

    The groups are tried one at a time, in order, each together with the groups before it that passed:
    a fresh copy of ``model`` has their channels removed by ``graph`` (:meth:`ChannelGraph.remove`, the
    removal :func:`compact` applies, so a group that passes here passes there) and must still run and
    match the reference (every removed channel zeroed, norms over kept channels). A group that fails is
    recorded and left out. Cost per group: one model copy, the removal of the groups so far and two
    forward passes; the graph is not traced again (a trace per failing group made this the slowest step
    on models with many refused groups: timm's ghostnet_100, mixnet_s).

    Args:
        model: the network (left unchanged).
        graph: its :class:`ChannelGraph` (traced on ``model``).
        example_inputs: what the model is called with (:mod:`prunelab.core.inputs`).
        removed: ``{group: channels}`` to try; default: every group, removing the first channel of each
            of its blocks (groups of one channel per block are skipped).
        batch: verification inputs (default: seeded like ``example_inputs``).
        tolerance: the equivalence check's maximum difference.
    """
    if removed is None:
        removed = {g.name: g.periodic([0]) for g in graph.groups if g.size > g.divisions}
    x = _batch(example_inputs, batch)
    bad: dict[str, str] = {}
    done: dict[str, Sequence[int]] = {}
    zeroed = copy_model(model).eval()
    for name, channels in removed.items():
        trial = {**done, name: channels}
        zero_channels(zeroed, graph.groups, {name: channels})
        try:
            work = copy_model(model).eval()
            graph.remove(work, trial)
            reference = _Reference(zeroed, _norm_keeps(zeroed, graph.groups, trial))
            check_equivalence(reference, work, x, tolerance)
        except _REMOVAL_FAILURES as exc:
            bad[name] = _why(exc, graph, name)
            zeroed = copy_model(model).eval()  # without this group's zeroing
            zero_channels(zeroed, graph.groups, done)
            continue
        done[name] = channels
    return bad


def _masked_is_reference(
    model: nn.Module, groups: Sequence[ChannelGroup], removed: Mapping[str, Sequence[int]]
) -> bool:
    """Whether the γ-masked ``model`` computes what the reference does, given zero removed consumer inputs.

    The reference differs from the γ-masked model only in the entries :func:`_zero` calls ``"rest"``:
    the removed channels' shifts (biases, norm β), the consumers' input columns, channel-mapping layers'
    removed channels, and the kept-channel statistics of cross-channel norms. With no cross-channel norm,
    every shift of a removed channel already 0, and every consumer one whose inputs
    :func:`_observe_and_fold` records (Conv2d, Linear) — then found exactly 0 there, as are the removed
    channels in and out of every channel-mapping layer (a fixed selection: zeroing zero channels changes
    nothing) — the two models hold the same parameters up to the first consumer or mapping layer, where
    the reference's zeroing meets exact zeros: every tensor, hence every output, is the same, so the
    γ-masked outputs serve as the reference's and its forward pass is saved (seeded or freshly
    initialised networks, whose BN shifts are 0).
    """
    by_name = {g.name: g for g in groups}
    for name, channels in removed.items():
        for member in by_name[name].members:
            if member.channel_map or member.kind == "Parameter":
                continue  # observed by _observe_and_fold / zeroed in both models
            if member.role == "in" and member.kind not in ("Conv2d", "Linear"):
                return False
            module = model.get_submodule(member.name)
            if isinstance(module, CROSS_CHANNEL_NORMS):
                return False
            shift = _kept_shift(module, member.role)
            if shift is not None:
                ix = torch.tensor(member.indices(channels), dtype=torch.long, device=shift[0].device)
                if bool(shift[0].detach().index_select(shift[1], ix).any()):
                    return False
    return True


def _compact(
    model: nn.Module,
    graph: ChannelGraph,
    removed: Mapping[str, Sequence[int]],
    example_inputs: ExampleInputs,
    batch: ExampleInputs | None,
    tolerance: float,
    fold_shifts: bool,
) -> tuple[nn.Module, SurgeryReport]:
    # One copy goes through all three models in turn, since each step only changes entries of removed
    # channels (which the removal then drops) or consumer biases (which every later step needs):
    # γ-masked → (shifts folded) → reference → compacted. The outputs of the first two are kept.
    work = copy_model(model)
    with eval_mode(work):  # the copy returns in the caller's modes
        _zero(work, graph.groups, removed, "scales")
        masked_out: list[Tensor] | None = None
        exact: list[str] = []
        inexact: dict[str, str] = {}
        want: list[Tensor] | None = None
        if removed and _masked_is_reference(work, graph.groups, removed):
            # Nothing can need folding unless a removed channel reaches a consumer as a non-zero constant
            # (an activation with f(0) != 0): one sample shows whether it does; if it does, the general
            # path below runs.
            x = _batch(example_inputs, batch, size=1)
            out, _, _, zero = _observe_and_fold(work, graph.groups, removed, x, False)
            if zero:
                masked_out = want = out  # the reference's outputs too (see _masked_is_reference)
        if want is None:
            x = _batch(example_inputs, batch, size=1)
            if fold_shifts and removed:
                # Two samples show which removed channels reach a consumer as a constant (a Linear after
                # global pooling sees one value per sample); the check itself needs only one, as above:
                # the first of the two, so that the shift diagnostic below compares like with like.
                x2 = _batch(example_inputs, batch)
                masked_out, exact, inexact, _ = _observe_and_fold(work, graph.groups, removed, x2, True)
                x = x2[:1] if batch is None and isinstance(x2, Tensor) else x2
            _zero(work, graph.groups, removed, "rest")
            want = _outputs(_Reference(work, _norm_keeps(work, graph.groups, removed)), x)
        # The caller's graph, traced on `model`, removes the channels of the copy: no second trace.
        graph.remove(work, removed)
        got = _outputs(work, x)
        diff, limit = _verified_diff(want, got, tolerance)
        shift = None
        if masked_out is not None:
            # The fold may have seen one sample more than the check: compare on the check's samples.
            pairs = zip(masked_out, got, strict=True)
            shift = max(
                (float(((a[: len(b)] if b.dim() else a) - b).abs().max()) for a, b in pairs), default=0.0
            )
    sizes = {g.name: [g.size, g.size] for g in graph.groups}
    for name, channels in removed.items():
        sizes[name][1] = graph.by_name[name].size - len(channels)
    report = SurgeryReport(
        channels_before=sum(g.size for g in graph.groups),
        channels_removed=sum(len(c) for c in removed.values()),
        groups=sizes,
        max_abs_diff=diff,
        tolerance=tolerance,
        accepted_diff=limit,
        folds_exact=exact,
        folds_inexact=inexact,
        shift_max_abs_diff=shift,
    )
    return work, report
