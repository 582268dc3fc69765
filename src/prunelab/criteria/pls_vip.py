r"""PLS + VIP criterion (group level): a filter is as important as its VIP in a PLS model of the labels.

A. Jordao, R. Kloss, F. Yamada and W. R. Schwartz, *Pruning Deep Neural Networks using Partial Least
Squares*, BMVC 2019 Workshops (arXiv:1810.07610); official code ``arturjordao/PruningNeuralNetworks``.

1. **features** (:func:`prunelab.stats.features.collect_features`): every filter ``f`` of the scored
   layers is represented by its globally max- (or average-) pooled output on each calibration sample,
   ``X ∈ R^{N×P}``; the calibration set is the whole training split by default, as in the official
   code, or a seeded subsample;
2. **PLS + VIP** (:mod:`prunelab.stats.pls`): PLS regression of the one-hot labels ``Y`` on ``X``
   (``c`` components, standardised), then

   .. math:: \mathrm{VIP}_j = \sqrt{P\,\textstyle\sum_k SS_k (w_{jk}/\lVert w_k\rVert)^2 / \sum_k SS_k},
             \qquad SS_k = (t_k^\top t_k)(q_k^\top q_k);

3. **group reduction**: a coupled group's channel scores the **mean** VIP of its member filters (one
   feature column per producer) by default: :math:`s_c = \frac{1}{|M_c|}\sum_{(m,i) \in M_c} \mathrm{VIP}_{(m,i)}`.

The fit is global — one PLS model over the filters of *all* groups scored together — so
``fit_groups(groups, model, stats)`` collects the features and fits once, and ``score_group`` reads the
fitted VIP. :func:`~prunelab.core.criterion.score_groups` calls them in that order. Statistics read:
``stats["data"]`` (the training split), ``stats["num_classes"]``, ``stats["seed"]`` (the subsample).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from prunelab.core.criterion import ChannelGroupLike, GroupMemberLike, MemberGroupCriterion, Reduction, Stats
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import ConfigError
from prunelab.stats.features import POOLINGS, collect_features
from prunelab.stats.pls import one_hot, pls_vip

__all__ = ["PlsVip"]

_FEATURES_AT = ("conv", "bn")
_PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


@CRITERIA.register("pls_vip", help="VIP of a PLS model of the labels on pooled filter outputs (Jordao 2019).")
class PlsVip(MemberGroupCriterion):
    """VIP of each filter in a PLS regression of the one-hot labels on pooled filter outputs.

    Args:
        n_components: PLS latent components ``c`` (official default 2).
        pooling: filter representation, global ``max`` (official default) or ``avg`` pooling.
        features_at: pool the ``conv`` output (official: Keras ``Conv2D.output``, before BN) or the
            output of the group's ``bn`` (a channel with γ = 0 is then constant and scores VIP 0; groups
            without BN use the conv).
        calibration_samples: samples PLS is fitted on; ``None`` = the whole training split (official), a
            number = a fixed seeded subsample (a cap for large datasets).
        calibration_batch_size: batch size of the feature pass.
        precision: PLS arithmetic, ``float64`` (matches scikit-learn) or ``float32`` (half the memory).
        reduction: how the VIPs of several member filters of one channel combine: ``mean`` (default),
            ``sum`` or ``max``.

    Attributes:
        timings: ``{"features_s", "fit_s", "samples"}`` of the last :meth:`fit_groups` (seconds, count).
    """

    requires: frozenset[str] = frozenset({"data", "num_classes", "seed"})
    default_reduction = "mean"

    def __init__(
        self,
        n_components: int = 2,
        pooling: Literal["max", "avg"] = "max",
        features_at: Literal["conv", "bn"] = "conv",
        calibration_samples: int | None = None,
        calibration_batch_size: int = 256,
        precision: Literal["float64", "float32"] = "float64",
        reduction: Reduction | None = None,
    ) -> None:
        super().__init__(reduction)
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ConfigError(
                f"n_components: must be an integer >= 1 (the paper uses 2), got {n_components!r}"
            )
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
        if features_at not in _FEATURES_AT:
            raise ConfigError(f"features_at: {features_at!r} is not one of {', '.join(_FEATURES_AT)}")
        if calibration_samples is not None and calibration_samples < 2:
            raise ConfigError("calibration_samples: must be >= 2, or null for the whole train split")
        if calibration_batch_size < 1:
            raise ConfigError("calibration_batch_size: must be >= 1")
        if precision not in _PRECISIONS:
            raise ConfigError(f"precision: {precision!r} is not one of {', '.join(_PRECISIONS)}")
        self.n_components = n_components
        self.pooling = pooling
        self.features_at = features_at
        self.calibration_samples = calibration_samples
        self.calibration_batch_size = calibration_batch_size
        self.precision = precision
        self.timings: dict[str, float] = {}
        self._vip: dict[str, Tensor] = {}

    def members(self, group: ChannelGroupLike) -> Sequence[GroupMemberLike]:
        """The members whose pooled outputs are the features: the producers, or the BNs for ``bn``."""
        # BN outputs expose dead channels (γ = 0: a constant, VIP 0); groups without BN use the conv.
        if self.features_at == "bn":
            return group.bns() or group.producers()
        return group.producers()

    def fit_groups(self, groups: Sequence[ChannelGroupLike], model: nn.Module, stats: Stats) -> None:
        """Collect the pooled features of every member of ``groups`` once and fit one PLS model on them."""
        layers: dict[str, nn.Module] = {}
        for group in groups:
            for member in self.members(group):
                layers.setdefault(member.name, model.get_submodule(member.name))
        started = time.perf_counter()
        x, labels, columns = collect_features(
            model,
            stats["data"],
            layers,
            pooling=self.pooling,
            num_samples=self.calibration_samples,
            batch_size=self.calibration_batch_size,
            seed=int(stats["seed"]),
        )
        features_s = time.perf_counter() - started
        started = time.perf_counter()
        dtype = _PRECISIONS[self.precision]
        y = one_hot(labels, int(stats["num_classes"]), dtype=dtype)
        # float64 per filter whatever the precision: the group means are taken in float64.
        vip = pls_vip(x, y, self.n_components, dtype=dtype).cpu().double()
        del x
        fit_s = time.perf_counter() - started
        positions: dict[str, list[int]] = {}
        for j, (layer, _filter) in enumerate(columns):
            positions.setdefault(layer, []).append(j)
        self._vip = {layer: vip[torch.tensor(js)] for layer, js in positions.items()}
        self.timings = {"features_s": features_s, "fit_s": fit_s, "samples": float(labels.numel())}

    def member_scores(self, member: GroupMemberLike, model: nn.Module, stats: Stats) -> Tensor:
        """The fitted VIP of each filter of ``member``.

        Raises:
            ConfigError: :meth:`fit_groups` has not seen this member (score through ``score_groups``).
        """
        if member.name not in self._vip:
            raise ConfigError(
                f"pls_vip: no VIP for {member.name!r}; fit on the groups first (score_groups calls fit_groups)"
            )
        return self._vip[member.name]

    def __repr__(self) -> str:
        return (
            f"PlsVip(n_components={self.n_components}, pooling={self.pooling!r}, "
            f"features_at={self.features_at!r}, reduction={self.reduction!r})"
        )
