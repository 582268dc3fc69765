"""NN-relief importance scores (Dekhovich, Tax, Sluiter, Bessa, Machine Learning 113(5), 2024).

Reference: A. Dekhovich, D. M. J. Tax, M. H. F. Sluiter, M. A. Bessa, *Neural network relief: a
pruning algorithm based on neural activity*, Machine Learning 113(5):2597–2618, 2024, arXiv:2109.10795.

For a neuron ``j`` of a fully connected layer with inputs ``x_n ∈ R^m`` over a calibration set of
``N`` samples, the importance of connection ``i → j`` and of the bias are

    s_ij = mean_n |w_ji x_{n,i}| / S_j,        s_bias,j = |b_j| / S_j,
    S_j  = Σ_k mean_n |w_jk x_{n,k}| + |b_j|.

For a filter ``j`` of a convolution with kernels ``K_ji`` (one per input channel ``i`` it reads),
``K̂ = |K|`` element-wise and an ``h¹×h²`` output map:

    paper (mean of norms):  s_ij = (1/N) Σ_n ‖ K̂_ji ∗ |x_{n,ι(j,i)}| ‖_F / S_j
    code  (norm of mean):   s_ij = ‖ K̂_ji ∗ mean_n |x_{n,ι(j,i)}| ‖_F / S_j
    bias:                   s_bias,j = |b_j| · sqrt(h¹ h²) / S_j

with ``S_j`` the sum of the numerators. For a convolution with ``G`` groups filter ``j`` reads only the
``c_in/G`` input channels of its group, ``ι(j, i) = ⌊j/(c_out/G)⌋ · c_in/G + i`` (``i < c_in/G``), so a
connection of a grouped or depthwise convolution exists, and is scored, only inside its group: one
numerator per entry of ``K.shape[:2] = (c_out, c_in/G)`` (:mod:`prunelab.stats.activations`). A
``Conv1d`` is the ``h¹ = 1`` case. A Linear layer applied to inputs with positions, ``(N, P₁, …, m)``
(ConvNeXt's channels-last ``(N, H, W, C)``), is a 1×1 convolution over the positions and is scored as
one: ``s_ij = |w_ji| (1/N) Σ_n ‖x_{n,·,i}‖₂ / S_j`` (code: ``|w_ji| ‖mean_n |x_{n,·,i}|‖₂``),
``s_bias,j = |b_j| sqrt(P₁⋯) / S_j`` — on ``(N, m)`` inputs this is the Linear formula above.

The paper's variant is the default; the official code
(github.com/adekhovich/NNrelief) takes the batch mean inside the norm. For a Linear layer both variants
coincide. Here the *numerators* are returned (shape ``(c_out, c_in/G)`` for a conv: one score per kernel;
``(out, in)`` for a Linear) together with the bias numerator; the cumulative-mass selector normalises
each row by its total, which is ``S_j``. Transposed convolutions are not scored (their weight is
``(in, out, …)``, so the per-output-unit rule has no rows to act on).

The registered criterion ``relief`` exposes the same scores at the entry level
(:class:`~prunelab.core.criterion.EntryCriterion`), for :class:`~prunelab.pruning.pruner.Pruner`:
``stats["relief"]`` maps the fqn of every weight and bias to its numerators
(:func:`relief_statistics`). The relief driver runs its cumulative-mass step exactly so: the ``relief``
criterion, ``kernel`` granularity, the ``cumulative_mass`` selector with per-layer α, and each layer's
bias as the weight's companion (one more entry of its unit's row, so that it counts in ``S_j``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunelab.core.criterion import Stats, TargetView
from prunelab.core.targets import Target
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import ConfigError, UnsupportedModelError
from prunelab.stats.activations import LayerStats, conv_norms_grouped, unsupported_reason

__all__ = ["VARIANTS", "Relief", "check_targets", "collect_relief", "relief_importance", "relief_statistics"]

Variant = Literal["paper", "code", "code_l1"]
VARIANTS: tuple[str, ...] = ("paper", "code", "code_l1")


def _effective(module: nn.Module, name: str) -> Tensor | None:
    value = getattr(module, name, None)
    return None if value is None else value.detach()


def relief_importance(
    module: nn.Module, stats: LayerStats, variant: Variant = "paper"
) -> tuple[Tensor, Tensor | None]:
    """The importance numerators of one layer's incoming connections and bias.

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` of any ``groups`` (its *effective*,
            masked weights are scored).
        stats: the layer's accumulated statistics (:class:`~prunelab.stats.activations.LayerStats`).
        variant: ``"paper"`` (mean of norms), ``"code"`` (norm of mean) or ``"code_l1"`` (the official
            LeNet-5 code: the L1 sum over output positions instead of the Frobenius norm,
            ``‖K̂_ji ∗ mean_n |x_{n,ι}|‖₁`` — equal to the mean of the per-sample L1 norms, the responses
            being non-negative — and bias ``|b_j|·h¹h²``); all equal for Linear layers on ``(N, in)`` inputs.

    Returns:
        ``(weights, bias)``: float64 tensors of shape ``weight.shape[:2]`` — ``(out, in)`` for a Linear,
        ``(c_out, c_in/G)`` for a convolution — and ``(out,)`` (``bias`` is ``None`` for a bias-free
        layer). Row ``j`` divided by its total (bias included) is ``s_·j``.

    Raises:
        ConfigError: for an unknown variant, or paper-variant statistics collected without per-sample
            norms.
        UnsupportedModelError: for a layer relief does not score (a transposed or 3-D convolution).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"relief variant {variant!r} is unknown; use 'paper', 'code' or 'code_l1'")
    reason = unsupported_reason(module)
    if reason is not None:
        raise UnsupportedModelError(
            f"relief: the layer is {reason}; leave it out of the targets (exclude it)"
        )
    weight = _effective(module, "weight")
    bias = _effective(module, "bias")
    assert weight is not None
    if variant == "paper" and stats.norm_sum is None and (stats.kind == "conv" or stats.out_size is not None):
        raise ConfigError("the paper variant needs per-sample norms; collect with per_sample_norms=True")
    if isinstance(module, nn.Linear):
        if stats.out_size is None:  # (N, in) inputs
            mean_abs = stats.mean_abs_input().to(weight.device)
            weights = weight.abs().to(torch.float64) * mean_abs.unsqueeze(0)
            return weights, None if bias is None else bias.abs().to(torch.float64)
        # Over positions: a 1x1 convolution, ‖ |w_ji| |x_{n,·,i}| ‖ = |w_ji| ‖x_{n,·,i}‖.
        if variant == "paper":
            per_input = stats.mean_norms().to(weight.device)
        elif variant == "code_l1":
            mean_abs = stats.mean_abs_input().to(weight.device)
            per_input = mean_abs.reshape(-1, mean_abs.shape[-1]).sum(dim=0)
        else:
            mean_abs = stats.mean_abs_input().to(weight.device)
            per_input = mean_abs.reshape(-1, mean_abs.shape[-1]).norm(dim=0)
        weights = weight.abs().to(torch.float64) * per_input.unsqueeze(0)
    elif variant == "paper":
        weights = stats.mean_norms().to(weight.device)
    else:
        mean_abs = stats.mean_abs_input().to(device=weight.device, dtype=torch.float64)
        order = 1 if variant == "code_l1" else 2
        weights = conv_norms_grouped(mean_abs.unsqueeze(0), weight.abs().to(torch.float64), module, order)[0]
    assert stats.out_size is not None
    positions = math.prod(stats.out_size)
    # The bias adds |b_j| at every output position: its norm over them (L1 or Frobenius).
    scale = float(positions) if variant == "code_l1" else math.sqrt(positions)
    bias_score = None if bias is None else bias.abs().to(torch.float64) * scale
    return weights, bias_score


def _bias_fqn(target: Target) -> str:
    return f"{target.module_name}.bias" if target.module_name else "bias"


def check_targets(targets: Sequence[Target]) -> None:
    """Fail unless relief can score every target: the ``weight`` of a Linear, Conv1d or Conv2d layer.

    Raises:
        UnsupportedModelError: one line naming the first target relief cannot score and the fix.
    """
    for t in targets:
        reason = unsupported_reason(t.module)
        if reason is None and t.param != "weight":
            reason = f"the tensor {t.param!r} of a {type(t.module).__name__}; relief scores layer weights"
        if reason is not None:
            name = t.module_name or "<root>"
            raise UnsupportedModelError(
                f"relief: {name} is {reason}; leave it out of the targets (exclude={[name]!r} or "
                f"prune.exclude: [{name}])"
            )


def relief_statistics(
    targets: Sequence[Target], stats: Mapping[str, LayerStats], variant: Variant = "paper"
) -> dict[str, Tensor]:
    """The ``stats["relief"]`` entry the :class:`Relief` criterion reads: numerators by tensor fqn.

    Args:
        targets: the ``weight`` targets of the Linear/Conv1d/Conv2d layers to score (convolutions of
            any ``groups``); their biases are scored too.
        stats: each layer's accumulated statistics, keyed by module name
            (:func:`prunelab.stats.activations.collect`).
        variant: ``"paper"``, ``"code"`` or ``"code_l1"`` (see :func:`relief_importance`).

    Returns:
        ``{weight fqn: (out, in) numerators, bias fqn: (out,) numerators}`` (no bias entry for a bias-free
        layer), float64.

    Raises:
        ConfigError: as :func:`relief_importance`, or a target that did not run on the calibration
            batches (no statistics).
        UnsupportedModelError: a target relief does not score (:func:`check_targets`).
    """
    check_targets(targets)
    numerators: dict[str, Tensor] = {}
    for t in targets:
        entry = stats.get(t.module_name)
        if entry is None or entry.count == 0:
            name = t.module_name or "<root>"
            raise ConfigError(
                f"relief: layer {name} did not run on the calibration batches (a branch the model skips in "
                f"eval mode?); collect its statistics or leave it out of the targets (exclude={[name]!r})"
            )
        weights, bias = relief_importance(t.module, entry, variant)
        numerators[t.fqn] = weights
        if bias is not None:
            numerators[_bias_fqn(t)] = bias
    return numerators


def collect_relief(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    targets: Sequence[Target] | None = None,
    variant: Variant = "paper",
) -> dict[str, Tensor]:
    """``stats["relief"]`` for a :class:`~prunelab.pruning.pruner.Pruner` with ``criterion="relief"``.

    Runs ``batches`` through ``model`` (eval mode, no gradients, hooks removed afterwards), accumulates
    the activation statistics of the targets' layers (:mod:`prunelab.stats.activations`) and returns
    :func:`relief_statistics` of them: the numerators of every target weight and of its layer's bias.

    Args:
        model: the network (any model that runs on the batches: several inputs, tuple/dict outputs).
        batches: calibration ``(x, y)`` pairs (``y`` is not read); ``x`` is a tensor, a tuple or list of
            positional arguments or a dict of keyword arguments.
        targets: the tensors to score, e.g. ``pruner.targets``; default: every Linear, Conv1d and Conv2d
            weight (:func:`~prunelab.core.targets.find_targets` with ``layer_types=("conv", "linear")``).
        variant: ``"paper"`` (mean of norms, default), ``"code"`` (norm of mean) or ``"code_l1"`` (the
            official LeNet-5 code's L1 sum over positions).

    Returns:
        ``{fqn: float64 numerators}`` for the targets and their biases.

    Raises:
        UnsupportedModelError: a target relief does not score (a Conv3d: exclude it), named with the fix.
        ConfigError: a target that never ran on the batches, a batch that is not an ``(x, y)`` pair.

    Example:
        NN-relief's per-unit rule (keep the fewest inputs and bias carrying ``α`` of each unit's
        importance) on any model, here a depthwise-separable block:

        >>> import torch
        >>> from torch import nn
        >>> from prunelab import Pruner
        >>> model = nn.Sequential(
        ...     nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...     nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),   # depthwise
        ...     nn.Conv2d(8, 8, 1, groups=2), nn.ReLU(),               # grouped
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> batches = [(torch.randn(16, 3, 8, 8), None) for _ in range(2)]
        >>> pruner = Pruner(model, criterion="relief", granularity="kernel", scope="layer",
        ...                 selector="cumulative_mass", companion="bias").prepare()
        >>> stats = {"relief": collect_relief(model, batches, pruner.targets)}
        >>> report = pruner.step(0.9, stats=stats)   # α = 0.9 for every layer
        >>> 0 < report.sparsity < 1, model(torch.randn(2, 3, 8, 8)).shape
        (True, torch.Size([2, 10]))

        With the default ``topk`` selector, ``pruner.step(s, stats=...)`` removes the fraction ``s`` of
        the kernels with the smallest numerators instead (``scope="layer"``: per layer).
    """
    from prunelab.core.targets import find_targets
    from prunelab.stats.activations import collect

    if targets is None:
        targets = find_targets(model, layer_types=("conv", "linear"))
    targets = list(targets)
    check_targets(targets)
    layers: dict[str, nn.Module] = {}
    for t in targets:
        layers.setdefault(t.module_name, t.module)
    stats = collect(model, batches, layers, per_sample_norms=variant == "paper")
    return relief_statistics(targets, stats, variant)


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
