"""Gradient saliency criteria for pruning at initialisation: SNIP, GraSP and SynFlow.

All three differentiate the network *through whatever parametrization the target has*: the tensor
scored is the original behind the mask (:func:`prunelab.core.masking.original`), which is the weight
for standard pruning (SP) and the filter-basis coefficients ``Λ`` for interspace pruning (IP,
:mod:`prunelab.reparam.interspace`). The same code therefore scores ``W`` or ``Λ``. With ``θ`` the
scored tensor and ``L`` the cross-entropy on calibration batches:

- **SNIP** (Lee, Ajanthan, Torr, ICLR 2019, "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity"): ``S = |θ ⊙ ∂L/∂θ|``, the gradient summed over the calibration batches.
- **GraSP** (Wang, Zhang, Grosse, ICLR 2020, "Picking Winning Tickets Before Training by Preserving
  Gradient Flow"): the paper scores ``S(−θ) = −θ ⊙ H g`` (``g = ∂L/∂θ``, ``H`` the Hessian, the product
  computed as ``∂(gᵀ stopgrad(g))/∂θ``) and *removes the weights with the highest* ``S``: those whose
  removal reduces the gradient norm least, or raises it (official code ``alecwangcq/GraSP``, ``GraSP.py``:
  ``keep = score <= threshold of the top-k``; logits divided by a temperature ``T = 200``). Since prunelab
  keeps the highest scores, the score here is ``θ ⊙ H g = −S`` shifted by its global minimum to be
  non-negative (a shift by one constant keeps the global element ranking; use element granularity).
- **SynFlow** (Tanaka, Kunin, Yamins, Ganguli, NeurIPS 2020, "Pruning neural networks without any data
  by iteratively conserving synaptic flow"): data-free. Every parameter and BN buffer is replaced by its
  absolute value (the network is "linearised"), BN is in eval mode, the input is all ones, and with
  ``R = 1ᵀ f(1)`` the score is ``S = |θ ⊙ ∂R/∂θ|`` (computed in float64, as the official code does, so ``R``
  cannot overflow). It is meant to be applied iteratively (100 rounds, exponential schedule: the
  ``at_init`` driver with ``prune.rounds: 100``), which avoids layer collapse. On IP, ``|B|`` is
  linearised like every other parameter [unconfirmed: the paper's text on it could not be read].

Statistics: ``stats["model"]`` (the network the targets belong to) and ``stats["batches"]`` (a list of
``(x, y)`` calibration batches; SynFlow only reads the input shape). The
``at_init`` driver of :mod:`prunelab.methods.interspace` provides both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.core import masking
from prunelab.core.criterion import Stats, TargetView
from prunelab.core.modules import eval_mode, training_mode
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import ConfigError

__all__ = ["SNIP", "GraSP", "SynFlow", "scoring_mode"]

_REQUIRES = frozenset({"model", "batches"})


def _params(model: nn.Module, views: Sequence[TargetView]) -> list[Tensor]:
    # The live originals (weights for SP, coefficients for IP): what the masks act on.
    return [masking.original(v.target.module, v.target.param) for v in views]


def _model_and_batches(stats: Stats) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    model, batches = stats.get("model"), stats.get("batches")
    if not isinstance(model, nn.Module) or not batches:
        raise ConfigError(
            "saliency criteria need stats={'model': model, 'batches': [(x, y), ...]}; use the at_init driver"
        )
    return model, list(batches)


def _device(model: nn.Module) -> torch.device:
    ref = next(iter(model.parameters()), None)
    return ref.device if ref is not None else torch.device("cpu")


@contextmanager
def scoring_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Set train/eval mode and restore it and every floating buffer (BN running statistics) afterwards.

    Scoring must not leave traces: a train-mode forward would update the BN running statistics. Every
    gradient criterion (built-in or a plugin's) scores inside it.
    """
    saved = {name: b.detach().clone() for name, b in model.named_buffers() if b.is_floating_point()}
    try:
        with training_mode(model, train):
            yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved:
                    b.copy_(saved[name])


class _Precomputed:
    """Criteria whose scores are computed for all targets at once in :meth:`fit`."""

    requires: frozenset[str] = _REQUIRES

    def __init__(self) -> None:
        self._scores: dict[str, Tensor] = {}

    def score(self, view: TargetView, stats: Stats) -> Tensor:
        """The score computed by the last :meth:`fit` for ``view``'s tensor."""
        if view.fqn not in self._scores:
            raise ConfigError(f"{type(self).__name__}: no score for {view.fqn}; the pruner calls fit() first")
        return self._scores[view.fqn]


@CRITERIA.register("snip", help="SNIP connection sensitivity |θ ⊙ ∂L/∂θ| on calibration batches (Lee 2019).")
class SNIP(_Precomputed):
    """SNIP: ``S = |θ ⊙ Σ_batches ∂L/∂θ|`` (Lee et al., ICLR 2019).

    Args:
        train_mode: forward in train mode (BN batch statistics; running statistics are restored) —
            the networks are scored at initialisation, where BN running statistics are meaningless.
    """

    def __init__(self, train_mode: bool = True) -> None:
        super().__init__()
        self.train_mode = bool(train_mode)

    def fit(self, views: Sequence[TargetView], stats: Stats) -> None:
        """Accumulate the loss gradient over the calibration batches and score every target."""
        model, batches = _model_and_batches(stats)
        params = _params(model, views)
        device = _device(model)
        grads = [torch.zeros_like(p) for p in params]
        n = sum(len(y) for _, y in batches)
        with scoring_mode(model, self.train_mode), torch.enable_grad():
            for x, y in batches:
                loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum") / n
                for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
                    g += d
        self._scores = {
            v.fqn: (p.detach() * g).abs().float() for v, p, g in zip(views, params, grads, strict=True)
        }

    def __repr__(self) -> str:
        return f"SNIP(train_mode={self.train_mode})"


@CRITERIA.register("grasp", help="GraSP gradient-flow preservation θ ⊙ Hg (keep high; Wang 2020).")
class GraSP(_Precomputed):
    """GraSP: keep the highest ``θ ⊙ H g`` (= remove the highest published ``S(−θ) = −θ ⊙ H g``).

    Args:
        temperature: logits are divided by it, as in the official code (200).
        train_mode: forward in train mode (running statistics are restored).
    """

    def __init__(self, temperature: float = 200.0, train_mode: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"grasp: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.train_mode = bool(train_mode)
        #: ``θ ⊙ H g`` before the shift (signed), kept for inspection and tests.
        self.raw: dict[str, Tensor] = {}

    def fit(self, views: Sequence[TargetView], stats: Stats) -> None:
        """Compute ``g``, then ``H g`` by double backpropagation, and the shifted scores."""
        model, batches = _model_and_batches(stats)
        params = _params(model, views)
        device = _device(model)
        n = sum(len(y) for _, y in batches)
        with scoring_mode(model, self.train_mode), torch.enable_grad():
            g = [torch.zeros_like(p) for p in params]
            for x, y in batches:
                loss = (
                    F.cross_entropy(model(x.to(device)) / self.temperature, y.to(device), reduction="sum") / n
                )
                for acc, d in zip(g, torch.autograd.grad(loss, params), strict=True):
                    acc += d
            hg = [torch.zeros_like(p) for p in params]
            for x, y in batches:
                loss = (
                    F.cross_entropy(model(x.to(device)) / self.temperature, y.to(device), reduction="sum") / n
                )
                grads = torch.autograd.grad(loss, params, create_graph=True)
                # z = Σ gᵀ stopgrad(g_total); ∂z/∂θ = H g_total (summed over batches: H is linear in L).
                z = sum((d * gt).sum() for d, gt in zip(grads, g, strict=True))
                for acc, d in zip(hg, torch.autograd.grad(z, params), strict=True):
                    acc += d
        self.raw = {v.fqn: (p.detach() * h).float() for v, p, h in zip(views, params, hg, strict=True)}
        # One global shift: the pruner contract wants non-negative scores and the ranking is global.
        alive = [r[v.mask] for v, r in zip(views, self.raw.values(), strict=True) if bool(v.mask.any())]
        low = min((float(a.min()) for a in alive), default=0.0)
        self._scores = {k: (r - low).clamp_min(0) for k, r in self.raw.items()}

    def __repr__(self) -> str:
        return f"GraSP(temperature={self.temperature}, train_mode={self.train_mode})"


@CRITERIA.register("synflow", help="SynFlow data-free synaptic flow |θ ⊙ ∂R/∂θ| (Tanaka 2020); iterate it.")
class SynFlow(_Precomputed):
    """SynFlow: ``S = |θ ⊙ ∂R/∂θ|`` on the linearised network with an all-ones input (Tanaka et al. 2020).

    Only the input shape of ``stats["batches"]`` is read (the criterion is data-free).

    Args:
        double: compute in float64 (the flow ``R`` is a product over layers and overflows float32 in
            deep nets).
    """

    def __init__(self, double: bool = True) -> None:
        super().__init__()
        self.double = bool(double)

    @torch.no_grad()
    def _linearise(self, model: nn.Module) -> dict[str, Tensor]:
        signs: dict[str, Tensor] = {}
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point():
                signs[name] = torch.sign(t)
                t.abs_()
        return signs

    @torch.no_grad()
    def _restore(self, model: nn.Module, signs: dict[str, Tensor]) -> None:
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name in signs:
                t.mul_(signs[name])

    def fit(self, views: Sequence[TargetView], stats: Stats) -> None:
        """Score every target by the synaptic flow of the linearised network."""
        model, batches = _model_and_batches(stats)
        x0 = batches[0][0]
        device = _device(model)
        dtype = next(iter(model.parameters())).dtype
        with eval_mode(model):  # BN in eval mode, as in the official code
            if self.double:
                model.double()
            signs = self._linearise(model)
            try:
                params = _params(model, views)
                ones = torch.ones((1, *x0.shape[1:]), device=device, dtype=params[0].dtype)
                with torch.enable_grad():
                    flow = model(ones).sum()
                    grads = torch.autograd.grad(flow, params)
                self._scores = {
                    # Kept in float64: the flow spans more orders of magnitude than float32 holds.
                    v.fqn: (p.detach() * g).abs().clone()
                    for v, p, g in zip(views, params, grads, strict=True)
                }
            finally:
                self._restore(model, signs)
                if self.double:
                    model.to(dtype)

    def __repr__(self) -> str:
        return f"SynFlow(double={self.double})"
