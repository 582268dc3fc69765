"""Which tensors a pruner scores and masks.

A :class:`Target` is the address of one prunable tensor: its qualified name (``"features.0.weight"``),
the name of the module that owns it, the parameter's name on that module, and the module itself.
Everything the pruner stores is keyed by ``Target.fqn``; the module reference is only a handle for
the live tensor and never leaves the process.

:func:`find_targets` selects targets with ``fnmatch`` globs over *module* names, so
``include="features.*"`` picks every layer under ``features`` and ``exclude="classifier"`` spares the
head.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from prunelab.errors import ConfigError, UnsupportedModelError

#: Layer kinds that :func:`find_targets` understands, mapped to the module classes they cover.
#: Transposed convolutions are left out on purpose: their weight is ``(in, out, ...)``, so the
#: "output unit = dim 0" convention of :mod:`prunelab.core.granularity` would not hold for them.
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
    "bn": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
}


@dataclass(frozen=True)
class Target:
    """One prunable tensor of a model.

    Equality and hashing use the names only, so two targets from two copies of the same
    architecture compare equal.

    Attributes:
        fqn: qualified name of the tensor, e.g. ``"features.0.weight"``.
        module_name: qualified name of the owning module, e.g. ``"features.0"`` (``""`` for the root).
        module: the owning module (a live handle, not serialised).
        param: name of the tensor on ``module``, e.g. ``"weight"``.
    """

    fqn: str
    module_name: str
    module: nn.Module = field(compare=False, repr=False)
    param: str = "weight"

    @classmethod
    def of(cls, model: nn.Module, fqn: str) -> Target:
        """Build the target for the tensor ``fqn`` of ``model`` (e.g. a BN scale ``"bn1.weight"``).

        Raises:
            ConfigError: if ``model`` has no tensor called ``fqn``.
        """
        module_name, _, param = fqn.rpartition(".")
        module = dict(model.named_modules()).get(module_name)
        if module is None or not isinstance(getattr(module, param, None), Tensor):
            raise ConfigError(f"the model has no tensor {fqn!r}; check the name against model.state_dict()")
        return cls(fqn=fqn, module_name=module_name, module=module, param=param)


def _as_patterns(patterns: str | Iterable[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def find_targets(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    layer_types: Sequence[str] = ("conv", "linear"),
    param: str = "weight",
) -> list[Target]:
    """List the prunable tensors of ``model`` in module order.

    A module is a candidate when its class is one of ``layer_types`` (see :data:`LAYER_TYPES`). It is
    selected when its name matches at least one ``include`` glob (every candidate if ``include`` is
    ``None``) and no ``exclude`` glob. Globs use :func:`fnmatch.fnmatchcase` on module names
    (``"features.*"``, ``"layer[12].*.conv1"``).

    Args:
        model: the network.
        include: glob(s) over module names to prune; ``None`` = every candidate.
        exclude: glob(s) over module names to leave dense.
        layer_types: keys of :data:`LAYER_TYPES`.
        param: the tensor of each module to target (``"weight"``; BN scales are also ``"weight"``).

    Returns:
        One :class:`Target` per selected tensor, in ``model.named_modules()`` order.

    Raises:
        ConfigError: an unknown layer type, an ``include`` glob that matches no candidate (the message
            names it and lists a few candidate names), or a selection that ends up empty.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        >>> [t.fqn for t in find_targets(model)]
        ['0.weight', '3.weight']
        >>> [t.fqn for t in find_targets(model, exclude="3")]
        ['0.weight']
    """
    unknown = [t for t in layer_types if t not in LAYER_TYPES]
    if unknown:
        raise ConfigError(f"unknown layer type(s) {unknown}; use some of {sorted(LAYER_TYPES)}")
    classes = tuple(cls for t in layer_types for cls in LAYER_TYPES[t])
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, classes) and isinstance(getattr(module, param, None), Tensor)
    ]
    names = [name for name, _ in candidates]
    includes = _as_patterns(include)
    excludes = _as_patterns(exclude) or []
    if includes is not None:
        for pattern in includes:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ConfigError(
                    f"include pattern {pattern!r} matches no {'/'.join(layer_types)} layer; "
                    f"available: {sample or 'none'}"
                )
    targets = []
    for name, module in candidates:
        if includes is not None and not any(fnmatch.fnmatchcase(name, p) for p in includes):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in excludes):
            continue
        fqn = f"{name}.{param}" if name else param
        targets.append(Target(fqn=fqn, module_name=name, module=module, param=param))
    if not targets:
        raise ConfigError(
            f"no {'/'.join(layer_types)} layer left to prune (include={includes}, exclude={excludes}); "
            "loosen the patterns or add layer types"
        )
    return targets


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the model's classifier: its last registered ``nn.Linear``.

    Every model of the zoo registers its head last, so this is the layer whose output is the logits.
    It lives with the targets because the head is the one layer whose outputs pruning must keep.

    Raises:
        UnsupportedModelError: if the model has no ``nn.Linear``.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no nn.Linear classifier; give the head's module name explicitly"
        )
    return names[-1]
