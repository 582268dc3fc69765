r"""PLS regression and Variable Importance in Projection (VIP) scores, in torch, and the global threshold rule.

A. Jordao, R. Kloss, F. Yamada and W. R. Schwartz, *Pruning Deep Neural Networks using Partial Least
Squares*, BMVC 2019 Workshops (arXiv:1810.07610). Each filter of the network is represented by one
feature per sample (its pooled output); a PLS model relating the features ``X ∈ R^{N×P}`` to the one-hot
labels ``Y ∈ {0,1}^{N×C}`` is fitted, and a filter is as important as its VIP score.

PLS (the NIPALS/PLS2 algorithm with regression deflation, as scikit-learn's ``PLSRegression``):

- standardise: :math:`X \leftarrow (X - \mu_X)/\sigma_X`, :math:`Y \leftarrow (Y-\mu_Y)/\sigma_Y`
  (``ddof = 1``; a zero deviation is replaced by 1), with ``scale=True``;
- for :math:`k = 1..c`: the weight :math:`w_k` is the dominant left singular vector of
  :math:`X_k^\top Y_k` (unit norm); scores :math:`t_k = X_k w_k`; loadings
  :math:`p_k = X_k^\top t_k / t_k^\top t_k`, :math:`q_k = Y_k^\top t_k / t_k^\top t_k`; deflation
  :math:`X_{k+1} = X_k - t_k p_k^\top`, :math:`Y_{k+1} = Y_k - t_k q_k^\top`.

VIP (S. Wold et al.; the official code's formula, from scikit-learn issue #7050):

.. math::
    SS_k = (t_k^\top t_k)(q_k^\top q_k), \qquad
    \mathrm{VIP}_j = \sqrt{P \,\frac{\sum_k SS_k\,(w_{jk}/\lVert w_k\rVert)^2}{\sum_k SS_k}},
    \qquad \sum_j \mathrm{VIP}_j^2 = P.

Why this is fast (scikit-learn iterates a power method over the whole ``N×P`` matrix each component,
and copies the matrix to deflate it):

- the dominant singular vector of ``M = X_kᵀ Y_k`` (``P×C``, ``C`` = classes, e.g. 10) comes from the
  ``C×C`` eigenproblem of ``Mᵀ M``: ``w ∝ M v`` with ``v`` its top eigenvector — exact, no iterations;
- the deflation is never materialised: ``X_k = X - Σ_{j<k} t_j p_jᵀ``, so
  ``X_k w = X w - Σ_j t_j (p_jᵀ w)`` and ``X_kᵀ v = Xᵀ v - Σ_j p_j (t_jᵀ v)``: every product touches the
  standardised ``X`` once (3 passes per component, one more to standardise).

The result equals scikit-learn's up to the sign of each component (VIP is sign invariant; signs are
flipped as scikit-learn's ``_svd_flip_1d`` does anyway) and scikit-learn's power-method tolerance.

:func:`find_closer_th` is the official code's global threshold: the candidate score whose share of
scores ``≤`` it is closest to the pruning fraction ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import ConfigError

__all__ = ["PLSResult", "find_closer_th", "fit_pls", "one_hot", "pls_vip", "vip_scores"]


@dataclass
class PLSResult:
    """A fitted PLS model (the attributes scikit-learn's ``PLSRegression`` exposes, same names).

    Attributes:
        x_weights: ``W`` of shape ``(P, c)``, unit-norm columns.
        x_scores: ``T`` of shape ``(N, c)``.
        x_loadings: ``P_load`` of shape ``(P, c)``.
        y_loadings: ``Q`` of shape ``(C, c)``.
        x_mean: feature means ``(P,)``.
        x_std: feature deviations ``(P,)`` (ones when ``scale=False``).
    """

    x_weights: Tensor
    x_scores: Tensor
    x_loadings: Tensor
    y_loadings: Tensor
    x_mean: Tensor
    x_std: Tensor


def one_hot(labels: Tensor, num_classes: int | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """One-hot ``(N, C)`` matrix of integer ``labels`` (``C`` = ``num_classes`` or ``max + 1``)."""
    labels = labels.long().flatten()
    c = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    out = torch.zeros(labels.numel(), c, dtype=dtype, device=labels.device)
    out[torch.arange(labels.numel(), device=labels.device), labels] = 1.0
    return out


def _standardize(m: Tensor, scale: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Centre (and scale) ``m`` in place; returns ``(m, mean, std)`` like scikit-learn's ``_center_scale_xy``.

    One deliberate difference: a column that is exactly constant (a dead filter) becomes exactly zero.
    scikit-learn only catches ``std == 0``; the rounding residue of the mean (~1e-17) would otherwise be
    scaled up to unit variance and turn a feature without information into noise with a random VIP.
    """
    constant = m.amax(dim=0) == m.amin(dim=0)
    mean = m.mean(dim=0)
    m -= mean
    m[:, constant] = 0.0
    if scale:
        std = m.std(dim=0, unbiased=True) if m.shape[0] > 1 else torch.ones_like(mean)
        std[(std == 0) | constant] = 1.0
        m /= std
    else:
        std = torch.ones_like(mean)
    return m, mean, std


@torch.no_grad()
def fit_pls(
    x: Tensor,
    y: Tensor,
    n_components: int = 2,
    *,
    scale: bool = True,
    dtype: torch.dtype = torch.float64,
) -> PLSResult:
    """Fit PLS regression (PLS2, regression deflation) of ``y`` on ``x``, on ``x``'s device.

    Args:
        x: features ``(N, P)``.
        y: targets ``(N, C)`` (e.g. :func:`one_hot` labels) or labels ``(N,)`` (one-hot encoded here).
        n_components: number of latent components ``c`` (the paper and the official code use 2).
        scale: standardise the columns of ``x`` and ``y`` to unit variance (the official code does).
        dtype: computation precision; ``float64`` matches scikit-learn to ~1e-10, ``float32`` halves the
            memory (a copy of ``x`` is made in this dtype).

    Raises:
        ConfigError: fewer than 2 samples, mismatched shapes, or ``n_components`` outside ``[1, P]``.
    """
    if x.dim() != 2:
        raise ConfigError(f"PLS: features must be a matrix (N, P), got shape {tuple(x.shape)}")
    if y.dim() == 1:
        y = one_hot(y.to(x.device), dtype=dtype)
    n, p = x.shape
    if y.shape[0] != n:
        raise ConfigError(f"PLS: {n} feature rows but {y.shape[0]} targets")
    if n < 2:
        raise ConfigError("PLS: need at least 2 samples; use a larger calibration set")
    if not 1 <= n_components <= p:
        raise ConfigError(f"PLS: n_components must be in [1, {p}] (number of features), got {n_components}")
    xs, x_mean, x_std = _standardize(x.to(dtype=dtype, copy=True), scale)
    ys, _, _ = _standardize(y.to(device=x.device, dtype=dtype, copy=True), scale)
    c = n_components
    weights = torch.zeros(p, c, dtype=dtype, device=x.device)
    scores = torch.zeros(n, c, dtype=dtype, device=x.device)
    x_load = torch.zeros(p, c, dtype=dtype, device=x.device)
    y_load = torch.zeros(ys.shape[1], c, dtype=dtype, device=x.device)
    # Xᵀ Y once; the deflated cross-product is corrected per component (below) instead of recomputed.
    cross = xs.T @ ys  # (P, C)
    for k in range(c):
        # X_kᵀ Y_k = X_kᵀ Y: X_kᵀ t_j = 0 for j < k, so Y's deflation does not change the product.
        m = cross - x_load[:, :k] @ (scores[:, :k].T @ ys)
        _, evecs = torch.linalg.eigh(m.T @ m)  # ascending eigenvalues: the last is the dominant
        w = m @ evecs[:, -1]
        norm = torch.linalg.vector_norm(w)
        if float(norm) == 0.0:
            # X_k is uncorrelated with Y: nothing left to explain; later components stay zero.
            break
        w = w / norm
        # scikit-learn's _svd_flip_1d: the largest-|w| entry is positive (deterministic signs).
        w = w * torch.sign(w[torch.argmax(w.abs())])
        t = xs @ w - scores[:, :k] @ (x_load[:, :k].T @ w)
        tt = t @ t
        pk = (xs.T @ t - x_load[:, :k] @ (scores[:, :k].T @ t)) / tt
        qk = (ys.T @ t - y_load[:, :k] @ (scores[:, :k].T @ t)) / tt
        weights[:, k], scores[:, k], x_load[:, k], y_load[:, k] = w, t, pk, qk
    return PLSResult(weights, scores, x_load, y_load, x_mean, x_std)


def vip_scores(x_scores: Tensor, x_weights: Tensor, y_loadings: Tensor) -> Tensor:
    r"""VIP of every feature from a fitted PLS model: ``sqrt(P Σ_k SS_k (w_jk/‖w_k‖)² / Σ_k SS_k)``.

    Args:
        x_scores: ``T`` ``(N, c)``.
        x_weights: ``W`` ``(P, c)``.
        y_loadings: ``Q`` ``(C, c)``.

    Returns:
        ``(P,)`` non-negative scores with ``Σ_j VIP_j² = P`` (all zeros when the model explains nothing).
    """
    x_scores, x_weights, y_loadings = (t.to(torch.float64) for t in (x_scores, x_weights, y_loadings))
    ss = (x_scores * x_scores).sum(dim=0) * (y_loadings * y_loadings).sum(dim=0)  # (c,)
    norms = torch.linalg.vector_norm(x_weights, dim=0)
    w2 = (x_weights / torch.where(norms > 0, norms, torch.ones_like(norms))) ** 2
    total = ss.sum()
    p = x_weights.shape[0]
    if float(total) == 0.0:
        return torch.zeros(p, dtype=torch.float64, device=x_weights.device)
    return torch.sqrt(p * (w2 @ ss) / total)


def pls_vip(
    x: Tensor, y: Tensor, n_components: int = 2, *, scale: bool = True, dtype: torch.dtype = torch.float64
) -> Tensor:
    """VIP score of every column of ``x`` for a PLS model of ``y`` (labels or one-hot), ``(P,)`` float64."""
    fit = fit_pls(x, y, n_components, scale=scale, dtype=dtype)
    return vip_scores(fit.x_scores, fit.x_weights, fit.y_loadings)


def find_closer_th(scores: Tensor, fraction: float) -> float:
    """The official ``find_closer_th``: the score ``th`` whose share of scores ``≤ th`` is closest to ``fraction``.

    Every score is a candidate; ties in distance go to the first candidate in the given order (the
    official code's ``argmin``). Filters with score ``≤ th`` are then removed.

    Args:
        scores: all candidate scores (1-D, the concatenation over the allowed layers).
        fraction: the share to remove, in (0, 1).

    Raises:
        ConfigError: for an empty ``scores`` or ``fraction`` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"pruning fraction p must be in (0, 1), got {fraction}")
    flat = scores.detach().flatten().to(torch.float64).cpu()
    if flat.numel() == 0:
        raise ConfigError("find_closer_th: no scores; no prunable filter is left")
    ordered = torch.sort(flat).values
    # Share of scores <= each candidate, in one sorted pass instead of the official O(P²) loop.
    share = torch.searchsorted(ordered, flat, right=True).to(torch.float64) / flat.numel()
    return float(flat[int(torch.argmin((fraction - share).abs()))])
