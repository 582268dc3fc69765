"""Cumulative-mass selector: per output unit, keep the fewest inputs carrying a fraction α of its mass.

NN-relief's pruning rule (Dekhovich et al., Machine Learning 113(5), 2024, Algorithms 1–2). For one
neuron/filter with input scores ``ŝ_1 ≥ ŝ_2 ≥ … ≥ ŝ_m`` (sorted descending, total ``T``):

    p₀ = min { p : Σ_{i ≤ p} ŝ_i ≥ α · T }

- ``rule="paper"``: keep every input with ``s ≥ ŝ_{p₀}`` (the top ``p₀``; ties with ``ŝ_{p₀}`` stay);
- ``rule="code"`` (the official code's pivot): the threshold is the *next* sorted score,
  ``t = ŝ_{min(p₀+1, m)}``, and every input with ``s ≤ t`` is pruned. Ties with ``ŝ_{p₀+1}`` therefore
  go too, and when ``p₀ = m`` the smallest input is still pruned.

The rule is applied to each row (index along dim 0) of each score tensor independently, over all its
remaining dimensions; ``scope`` therefore makes no difference. NN-relief's driver appends each unit's
bias to its row (the pruner's *companion* column), so that a row is a unit's inputs (kernels of a conv)
followed by its bias and ``T`` is NN-relief's ``S_j``. Already-pruned entries (``previous`` false)
count as score 0 and stay pruned. A row whose total is 0 carries no information and is left as it was
(NN-relief removes such units through its dead-unit rule). ``min_keep`` ≥ 1 keeps the best remaining
entry of a row that the code rule would empty.

Sums use float64 and ``Σ ≥ α·T`` is tested with a relative tolerance of four ulps of the scores' own
precision, so that ``[0.5, 0.3, 0.2]`` with α = 0.5 stops at the first entry even in float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from prunelab.core.selectors import SELECTORS, check_min_keep, check_scope, guard_min_keep
from prunelab.errors import ConfigError

RULES: tuple[str, ...] = ("paper", "code")


def check_alpha(alpha: float, what: str = "alpha") -> float:
    """Return ``alpha`` as a float after checking that it lies in (0, 1].

    Raises:
        ConfigError: for a non-number or a value outside (0, 1].
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) <= 1.0:
        raise ConfigError(
            f"{what} must be a fraction in (0, 1] (0.95 = keep 95 % of the mass), got {alpha!r}"
        )
    return float(alpha)


def cumulative_mass_rows(scores: Tensor, alpha: float, rule: str = "paper") -> Tensor:
    """Boolean keep-mask for a 2-D ``(rows, inputs)`` score matrix, one cumulative-mass cut per row.

    Example:
        >>> import torch
        >>> cumulative_mass_rows(torch.tensor([[0.5, 0.2, 0.3]]), 0.8).tolist()
        [[True, False, True]]
        >>> cumulative_mass_rows(torch.tensor([[0.5, 0.2, 0.3]]), 0.8, rule="code").tolist()
        [[True, False, True]]
        >>> cumulative_mass_rows(torch.tensor([[0.6, 0.4]]), 1.0, rule="code").tolist()
        [[True, False]]
    """
    alpha = check_alpha(alpha)
    if rule not in RULES:
        raise ConfigError(f"cumulative-mass rule {rule!r} is unknown; use 'paper' or 'code'")
    # Tolerance on "Σ ≥ α·T" of a few ulps of the *input* precision: float32 scores such as 0.2 + 0.3
    # must still reach α = 0.5 of 1.0 at the intended index.
    eps = torch.finfo(scores.dtype).eps if scores.is_floating_point() else torch.finfo(torch.float64).eps
    s = scores.detach().to(torch.float64)
    m = s.shape[1]
    if m == 0:
        return torch.ones_like(s, dtype=torch.bool)
    ordered, _ = torch.sort(s, dim=1, descending=True)
    total = ordered.sum(dim=1, keepdim=True)
    cumsum = ordered.cumsum(dim=1)
    reached = cumsum >= alpha * total * (1 - 4 * eps)
    # p₀ - 1 as a 0-based index: the number of prefixes still short of α·T.
    p0 = (~reached).sum(dim=1).clamp(max=m - 1)
    if rule == "paper":
        threshold = ordered.gather(1, p0.unsqueeze(1))
        keep = s >= threshold
    else:
        pivot = (p0 + 1).clamp(max=m - 1)
        threshold = ordered.gather(1, pivot.unsqueeze(1))
        keep = s > threshold
    # No mass, no information: leave such rows to the dead-unit rule.
    empty = (total <= 0).expand_as(keep)
    return keep | empty


def select_cumulative_mass(
    unit_scores: Mapping[str, Tensor],
    level: float,
    *,
    scope: str = "layer",
    previous: Mapping[str, Tensor] | None = None,
    min_keep: int = 1,
    rule: str = "paper",
    alphas: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Per output unit (dim 0), keep the fewest entries whose scores reach ``level`` (α) of the row total.

    Args:
        unit_scores: ``{fqn: scores}``, each of shape ``(out, ...)``; a row is everything at one index
            of dim 0 (a Linear neuron's inputs, a conv filter's kernels, ...). 1-D tensors are one row.
        level: α, the mass fraction kept per row, in (0, 1].
        scope: accepted for the selector protocol (``"global"`` or ``"layer"``); the rule is per row.
        previous: current keep-masks; pruned entries score 0 and stay pruned.
        min_keep: if ≥ 1, a row that had live entries keeps at least its best one.
        rule: ``"paper"`` or ``"code"`` (see the module docstring).
        alphas: per-fqn α overriding ``level`` (e.g. NN-relief's α_fc vs α_conv).

    Returns:
        ``{fqn: bool keep-mask}``, each a subset of ``previous[fqn]``.

    Raises:
        ConfigError: an α outside (0, 1], an unknown rule or scope, a negative ``min_keep``.
    """
    check_scope(scope)
    check_min_keep(min_keep)
    check_alpha(level)
    out: dict[str, Tensor] = {}
    for fqn, scores in unit_scores.items():
        alpha = check_alpha((alphas or {}).get(fqn, level), f"alpha of {fqn}")
        if scores.is_floating_point() and not bool(torch.isfinite(scores).all()):
            raise ValueError(f"scores of {fqn!r} contain NaN or inf; check the weights and statistics")
        if scores.dim() == 0:
            raise ValueError(f"scores of {fqn!r} are a scalar; a row needs at least one entry")
        # A 1-D tensor (e.g. BN scales) is one row; otherwise dim 0 indexes the rows.
        matrix = scores.reshape(1, -1) if scores.dim() == 1 else scores.reshape(scores.shape[0], -1)
        alive = torch.ones_like(matrix, dtype=torch.bool)
        if previous is not None and fqn in previous:
            alive = previous[fqn].reshape(matrix.shape).to(device=matrix.device, dtype=torch.bool)
        live = torch.where(alive, matrix, torch.zeros((), dtype=matrix.dtype))
        keep = cumulative_mass_rows(live, alpha, rule) & alive
        # The rule is per neuron, so the guard is too: a row the code rule emptied keeps its best live
        # entry. One entry, whatever min_keep >= 1 says: the paper's rule keeps a row alive, no more.
        keep = guard_min_keep(keep, live, min(min_keep, 1), alive=alive, per_row=True)
        out[fqn] = keep.reshape(scores.shape)
    return out


SELECTORS.register(
    "cumulative_mass",
    help="NN-relief: per output unit keep the fewest inputs carrying a fraction alpha of its mass.",
)(select_cumulative_mass)
