r"""Sparsity regularizers on BatchNorm scaling factors γ, as training hooks.

Network slimming (Z. Liu, J. Li, Z. Shen, G. Huang, S. Yan and C. Zhang, *Learning Efficient
Convolutional Networks through Network Slimming*, ICCV 2017) trains

.. math:: \min_{W,\gamma} \frac1N\sum_n \ell(f(x_n; W, \gamma), y_n) + \lambda \sum_{\gamma\in\Gamma} |\gamma|

by subgradient descent: after ``backward``, ``γ.grad += λ·sign(γ)`` (:class:`L1SubgradientHook`).

Proximal network slimming (K. Bui, F. Xue, F. Park, Y. Qi and J. Xin, *A Proximal Algorithm for
Network Slimming*, LOD 2023, arXiv:2307.00684) relaxes the problem with an auxiliary copy ξ,

.. math:: \min_{W,\gamma,\xi} L(W,\gamma) + \lambda\|\xi\|_1 + \frac\beta2\|\gamma-\xi\|^2,

and after every optimizer step (which gives :math:`\tilde\gamma`) applies, with :math:`\alpha = 1/\mathrm{lr}`,

.. math::
    \gamma \leftarrow \frac{\alpha\tilde\gamma + \beta\xi}{\alpha+\beta}, \qquad
    \xi \leftarrow S_{\lambda/(\alpha+\beta)}\Big(\frac{\alpha\xi + \beta\gamma}{\alpha+\beta}\Big),

with the soft-threshold :math:`S_t(z) = \mathrm{sign}(z)\max(|z|-t, 0)`; ξ becomes exactly sparse
(:class:`ProximalSlimmingHook`). As in the official code (kbui1993/Official-Proximal-Network-Slimming)
the optimizer is plain SGD on all parameters, γ included, and ξ is initialised from U(0.47, 0.53).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import ConfigError
from prunelab.training.hooks import TrainHook

__all__ = ["L1SubgradientHook", "ProximalSlimmingHook", "batchnorm_layers", "soft_threshold"]


def batchnorm_layers(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The affine BatchNorm layers of ``model`` (all, or those named), by qualified name.

    Raises:
        ConfigError: a named layer is missing or not an affine BatchNorm.
    """
    if names is None:
        return {
            n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
        }  # fmt: skip
    out: dict[str, nn.Module] = {}
    for n in names:
        m = model.get_submodule(n)
        if not (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine):
            raise ConfigError(f"{n!r} is not an affine BatchNorm layer; slimming regularizes BN scales only")
        out[n] = m
    return out


def soft_threshold(z: Tensor, t: float) -> Tensor:
    """``sign(z) · max(|z| − t, 0)`` (exact zeros for ``|z| <= t``)."""
    return torch.sign(z) * torch.clamp(z.abs() - t, min=0.0)


class L1SubgradientHook(TrainHook):
    """Network slimming: add ``λ · sign(γ)`` to the gradient of every regularized BN scale.

    Args:
        model: the network (the BN layers are looked up by name).
        lam: λ, the ℓ1 strength (official code: 1e-4 for VGG, 1e-5 for ResNet/DenseNet).
        names: BN layers to regularize (default: every affine BN).
    """

    def __init__(self, model: nn.Module, lam: float, names: Sequence[str] | None = None) -> None:
        if lam < 0:
            raise ConfigError(f"lam: {lam} is negative; the ℓ1 strength must be >= 0")
        self.lam = float(lam)
        self.names = list(batchnorm_layers(model, names))

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        """``γ.grad += λ · sign(γ)`` (sign(0) = 0, the minimal-norm subgradient)."""
        for n in self.names:
            w = model.get_submodule(n).weight
            if w.grad is not None:
                w.grad.add_(torch.sign(w), alpha=self.lam)


class ProximalSlimmingHook(TrainHook):
    """Proximal network slimming: the γ and ξ updates after each optimizer step.

    Args:
        model: the network.
        lam: λ on ‖ξ‖₁ (official: 0.0045 VGG-19, 0.004 DenseNet-40, 0.002 ResNet-164).
        beta: β, the coupling of γ and ξ (official: 100 VGG/DenseNet, 0.25 ResNet-164).
        names: BN layers (default: every affine BN).
        xi_init: ξ is drawn from U(xi_init) (official: (0.47, 0.53)).
        seed: seed of the ξ initialisation.
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float,
        beta: float,
        names: Sequence[str] | None = None,
        xi_init: tuple[float, float] = (0.47, 0.53),
        seed: int = 0,
    ) -> None:
        if lam < 0 or beta <= 0:
            raise ConfigError(f"lam={lam}, beta={beta}: need lam >= 0 and beta > 0")
        self.lam, self.beta = float(lam), float(beta)
        layers = batchnorm_layers(model, names)
        self.names = list(layers)
        gen = torch.Generator().manual_seed(seed)
        lo, hi = xi_init
        self.xi: dict[str, Tensor] = {
            n: (lo + (hi - lo) * torch.rand(m.weight.shape, generator=gen)).to(m.weight.device)
            for n, m in layers.items()
        }

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        """γ ← (αγ̃ + βξ)/(α+β); ξ ← S_{λ/(α+β)}((αξ + βγ)/(α+β)), α = 1/lr."""
        alpha = 1.0 / lr
        denom = alpha + self.beta
        for n in self.names:
            g = model.get_submodule(n).weight
            xi = self.xi[n]
            g.mul_(alpha).add_(xi, alpha=self.beta).div_(denom)
            self.xi[n] = soft_threshold((alpha * xi + self.beta * g) / denom, self.lam / denom)

    def zero_fraction(self) -> float:
        """Share of ξ entries that are exactly 0."""
        total = sum(x.numel() for x in self.xi.values())
        return sum(int((x == 0).sum()) for x in self.xi.values()) / max(total, 1)

    def state_dict(self) -> dict[str, Any]:
        """ξ, so that a resumed run continues the same iteration."""
        return {"xi": {n: x.clone() for n, x in self.xi.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ξ."""
        for n, x in state["xi"].items():
            self.xi[n] = x.clone()
