"""The pruner: score → reduce to units → select → expand → mask, over a set of targets.

One pruning step at cumulative level ``s`` does, for every target tensor ``W`` (with original
``W₀`` behind its mask ``M``):

1. ``S = criterion.score(view(W₀, M), stats)`` (non-negative, higher = keep), with ``S`` set to 0
   where ``M`` is already false, so pruned entries add nothing to their unit's score;
2. ``U = granularity.reduce(S)`` (sum over each unit) and ``P = reduce(M) > 0`` (a unit is alive while
   any of its entries is);
3. ``K = selector(U, s, scope, previous=P, min_keep)`` (unit keep-masks, ``K ⊆ P``);
4. ``M ← M ∧ granularity.expand(K)`` and ``W₀ ← W₀ ⊙ M`` (:func:`prunelab.core.masking.update_mask`).

Masks therefore only shrink, whatever the criterion proposes. Sparsity means the fraction of the
targeted tensors' units removed (units are entries for ``element`` granularity); the report also gives
the fraction of entries, which is what parameter counts see.

Companions. A target may carry a *companion*: a 1-D tensor of the same module with one entry per output
unit, such as the bias ``b`` of a Linear or conv weight (``companion="bias"``). Its entries compete in
their output unit's row. Step 2 scores it with the same criterion (``S_b``, 0 where already pruned) and
appends it as one more column of the target's units, one row per output unit ``j``,

    U'_j = [U_j,1, …, U_j,n, S_b,j],        P'_j = [P_j,1, …, P_j,n, M_b,j],

the selector keeps or removes the entries of ``U'`` (so the bias counts in the row's total, as NN-relief's
``S_j`` does), and step 4 also updates ``M_b`` from the last column. With ``prune_companion=False`` the
companion is scored but its mask is never touched. The granularity must keep the output dimension
(``element``, ``kernel`` or ``filter``), since the rows are indexed by it.

:class:`GradualPruningHook` runs the same step on a schedule from inside a training loop, and
:func:`prune` is the one-shot convenience exported as ``prunelab.prune``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

# Imported for its registration: selector names given to the Pruner include NN-relief's cumulative_mass.
from prunelab.core import cumulative as _cumulative  # noqa: F401
from prunelab.core import masking
from prunelab.core.criterion import EntryCriterion, Stats, TargetView, criterion_levels
from prunelab.core.granularity import GRANULARITIES, Granularity
from prunelab.core.selectors import SELECTORS, Selector, check_min_keep, check_scope, check_sparsity
from prunelab.core.targets import Target, find_targets
from prunelab.criteria import build_criterion
from prunelab.errors import CheckpointError, ConfigError

STATE_FORMAT = "prunelab.pruner"
STATE_VERSION = 1


@dataclass(frozen=True)
class PruneReport:
    """What one pruning step left behind, over the targeted tensors only.

    Companion tensors are not counted: units are the granularity's units of the targets.

    Attributes:
        requested: the level asked for (the cumulative target sparsity for top-k).
        sparsity: fraction of the targeted entries that are masked after the step.
        per_tensor: ``{fqn: fraction of that tensor's entries masked}``.
        units_removed: units (at the pruner's granularity) fully masked, over all targets.
        units_total: units over all targets.
        entries_removed: masked entries over all targets.
        entries_total: entries over all targets.
        granularity: the granularity the units refer to.
    """

    requested: float
    sparsity: float
    per_tensor: dict[str, float]
    units_removed: int
    units_total: int
    entries_removed: int
    entries_total: int
    granularity: str

    @property
    def unit_sparsity(self) -> float:
        """Fraction of units removed: what a top-k selector makes exactly equal to ``requested``."""
        return self.units_removed / self.units_total if self.units_total else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for ``summary.json`` / ``metrics.jsonl``)."""
        return {**asdict(self), "unit_sparsity": self.unit_sparsity}


def _resolve_targets(
    model: nn.Module,
    targets: Sequence[Target | str] | None,
    include: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    layer_types: Sequence[str],
) -> list[Target]:
    if targets is None:
        return find_targets(model, include=include, exclude=exclude, layer_types=layer_types)
    if include is not None or exclude is not None:
        raise ConfigError("pass either targets or include/exclude patterns, not both")
    resolved = [Target.of(model, t) if isinstance(t, str) else t for t in targets]
    if not resolved:
        raise ConfigError("targets is empty; name at least one tensor to prune")
    fqns = [t.fqn for t in resolved]
    if len(set(fqns)) != len(fqns):
        raise ConfigError(f"targets name a tensor twice: {sorted({f for f in fqns if fqns.count(f) > 1})}")
    return resolved


def _companion_of(target: Target, name: str) -> Target | None:
    """The tensor ``name`` of the target's module as a companion target (``None``: the module sets it to None).

    Raises:
        ConfigError: the module has no attribute ``name`` (a typo, not a bias-free layer), or the tensor is
            not 1-D with one entry per output unit of the target.
    """
    if not hasattr(target.module, name):
        raise ConfigError(
            f"companion {name!r}: module {target.module_name or '<root>'} ({type(target.module).__name__}) has "
            f"no attribute {name!r}; a companion is a tensor of the target's own module, such as 'bias'"
        )
    tensor = getattr(target.module, name)
    if tensor is None:  # a layer built with bias=False: the target has no companion
        return None
    units = getattr(target.module, target.param).shape[0]
    if not isinstance(tensor, Tensor) or tensor.dim() != 1 or tensor.shape[0] != units:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ConfigError(
            f"companion {name!r} of {target.fqn} is {shape}; a companion holds one entry per output unit "
            f"of its target, shape ({units},)"
        )
    fqn = f"{target.module_name}.{name}" if target.module_name else name
    return Target(fqn=fqn, module_name=target.module_name, module=target.module, param=name)


def _resolve_companions(
    targets: Sequence[Target], name: str | None, granularity: Granularity
) -> dict[str, Target]:
    """``{target fqn: companion target}`` for the targets whose module has the tensor ``name``."""
    if name is None:
        return {}
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"companion must be the name of a tensor of each target's module ('bias'), got {name!r}"
        )
    companions: dict[str, Target] = {}
    for t in targets:
        ndim = getattr(t.module, t.param).dim()
        if 0 in granularity.summed_dims(ndim):
            raise ConfigError(
                f"companion {name!r} joins its output unit's row, so the granularity must keep the output "
                f"dimension (element, kernel or filter), not {granularity.name}"
            )
        companion = _companion_of(t, name)
        if companion is not None:
            companions[t.fqn] = companion
    clash = sorted({c.fqn for c in companions.values()} & {t.fqn for t in targets})
    if clash:
        raise ConfigError(f"{clash[0]} is both a target and a companion; make it one or the other")
    return companions


def _append_column(units: Tensor, column: Tensor) -> Tensor:
    """``units`` as ``(out, units per output unit)`` with ``column`` (one entry per output unit) appended."""
    rows = units.reshape(units.shape[0], -1)
    return torch.cat([rows, column.reshape(-1, 1).to(device=rows.device, dtype=rows.dtype)], dim=1)


class Pruner:
    """Masks the targeted tensors of a model by criterion, granularity and selector.

    Call :meth:`prepare` (or :func:`prune`) **before building the optimizer**: it attaches the mask
    parametrizations, and stacked parametrizations (an interspace filter basis) create new
    ``Parameter`` objects that an optimizer built earlier would not see.

    Args:
        model: the network to prune (pruned in place).
        criterion: the name of an entry-level criterion in :data:`prunelab.criteria.CRITERIA` or an
            entry-level criterion object (:class:`~prunelab.core.criterion.EntryCriterion`).
        granularity: a name in :data:`prunelab.core.granularity.GRANULARITIES` or a
            :class:`~prunelab.core.granularity.Granularity`.
        scope: ``"global"`` (one ranking over all targets) or ``"layer"`` (each target on its own).
        include: glob(s) over module names to prune (see :func:`~prunelab.core.targets.find_targets`).
        exclude: glob(s) over module names to leave dense.
        min_keep: units kept per target at least (guards against layer collapse).
        criterion_kwargs: options for a criterion given by name (``{"p": 2}``, ``{"seed": 1}``).
        targets: explicit targets (:class:`Target` objects or tensor fqns such as ``"bn1.weight"``)
            instead of ``include``/``exclude``.
        selector: a name in :data:`prunelab.core.selectors.SELECTORS` or a selector callable.
        selector_kwargs: extra options for the selector.
        layer_types: layer kinds searched when ``targets`` is not given.
        reparam: what the masks act on: ``None``/``"none"`` (the weights: standard pruning) or a name in
            :data:`prunelab.reparam.REPARAMS` (``"interspace"``: the coefficients of a trainable filter
            basis, attached to the targets it applies to by :meth:`prepare`; the others keep SP).
        reparam_kwargs: options of the reparametrization (``{"init": "dct"}``).
        companion: the name of a 1-D tensor of each target's module with one entry per output unit
            (``"bias"``) that competes in its output unit's row (see the module docstring); a module
            that sets it to ``None`` (``bias=False``) gives its target no companion. ``None``: no
            companions (the default, plain pruning of the targets).
        prune_companion: update the companions' masks from the selection (``True``) or only let their
            scores count in their rows (``False``; their masks are read, never changed).

    Raises:
        UnsupportedModelError: the model has no real weights: it is on the meta device (materialise it)
            or holds NaN/inf values.
        ConfigError: for an unknown component or option, a criterion without the entry level (a
            group-level criterion such as ``bn_scale``), targets the granularity cannot split, or a
            companion that is missing, of the wrong shape, itself a target, or used with a granularity
            that sums over the output dimension (``channel``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        >>> pruner = Pruner(model, granularity="filter", scope="layer", exclude="2").prepare()
        >>> report = pruner.step(0.5)
        >>> report.units_removed, report.units_total
        (2, 4)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        criterion: str | EntryCriterion = "magnitude",
        granularity: str | Granularity = "element",
        scope: str = "global",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        min_keep: int = 1,
        criterion_kwargs: Mapping[str, Any] | None = None,
        targets: Sequence[Target | str] | None = None,
        selector: str | Selector = "topk",
        selector_kwargs: Mapping[str, Any] | None = None,
        layer_types: Sequence[str] = ("conv", "linear"),
        reparam: str | None = None,
        reparam_kwargs: Mapping[str, Any] | None = None,
        companion: str | None = None,
        prune_companion: bool = True,
    ) -> None:
        masking.require_real_weights(model, "Pruner")
        check_scope(scope)
        check_min_keep(min_keep)
        self.model = model
        self.scope = scope
        self.min_keep = min_keep
        self.criterion_kwargs = dict(criterion_kwargs or {})
        self.selector_kwargs = dict(selector_kwargs or {})
        self.criterion_name = criterion if isinstance(criterion, str) else None
        self.criterion = self._build_criterion(criterion)
        self.granularity = GRANULARITIES.get(granularity) if isinstance(granularity, str) else granularity
        self.selector_name = selector if isinstance(selector, str) else None
        self.selector: Selector = SELECTORS.get(selector) if isinstance(selector, str) else selector
        self.targets = _resolve_targets(model, targets, include, exclude, layer_types)
        for t in self.targets:
            # Fail at construction, not mid-training, if a target cannot be split into units.
            self.granularity.unit_shape(getattr(t.module, t.param).shape)
        self.companion = companion
        self.prune_companion = bool(prune_companion)
        #: ``{target fqn: companion target}`` for the targets that have one.
        self.companions = _resolve_companions(self.targets, companion, self.granularity)
        self.history: list[float] = []
        self.reparam = None if reparam in (None, "none") else reparam
        self.reparam_kwargs = dict(reparam_kwargs or {})
        if self.reparam is not None:
            from prunelab.reparam import REPARAMS

            REPARAMS.get(self.reparam)  # fail at construction on an unknown name
        #: fqns of the targets that carry the reparametrization (filled by :meth:`prepare`).
        self.reparametrized: list[str] = []

    def _build_criterion(self, criterion: str | EntryCriterion) -> EntryCriterion:
        if isinstance(criterion, str):
            return build_criterion(criterion, "entry", **self.criterion_kwargs)
        if self.criterion_kwargs:
            raise ConfigError("criterion_kwargs only apply to a criterion given by name")
        if "entry" not in criterion_levels(criterion):
            raise ConfigError(
                f"criterion {criterion!r} has no entry level (no score method); the pruner needs an "
                "entry-level criterion (prunelab list criteria)"
            )
        return criterion

    def _masked(self) -> list[Target]:
        """The tensors whose masks this pruner owns: its targets and the companions it prunes."""
        return self.targets + (list(self.companions.values()) if self.prune_companion else [])

    @property
    def requires(self) -> frozenset[str]:
        """The statistics :meth:`step` needs in ``stats`` (the criterion's ``requires``)."""
        return frozenset(getattr(self.criterion, "requires", frozenset()))

    def prepare(self) -> Pruner:
        """Attach an all-ones mask to every target and pruned companion (idempotent); returns ``self``.

        Call it before building the optimizer (see the class docstring).
        """
        for t in self._masked():
            masking.add_mask(t.module, t.param)
        if self.reparam is not None:
            from prunelab.reparam import attach_reparam

            # The mask is attached first, so it sits below the basis and masks the coefficients.
            self.reparametrized = attach_reparam(self.targets, self.reparam, **self.reparam_kwargs)
        return self

    def _check_prepared(self) -> None:
        missing = [t.fqn for t in self._masked() if not masking.has_mask(t.module, t.param)]
        if missing:
            raise ConfigError(
                f"{missing[0]} has no mask; call Pruner.prepare() before step() and before building "
                "the optimizer"
            )

    def _view(self, target: Target) -> TargetView:
        orig = masking.original(target.module, target.param)
        return TargetView(
            target=target,
            value=orig.detach(),
            mask=masking.get_mask(target.module, target.param),
            grad=None if orig.grad is None else orig.grad.detach(),
        )

    def _score(self, view: TargetView, stats: Stats) -> Tensor:
        scores = self.criterion.score(view, stats)
        if scores.shape != view.value.shape:
            raise ValueError(
                f"criterion {self.criterion!r} returned scores of shape {tuple(scores.shape)} for "
                f"{view.fqn} of shape {tuple(view.value.shape)}; scores must have the tensor's shape"
            )
        # A reduction, not ``(scores < 0).any()``: no score-sized boolean tensor (NaN passes either way;
        # the selector refuses non-finite scores).
        if scores.numel() and bool(scores.min() < 0):
            raise ValueError(f"criterion {self.criterion!r} returned negative scores for {view.fqn}")
        mask = view.mask.to(scores.device)
        if bool(mask.all()):  # nothing pruned yet (a first step): nothing to zero, no copy
            return scores
        # Pruned entries add nothing to their unit: their originals may have drifted under an
        # optimizer's old momentum, but they are gone from the network.
        return torch.where(mask, scores, torch.zeros((), dtype=scores.dtype))

    def _alive_units(self, mask: Tensor) -> Tensor:
        """Boolean unit mask of the units with at least one entry kept (an integer sum, no float copy)."""
        return self.granularity.reduce(mask) > 0

    # Not under no_grad: a criterion's fit may run autograd itself (SynFlow, GraSP). The values it scores
    # are detached, and update_mask runs without grad.
    def step(self, sparsity: float, stats: Stats | None = None) -> PruneReport:
        """Prune to a cumulative ``sparsity`` (fraction of the targeted units removed).

        Args:
            sparsity: the level handed to the selector, in [0, 1]; for top-k, the fraction of units
                removed in total (not an increment). Units already pruned stay pruned.
            stats: statistics the criterion requires (:attr:`requires`), ``{name: {fqn: tensor}}``; a
                criterion scores the companions too, so per-tensor statistics must cover them.

        Returns:
            A :class:`PruneReport` of the state after the step.

        Raises:
            ConfigError: a sparsity outside [0, 1], missing statistics, an unprepared pruner, or a
                sparsity the ``min_keep`` guard makes impossible.
            UnsupportedModelError: the model's weights hold NaN/inf (training diverged since
                :meth:`prepare`); nothing is pruned.
        """
        sparsity = check_sparsity(sparsity)
        self._check_prepared()
        # Checked at every step, not only at construction: training runs between the steps.
        masking.require_real_weights(self.model, "Pruner.step")
        stats = {} if stats is None else stats
        missing = self.requires - set(stats)
        if missing:
            raise ConfigError(
                f"criterion {self.criterion!r} needs statistics {sorted(missing)}; collect them on a "
                "calibration set and pass stats= to step()"
            )
        views = [self._view(t) for t in self.targets]
        companions = {fqn: self._view(c) for fqn, c in self.companions.items()}
        fit = getattr(self.criterion, "fit", None)
        if callable(fit):
            fit(views + list(companions.values()), stats)
        unit_scores: dict[str, Tensor] = {}
        previous: dict[str, Tensor] = {}
        for view in views:
            scores = self._score(view, stats)
            unit_scores[view.fqn] = self.granularity.reduce(scores)
            previous[view.fqn] = self._alive_units(view.mask)
            companion = companions.get(view.fqn)
            if companion is not None:
                unit_scores[view.fqn] = _append_column(unit_scores[view.fqn], self._score(companion, stats))
                previous[view.fqn] = _append_column(previous[view.fqn], companion.mask)
        keep = self.selector(
            unit_scores,
            sparsity,
            scope=self.scope,
            previous=previous,
            min_keep=self.min_keep,
            **self.selector_kwargs,
        )
        for view in views:
            unit_keep = keep[view.fqn]
            companion = companions.get(view.fqn)
            if companion is not None:
                rows = unit_keep.reshape(unit_keep.shape[0], -1)
                if self.prune_companion:
                    masking.update_mask(companion.target.module, companion.target.param, rows[:, -1])
                unit_keep = rows[:, :-1].reshape(self.granularity.unit_shape(view.value.shape))
            full = self.granularity.expand(unit_keep, view.value.shape)
            masking.update_mask(view.target.module, view.target.param, full)
        self.history.append(sparsity)
        return self.report(requested=sparsity)

    def report(self, requested: float = float("nan")) -> PruneReport:
        """A :class:`PruneReport` of the current masks (``requested`` is informational)."""
        per_tensor: dict[str, float] = {}
        removed = total = units_removed = units_total = 0
        for t in self.targets:
            mask = masking.get_mask(t.module, t.param)
            n_removed = mask.numel() - int(mask.count_nonzero())
            per_tensor[t.fqn] = n_removed / mask.numel()
            removed += n_removed
            total += mask.numel()
            if self.granularity.summed_dims(mask.dim()):
                alive_units = self._alive_units(mask)
                units_total += alive_units.numel()
                units_removed += alive_units.numel() - int(alive_units.count_nonzero())
            else:  # element units: the entries themselves, already counted
                units_total += mask.numel()
                units_removed += n_removed
        return PruneReport(
            requested=requested,
            sparsity=removed / total if total else 0.0,
            per_tensor=per_tensor,
            units_removed=units_removed,
            units_total=units_total,
            entries_removed=removed,
            entries_total=total,
            granularity=self.granularity.name,
        )

    def sparsity(self) -> float:
        """Fraction of the targeted tensors' entries that are masked now."""
        return self.report().sparsity

    def masks(self) -> dict[str, Tensor]:
        """``{fqn: bool keep-mask}`` copies for every target and pruned companion (all ones where no mask
        is attached)."""
        return {t.fqn: masking.get_mask(t.module, t.param).detach().clone() for t in self._masked()}

    def bake(self) -> nn.Module:
        """Replace each target's parametrization by a plain parameter holding ``W₀ ⊙ M``; returns the model.

        Pruned companions are baked too. Parameters are new objects afterwards: rebuild the optimizer.
        Masks of tensors that are neither this pruner's targets nor companions it prunes are left alone.
        """
        for t in self._masked():
            if masking.has_mask(t.module, t.param):
                masking._own_class(t.module)  # a deep copy's bake must not touch the original's class
                parametrize.remove_parametrizations(t.module, t.param, leave_parametrized=True)
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Masks, configuration and criterion state, keyed by fqn; loadable with ``weights_only=True``."""
        state_fn = getattr(self.criterion, "state_dict", None)
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": {
                "criterion": self.criterion_name,
                "criterion_kwargs": dict(self.criterion_kwargs),
                "granularity": self.granularity.name,
                "scope": self.scope,
                "min_keep": self.min_keep,
                "selector": self.selector_name,
                "selector_kwargs": dict(self.selector_kwargs),
                "targets": [t.fqn for t in self.targets],
                "reparam": self.reparam,
                "reparam_kwargs": dict(self.reparam_kwargs),
                "companion": self.companion,
                "prune_companion": self.prune_companion,
            },
            "masks": self.masks(),
            "criterion_state": state_fn() if callable(state_fn) else {},
            "history": list(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks, criterion state and history saved by :meth:`state_dict` (attaches masks).

        Like :meth:`prepare`, call it before building the optimizer.

        Raises:
            CheckpointError: a state of another format, or masks that do not fit this pruner's targets.
        """
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError("not a prunelab pruner state; pass what Pruner.state_dict() returned")
        if int(state.get("version", 0)) > STATE_VERSION:
            raise CheckpointError("pruner state written by a newer prunelab; upgrade prunelab to load it")
        masks = dict(state.get("masks", {}))
        ours = {t.fqn for t in self._masked()}
        foreign = sorted(set(masks) - ours)
        if foreign:
            raise CheckpointError(
                f"pruner state has masks for {foreign[:3]}, which are not targets or pruned companions of "
                "this pruner; build the pruner with the same targets and companion (or use "
                "Pruner.from_state_dict)"
            )
        self.prepare()
        masking.load_masks(self.model, masks)
        criterion_state = state.get("criterion_state") or {}
        load_fn = getattr(self.criterion, "load_state_dict", None)
        if criterion_state and callable(load_fn):
            load_fn(criterion_state)
        self.history = [float(s) for s in state.get("history", [])]

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: Mapping[str, Any]) -> Pruner:
        """Rebuild a pruner for ``model`` from a saved state (configuration, targets and masks).

        Raises:
            CheckpointError: if the state was saved from a pruner whose criterion or selector was an
                object rather than a registered name, or does not fit ``model``.
        """
        config = state.get("config") if state.get("format") == STATE_FORMAT else None
        if not isinstance(config, Mapping):
            raise CheckpointError("not a prunelab pruner state; pass what Pruner.state_dict() returned")
        if config.get("criterion") is None or config.get("selector") is None:
            raise CheckpointError(
                "this pruner state used an unregistered criterion or selector object; build the Pruner "
                "yourself and call load_state_dict"
            )
        try:
            pruner = cls(
                model,
                criterion=config["criterion"],
                criterion_kwargs=config.get("criterion_kwargs"),
                granularity=config["granularity"],
                scope=config["scope"],
                min_keep=int(config["min_keep"]),
                selector=config["selector"],
                selector_kwargs=config.get("selector_kwargs"),
                targets=list(config["targets"]),
                reparam=config.get("reparam"),
                reparam_kwargs=config.get("reparam_kwargs"),
                # States saved before companions existed have neither key: no companions.
                companion=config.get("companion"),
                prune_companion=bool(config.get("prune_companion", True)),
            )
        except ConfigError as exc:
            raise CheckpointError(f"pruner state does not fit this model: {exc}") from None
        pruner.load_state_dict(state)
        return pruner

    def __repr__(self) -> str:
        return (
            f"Pruner(criterion={self.criterion!r}, granularity={self.granularity.name!r}, "
            f"scope={self.scope!r}, targets={len(self.targets)}, min_keep={self.min_keep})"
        )


@dataclass
class GradualPruningHook:
    """A training hook that prunes on a step-based schedule (e.g. AGP) while the model trains.

    The training loop calls the five hook methods; only :meth:`on_step_end` acts: when
    ``schedule.due(step, total_steps)`` it calls ``pruner.step(schedule.sparsity_at(step, total_steps))``.
    Because masks act inside autograd, pruned weights get zero gradient and stay zero between updates.
    ``step`` counts completed optimizer steps (``1..total_steps``).

    Args:
        pruner: a prepared :class:`Pruner` (prepare it before building the optimizer).
        schedule: any object with ``sparsity_at(step, total_steps)`` and ``due(step, total_steps)``,
            e.g. :class:`~prunelab.core.schedules.AGP`.

    Attributes:
        reports: the :class:`PruneReport` of every update, in order.
    """

    pruner: Pruner
    schedule: Any
    reports: list[PruneReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (
            callable(getattr(self.schedule, "due", None))
            and callable(getattr(self.schedule, "sparsity_at", None))
        ):
            raise ConfigError(
                f"{type(self.schedule).__name__} is not step-based (no due/sparsity_at); use the agp schedule "
                "for gradual pruning, or call Pruner.step per round for one_shot/iterative"
            )

    def penalty(self, model: nn.Module) -> None:
        """No loss penalty."""

    def after_backward(self, model: nn.Module) -> None:
        """No gradient edit (masked entries already get zero gradient)."""

    def after_step(self, model: nn.Module, lr: float) -> None:
        """No proximal edit."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Nothing to do at epoch ends."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Update the masks if the schedule says so at ``step`` (of ``total_steps``)."""
        if self.schedule.due(step, total_steps):
            self.reports.append(self.pruner.step(self.schedule.sparsity_at(step, total_steps)))

    def state_dict(self) -> dict[str, Any]:
        """The pruner's state (masks, criterion state, history), saved in resumable checkpoints."""
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, so a resumed run prunes as the original would."""
        self.pruner.load_state_dict(state["pruner"])


def prune(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str | EntryCriterion = "magnitude",
    granularity: str | Granularity = "element",
    scope: str = "global",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    min_keep: int = 1,
    reparam: str | None = None,
    reparam_kwargs: Mapping[str, Any] | None = None,
    **criterion_kwargs: Any,
) -> Pruner:
    """Prune ``model`` once, in place, to ``sparsity``; returns the prepared :class:`Pruner`.

    Equivalent to ``Pruner(model, ...).prepare()`` followed by ``step(sparsity)``. The model keeps
    training as usual (build the optimizer afterwards); call ``pruner.bake()`` to make the zeros
    permanent plain weights.

    Args:
        model: any ``nn.Module``; its ``nn.Conv*`` and ``nn.Linear`` weights are the default targets.
        sparsity: fraction of the targeted units removed, in [0, 1].
        criterion: criterion name (``"magnitude"``, ``"random"``) or object.
        granularity: ``"element"``, ``"kernel"``, ``"filter"`` or ``"channel"``.
        scope: ``"global"`` or ``"layer"``.
        include: glob(s) over module names to prune.
        exclude: glob(s) over module names to leave dense.
        min_keep: units kept per tensor at least.
        reparam: ``"interspace"`` to prune filter-basis coefficients instead of weights (see
            :class:`Pruner`); ``None`` for standard pruning.
        reparam_kwargs: options of the reparametrization.
        **criterion_kwargs: options of the criterion (``p=2``, ``seed=1``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import prunelab
        >>> class Net(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(3, 8, 3)
        ...         self.fc = nn.Linear(8, 10)
        ...     def forward(self, x: torch.Tensor) -> torch.Tensor:
        ...         return self.fc(self.conv(x).relu().mean(dim=(2, 3)))
        >>> net = Net()
        >>> pruner = prunelab.prune(net, 0.5)
        >>> pruner.sparsity()
        0.5
        >>> net(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 10])
        >>> _ = pruner.bake()  # plain weights with the zeros in them
        >>> float((net.conv.weight == 0).float().mean()) > 0
        True
    """
    pruner = Pruner(
        model,
        criterion=criterion,
        granularity=granularity,
        scope=scope,
        include=include,
        exclude=exclude,
        min_keep=min_keep,
        criterion_kwargs=criterion_kwargs,
        reparam=reparam,
        reparam_kwargs=reparam_kwargs,
    )
    pruner.prepare()
    pruner.step(sparsity)
    return pruner
