"""NN-relief importance scores (Dekhovich, Tax, Sluiter, Bessa, Machine Learning 113(5), 2024).

Reference: A. Dekhovich, D. M. J. Tax, M. H. F. Sluiter, M. A. Bessa, *Neural network relief: a
pruning algorithm based on neural activity*, Machine Learning 113(5):2597–2618, 2024, arXiv:2109.10795.

For a neuron ``j`` of a fully connected layer with inputs ``x_n ∈ R^m`` over a calibration set of
``N`` samples, the importance of connection ``i → j`` and of the bias are

    s_ij = mean_n |w_ji x_{n,i}| / S_j,        s_bias,j = |b_j| / S_j,
    S_j  = Σ_k mean_n |w_jk x_{n,k}| + |b_j|.

For a filter ``j`` of a convolution with kernels ``K_ji`` (one per input channel ``i``), ``K̂ = |K|``
element-wise and an ``h¹×h²`` output map:

    paper (mean of norms):  s_ij = (1/N) Σ_n ‖ K̂_ji ∗ |x_{n,i}| ‖_F / S_j
    code  (norm of mean):   s_ij = ‖ K̂_ji ∗ mean_n |x_{n,i}| ‖_F / S_j
    bias:                   s_bias,j = |b_j| · sqrt(h¹ h²) / S_j

with ``S_j`` the sum of the numerators. The paper's variant is the default; the official code
(github.com/adekhovich/NNrelief) takes the batch mean inside the norm. For a Linear layer both variants
coincide. Here the *numerators* are returned (shape ``(c_out, c_in)`` for a conv: one score per kernel;
``(out, in)`` for a Linear) together with the bias numerator; the cumulative-mass selector normalises
each row by its total, which is ``S_j``.

The registered criterion ``relief`` exposes the same scores at the entry level
(:class:`~prunelab.core.criterion.EntryCriterion`), for :class:`~prunelab.pruning.pruner.Pruner`:
``stats["relief"]`` maps the fqn of every weight and bias to its numerators
(:func:`relief_statistics`). The relief driver runs its cumulative-mass step exactly so: the ``relief``
criterion, ``kernel`` granularity, the ``cumulative_mass`` selector with per-layer α, and each layer's
bias as the weight's companion (one more entry of its unit's row, so that it counts in ``S_j``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from prunelab.core.criterion import Stats, TargetView
from prunelab.core.targets import Target
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import ConfigError
from prunelab.stats.activations import LayerStats, conv_norms_grouped

Variant = Literal["paper", "code"]
VARIANTS: tuple[str, ...] = ("paper", "code")


def _effective(module: nn.Module, name: str) -> Tensor | None:
    value = getattr(module, name, None)
    return None if value is None else value.detach()


def relief_importance(
    module: nn.Module, stats: LayerStats, variant: Variant = "paper"
) -> tuple[Tensor, Tensor | None]:
    """The importance numerators of one layer's incoming connections and bias.

    Args:
        module: an ``nn.Linear`` or ``nn.Conv2d`` (its *effective*, masked weights are scored).
        stats: the layer's accumulated statistics (:class:`~prunelab.stats.activations.LayerStats`).
        variant: ``"paper"`` (mean of norms) or ``"code"`` (norm of mean); equal for Linear layers.

    Returns:
        ``(weights, bias)``: float64 tensors of shape ``(out, in)`` and ``(out,)`` (``bias`` is ``None``
        for a bias-free layer). Row ``j`` divided by its total (bias included) is ``s_·j``.

    Raises:
        ConfigError: for an unknown variant, or paper-variant conv statistics collected without
            per-sample norms.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"relief variant {variant!r} is unknown; use 'paper' or 'code'")
    weight = _effective(module, "weight")
    bias = _effective(module, "bias")
    assert weight is not None
    if isinstance(module, nn.Linear):
        mean_abs = stats.mean_abs_input().to(weight.device)
        weights = weight.abs().to(torch.float64) * mean_abs.unsqueeze(0)
        return weights, None if bias is None else bias.abs().to(torch.float64)
    if not isinstance(module, nn.Conv2d):
        raise ConfigError(f"relief scores Linear and Conv2d layers, not {type(module).__name__}")
    if variant == "paper":
        if stats.norm_sum is None:
            raise ConfigError(
                "the paper variant needs per-sample conv norms; collect with per_sample_norms=True"
            )
        weights = stats.mean_norms().to(weight.device)
    else:
        mean_abs = stats.mean_abs_input().to(device=weight.device, dtype=torch.float64)
        weights = conv_norms_grouped(mean_abs.unsqueeze(0), weight.abs().to(torch.float64), module)[0]
    assert stats.out_size is not None
    positions = stats.out_size[0] * stats.out_size[1]
    bias_score = None if bias is None else bias.abs().to(torch.float64) * math.sqrt(positions)
    return weights, bias_score


def relief_statistics(
    targets: Sequence[Target], stats: Mapping[str, LayerStats], variant: Variant = "paper"
) -> dict[str, Tensor]:
    """The ``stats["relief"]`` entry the :class:`Relief` criterion reads: numerators by tensor fqn.

    Args:
        targets: the ``weight`` targets of the Linear/Conv2d layers to score; their biases are scored too.
        stats: each layer's accumulated statistics, keyed by module name
            (:func:`prunelab.stats.activations.collect`).
        variant: ``"paper"`` or ``"code"`` (see :func:`relief_importance`).

    Returns:
        ``{weight fqn: (out, in) numerators, bias fqn: (out,) numerators}`` (no bias entry for a bias-free
        layer), float64.

    Raises:
        ConfigError: as :func:`relief_importance`.
    """
    numerators: dict[str, Tensor] = {}
    for t in targets:
        weights, bias = relief_importance(t.module, stats[t.module_name], variant)
        numerators[t.fqn] = weights
        if bias is not None:
            numerators[f"{t.module_name}.bias" if t.module_name else "bias"] = bias
    return numerators


class Relief:
    """NN-relief at the entry level: the importance numerators of each entry of a weight or a bias.

    ``stats["relief"]`` maps a tensor fqn to its numerators (:func:`relief_statistics`): ``(out, in)`` for
    a Linear or conv weight (one per kernel), ``(out,)`` for a bias. A Linear weight's or a bias's score is
    its numerator. A conv kernel's numerator scores the whole kernel, so it is put on the kernel's first
    live entry and its other entries score 0: the ``kernel`` granularity's sum then gives back exactly
    the numerator (``x + 0 = x``), whereas an even spread ``x / (k_h k_w)`` sums back only up to rounding,
    and the cumulative-mass rule's cut compares running sums, so a last-ulp change can move it. Use it
    with ``kernel`` (or ``filter``) granularity; at ``element`` granularity one entry per kernel carries
    the score. Pair it with the ``cumulative_mass`` selector and ``companion="bias"`` for the paper's
    per-neuron rule (the relief driver does, and also removes dead units and prunes backwards).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.core.targets import find_targets
        >>> layer = nn.Linear(2, 1)
        >>> view = TargetView(find_targets(layer)[0], layer.weight.detach(), torch.ones(1, 2, dtype=torch.bool))
        >>> Relief().score(view, {"relief": {"weight": torch.tensor([[3.0, 1.0]])}}).tolist()
        [[3.0, 1.0]]
    """

    requires: frozenset[str] = frozenset({"relief"})

    def score(self, view: TargetView, stats: Stats) -> Tensor:
        """Return float64 scores of ``view.value``'s shape (non-negative; see the class docstring).

        Raises:
            ConfigError: ``stats["relief"]`` has no numerators for the view's tensor, or numerators of
                the wrong shape.
        """
        try:
            numerators = stats["relief"][view.fqn]
        except KeyError:
            raise ConfigError(
                f"relief statistics lack {view.fqn}; collect them for every target and companion "
                "(relief_statistics)"
            ) from None
        value = view.value
        expected = tuple(value.shape[:2])
        if tuple(numerators.shape) != expected:
            raise ConfigError(
                f"relief statistics of {view.fqn} have shape {tuple(numerators.shape)}; expected {expected} "
                "(one numerator per weight, kernel or bias entry)"
            )
        numerators = numerators.to(device=value.device, dtype=torch.float64)
        if value.dim() <= 2:
            return numerators.clone()
        kernels = view.mask.to(device=value.device).flatten(2)
        # argmax returns the first maximal index: the first live entry (entry 0 of a dead kernel, whose
        # score the pruner zeroes anyway).
        first = kernels.to(torch.uint8).argmax(dim=2, keepdim=True)
        scores = torch.zeros(kernels.shape, dtype=torch.float64, device=value.device)
        scores.scatter_(2, first, numerators.unsqueeze(2))
        return scores.reshape(value.shape)

    def __repr__(self) -> str:
        return "Relief()"


CRITERIA.register("relief", help="NN-relief: share of a neuron's incoming activity (needs stats['relief']).")(
    Relief
)
