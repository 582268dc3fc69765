r"""Network slimming, proximal network slimming and one-shot structured (L1-filter) pruning with surgery.

Drivers (``prunelab list drivers``):

* ``slimming`` — Z. Liu, J. Li, Z. Shen, G. Huang, S. Yan and C. Zhang, *Learning Efficient
  Convolutional Networks through Network Slimming*, ICCV 2017. Sparsity training with the ℓ1
  subgradient on BN scales, :math:`\min \frac1N\sum\ell + \lambda\sum|\gamma|` (``γ.grad += λ sign γ``);
  then the ``prune.sparsity`` share of channels with the smallest |γ| is removed under one global
  threshold (percentile of |γ|), the network is compacted and fine-tuned (``finetune``).
* ``proximal_slimming`` — K. Bui, F. Xue, F. Park, Y. Qi and J. Xin, *A Proximal Algorithm for Network
  Slimming*, LOD 2023 (arXiv:2307.00684). Training with the auxiliary ξ and, after each optimizer step
  with α = 1/lr, :math:`\gamma \leftarrow (\alpha\tilde\gamma+\beta\xi)/(\alpha+\beta)`,
  :math:`\xi \leftarrow S_{\lambda/(\alpha+\beta)}((\alpha\xi+\beta\gamma)/(\alpha+\beta))`. Channels
  with ξ = 0 are removed (``rule: xi``, default) or with γ = 0 (``rule: gamma``); no threshold, and
  fine-tuning is optional. ξ and γ differ: a channel whose output is the constant ReLU(β) keeps a
  non-zero γ although ξ = 0 (see ``docs/methods/slimming.md``); the rule used is recorded.
* ``structured`` — one-shot channel pruning of the ``prune.sparsity`` share by any group-level
  criterion (``prunelab list criteria``): the L1 norm of filters (H. Li et al., *Pruning Filters for
  Efficient ConvNets*, ICLR 2017; the ``l1_filter`` method), BN scale, ..., global or per layer, then
  surgery and fine-tuning.

Channels are scored by the group-level criteria of :mod:`prunelab.criteria` (``bn_scale`` for both
slimming methods) and selected by :func:`prunelab.core.selectors.select_channels` (top-k) or, for the
proximal rule, by exact zeros guarded by :func:`prunelab.core.selectors.guard_min_keep`. All three then
run the one structured round of :mod:`prunelab.methods.structured` (surgery through Torch-Pruning's
DepGraph, Fang et al., CVPR 2023, behind prunelab's interface, verified against the masked model;
evaluation; fine-tuning; measurement; the ``rounds.csv`` row) and record channels/parameters/MACs
removed and the measured speed-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunelab.core.criterion import GroupMemberLike, MemberGroupCriterion, Stats, score_groups
from prunelab.core.modules import copy_model
from prunelab.core.selectors import guard_min_keep, select_channels
from prunelab.criteria import build_criterion, check_criterion
from prunelab.dataclass_yaml import build_section
from prunelab.errors import ConfigError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method
from prunelab.methods.structured import channel_graph, structured_round
from prunelab.training.config import TrainSection

__all__ = ["ProximalSlimmingOptions", "SlimmingOptions", "StructuredOptions"]


def _train_section(raw: Any, path: str) -> TrainSection:
    if isinstance(raw, TrainSection):
        return raw
    return build_section(TrainSection, dict(raw or {}), path)


@dataclass
class _Common:
    """Options every structured driver shares.

    Attributes:
        sparsity_train: the training stage before pruning (a ``train``-like section): with the
            regularizer for the slimming methods, plain for ``structured``.
        speed_batch_sizes: batch sizes of the dense vs compact latency comparison ([] skips it).
        speed_repeats: interleaved timed passes per model and batch size.
        onnx: also time ONNX Runtime when installed.
        tolerance: surgery verification tolerance (max abs output difference).
    """

    sparsity_train: dict[str, Any] = field(default_factory=dict)
    speed_batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    speed_repeats: int = 20
    onnx: bool = True
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        # Validate the nested section now, so a bad recipe fails before anything runs.
        _train_section(self.sparsity_train, "prune.options.sparsity_train")
        if self.speed_repeats < 1:
            raise ConfigError("speed_repeats: must be >= 1")
        if self.tolerance <= 0:
            raise ConfigError("tolerance: must be > 0")


@dataclass
class SlimmingOptions(_Common):
    """Network slimming options.

    Attributes:
        lam: λ of the ℓ1 subgradient (official: 1e-4 VGG, 1e-5 ResNet/DenseNet).
        scope: ``global`` (one |γ| threshold over all groups, the paper) or ``layer``.
        gamma_init: BN γ is set to this before sparsity training (official code: 0.5; null keeps it).
    """

    lam: float = 1e-4
    scope: Literal["global", "layer"] = "global"
    gamma_init: float | None = 0.5


@dataclass
class ProximalSlimmingOptions(_Common):
    """Proximal network slimming options.

    Attributes:
        lam: λ on ‖ξ‖₁ (official: 0.0045 VGG-19, 0.004 DenseNet-40, 0.002 ResNet-164).
        beta: β coupling γ and ξ (official: 100 VGG-19/DenseNet-40, 0.25 ResNet-164).
        xi_init: ξ ~ U(xi_init) (official: [0.47, 0.53]).
        rule: prune channels where ``xi`` = 0 (default) or where ``gamma`` = 0 (|γ| <= gamma_tol).
        gamma_tol: the |γ| threshold of ``rule: gamma``.
        gamma_init: BN γ is set to this before proximal training (official code: 0.5; null keeps it).
        zero_gamma: before compaction, set γ ← 0 on every BN channel whose ξ = 0 (γ ← ξ there, the
            reference's recommendation). Such a channel then outputs the constant ReLU(β), which the
            surgery folds into its consumers, so the accuracy lost at removal is the accuracy lost
            here; ``structured.accuracy_gamma_zeroed`` records it beside the compacted accuracy.
            Not in the official code (it thresholds |γ|, see ``docs/methods/slimming.md``).
    """

    lam: float = 0.0045
    beta: float = 100.0
    xi_init: list[float] = field(default_factory=lambda: [0.47, 0.53])
    rule: Literal["xi", "gamma"] = "xi"
    gamma_tol: float = 0.0
    gamma_init: float | None = 0.5
    zero_gamma: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.xi_init) != 2 or self.xi_init[0] > self.xi_init[1]:
            raise ConfigError("xi_init: give [low, high] with low <= high")


@dataclass
class StructuredOptions(_Common):
    """One-shot structured pruning options.

    Attributes:
        criterion: a group-level criterion (``l1_filter``, ``bn_scale``, ...; ``prunelab list criteria``).
        criterion_kwargs: its options (``{reduction: max}``, ``{p: 2}`` for l1_filter).
        scope: ``global`` (one ranking over all groups) or ``layer`` (the same share in every group).
    """

    criterion: str = "l1_filter"
    criterion_kwargs: dict[str, Any] = field(default_factory=dict)
    scope: Literal["global", "layer"] = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_criterion(self.criterion, "group", self.criterion_kwargs)


#: Channel surgery reads these shared fields; ``include`` and ``reparam`` have no meaning for it.
_READS = frozenset({"sparsity", "exclude", "min_keep"})


class _XiScale(MemberGroupCriterion):
    """|ξ| of the proximal auxiliary variable per BN channel, max over a group's BNs (as ``bn_scale`` for γ)."""

    default_reduction = "max"

    def __init__(self, xi: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.xi = xi

    def members(self, group: Any) -> Sequence[GroupMemberLike]:
        """The group's BatchNorm members."""
        return group.bns()

    def member_scores(self, member: GroupMemberLike, model: nn.Module, stats: Stats) -> Tensor:
        """``|ξ|`` of the BatchNorm ``member``."""
        return self.xi[member.name].abs()


def _group_bns(graph: Any) -> list[str]:
    seen: dict[str, None] = {}
    for g in graph.groups:
        for m in g.bns():
            seen.setdefault(m.name, None)
    return list(seen)


def _init_gamma(model: nn.Module, names: list[str], value: float | None) -> None:
    if value is None:
        return
    with torch.no_grad():
        for n in names:
            model.get_submodule(n).weight.fill_(value)


def _bn_scale(model: nn.Module, graph: Any) -> dict[str, Tensor]:
    return score_groups(build_criterion("bn_scale", "group"), graph.groups, model)


def _finish(
    ctx: MethodContext, graph: Any, keep: dict[str, Tensor], options: _Common, **extra: Any
) -> MethodResult:
    """The one structured round on the trained model, plus slimming's before/after summary and speed-up."""
    from prunelab.metrics.speed import compare_latency
    from prunelab.surgery import arch_spec

    before = ctx.measure(ctx.model)
    acc_trained = ctx.evaluate(ctx.model)
    dense_model = copy_model(ctx.model)

    def record(
        model: nn.Module, report: Any, measures: Mapping[str, int]
    ) -> tuple[float, float, dict[str, Any]]:
        share = report.channels_removed / max(report.channels_before, 1)
        columns = {
            "channels_removed": report.channels_removed,
            "params": measures["params_total"],
            "macs": measures["macs_dense"],
        }
        return share, share, columns

    done = structured_round(
        ctx, ctx.model, graph, keep, index=1, tag="finetune", section=ctx.finetune, seed_offset=2,
        tolerance=options.tolerance, min_keep=ctx.min_keep, record=record,
    )  # fmt: skip
    model, report, after = done.model, done.report, done.measures
    share = report.channels_removed / max(report.channels_before, 1)
    speed: dict[str, Any] = {}
    if options.speed_batch_sizes:
        speed = compare_latency(
            dense_model,
            model,
            ctx.input_shape,
            options.speed_batch_sizes,
            repeats=options.speed_repeats,
            onnx=options.onnx,
            folder=ctx.out,
        )
    return MethodResult(
        model,
        rounds=[done.row],
        accuracy_before_finetune=done.accuracy_before_finetune,
        surgery=arch_spec(model),
        summary={
            "structured": {
                "accuracy_after_sparsity_training": acc_trained,
                "accuracy_after_pruning": done.accuracy_before_finetune,
                "accuracy_after_finetune": done.accuracy_after_finetune,
                "channels_total": report.channels_before,
                "channels_removed": report.channels_removed,
                "channels_removed_share": share,
                "params_before": before["params_total"],
                "params_after": after["params_total"],
                "params_removed_share": 1.0 - after["params_total"] / before["params_total"],
                "macs_before": before["macs_dense"],
                "macs_after": after["macs_dense"],
                "macs_removed_share": 1.0 - after["macs_dense"] / before["macs_dense"],
                "macs_ratio": before["macs_dense"] / after["macs_dense"],
                **extra,
            },
            "surgery": report.to_dict(),
            "speedup": speed,
            "prunability": {k: v for k, v in graph.report().items() if k != "groups"}
            | {"groups": len(graph.groups)},
        },
    )


def _check_batchnorm(options: Any, recipe: Any, model: nn.Module) -> None:
    """Slimming needs affine BatchNorm layers (their scales γ carry the L1 pressure and the ranking)."""
    from prunelab.regularizers import batchnorm_layers

    if not batchnorm_layers(model):
        raise ConfigError(
            f"prune.method: {recipe.prune.method!r} ranks channels by BatchNorm scales, but model "
            f"{recipe.model.name!r} has no affine BatchNorm layer; use method l1_filter or a model with BatchNorm"
        )


def _check_structured(options: StructuredOptions, recipe: Any, model: nn.Module) -> None:
    """A BN-scale criterion needs BatchNorm layers, like slimming."""
    if options.criterion == "bn_scale":
        _check_batchnorm(options, recipe, model)


def _planned_epochs(options: _Common, finetune: int) -> int:
    """The sparsity-training stage, then one fine-tuning stage."""
    return _train_section(options.sparsity_train, "prune.options.sparsity_train").epochs + finetune


@register_driver(
    "slimming", options=SlimmingOptions, reads=_READS, check=_check_batchnorm, epochs=_planned_epochs
)
def run_slimming(ctx: MethodContext, options: SlimmingOptions) -> MethodResult:
    """Network slimming: L1 on BN γ during training, global |γ| threshold, surgery, fine-tune (Liu et al. 2017)."""
    from prunelab.regularizers import L1SubgradientHook

    assert ctx.sparsity is not None  # validated: the driver uses the sparsity
    graph = channel_graph(ctx, ctx.model)
    names = _group_bns(graph)
    _init_gamma(ctx.model, names, options.gamma_init)
    section = _train_section(options.sparsity_train, "prune.options.sparsity_train")
    ctx.log(f"sparsity training: {section.epochs} epochs, λ={options.lam} on {len(names)} BN layers")
    ctx.train(
        ctx.model,
        section,
        "sparsity",
        hooks=[L1SubgradientHook(ctx.model, options.lam, names)],
        seed_offset=1,
    )
    scores = _bn_scale(ctx.model, graph)
    keep = select_channels(scores, ctx.sparsity, scope=options.scope, min_keep=ctx.min_keep,
                           divisions={g.name: g.divisions for g in graph.groups})  # fmt: skip
    flat = torch.cat([s.flatten() for s in scores.values()])
    kept = torch.cat([scores[k][keep[k]] for k in scores])
    return _finish(ctx, graph, keep, options, lam=options.lam, threshold=float(kept.min()) if kept.numel() else 0.0,
                   gamma_zero_share=float((flat == 0).float().mean()))  # fmt: skip


@register_driver(
    "proximal_slimming",
    options=ProximalSlimmingOptions,
    uses_sparsity=False,
    reads=_READS - {"sparsity"},
    check=_check_batchnorm,
    epochs=_planned_epochs,
)
def run_proximal_slimming(ctx: MethodContext, options: ProximalSlimmingOptions) -> MethodResult:
    """Proximal network slimming: ξ/γ proximal updates, prune where ξ = 0, fine-tuning optional (Bui et al. 2023)."""
    from prunelab.regularizers import ProximalSlimmingHook

    graph = channel_graph(ctx, ctx.model)
    names = _group_bns(graph)
    _init_gamma(ctx.model, names, options.gamma_init)
    section = _train_section(options.sparsity_train, "prune.options.sparsity_train")
    hook = ProximalSlimmingHook(
        ctx.model,
        options.lam,
        options.beta,
        names,
        (options.xi_init[0], options.xi_init[1]),
        seed=ctx.seed,
    )
    ctx.log(f"proximal training: {section.epochs} epochs, λ={options.lam}, β={options.beta}, α=1/lr")
    ctx.train(ctx.model, section, "sparsity", hooks=[hook], seed_offset=1)
    extra: dict[str, Any] = {}
    if options.zero_gamma:
        extra["accuracy_before_gamma_zeroed"] = ctx.evaluate(ctx.model)
        extra["gamma_zeroed"] = _zero_gamma_where_xi_zero(ctx.model, hook.xi)
        extra["accuracy_gamma_zeroed"] = ctx.evaluate(ctx.model)
        ctx.log(
            f"zero_gamma: γ ← 0 on {extra['gamma_zeroed']} channels with ξ = 0; accuracy "
            f"{extra['accuracy_before_gamma_zeroed']:.4f} -> {extra['accuracy_gamma_zeroed']:.4f} (masked)"
        )
    # A group channel is removed only if it is zero in every BN that normalises it (max over the BNs).
    gamma = _bn_scale(ctx.model, graph)
    zero_free = score_groups(_XiScale(hook.xi), graph.groups, ctx.model) if options.rule == "xi" else gamma
    threshold = 0.0 if options.rule == "xi" else options.gamma_tol
    # The exact-zero rule can empty a layer; the guard keeps its largest-|γ| channels instead.
    # A grouped conv's group keeps a position in every block when any block keeps it.
    keep = {
        g.name: g.periodic_keep(guard_min_keep(zero_free[g.name] > threshold, gamma[g.name], ctx.min_keep))
        for g in graph.groups
    }
    return _finish(ctx, graph, keep, options, lam=options.lam, beta=options.beta, rule=options.rule,
                   zero_gamma=options.zero_gamma, xi_zero_share=hook.zero_fraction(),
                   gamma_zero_share=float((torch.cat(list(gamma.values())) == 0).float().mean()),
                   **extra)  # fmt: skip


def _zero_gamma_where_xi_zero(model: nn.Module, xi: Mapping[str, Tensor]) -> int:
    """Set BN γ to 0 where ξ = 0 (in place); returns how many channels changed."""
    changed = 0
    with torch.no_grad():
        for name, x in xi.items():
            weight = model.get_submodule(name).weight
            zero = (x == 0).to(weight.device)
            changed += int((zero & (weight != 0)).sum())
            weight[zero] = 0.0
    return changed


@register_driver(
    "structured", options=StructuredOptions, reads=_READS, check=_check_structured, epochs=_planned_epochs
)
def run_structured(ctx: MethodContext, options: StructuredOptions) -> MethodResult:
    """One-shot structured channel pruning by a group criterion (L1-filter, BN scale, ...), surgery, fine-tune."""

    assert ctx.sparsity is not None
    graph = channel_graph(ctx, ctx.model)
    section = _train_section(options.sparsity_train, "prune.options.sparsity_train")
    ctx.train(ctx.model, section, "pretrain", seed_offset=1)
    criterion = build_criterion(options.criterion, "group", **options.criterion_kwargs)
    scores = score_groups(
        criterion,
        graph.groups,
        ctx.model,
        ctx.statistics(ctx.model, getattr(criterion, "requires", frozenset())),
    )
    keep = select_channels(scores, ctx.sparsity, scope=options.scope, min_keep=ctx.min_keep,
                           divisions={g.name: g.divisions for g in graph.groups})  # fmt: skip
    return _finish(ctx, graph, keep, options, criterion=options.criterion)


register_method(
    "network_slimming",
    "Network slimming: L1 on BN scales, global threshold, channel surgery, fine-tune (Liu et al. 2017).",
    "slimming",
    sparsity=0.7,
)
register_method(
    "proximal_slimming",
    "Proximal network slimming: prune BN channels with xi = 0 after proximal training (Bui et al. 2023).",
    "proximal_slimming",
)
register_method(
    "l1_filter",
    "One-shot L1-norm filter pruning with physical channel removal, then fine-tuning (Li et al. 2017).",
    "structured",
    sparsity=0.5,
    scope="layer",
)
