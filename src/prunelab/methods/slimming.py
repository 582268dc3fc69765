r"""Network slimming, proximal network slimming and one-shot structured (L1-filter) pruning with surgery.

Drivers (``prune.schedule``):

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
* ``structured`` — one-shot channel pruning of the ``prune.sparsity`` share by the L1 norm of filters
  (H. Li et al., *Pruning Filters for Efficient ConvNets*, ICLR 2017) or by BN scale, global or per
  layer, then surgery and fine-tuning.

All three compact the network through :mod:`prunelab.surgery` (Torch-Pruning's DepGraph, Fang et al.,
CVPR 2023, behind prunelab's interface), verify it against the masked model, store the architecture
spec in the checkpoint and record channels/parameters/MACs removed and the measured speed-up.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from prunelab.dataclass_yaml import build_section
from prunelab.errors import ConfigError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method
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
        sparsity_train: the training stage with the regularizer (a ``train``-like section).
        scope: ``global`` (one threshold over all groups) or ``layer``.
        gamma_init: BN γ is set to this before sparsity training (official code: 0.5; null keeps it).
        speed_batch_sizes: batch sizes of the dense vs compact latency comparison ([] skips it).
        speed_repeats: interleaved timed passes per model and batch size.
        onnx: also time ONNX Runtime when installed.
        tolerance: surgery verification tolerance (max abs output difference).
    """

    sparsity_train: dict[str, Any] = field(default_factory=dict)
    scope: Literal["global", "layer"] = "global"
    gamma_init: float | None = 0.5
    speed_batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    speed_repeats: int = 20
    onnx: bool = True
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        # Validate the nested section now, so a bad recipe fails before anything runs.
        _train_section(self.sparsity_train, "prune.options.sparsity_train")
        if self.speed_repeats < 1:
            raise ConfigError("prune.options.speed_repeats: must be >= 1")
        if self.tolerance <= 0:
            raise ConfigError("prune.options.tolerance: must be > 0")


@dataclass
class SlimmingOptions(_Common):
    """Network slimming options; ``lam`` is λ of the ℓ1 subgradient (official: 1e-4 VGG, 1e-5 ResNet/DenseNet)."""

    lam: float = 1e-4


@dataclass
class ProximalSlimmingOptions(_Common):
    """Proximal network slimming options.

    Attributes:
        lam: λ on ‖ξ‖₁ (official: 0.0045 VGG-19, 0.004 DenseNet-40, 0.002 ResNet-164).
        beta: β coupling γ and ξ (official: 100 VGG-19/DenseNet-40, 0.25 ResNet-164).
        xi_init: ξ ~ U(xi_init) (official: [0.47, 0.53]).
        rule: prune channels where ``xi`` = 0 (default) or where ``gamma`` = 0 (|γ| <= gamma_tol).
        gamma_tol: the |γ| threshold of ``rule: gamma``.
    """

    lam: float = 0.0045
    beta: float = 100.0
    xi_init: list[float] = field(default_factory=lambda: [0.47, 0.53])
    rule: Literal["xi", "gamma"] = "xi"
    gamma_tol: float = 0.0


@dataclass
class StructuredOptions(_Common):
    """One-shot structured pruning options; ``criterion`` is ``l1_filter`` or ``bn_scale``."""

    criterion: str = "l1_filter"
    gamma_init: float | None = None


#: Channel surgery reads these shared fields; ``include`` and ``reparam`` have no meaning for it.
_READS = frozenset({"sparsity", "exclude", "min_keep"})


def _graph(ctx: MethodContext) -> Any:
    from prunelab.surgery import ChannelGraph

    return ChannelGraph(ctx.model, ctx.input_shape, exclude=list(ctx.exclude or []))


def _group_bns(graph: Any) -> list[str]:
    seen: dict[str, None] = {}
    for g in graph.groups:
        for m in g.bns():
            seen.setdefault(m.name, None)
    return list(seen)


def _init_gamma(ctx: MethodContext, names: list[str], value: float | None) -> None:
    if value is None:
        return
    with torch.no_grad():
        for n in names:
            ctx.model.get_submodule(n).weight.fill_(value)


def _finish(
    ctx: MethodContext, graph: Any, keep: dict[str, Tensor], options: _Common, **extra: Any
) -> MethodResult:
    """Compact, evaluate, fine-tune, measure and record (shared by every structured driver)."""
    from prunelab.metrics.speed import compare_latency
    from prunelab.surgery import arch_spec, compact

    before = ctx.measure(ctx.model)
    acc_trained = ctx.evaluate(ctx.model)
    dense_model = copy.deepcopy(ctx.model)
    model, report = compact(
        ctx.model,
        keep,
        ctx.input_shape,
        graph=graph,
        tolerance=options.tolerance,
        min_keep=ctx.min_keep,
    )
    ctx.log(
        f"surgery: removed {report.channels_removed}/{report.channels_before} channels, "
        f"max |compact - masked| = {report.max_abs_diff:.2e} (tolerance {report.tolerance:g}), "
        f"{len(report.folds_inexact)} inexact shift folds"
    )
    acc_pruned = ctx.evaluate(model)
    ctx.train(model, ctx.finetune, "finetune", seed_offset=2)
    acc_final = ctx.evaluate(model) if ctx.finetune.epochs > 0 else acc_pruned
    after = ctx.measure(model)
    share = report.channels_removed / max(report.channels_before, 1)
    row = ctx.round_row(
        model, 1, share, share, acc_pruned, acc_final,
        channels_removed=report.channels_removed, params=after["params_total"], macs=after["macs_dense"],
    )  # fmt: skip
    speed: dict[str, Any] = {}
    if options.speed_batch_sizes:
        speed = compare_latency(
            dense_model,
            model,
            ctx.input_shape,
            options.speed_batch_sizes,
            repeats=options.speed_repeats,
            onnx=options.onnx,
        )
    return MethodResult(
        model,
        rounds=[row],
        accuracy_before_finetune=acc_pruned,
        surgery=arch_spec(model),
        summary={
            "structured": {
                "accuracy_after_sparsity_training": acc_trained,
                "accuracy_after_pruning": acc_pruned,
                "accuracy_after_finetune": acc_final,
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


@register_driver("slimming", options=SlimmingOptions, reads=_READS)
def run_slimming(ctx: MethodContext, options: SlimmingOptions) -> MethodResult:
    """Network slimming: L1 on BN γ during training, global |γ| threshold, surgery, fine-tune (Liu et al. 2017)."""
    from prunelab.criteria.channels import channel_scores, select_channels
    from prunelab.regularizers import L1SubgradientHook

    graph = _graph(ctx)
    names = _group_bns(graph)
    _init_gamma(ctx, names, options.gamma_init)
    section = _train_section(options.sparsity_train, "prune.options.sparsity_train")
    ctx.log(f"sparsity training: {section.epochs} epochs, λ={options.lam} on {len(names)} BN layers")
    ctx.train(
        ctx.model,
        section,
        "sparsity",
        hooks=[L1SubgradientHook(ctx.model, options.lam, names)],
        seed_offset=1,
    )
    scores = channel_scores("bn_scale", ctx.model, graph)
    keep = select_channels(scores, ctx.sparsity, scope=options.scope, min_keep=ctx.min_keep)
    flat = torch.cat([s.flatten() for s in scores.values()])
    kept = torch.cat([scores[k][keep[k]] for k in scores])
    return _finish(ctx, graph, keep, options, lam=options.lam, threshold=float(kept.min()) if kept.numel() else 0.0,
            gamma_zero_share=float((flat == 0).float().mean()))  # fmt: skip


@register_driver(
    "proximal_slimming", options=ProximalSlimmingOptions, uses_sparsity=False, reads=_READS - {"sparsity"}
)
def run_proximal_slimming(ctx: MethodContext, options: ProximalSlimmingOptions) -> MethodResult:
    """Proximal network slimming: ξ/γ proximal updates, prune where ξ = 0, fine-tuning optional (Bui et al. 2023)."""
    from prunelab.criteria.channels import channel_scores
    from prunelab.regularizers import ProximalSlimmingHook

    if len(options.xi_init) != 2 or options.xi_init[0] > options.xi_init[1]:
        raise ConfigError("prune.options.xi_init: give [low, high] with low <= high")
    graph = _graph(ctx)
    names = _group_bns(graph)
    _init_gamma(ctx, names, options.gamma_init)
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
    # A group channel is removed only if it is zero in every BN that normalises it.
    gamma = channel_scores("bn_scale", ctx.model, graph)
    keep: dict[str, Tensor] = {}
    min_keep = ctx.min_keep
    for group in graph.groups:
        if options.rule == "xi":
            s = torch.zeros(group.size)
            for member in group.bns():
                xi = hook.xi[member.name].abs().cpu()
                for c, i in member.pairs:
                    s[c] = torch.maximum(s[c], xi[i])
            mask = s > 0
        else:
            mask = gamma[group.name] > options.gamma_tol
        if int(mask.sum()) < min(min_keep, group.size):
            # Keep the largest-|γ| channels rather than wiping the layer out.
            top = torch.argsort(gamma[group.name], descending=True, stable=True)[: min(min_keep, group.size)]
            mask[top] = True
        keep[group.name] = mask
    return _finish(ctx, graph, keep, options, lam=options.lam, beta=options.beta, rule=options.rule,
            xi_zero_share=hook.zero_fraction(),
            gamma_zero_share=float((torch.cat(list(gamma.values())) == 0).float().mean()))  # fmt: skip


@register_driver("structured", options=StructuredOptions, reads=_READS)
def run_structured(ctx: MethodContext, options: StructuredOptions) -> MethodResult:
    """One-shot structured channel pruning (L1-filter or BN scale), surgery, fine-tune (Li et al. 2017)."""
    from prunelab.criteria.channels import CHANNEL_CRITERIA, channel_scores, select_channels

    graph = _graph(ctx)
    channel_scores("l1_filter", ctx.model, graph)  # registers the built-ins before the name check
    CHANNEL_CRITERIA.get(options.criterion)
    section = _train_section(options.sparsity_train, "prune.options.sparsity_train")
    ctx.train(ctx.model, section, "pretrain", seed_offset=1)
    scores = channel_scores(options.criterion, ctx.model, graph)
    keep = select_channels(scores, ctx.sparsity, scope=options.scope, min_keep=ctx.min_keep)
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
