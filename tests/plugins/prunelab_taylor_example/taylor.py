r"""First-order Taylor importance, registered as the criterion ``taylor`` at both levels.

P. Molchanov, A. Mallya, S. Tyree, I. Frosio and J. Kautz, *Importance Estimation for Neural Network
Pruning*, CVPR 2019. The importance of a set of parameters ``S`` is the change of the loss ``L`` when
they are removed (set to zero), estimated by the first-order Taylor expansion of ``L`` around the
current weights:

.. math:: \mathcal{I}_S = \Bigl|\sum_{s \in S} g_s\, w_s\Bigr|^{p}, \qquad g = \frac{\partial L}{\partial w},

with ``p = 2`` in the paper (its Eq. 4, :math:`(\sum_s g_s w_s)^2`) and ``p = 1`` (the magnitude of the
same first-order term) by default here; for a single unit both rank identically.

- **Entry level** (``score``): ``S`` is one weight, :math:`\mathcal{I}_m = |w_m\, g_m|^p` — scored on the
  tensor behind the mask, so already-pruned entries score 0.
- **Group level** (``score_group``): ``S`` is one filter of a producer layer (its weights and, if it
  has one, its bias entry), :math:`u(i) = |\sum_{s \in \mathrm{filter}\ i} w_s g_s|^p`, and a coupled
  channel ``c`` scores the group reduction (sum by default) over the producers' filters that map onto it,
  :math:`s_c = \mathrm{reduce}_{(c, i)} u_m(i)`
  (:class:`~prunelab.core.criterion.MemberGroupCriterion`).

Gradients. As for SNIP (:mod:`prunelab.criteria.saliency`), ``g`` is the gradient of the mean
cross-entropy over the calibration batches ``stats["batches"]`` of the network ``stats["model"]``
(entry level) or of the ``model`` argument (group level), accumulated batch by batch in one pass; the
paper averages the per-mini-batch importances during fine-tuning instead, which the accumulated
gradient approximates with one calibration pass. The forward runs in eval mode by default (the
network being pruned is trained; ``train_mode=True`` uses batch statistics); BatchNorm running
statistics and the train/eval mode are restored afterwards, so scoring leaves no trace.

Both levels compute their gradients once per pruning step in a fit (``fit(views, stats)`` called by the
pruner, ``fit_groups(groups, model, stats)`` called by :func:`prunelab.core.criterion.score_groups`) and
score from the cached products.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.core import masking
from prunelab.core.criterion import (
    ChannelGroupLike,
    GroupMemberLike,
    MemberGroupCriterion,
    Reduction,
    Stats,
    TargetView,
)
from prunelab.criteria import CRITERIA
from prunelab.criteria.saliency import scoring_mode
from prunelab.errors import ConfigError

__all__ = ["Taylor", "loss_gradients"]

#: Member kinds whose output filters are scored at the group level.
FILTER_KINDS = ("Conv2d", "Linear", "DepthwiseConv2d")


def loss_gradients(
    model: nn.Module, params: Sequence[Tensor], batches: Sequence[tuple[Tensor, Tensor]], train_mode: bool
) -> list[Tensor]:
    """``∂L/∂θ`` for each tensor of ``params``, ``L`` the mean cross-entropy over all ``batches``.

    The batches are processed one at a time (memory of one batch) and their gradients summed; ``.grad``
    of the parameters is not touched.

    Raises:
        ConfigError: no calibration batches.
    """
    if not batches:
        raise ConfigError("taylor criterion: no calibration batches in stats['batches']")
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    grads = [torch.zeros_like(p) for p in params]
    n = sum(len(y) for _, y in batches)
    with scoring_mode(model, train_mode), torch.enable_grad():
        for x, y in batches:
            loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum") / n
            for acc, d in zip(grads, torch.autograd.grad(loss, list(params), allow_unused=True), strict=True):
                if d is not None:
                    acc += d
    return grads


def _batches(stats: Stats) -> list[tuple[Tensor, Tensor]]:
    batches = stats.get("batches")
    if not batches:
        raise ConfigError("taylor criterion needs stats['batches'], a list of (x, y) calibration batches")
    return list(batches)


@CRITERIA.register(
    "taylor",
    help="First-order Taylor |Σ w·∂L/∂w| per weight or per filter on calibration batches (Molchanov 2019).",
)
class Taylor(MemberGroupCriterion):
    """First-order Taylor importance ``|Σ w·g|^p`` of a weight (entry level) or a filter (group level).

    Args:
        reduction: how the filter scores of several producers of one channel combine (group level):
            ``sum`` (default), ``mean`` or ``max``.
        power: ``p``, 1 (``|w·g|``, default) or 2 (``(w·g)²``, the paper's Eq. 4).
        train_mode: forward the calibration batches in train mode (batch statistics) instead of eval
            mode; running statistics are restored either way.

    Attributes:
        requires: ``model`` (entry level: the network the targets belong to) and ``batches``.
    """

    requires: frozenset[str] = frozenset({"model", "batches"})
    default_reduction = "sum"

    def __init__(self, reduction: Reduction | None = None, power: int = 1, train_mode: bool = False) -> None:
        if isinstance(power, bool) or power not in (1, 2):
            raise ConfigError(f"taylor criterion: power must be 1 or 2, got {power!r}")
        super().__init__(reduction)
        self.power = int(power)
        self.train_mode = bool(train_mode)
        self._entry: dict[str, Tensor] = {}
        self._filters: dict[str, Tensor] = {}

    def _importance(self, first_order: Tensor) -> Tensor:
        value = first_order.abs().float()
        return value if self.power == 1 else value.square()

    # Entry level --------------------------------------------------------------------------------------

    def fit(self, views: Sequence[TargetView], stats: Stats) -> None:
        """Accumulate ``∂L/∂θ`` of every target over the calibration batches and cache ``|θ·g|^p``."""
        model = stats.get("model")
        if not isinstance(model, nn.Module):
            raise ConfigError("taylor criterion needs stats['model'], the network the targets belong to")
        # The live originals behind the masks: what the masks act on (weights, or interspace coefficients).
        params = [masking.original(v.target.module, v.target.param) for v in views]
        grads = loss_gradients(model, params, _batches(stats), self.train_mode)
        self._entry = {
            v.fqn: self._importance(p.detach() * g) for v, p, g in zip(views, params, grads, strict=True)
        }

    def score(self, view: TargetView, stats: Stats) -> Tensor:
        """``|θ·g|^p`` of ``view``'s tensor, from the last :meth:`fit`.

        Raises:
            ConfigError: the tensor was not fitted (the pruner calls ``fit`` before scoring).
        """
        if view.fqn not in self._entry:
            raise ConfigError(f"taylor criterion: no score for {view.fqn}; the pruner calls fit() first")
        return self._entry[view.fqn]

    # Group level --------------------------------------------------------------------------------------

    def members(self, group: ChannelGroupLike) -> Sequence[GroupMemberLike]:
        """The producers whose output filters are the group's channels (conv, depthwise conv, linear)."""
        return [m for m in group.members if m.role == "out" and m.kind in FILTER_KINDS]

    def fit_groups(self, groups: Sequence[ChannelGroupLike], model: nn.Module, stats: Stats) -> None:
        """One gradient pass for the producers of every group; caches ``|Σ_filter w·g|^p`` per filter."""
        names = list(dict.fromkeys(m.name for g in groups for m in self.members(g)))
        modules = [model.get_submodule(name) for name in names]
        params: list[Tensor] = []
        for module in modules:
            params.append(masking.original(module, "weight"))
            if getattr(module, "bias", None) is not None:
                params.append(masking.original(module, "bias"))
        grads = iter(loss_gradients(model, params, _batches(stats), self.train_mode))
        values = iter(params)
        self._filters = {}
        for name, module in zip(names, modules, strict=True):
            w, gw = next(values), next(grads)
            per_filter = (w.detach() * gw).reshape(w.shape[0], -1).sum(dim=1)
            if getattr(module, "bias", None) is not None:
                b, gb = next(values), next(grads)
                per_filter = per_filter + b.detach() * gb
            self._filters[name] = self._importance(per_filter).cpu()

    def member_scores(self, member: GroupMemberLike, model: nn.Module, stats: Stats) -> Tensor:
        """``|Σ w·g|^p`` of each output filter of ``member``, from the last :meth:`fit_groups`.

        Raises:
            ConfigError: the member was not fitted (score groups through ``score_groups``).
        """
        if member.name not in self._filters:
            raise ConfigError(
                f"taylor criterion: no filter scores for {member.name}; score channel groups through "
                "prunelab.core.criterion.score_groups, which calls fit_groups() first"
            )
        return self._filters[member.name]

    def __repr__(self) -> str:
        return f"Taylor(reduction={self.reduction!r}, power={self.power}, train_mode={self.train_mode})"
