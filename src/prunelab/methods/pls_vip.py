r"""PLS+VIP iterative filter pruning (Jordao et al.), with L1-norm and random filter scores as baselines.

A. Jordao, R. Kloss, F. Yamada and W. R. Schwartz, *Pruning Deep Neural Networks using Partial Least
Squares*, BMVC 2019 Workshops (arXiv:1810.07610); official code ``arturjordao/PruningNeuralNetworks``.

One round (driver ``pls_vip``, repeated ``rounds`` times):

1. **features** (:mod:`prunelab.stats.features`): every filter of the prunable layers is represented by
   its globally max- (or average-) pooled output on each calibration sample, ``X ∈ R^{N×P}``; the
   calibration set is the whole training split by default, as in the official code;
2. **PLS + VIP** (the group-level criterion ``pls_vip``, :mod:`prunelab.criteria.pls_vip`, on
   :mod:`prunelab.stats.pls`): PLS regression of the one-hot labels on ``X`` (``c = 2`` components,
   standardised), then

   .. math:: \mathrm{VIP}_j = \sqrt{P\,\textstyle\sum_k SS_k (w_{jk}/\lVert w_k\rVert)^2 / \sum_k SS_k},
             \qquad SS_k = (t_k^\top t_k)(q_k^\top q_k);

3. **global threshold** ``th = find_closer_th(scores, p)``: the score whose share of scores ``≤ th`` is
   closest to ``p`` (default 0.10) over all prunable filters *that remain*, so round ``r`` has removed
   about ``1 - (1 - p)^r`` of them; filters with score ``≤ th`` go, but every layer keeps at least
   ``max(1, prune.min_keep)`` filters (its best ones). The official code instead leaves a layer that
   would lose everything untouched; both keep the layer alive;
4. **surgery** (the structured round of :mod:`prunelab.methods.structured`): the filters, their BN
   channels and the next layer's input channels are physically removed, verified against the masked
   network, and the network is **fine-tuned** (the recipe's ``finetune`` section, per round); the next
   round re-fits PLS on the smaller network.

Which layers are pruned (the official code's rules, expressed through the coupled channel groups):

- a group whose channels are summed by a residual addition (the residual stream of a ResNet) is not
  pruned by default, so a ResNet loses filters only in the first conv of each residual block — exactly
  what the official pruned ResNet-56/110 models show. ``include_residual: true`` prunes those groups too,
  scoring a group channel by the mean VIP of its member filters (one feature column per producer);
- the last conv layer of a plain chain is excluded by default (``exclude_last_conv``), as the official
  ``layers_to_prune`` does for VGG;
- only conv filters are scored by default (the official code prunes ``Conv2D`` layers only): groups
  produced by convolutions of any kind (ordinary, grouped, transposed, 1-D) are prunable, groups produced
  by a Linear layer stay unless ``include_linear: true``, and the classifier head (every output layer)
  always stays. A group whose channels feed a grouped convolution loses them in periodic sets (the same
  position of every one of its ``divisions`` blocks, each set scored by its mean), as the surgery needs.

Any other group-level criterion runs the *same* loop (same threshold rule, surgery and fine-tuning):
``criterion: l1_filter`` (the L1 norm of the filters, Li et al., ICLR 2017) and ``criterion: random``
(uniform scores, drawn afresh every round from the recipe seed) are the baselines of the study in
``benchmarks/pls_vip.md``, shipped as the presets ``l1_filter_iterative`` and ``random_filter_iterative``
of this driver, with ``l1_filter_layer_iterative`` (``scope: layer``, Li et al.'s per-layer rule).

prunelab's own extension, not the paper's: ``cost_aware: true`` (preset ``pls_vip_per_mac``) ranks by
score per MAC saved, :math:`s'_c = s_c / (m_c / \bar m)` with :math:`m_c` the MACs removing channel ``c``
saves (:func:`prunelab.metrics.channel_macs`) and :math:`\bar m` their mean.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunelab.core.criterion import score_groups
from prunelab.core.selectors import guard_min_keep
from prunelab.criteria import build_criterion, check_criterion
from prunelab.errors import ConfigError
from prunelab.methods.base import MethodContext, MethodResult, register_driver, register_method
from prunelab.methods.structured import (
    Record,
    channel_graph,
    structured_round,
)

__all__ = ["PlsVipOptions", "conv_filters", "prunable_groups", "select_filters"]

#: The options of this driver that configure the ``pls_vip`` criterion (its constructor arguments).
_PLS_SETTINGS = ("n_components", "pooling", "features_at", "calibration_samples", "calibration_batch_size",
                 "precision")  # fmt: skip


@dataclass
class PlsVipOptions:
    """Options of the ``pls_vip`` driver (``prune.options``).

    The six PLS settings (``n_components`` … ``precision``) configure the ``pls_vip`` criterion
    (:class:`prunelab.criteria.pls_vip.PlsVip`); the baselines ignore them, so one recipe serves the
    whole criterion comparison (``recipes/pls_vip/study.sweep.yaml`` swaps only the method).

    Attributes:
        rounds: prune → fine-tune rounds (the paper's tables go to 5-10).
        fraction: ``p``, the share of the *remaining* prunable filters removed per round, in (0, 1)
            (0.10 in the paper's ResNet/VGG runs).
        criterion: a group-level criterion (``prunelab list criteria``): ``pls_vip`` (the method) or a
            baseline (``l1_filter``, ``random``, ...); all run the same loop.
        n_components: PLS latent components ``c`` (official default 2).
        pooling: filter representation, global ``max`` (official default) or ``avg`` pooling.
        features_at: pool the ``conv`` output (official: Keras ``Conv2D.output``, before BN) or the
            output of the group's ``bn`` (a channel with γ = 0 is then constant and scores VIP 0).
        calibration_samples: samples PLS is fitted on; ``null`` = the whole training split (official),
            a number = a fixed seeded subsample (a cap for large datasets).
        calibration_batch_size: batch size of the feature pass.
        precision: PLS arithmetic, ``float64`` (matches scikit-learn) or ``float32`` (half the memory).
        include_residual: also prune channel groups joined by a residual addition (default off: only
            the first conv of each residual block is pruned, as the official ResNets).
        include_linear: also prune groups produced by Linear layers (default off: the official code
            prunes conv filters only); their features are the Linear outputs pooled over every dimension
            but the last.
        exclude_last_conv: keep the last conv layer whole (official ``layers_to_prune`` for VGG).
        scope: ``global`` (one threshold over all prunable filters, official) or ``layer`` (the same rule
            inside every layer).
        finetune_epochs: fine-tuning epochs per round (``null``: the recipe's ``finetune.epochs``).
        tolerance: surgery verification tolerance (max abs output difference).
        cost_aware: divide every channel's score by the MACs its removal saves
            (:func:`prunelab.metrics.channel_macs`, normalised to mean 1), so the ranking is
            importance per MAC. prunelab's own extension, not the paper's criterion: VIP alone prefers
            the cheap late-stage filters (``benchmarks/pls_vip.md``).
    """

    rounds: int = 5
    fraction: float = 0.10
    criterion: str = "pls_vip"
    n_components: int = 2
    pooling: Literal["max", "avg"] = "max"
    features_at: Literal["conv", "bn"] = "conv"
    calibration_samples: int | None = None
    calibration_batch_size: int = 256
    precision: Literal["float64", "float32"] = "float64"
    include_residual: bool = False
    include_linear: bool = False
    exclude_last_conv: bool = True
    scope: Literal["global", "layer"] = "global"
    finetune_epochs: int | None = None
    tolerance: float = 1e-4
    cost_aware: bool = False

    def __post_init__(self) -> None:
        # Everything is checked at recipe validation time, before any training starts.
        if self.rounds < 1:
            raise ConfigError("rounds: must be >= 1")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(
                f"fraction: {self.fraction} is impossible; p is the share of the remaining "
                "filters removed per round, in (0, 1) (0.1 = 10 %)"
            )
        if self.finetune_epochs is not None and self.finetune_epochs < 0:
            raise ConfigError("finetune_epochs: must be >= 0, or null for finetune.epochs")
        if self.tolerance <= 0:
            raise ConfigError("tolerance: must be > 0")
        check_criterion(self.criterion, "group")
        # The PLS settings are checked by the criterion they configure; its messages start with the field.
        build_criterion("pls_vip", "group", **self.pls_settings())

    def pls_settings(self) -> dict[str, Any]:
        """The options of the ``pls_vip`` criterion: ``{n_components: ..., ..., precision: ...}``."""
        return {name: getattr(self, name) for name in _PLS_SETTINGS}


#: Member kinds of the channel graph whose output channels are conv filters (any convolution).
_CONV_KINDS = frozenset(
    {"Conv1d", "Conv2d", "GroupedConv2d", "DepthwiseConv2d", "ConvTranspose1d", "ConvTranspose2d"}
)


def _is_conv_kind(kind: str) -> bool:
    return kind in _CONV_KINDS or kind.startswith(("Conv", "GroupedConv"))


def conv_filters(model: nn.Module) -> int:
    """Total output filters of the model's ``nn.Conv2d`` / ``nn.ConvTranspose2d`` layers (the paper's "filters" count)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))


def prunable_groups(
    model: nn.Module,
    graph: Any,
    *,
    include_residual: bool = False,
    exclude_last_conv: bool = True,
    include_linear: bool = False,
) -> tuple[list[Any], dict[str, str]]:
    """The channel groups PLS+VIP may prune, and why each other group is left alone.

    Args:
        model: the network ``graph`` was traced on.
        graph: its :class:`~prunelab.surgery.ChannelGraph`.
        include_residual: allow groups whose channels are summed by a residual addition.
        exclude_last_conv: skip the group produced by the last ``nn.Conv2d`` in module order when it is a
            plain chain (the official VGG rule; a residual stream ending in the last conv is governed by
            ``include_residual``).
        include_linear: allow groups produced by Linear layers (off: conv filters only, as the official
            code).

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
        kinds = {m.kind for m in producers}
        linear = "Linear" in kinds and all(k == "Linear" or _is_conv_kind(k) for k in kinds)
        if not producers or not all(_is_conv_kind(k) or (include_linear and k == "Linear") for k in kinds):
            skipped[group.name] = (
                "produced by a Linear layer (set include_linear: true to prune it)"
                if linear
                else "not produced by conv filters (the official code prunes Conv2D layers only)"
            )
        elif "residual" in group.coupling and not include_residual:
            skipped[group.name] = "joined by a residual addition (set include_residual: true to prune it)"
        elif exclude_last_conv and last_conv in names and group.coupling == "plain":
            skipped[group.name] = "last conv layer (set exclude_last_conv: false to prune it)"
        else:
            groups.append(group)
    return groups, skipped


def _round_criterion(options: PlsVipOptions, seed: int, round_index: int) -> Any:
    """A fresh criterion for one round: PLS re-fits on the smaller network, a seeded one redraws."""
    from prunelab.criteria import CRITERIA

    if options.criterion == "pls_vip":
        return build_criterion("pls_vip", "group", **options.pls_settings())
    if "seed" in inspect.signature(CRITERIA.get(options.criterion)).parameters:
        # A fresh draw every round (random), reproducible from the recipe seed.
        return build_criterion(options.criterion, "group", seed=seed * 1000 + round_index)
    return build_criterion(options.criterion, "group")


def _round_scores(
    ctx: MethodContext, model: nn.Module, graph: Any, names: list[str], criterion: Any
) -> dict[str, Tensor]:
    """Per-channel scores (float64, higher = keep) of the prunable groups ``names``."""
    groups = [graph.by_name[n] for n in names]
    # A criterion that fits (PLS) fits on the prunable groups only, as the official code does; the others
    # score every group in graph order, so that a seeded draw does not depend on the layer rules.
    scored = groups if callable(getattr(criterion, "fit_groups", None)) else graph.groups
    scores = score_groups(
        criterion, scored, model, ctx.statistics(model, getattr(criterion, "requires", frozenset()))
    )
    return {n: scores[n].double() for n in names}


def _per_mac(scores: dict[str, Tensor], model: nn.Module, graph: Any, input_shape: Any) -> dict[str, Tensor]:
    """``score / cost`` per channel, the cost being the MACs its removal saves over the mean such cost."""
    from prunelab.metrics import channel_macs

    costs = channel_macs(model, [graph.by_name[n] for n in scores], input_shape)
    mean = torch.cat(list(costs.values())).mean()
    # A channel without measured MACs (it feeds only normalisations) costs the cheapest channel's share.
    floor = min((float(c[c > 0].min()) for c in costs.values() if bool((c > 0).any())), default=1.0)
    return {n: s / (costs[n].clamp_min(floor) / mean) for n, s in scores.items()}


def select_filters(
    scores: Mapping[str, Tensor],
    fraction: float,
    *,
    scope: str = "global",
    min_keep: int = 1,
    divisions: Mapping[str, int] | None = None,
) -> tuple[dict[str, Tensor], float | None]:
    """Keep masks: remove the channels scored ``≤ find_closer_th(scores, fraction)``, keeping ``min_keep`` per group.

    Args:
        scores: ``{group: per-channel scores}`` of the prunable groups.
        fraction: ``p``, the share to remove, in (0, 1).
        scope: ``global`` (one threshold over every group, the official rule) or ``layer`` (the same rule
            within each group).
        min_keep: channels every group keeps at least (its best-scored ones); at least 1, so no layer is
            ever emptied.
        divisions: ``{group: blocks}`` of groups whose channels go in periodic sets
            (:attr:`prunelab.surgery.ChannelGroup.divisions`, a grouped conv's groups): channel ``p`` of
            every block scores the blocks' mean and is kept or removed with the others (kept when the
            ``min_keep`` guard keeps any of them).

    Returns:
        ``(keep masks, global threshold or None for scope layer)``.
    """
    from prunelab.stats.pls import find_closer_th

    blocks = {k: int(d) for k, d in (divisions or {}).items() if int(d) > 1 and k in scores}
    scores = dict(scores)
    for name, d in blocks.items():
        scores[name] = scores[name].reshape(d, -1).mean(dim=0).repeat(d)
    threshold: float | None = None
    if scope == "global":
        threshold = find_closer_th(torch.cat([s.flatten() for s in scores.values()]), fraction)
    keep: dict[str, Tensor] = {}
    for name, s in scores.items():
        th = threshold if threshold is not None else find_closer_th(s, fraction)
        keep[name] = guard_min_keep(s > th, s, max(1, min_keep))
        if name in blocks:
            keep[name] = keep[name].reshape(blocks[name], -1).any(dim=0).repeat(blocks[name])
    return keep, threshold


def _recorder(
    options: PlsVipOptions,
    r: int,
    threshold: float | None,
    timing: Mapping[str, float],
    names: list[str],
    filters0: int,
    prunable0: int,
    dense: Mapping[str, int],
) -> Record:
    """The ``rounds.csv`` row of round ``r``: filters, parameters and MACs removed so far, the fit's timings."""

    def record(model: nn.Module, report: Any, now: Mapping[str, int]) -> tuple[float, float, dict[str, Any]]:
        filters = conv_filters(model)
        prunable = sum(int(report.groups[n][1]) for n in names)
        columns = {
            "criterion": options.criterion,
            "threshold": threshold if threshold is not None else "",
            "filters_removed_round": report.channels_removed,
            "filters": filters,
            # A model without conv filters (an MLP with include_linear) has none to remove.
            "filters_removed_percent": round(100.0 * (1 - filters / filters0), 4) if filters0 else 0.0,
            "prunable_removed_percent": round(100.0 * (1 - prunable / prunable0), 4),
            "params": now["params_total"],
            "params_removed_percent": round(100.0 * (1 - now["params_total"] / dense["params_total"]), 4),
            "macs": now["macs_dense"],
            "macs_removed_percent": round(100.0 * (1 - now["macs_dense"] / dense["macs_dense"]), 4),
            "surgery_max_abs_diff": report.max_abs_diff,
            "features_s": round(timing.get("features_s", 0.0), 3),
            "fit_s": round(timing.get("fit_s", 0.0), 3),
        }
        return 1.0 - (1.0 - options.fraction) ** r, 1.0 - prunable / prunable0, columns

    return record


def _planned_epochs(options: PlsVipOptions, finetune: int) -> int:
    """Every round fine-tunes ``finetune_epochs`` (or the recipe's ``finetune.epochs``)."""
    return options.rounds * (finetune if options.finetune_epochs is None else options.finetune_epochs)


@register_driver(
    "pls_vip",
    options=PlsVipOptions,
    uses_sparsity=False,
    reads={"exclude", "min_keep"},
    epochs=_planned_epochs,
)
def run_pls_vip(ctx: MethodContext, options: PlsVipOptions) -> MethodResult:
    """The loop PLS+VIP and its baselines share: score filters, remove a share p of them, surgery, fine-tune."""
    from prunelab.surgery import arch_spec

    min_keep = max(1, ctx.min_keep)
    section = ctx.finetune
    if options.finetune_epochs is not None:
        section = dataclasses.replace(section, epochs=options.finetune_epochs)
    model = ctx.model
    dense = ctx.measure(model)
    filters0 = conv_filters(model)
    graph = channel_graph(ctx, model)
    groups, skipped = prunable_groups(
        model,
        graph,
        include_residual=options.include_residual,
        exclude_last_conv=options.exclude_last_conv,
        include_linear=options.include_linear,
    )
    if not groups:
        raise ConfigError(
            "prune: no prunable conv filter group in this model under the pls_vip layer rules; "
            "set prune.options.include_residual, include_linear or exclude_last_conv: false"
        )
    names = [g.name for g in groups]
    prunable0 = sum(g.size for g in groups)
    ctx.log(
        f"{options.criterion}: {len(groups)} prunable layers, {prunable0} of {filters0} conv filters; "
        f"{len(skipped)} groups kept whole; p={options.fraction}, {options.rounds} rounds"
    )
    result = MethodResult(model)
    report = None
    for r in range(1, options.rounds + 1):
        if r > 1:
            graph = channel_graph(ctx, model)
        criterion = _round_criterion(options, ctx.seed, r)
        scores = _round_scores(ctx, model, graph, names, criterion)
        if options.cost_aware:
            scores = _per_mac(scores, model, graph, ctx.input_shape)
        divisions = {n: int(getattr(graph.by_name[n], "divisions", 1)) for n in names}
        keep, threshold = select_filters(
            scores, options.fraction, scope=options.scope, min_keep=min_keep, divisions=divisions
        )
        record = _recorder(
            options, r, threshold, getattr(criterion, "timings", {}), names, filters0, prunable0, dense
        )
        done = structured_round(
            ctx, model, graph, keep, index=r, tag=f"finetune{r}", section=section, seed_offset=r,
            tolerance=options.tolerance, min_keep=min_keep, record=record,
        )  # fmt: skip
        model, report, row = done.model, done.report, done.row
        result.accuracy_before_finetune = done.accuracy_before_finetune
        result.rounds.append(row)
        ctx.log(
            f"round {r}: removed {row['filters_removed_round']} filters ({row['filters_removed_percent']:.2f} % "
            f"of all conv filters), MACs -{row['macs_removed_percent']:.2f} %, "
            f"params -{row['params_removed_percent']:.2f} %"
        )
    final = result.rounds[-1]
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
        "cost_aware": options.cost_aware,
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
    "l1_filter_layer_iterative",
    "L1-norm filters in the PLS+VIP loop, the same share from every layer (Li et al.'s per-layer rule), "
    "surgery, fine-tune (baseline).",
    "pls_vip",
    criterion="l1_filter",
    scope="layer",
)
register_method(
    "pls_vip_per_mac",
    f"PLS+VIP per MAC saved (prunelab's cost-aware extension) in the same loop: {_DESCRIPTION}, fine-tune.",
    "pls_vip",
    cost_aware=True,
)
register_method(
    "random_filter_iterative",
    f"Random filters in the PLS+VIP loop: {_DESCRIPTION}, fine-tune (control baseline).",
    "pls_vip",
    criterion="random",
)
