"""The criterion interface: how important each entry of a target tensor is.

A criterion maps the live state of one target (a :class:`TargetView`) and optional accumulated
statistics to a score tensor ``S`` with ``S.shape == view.value.shape``, ``S ≥ 0``, higher = keep.
It does not decide how many entries go (that is the selector's job) nor at which unit (the
granularity's): the pruner sums ``S`` over units, ranks the units and masks the losers.

``requires`` names the statistics a criterion reads from ``stats`` (e.g. ``{"input_abs_mean"}`` for
NN-relief, ``{"grad"}`` for SNIP); data-free criteria such as magnitude leave it empty. By convention
``stats[name]`` maps a target's fqn to its tensor. Criteria that need one global fit before scoring
(PLS + VIP) may also define ``fit(views, stats)``, which the pruner calls once per step before any
``score``. Criteria with internal state (a random generator) may define ``state_dict()`` /
``load_state_dict(state)``; the pruner saves and restores it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from prunelab.core.targets import Target
from prunelab.registry import Registry

#: Statistics handed to criteria: ``{statistic name: {target fqn: tensor}}`` by convention.
Stats = Mapping[str, Any]


@dataclass(frozen=True)
class TargetView:
    """What a criterion sees of one target at scoring time.

    Attributes:
        target: the target's address.
        value: the tensor to score: the *original* tensor behind the mask
            (:func:`prunelab.core.masking.original`), detached. Entries already pruned are usually zero.
        mask: the current boolean keep-mask (``True`` = keep), same shape as ``value``.
        grad: the gradient accumulated on the original tensor, if any (``None`` otherwise).
    """

    target: Target
    value: Tensor
    mask: Tensor
    grad: Tensor | None = field(default=None)

    @property
    def fqn(self) -> str:
        """The target's qualified tensor name, the key into ``stats[name]``."""
        return self.target.fqn

    @property
    def module(self) -> nn.Module:
        """The module that owns the target tensor."""
        return self.target.module


@runtime_checkable
class Criterion(Protocol):
    """Scores the entries of one target; higher = more important = keep.

    Attributes:
        requires: names of the statistics :meth:`score` reads from ``stats`` (empty if data-free).
    """

    requires: frozenset[str]

    def score(self, view: TargetView, stats: Stats) -> Tensor:
        """Return non-negative scores with ``view.value``'s shape (higher = keep)."""
        ...


#: Criterion factories by name; ``CRITERIA.build("magnitude", p=2)`` returns a criterion.
CRITERIA: Registry[Callable[..., Criterion]] = Registry("criterion")
