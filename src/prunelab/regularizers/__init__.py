"""Training-time regularizers as training hooks (see :mod:`prunelab.training.hooks`).

* :class:`L1SubgradientHook` — network slimming's ℓ1 subgradient on BatchNorm scales (Liu et al. 2017);
* :class:`ProximalSlimmingHook` — proximal network slimming's γ/ξ updates (Bui et al. 2023).
"""

from prunelab.regularizers.slimming import (
    L1SubgradientHook,
    ProximalSlimmingHook,
    batchnorm_layers,
    soft_threshold,
)

__all__ = ["L1SubgradientHook", "ProximalSlimmingHook", "batchnorm_layers", "soft_threshold"]
