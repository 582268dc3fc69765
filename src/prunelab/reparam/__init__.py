"""Reparametrizations: *what* tensor a pruner scores and masks.

``none`` (direct): the weight itself, standard pruning (SP). ``interspace``: each K×K conv filter as
coefficients over a trainable filter basis (Wimmer et al., CVPR 2022); masks act on the coefficients
(:mod:`prunelab.reparam.interspace`). A reparametrization is attached to a pruner's targets by
:class:`prunelab.pruning.pruner.Pruner` (``reparam=``) or, in a recipe, by ``prune.reparam`` — every
driver then prunes the reparametrized tensors without knowing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from prunelab.errors import ConfigError
from prunelab.registry import Registry
from prunelab.reparam.interspace import (
    CompactInterspaceConv2d,
    FilterBasis,
    attach_interspace,
    attach_to_targets,
    compact_interspace,
    dct_basis,
    interspace_costs,
    interspace_layers,
    interspace_state_dict,
    load_interspace_state_dict,
    supports_interspace,
)

__all__ = [
    "REPARAMS",
    "CompactInterspaceConv2d",
    "FilterBasis",
    "ReparamConfig",
    "Reparametrization",
    "apply_reparam_spec",
    "attach_from_config",
    "attach_interspace",
    "attach_reparam",
    "check_reparam",
    "compact_interspace",
    "dct_basis",
    "interspace_costs",
    "interspace_layers",
    "interspace_state_dict",
    "load_interspace_state_dict",
    "reparam_spec",
]


@dataclass(frozen=True)
class Reparametrization:
    """A registered reparametrization: how to attach it and what its inference form costs.

    Attributes:
        attach: ``attach(targets, **options) -> fqns`` of the targets it was attached to.
        costs: ``costs(model, input_shape) -> dict`` of the honest inference costs of a model carrying
            it (recorded in ``summary.json`` under the reparametrization's name); ``None`` when its costs
            are the plain model's.
        supports: ``supports(module, param) -> bool``, whether a target can carry it (checked at
            validation: a recipe whose targets include none fails before training); ``None`` = any.
        granularities: the mask granularities it is meaningful at; ``None`` = any.
    """

    attach: Callable[..., list[str]]
    costs: Callable[..., dict[str, Any]] | None = None
    supports: Callable[[Any, str], bool] | None = None
    granularities: tuple[str, ...] | None = None


def _attach_nothing(targets: Iterable[Any], **options: Any) -> list[str]:
    return []


#: Reparametrizations by name (``prune.reparam.name``).
REPARAMS: Registry[Reparametrization] = Registry("reparametrization")
REPARAMS.register("none", help="Standard pruning: masks act on the weights themselves.")(
    Reparametrization(_attach_nothing)
)
REPARAMS.register(
    "interspace",
    help="Interspace pruning: K×K conv filters as coefficients over a trainable filter basis (CVPR 2022).",
)(
    Reparametrization(
        attach_to_targets,
        interspace_costs,
        supports=supports_interspace,
        # IP is defined on individual coefficients (Wimmer et al. prune them with unstructured
        # methods). A mask over whole filters or input channels removes structure no basis can change,
        # and such a run silently collapses (global filter masks empty whole layers): refused.
        granularities=("element", "kernel"),
    )
)


@dataclass
class ReparamConfig:
    """The ``prune.reparam`` recipe section: the SP/IP switch and the basis options.

    Attributes:
        name: ``none`` (standard pruning, SP) or ``interspace`` (IP).
        init: IP basis initialisation, ``identity`` (IP starts exactly as SP) or ``dct`` (orthonormal
            2-D DCT-II) [unconfirmed which the paper used].
        basis: one basis per layer (``shared``, default) or per input channel (``per_channel``)
            [unconfirmed].
        rewind_basis: lottery-ticket rewinding also resets the basis to its initial value
            [unconfirmed; default yes].
    """

    name: Literal["none", "interspace"] = "none"
    init: Literal["identity", "dct"] = "identity"
    basis: Literal["shared", "per_channel"] = "shared"
    rewind_basis: bool = True

    def kwargs(self) -> dict[str, Any]:
        """The options handed to the reparametrization's attach function."""
        if self.name == "none":
            return {}
        return {
            "init": self.init,
            "per_channel": self.basis == "per_channel",
            "rewind_basis": self.rewind_basis,
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain data (stored in checkpoints' ``arch``)."""
        return asdict(self)


def check_reparam(
    config: ReparamConfig,
    model: Any,
    include: Any = None,
    exclude: Any = None,
    granularity: str | None = None,
) -> None:
    """Fail at validation unless ``config``'s reparametrization fits the recipe (``model`` may be on meta).

    Checks that the mask ``granularity`` is one it is meaningful at and that at least one of the
    targets the patterns select can carry it (IP needs a K×K convolution with ``groups=1``).

    Raises:
        ConfigError: ``prune.reparam...: reason; fix``.
    """
    if config.name == "none":
        return
    entry = REPARAMS.get(config.name)
    if entry.granularities is not None and granularity is not None and granularity not in entry.granularities:
        raise ConfigError(
            f"prune.options.granularity: {granularity!r} masks whole filters or channels, which reparam "
            f"{config.name!r} is not defined for; use {' or '.join(entry.granularities)}, or reparam: none"
        )
    if entry.supports is not None:
        from prunelab.core.targets import find_targets

        targets = find_targets(model, include=include, exclude=exclude)
        if not any(entry.supports(t.module, t.param) for t in targets):
            raise ConfigError(
                f"prune.reparam.name: {config.name!r} applies to none of the {len(targets)} targeted layers "
                "(interspace needs a KxK convolution with groups=1); use reparam: none or include such layers"
            )


def attach_reparam(targets: Iterable[Any], name: str | None, **options: Any) -> list[str]:
    """Attach reparametrization ``name`` to ``targets`` (``None``/``"none"``: nothing); returns the fqns.

    Raises:
        ConfigError: an unknown name or bad options.
    """
    if name is None or name == "none":
        return []
    entry = REPARAMS.get(name)
    try:
        return entry.attach(list(targets), **options)
    except TypeError as exc:
        raise ConfigError(f"reparam {name!r}: bad options {options} ({exc})") from None


def reparam_spec(model: Any) -> dict[str, Any] | None:
    """The reparametrizations attached to ``model`` as plain data (for a checkpoint's ``arch``).

    ``{"name": "interspace", "layers": {weight fqn: {"init", "per_channel", "rewind_basis"}}}``, or ``None``
    when the model has none.
    """
    layers = {
        (f"{name}.weight" if name else "weight"): {
            "init": basis.init,
            "per_channel": basis.per_channel,
            "rewind_basis": basis.rewind_basis,
        }
        for name, _, basis in interspace_layers(model)
    }
    return {"name": "interspace", "layers": layers} if layers else None


def apply_reparam_spec(model: Any, spec: dict[str, Any] | None) -> None:
    """Attach what :func:`reparam_spec` recorded (before loading a checkpoint's state into ``model``).

    Raises:
        ConfigError: a layer the model lacks or that the reparametrization does not apply to.
    """
    if not spec:
        return
    if spec.get("name") != "interspace":
        raise ConfigError(f"checkpoint reparametrization {spec.get('name')!r} is unknown; upgrade prunelab")
    modules = dict(model.named_modules())
    for fqn, options in spec["layers"].items():
        module_name, _, param = fqn.rpartition(".")
        module = modules.get(module_name)
        if module is None or not attach_interspace(module, param, **options):
            raise ConfigError(f"checkpoint has an interspace basis on {fqn!r}, which this model cannot carry")


def attach_from_config(
    model: Any, config: ReparamConfig, include: Any = None, exclude: Any = None
) -> dict[str, Any] | None:
    """Attach ``config``'s reparametrization to the conv/linear layers a pruner with these patterns targets.

    Used by the runner *before* dense training, so the IP network is trained in its filter-basis form
    from the start (a pruner built later finds the bases already there). Returns :func:`reparam_spec`.
    """
    if config.name != "none":
        from prunelab.core.targets import find_targets

        attach_reparam(find_targets(model, include=include, exclude=exclude), config.name, **config.kwargs())
    return reparam_spec(model)
