"""Pruning methods: one module per method family, each registering its drivers and method presets.

Importing this package registers every built-in driver and method (and those of installed plugins,
entry-point group ``prunelab.methods``), so :data:`~prunelab.methods.base.DRIVERS` and
:data:`~prunelab.methods.base.METHODS` are complete whoever imports them first.

- :mod:`prunelab.methods.base` — the contract: :class:`~prunelab.methods.base.Driver`,
  :class:`~prunelab.methods.base.MethodContext`, :class:`~prunelab.methods.base.MethodResult`, presets.
- :mod:`prunelab.methods.unstructured` — dense, one-shot, iterative (lottery tickets) and AGP baselines.
- :mod:`prunelab.methods.interspace` — pruning at initialisation (SNIP, GraSP, SynFlow) for interspace
  pruning (Wimmer et al., CVPR 2022).
- :mod:`prunelab.methods.relief` — neural network relief (Dekhovich et al., Machine Learning 2024).
- :mod:`prunelab.methods.slimming` — network slimming and proximal network slimming (Liu et al. 2017;
  Bui et al. 2023), one-shot L1-filter structured pruning (Li et al. 2017).
- :mod:`prunelab.methods.pls_vip` — PLS+VIP iterative filter pruning (Jordao et al. 2019).
- :mod:`prunelab.methods.pretraining` — the pre-trained vs from-scratch pruning study (Hubens et al.
  2020).
"""

from prunelab.methods import base, interspace, pls_vip, pretraining, relief, slimming, unstructured  # noqa: F401  (the contract and the baselines first)  # noqa: F401
from prunelab.methods.base import DRIVERS, METHODS
from prunelab.registry import load_plugins

load_plugins("prunelab.methods")

__all__ = ["DRIVERS", "METHODS"]
