r"""PLS+VIP iterative filter pruning (Jordao et al.), with L1-norm and random filter scores as baselines.

A. Jordao, R. Kloss, F. Yamada and W. R. Schwartz, *Pruning Deep Neural Networks using Partial Least
Squares*, BMVC 2019 Workshops (arXiv:1810.07610); official code ``arturjordao/PruningNeuralNetworks``.

One round (driver ``pls_vip``, repeated ``rounds`` times):

1. **features** (:mod:`prunelab.stats.features`): every filter of the prunable layers is represented by
   its globally max- (or average-) pooled output on each calibration sample, ``X ∈ R^{N×P}``; the
   calibration set is the whole training split by default, as in the official code;
2. **PLS + VIP** (:mod:`prunelab.stats.pls`): PLS regression of the one-hot labels on ``X``
   (``c = 2`` components, standardised), then

   .. math:: \mathrm{VIP}_j = \sqrt{P\,\textstyle\sum_k SS_k (w_{jk}/\lVert w_k\rVert)^2 / \sum_k SS_k},
             \qquad SS_k = (t_k^\top t_k)(q_k^\top q_k);

3. **global threshold** ``th = find_closer_th(scores, p)``: the score whose share of scores ``≤ th`` is
   closest to ``p`` (default 0.10) over all prunable filters *that remain*, so round ``r`` has removed
   about ``1 - (1 - p)^r`` of them; filters with score ``≤ th`` go, but every layer keeps at least
   ``max(1, prune.min_keep)`` filters (its best ones). The official code instead leaves a layer that
   would lose everything untouched; both keep the layer alive;
4. **surgery** (:mod:`prunelab.surgery`): the filters, their BN channels and the next layer's input
   channels are physically removed, verified against the masked network, and the network is
   **fine-tuned** (the recipe's ``finetune`` section, per round); the next round re-fits PLS on the
   smaller network.

Which layers are pruned (the official code's rules, expressed through the coupled channel groups):

- a group whose channels are summed by a residual addition (the residual stream of a ResNet) is not
  pruned by default, so a ResNet loses filters only in the first conv of each residual block — exactly
  what the official pruned ResNet-56/110 models show. ``include_residual: true`` prunes those groups too,
  scoring a group channel by the mean VIP of its member filters (one feature column per producer);
- the last conv layer of a plain chain is excluded by default (``exclude_last_conv``), as the official
  ``layers_to_prune`` does for VGG;
- only conv filters are scored (the official code prunes ``Conv2D`` layers only); groups produced by a
  Linear layer and the classifier head stay.

``criterion: l1_filter`` or ``random`` runs the *same* loop (same threshold rule, surgery and fine-tuning)
with the L1 norm of the filters (Li et al., ICLR 2017) or uniform random scores, the baselines of the
study in ``benchmarks/pls_vip.md``. Presets: ``pls_vip``, ``l1_filter_iterative``,
``random_filter_iterative``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunelab.errors import ConfigError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method

__all__ = [
    "PlsVipOptions",
    "conv_filters",
    "prunable_groups",
    "score_groups",
    "select_filters",
]


def _channel_criteria() -> Any:
    # Imported lazily: the channel criteria pull in the surgery (Torch-Pruning) on first use only.
    from prunelab.criteria import bn_scale, l1_filter  # noqa: F401  (register the built-ins)
    from prunelab.criteria.channels import CHANNEL_CRITERIA

    return CHANNEL_CRITERIA


@dataclass
class PlsVipOptions:
    """Options of the ``pls_vip`` driver (``prune.options``).

    Attributes:
        rounds: prune → fine-tune rounds (the paper's tables go to 5-10).
        fraction: ``p``, the share of the *remaining* prunable filters removed per round, in (0, 1)
            (0.10 in the paper's ResNet/VGG runs).
        criterion: ``pls_vip`` (the method) or a channel criterion (``l1_filter``, ``random``, ...) for
            the baselines; all run the same loop.
        n_components: PLS latent components ``c`` (official default 2).
        pooling: filter representation, global ``max`` (official default) or ``avg`` pooling.
        features_at: pool the ``conv`` output (official: Keras ``Conv2D.output``, before BN) or the
            output of the group's ``bn`` (a channel with γ = 0 is then constant and scores VIP 0).
        calibration_samples: samples PLS is fitted on; ``null`` = the whole training split (official),
            a number = a fixed seeded subsample (a cap for large datasets).
        calibration_batch_size: batch size of the feature pass.
        include_residual: also prune channel groups joined by a residual addition (default off: only
            the first conv of each residual block is pruned, as the official ResNets).
        exclude_last_conv: keep the last conv layer whole (official ``layers_to_prune`` for VGG).
        scope: ``global`` (one threshold over all prunable filters, official) or ``layer`` (the same rule
            inside every layer).
        precision: PLS arithmetic, ``float64`` (matches scikit-learn) or ``float32`` (half the memory).
        finetune_epochs: fine-tuning epochs per round (``null``: the recipe's ``finetune.epochs``).
        tolerance: surgery verification tolerance (max abs output difference).
    """

    rounds: int = 5
    fraction: float = 0.10
    criterion: str = "pls_vip"
    n_components: int = 2
    pooling: Literal["max", "avg"] = "max"
    features_at: Literal["conv", "bn"] = "conv"
    calibration_samples: int | None = None
    calibration_batch_size: int = 256
    include_residual: bool = False
    exclude_last_conv: bool = True
    scope: Literal["global", "layer"] = "global"
    precision: Literal["float64", "float32"] = "float64"
    finetune_epochs: int | None = None
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        # Everything is checked at recipe validation time, before any training starts.
        if self.rounds < 1:
            raise ConfigError("prune.options.rounds: must be >= 1")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(
                f"prune.options.fraction: {self.fraction} is impossible; p is the share of the remaining "
                "filters removed per round, in (0, 1) (0.1 = 10 %)"
            )
        if self.n_components < 1:
            raise ConfigError("prune.options.n_components: must be >= 1 (the paper uses 2)")
        if self.calibration_samples is not None and self.calibration_samples < 2:
            raise ConfigError(
                "prune.options.calibration_samples: must be >= 2, or null for the whole train split"
            )
        if self.calibration_batch_size < 1:
            raise ConfigError("prune.options.calibration_batch_size: must be >= 1")
        if self.finetune_epochs is not None and self.finetune_epochs < 0:
            raise ConfigError("prune.options.finetune_epochs: must be >= 0, or null for finetune.epochs")
        if self.tolerance <= 0:
            raise ConfigError("prune.options.tolerance: must be > 0")
        if self.criterion != "pls_vip":
            criteria = _channel_criteria()
            if self.criterion not in criteria:
                raise ConfigError(
                    f"prune.options.criterion: {self.criterion!r} is neither pls_vip nor a channel criterion "
                    f"({', '.join(sorted(criteria.names()))})"
                )


def conv_filters(model: nn.Module) -> int:
    """Total output filters of the model's ``nn.Conv2d`` layers (the paper's "filters" count)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def prunable_groups(
    model: nn.Module, graph: Any, *, include_residual: bool = False, exclude_last_conv: bool = True
) -> tuple[list[Any], dict[str, str]]:
    """The channel groups PLS+VIP may prune, and why each other group is left alone.

    Args:
        model: the network ``graph`` was traced on.
        graph: its :class:`~prunelab.surgery.ChannelGraph`.
        include_residual: allow groups whose channels are summed by a residual addition.
        exclude_last_conv: skip the group produced by the last ``nn.Conv2d`` in module order when it is a
            plain chain (the official VGG rule; a residual stream ending in the last conv is governed by
            ``include_residual``).

    Returns:
        ``(groups, {group: reason skipped})``.
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    last_conv = convs[-1] if convs else None
    groups: list[Any] = []
    skipped: dict[str, str] = {}
    for group in graph.groups:
        producers = group.producers()
        names = {m.name for m in producers}
        if not producers or any(m.kind != "Conv2d" for m in producers):
            skipped[group.name] = "not produced by conv filters (the official code prunes Conv2D layers only)"
        elif "residual" in group.coupling and not include_residual:
            skipped[group.name] = "joined by a residual addition (set include_residual: true to prune it)"
        elif exclude_last_conv and last_conv in names and group.coupling == "plain":
            skipped[group.name] = "last conv layer (set exclude_last_conv: false to prune it)"
        else:
            groups.append(group)
    return groups, skipped


def _vip_group_scores(
    ctx: MethodContext, model: nn.Module, groups: list[Any], options: PlsVipOptions
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Per-channel mean VIP of every group's producer filters, and timings."""
    from prunelab.stats.features import collect_features
    from prunelab.stats.pls import one_hot, pls_vip

    def members(group: Any) -> list[Any]:
        # BN outputs expose dead channels (γ = 0: a constant, VIP 0); groups without BN use the conv.
        return (group.bns() or group.producers()) if options.features_at == "bn" else group.producers()

    layers: dict[str, nn.Module] = {}
    for group in groups:
        for member in members(group):
            layers.setdefault(member.name, model.get_submodule(member.name))
    started = time.perf_counter()
    x, labels, columns = collect_features(
        model,
        ctx.data.train,
        layers,
        pooling=options.pooling,
        num_samples=options.calibration_samples,
        batch_size=options.calibration_batch_size,
        seed=ctx.seed,
    )
    features_s = time.perf_counter() - started
    started = time.perf_counter()
    dtype = torch.float64 if options.precision == "float64" else torch.float32
    y = one_hot(labels, int(ctx.data.num_classes), dtype=dtype)
    vip = pls_vip(x, y, options.n_components, dtype=dtype).cpu()
    del x
    fit_s = time.perf_counter() - started
    column = {key: j for j, key in enumerate(columns)}
    scores: dict[str, Tensor] = {}
    for group in groups:
        total = torch.zeros(group.size, dtype=torch.float64)
        count = torch.zeros(group.size, dtype=torch.float64)
        for member in members(group):
            for c, i in member.pairs:
                total[c] += vip[column[(member.name, i)]]
                count[c] += 1
        # A coupled group is scored by the mean VIP of its member filters (one column per producer).
        scores[group.name] = total / count.clamp_min(1)
    return scores, {"features_s": features_s, "fit_s": fit_s, "samples": float(labels.numel())}


def score_groups(
    ctx: MethodContext,
    model: nn.Module,
    graph: Any,
    groups: list[Any],
    options: PlsVipOptions,
    round_index: int,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Per-channel scores (higher = keep) of the prunable ``groups`` under ``options.criterion``."""
    if options.criterion == "pls_vip":
        return _vip_group_scores(ctx, model, groups, options)
    fn = _channel_criteria().get(options.criterion)
    if options.criterion == "random":
        # A fresh draw every round, reproducible from the recipe seed.
        all_scores = fn(model, graph, seed=ctx.seed * 1000 + round_index)
    else:
        all_scores = fn(model, graph)
    return {g.name: all_scores[g.name].double().cpu() for g in groups}, {}


def select_filters(
    scores: dict[str, Tensor], fraction: float, *, scope: str = "global", min_keep: int = 1
) -> tuple[dict[str, Tensor], float | None]:
    """Keep masks: remove the channels scored ``≤ find_closer_th(scores, fraction)``, keeping ``min_keep`` per group.

    Args:
        scores: ``{group: per-channel scores}`` of the prunable groups.
        fraction: ``p``, the share to remove, in (0, 1).
        scope: ``global`` (one threshold over every group, the official rule) or ``layer`` (the same rule
            within each group).
        min_keep: channels every group keeps at least (its best-scored ones).

    Returns:
        ``(keep masks, global threshold or None for scope layer)``.
    """
    from prunelab.stats.pls import find_closer_th

    threshold: float | None = None
    if scope == "global":
        threshold = find_closer_th(torch.cat([s.flatten() for s in scores.values()]), fraction)
    keep: dict[str, Tensor] = {}
    for name, s in scores.items():
        th = threshold if threshold is not None else find_closer_th(s, fraction)
        mask = s > th
        need = min(max(1, min_keep), s.numel())
        if int(mask.sum()) < need:
            # Never empty a layer: keep its best channels (stable order for ties).
            mask[torch.argsort(s, descending=True, stable=True)[:need]] = True
        keep[name] = mask
    return keep, threshold


@register_driver("pls_vip", options=PlsVipOptions, uses_sparsity=False, reads={"exclude", "min_keep"})
def run_pls_vip(ctx: MethodContext, options: PlsVipOptions) -> MethodResult:
    """PLS+VIP iterative filter pruning: fraction p per round, global threshold, surgery, fine-tune (Jordao et al. 2019)."""
    from prunelab import distributed as dist
    from prunelab.surgery import ChannelGraph, arch_spec, compact

    min_keep = max(1, ctx.min_keep)
    section = ctx.finetune
    if options.finetune_epochs is not None:
        section = dataclasses.replace(section, epochs=options.finetune_epochs)
    model = ctx.model
    dense = ctx.measure(model)
    filters0 = conv_filters(model)
    graph = ChannelGraph(model, ctx.input_shape, exclude=list(ctx.exclude or []))
    groups, skipped = prunable_groups(
        ctx.model,
        graph,
        include_residual=options.include_residual,
        exclude_last_conv=options.exclude_last_conv,
    )
    if not groups:
        raise ConfigError(
            "prune: no prunable conv filter group in this model under the pls_vip layer rules; "
            "set prune.options.include_residual or exclude_last_conv: false"
        )
    names = [g.name for g in groups]
    prunable0 = sum(g.size for g in groups)
    ctx.log(
        f"{options.criterion}: {len(groups)} prunable layers, {prunable0} of {filters0} conv filters; "
        f"{len(skipped)} groups kept whole; p={options.fraction}, {options.rounds} rounds"
    )
    result = MethodResult(model)
    history = result.rounds
    report = None
    for r in range(1, options.rounds + 1):
        if r > 1:
            graph = ChannelGraph(model, ctx.input_shape, exclude=list(ctx.exclude or []))
        groups = [graph.by_name[n] for n in names]
        scores, timing = score_groups(ctx, model, graph, groups, options, r)
        keep, threshold = select_filters(scores, options.fraction, scope=options.scope, min_keep=min_keep)
        # Identical decisions on every rank: rank 0's masks win (a no-op single-process).
        keep = dist.broadcast_object({k: v.cpu() for k, v in keep.items()})
        removed_now = sum(int((~k).sum()) for k in keep.values())
        model, report = compact(
            model, keep, ctx.input_shape, graph=graph, tolerance=options.tolerance, min_keep=min_keep
        )
        before = ctx.evaluate(model)
        result.accuracy_before_finetune = before
        ctx.train(model, section, f"finetune{r}", seed_offset=r)
        after = ctx.evaluate(model) if section.epochs > 0 else before
        now = ctx.measure(model)
        filters = conv_filters(model)
        prunable = sum(int(report.groups[n][1]) for n in names)
        row = ctx.round_row(
            model,
            r,
            1.0 - (1.0 - options.fraction) ** r,
            1.0 - prunable / prunable0,
            before,
            after,
            criterion=options.criterion,
            threshold=threshold if threshold is not None else "",
            filters_removed_round=removed_now,
            filters=filters,
            filters_removed_percent=round(100.0 * (1 - filters / filters0), 4),
            prunable_removed_percent=round(100.0 * (1 - prunable / prunable0), 4),
            params=now["params_total"],
            params_removed_percent=round(100.0 * (1 - now["params_total"] / dense["params_total"]), 4),
            macs=now["macs_dense"],
            macs_removed_percent=round(100.0 * (1 - now["macs_dense"] / dense["macs_dense"]), 4),
            surgery_max_abs_diff=report.max_abs_diff,
            features_s=round(timing.get("features_s", 0.0), 3),
            fit_s=round(timing.get("fit_s", 0.0), 3),
        )
        history.append(row)
        ctx.log(
            f"round {r}: removed {removed_now} filters ({row['filters_removed_percent']:.2f} % of all conv "
            f"filters), MACs -{row['macs_removed_percent']:.2f} %, params -{row['params_removed_percent']:.2f} %"
        )
    final = history[-1]
    result.model = model
    result.surgery = arch_spec(model)
    result.summary["pls_vip"] = {
        "criterion": options.criterion,
        "fraction": options.fraction,
        "rounds": options.rounds,
        "n_components": options.n_components,
        "pooling": options.pooling,
        "features_at": options.features_at,
        "calibration_samples": options.calibration_samples,
        "scope": options.scope,
        "layers": names,
        "skipped_groups": skipped,
        "filters_before": filters0,
        "filters_after": final["filters"],
        "filters_removed_share": final["filters_removed_percent"] / 100.0,
        "prunable_removed_share": final["prunable_removed_percent"] / 100.0,
        "params_before": dense["params_total"],
        "params_after": final["params"],
        "params_removed_share": final["params_removed_percent"] / 100.0,
        "macs_before": dense["macs_dense"],
        "macs_after": final["macs"],
        "macs_removed_share": final["macs_removed_percent"] / 100.0,
        "accuracy_after_pruning": final["accuracy_before_finetune"],
        "accuracy_after_finetune": final["accuracy_after_finetune"],
    }
    if report is not None:
        result.summary["surgery"] = report.to_dict()
    return result


_DESCRIPTION = (
    "iterative filter pruning, p = 10 % of the remaining filters per round, global threshold, surgery"
)
register_method("pls_vip", f"PLS+VIP {_DESCRIPTION}, fine-tune (Jordao et al. 2019).", "pls_vip")
register_method(
    "l1_filter_iterative",
    f"L1-norm filters in the PLS+VIP loop: {_DESCRIPTION}, fine-tune (baseline).",
    "pls_vip",
    criterion="l1_filter",
)
register_method(
    "random_filter_iterative",
    f"Random filters in the PLS+VIP loop: {_DESCRIPTION}, fine-tune (control baseline).",
    "pls_vip",
    criterion="random",
)
