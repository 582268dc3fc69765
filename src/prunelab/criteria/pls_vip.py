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
fitted VIP. :func:`~prunelab.core.criterion.score_groups` calls them in that order.

Any group of :class:`prunelab.surgery.ChannelGraph` can be scored: its producers (``Conv2d``,
``GroupedConv2d``, ``ConvTranspose2d``, ``Conv1d``, ``Linear``, ...) give one feature per output
channel, pooled over every dimension but the channel dimension (dim 1 for convolutions, the last for a
Linear, so a Linear over channels-last ``(N, H, W, C)`` pools over ``H, W``:
:mod:`prunelab.stats.features`). Members that are not modules (a bare ``nn.Parameter``) give no
feature.

Statistics read, either

- ``stats["batches"]``: calibration ``(x, y)`` batches (``x`` a tensor, a tuple/list of positional
  inputs or a dict of keyword inputs; ``y`` class indices, or one-hot rows), with ``stats["num_classes"]``
  when given (else ``max(y) + 1``) — the plain-Python path; or
- ``stats["data"]`` (the training split, all of it or a seeded subsample of ``calibration_samples``),
  ``stats["num_classes"]`` and ``stats["seed"]`` — the recipe path (the official code fits on the whole
  training set).

``batches`` wins when both are given. ``requires`` is empty because either set will do; a call with
neither is a one-line :class:`~prunelab.errors.ConfigError` naming both.

Example (plain Python, any model the channel surgery handles):

    >>> import torch
    >>> from torch import nn
    >>> from prunelab.core.criterion import score_groups
    >>> from prunelab.criteria import build_criterion
    >>> from prunelab.surgery import ChannelGraph
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(
    ...     nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...     nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
    ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> graph = ChannelGraph(model, x)
    >>> batches = [(torch.randn(32, 3, 8, 8), torch.randint(0, 3, (32,))) for _ in range(2)]
    >>> scores = score_groups(build_criterion("pls_vip", "group"), graph.groups, model,
    ...                       {"batches": batches, "num_classes": 3})
    >>> {name: tuple(s.shape) for name, s in scores.items()}
    {'0': (8,), '3': (8,), '7': (16,)}
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
from prunelab.stats.features import POOLINGS, batch_features, collect_features
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
        calibration_samples: samples of ``stats["data"]`` PLS is fitted on; ``None`` = the whole training
            split (official), a number = a fixed seeded subsample (a cap for large datasets). Calibration
            ``stats["batches"]`` are used whole.
        calibration_batch_size: batch size of the feature pass.
        precision: PLS arithmetic, ``float64`` (matches scikit-learn) or ``float32`` (half the memory).
        reduction: how the VIPs of several member filters of one channel combine: ``mean`` (default),
            ``sum`` or ``max``.

    Attributes:
        timings: ``{"features_s", "fit_s", "samples"}`` of the last :meth:`fit_groups` (seconds, count).
    """

    #: Empty: the criterion reads ``batches`` (+ ``num_classes``) *or* ``data`` + ``num_classes`` + ``seed``
    #: (see the module docstring); :meth:`fit_groups` names both when neither is there.
    requires: frozenset[str] = frozenset()
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
        chosen = (group.bns() or group.producers()) if self.features_at == "bn" else group.producers()
        # A bare nn.Parameter member has no output to pool.
        return [m for m in chosen if m.kind != "Parameter"]

    def _features(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: Stats
    ) -> tuple[Tensor, Tensor, list[tuple[str, int]]]:
        """``(X, labels, columns)`` from ``stats["batches"]`` or ``stats["data"]`` (see the module docstring)."""
        if stats.get("batches") is not None:
            return batch_features(model, stats["batches"], layers, pooling=self.pooling)
        missing = [k for k in ("data", "num_classes", "seed") if k not in stats]
        if missing:
            lacking = "" if "data" not in stats else f" ({', '.join(missing)} missing)"
            raise ConfigError(
                f"criterion {self!r} needs statistics ['data', 'num_classes', 'seed'] (a training split) or "
                f"['batches'] (calibration [(x, y), ...] batches){lacking}; pass them in stats="
            )
        return collect_features(
            model,
            stats["data"],
            layers,
            pooling=self.pooling,
            num_samples=self.calibration_samples,
            batch_size=self.calibration_batch_size,
            seed=int(stats["seed"]),
        )

    def _targets(self, labels: Tensor, stats: Stats, dtype: torch.dtype) -> Tensor:
        """The PLS targets ``Y``: one-hot class indices (``num_classes`` columns when given), or the rows given."""
        if labels.dim() == 2:
            return labels.to(dtype)
        classes = stats.get("num_classes")
        if classes is not None and labels.numel() and int(labels.max()) >= int(classes):
            raise ConfigError(
                f"pls_vip: a label is {int(labels.max())} but num_classes is {int(classes)}; labels must be "
                "class indices in [0, num_classes)"
            )
        if labels.numel() and int(labels.min()) < 0:
            raise ConfigError("pls_vip: labels must be class indices >= 0")
        return one_hot(labels, None if classes is None else int(classes), dtype=dtype)

    def fit_groups(self, groups: Sequence[ChannelGroupLike], model: nn.Module, stats: Stats) -> None:
        """Collect the pooled features of every member of ``groups`` once and fit one PLS model on them.

        Raises:
            ConfigError: neither ``batches`` nor ``data``/``num_classes``/``seed`` in ``stats``, labels that
                are not class indices, too few samples or features for ``n_components``, or groups with
                no member to take features from.
        """
        layers: dict[str, nn.Module] = {}
        for group in groups:
            for member in self.members(group):
                if member.name not in layers:
                    try:
                        layers[member.name] = model.get_submodule(member.name)
                    except AttributeError:
                        raise ConfigError(
                            f"pls_vip: group {group.name!r} names member {member.name!r}, which is not a module "
                            "of this model; score the groups of the model they were traced on"
                        ) from None
        if not layers:
            raise ConfigError(
                "pls_vip: the groups have no producer layer to take features from; nothing to score"
            )
        started = time.perf_counter()
        x, labels, columns = self._features(model, layers, stats)
        features_s = time.perf_counter() - started
        started = time.perf_counter()
        dtype = _PRECISIONS[self.precision]
        y = self._targets(labels, stats, dtype)
        # float64 per filter whatever the precision: the group means are taken in float64.
        vip = pls_vip(x, y, self.n_components, dtype=dtype).cpu().double()
        del x
        fit_s = time.perf_counter() - started
        positions: dict[str, list[int]] = {}
        for j, (layer, _filter) in enumerate(columns):
            positions.setdefault(layer, []).append(j)
        self._vip = {layer: vip[torch.tensor(js)] for layer, js in positions.items()}
        self.timings = {"features_s": features_s, "fit_s": fit_s, "samples": float(labels.shape[0])}

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
