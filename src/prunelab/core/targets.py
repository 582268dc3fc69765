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

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.core.inputs import call_model, describe_inputs, is_shape, output_tensors
from prunelab.core.modules import eval_mode
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


def _has_unit_weights(module: nn.Module) -> bool:
    """Whether ``module`` owns a tensor with output units: a parameter (or ``weight``) of 2+ dimensions.

    Normalisation layers (1-D scales) pass their channels through and are never the head; a masked
    layer's ``weight`` is a parametrisation, so it is read through the attribute as well.
    """
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        return True
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def _head_candidates(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that can be a head, by name: layers with unit weights, outside parametrisations."""
    return {
        name: module
        for name, module in model.named_modules()
        if _has_unit_weights(module)
        and not isinstance(module, parametrize.ParametrizationList)
        and ".parametrizations." not in f".{name}."
    }


def _reaching(outputs: list[Tensor]) -> set[object]:
    """The autograd nodes the model's outputs were computed from."""
    seen: set[object] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return seen


def _run_order(
    model: nn.Module, example: Any, candidates: dict[str, nn.Module]
) -> tuple[list[tuple[str, object]], list[Tensor]]:
    """``[(layer name, output grad_fn), ...]`` in run order, and the model's output tensors."""
    order: list[tuple[str, object]] = []

    def record(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            order.extend((name, t.grad_fn) for t in output_tensors(output))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in candidates.items()]
    try:
        with eval_mode(model), torch.enable_grad():
            out = call_model(model, _needing_grad(example))
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AssertionError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{type(model).__name__} cannot run on {_what(example)} to find its "
            f"classifier head ({first_line}); give inputs the model accepts or name the head (model.head / head=)"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return order, output_tensors(out)


def _what(example: Any) -> str:
    kind = "an input of shape" if is_shape(example) else "example inputs"
    return f"{kind} {describe_inputs(example)}"


def _needing_grad(example: Any) -> Any:
    """Example inputs whose floating tensors require grad, so every output has an autograd graph."""
    if is_shape(example):
        return example
    if isinstance(example, Tensor):
        return example.detach().requires_grad_(True) if example.is_floating_point() else example
    if isinstance(example, dict):
        return {k: _needing_grad(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(_needing_grad(v) for v in example)
    return example


def check_head_name(model: nn.Module, head: str) -> str:
    """``head`` if it names a module of ``model`` with unit weights, else a one-line ConfigError with close matches."""
    candidates = _head_candidates(model)
    if head not in candidates:
        close = difflib.get_close_matches(str(head), candidates, n=3, cutoff=0.5)
        known = close or list(candidates)[-3:]
        raise ConfigError(
            f"model.head: {head!r} is not a module with weights of {type(model).__name__}; "
            f"known: {', '.join(known) or 'none'}"
        )
    return head


def output_layers(model: nn.Module, example: Any) -> list[str]:
    """For every output tensor of ``model``, the last layer with weights it was computed from (in output order).

    These layers' output channels are the model's outputs (the classes of each head, a decoder's image
    channels, an embedding returned beside the logits), so structured pruning keeps them. Duplicates
    are dropped; the first entry is the default classifier head (:func:`find_head`).

    Args:
        model: the network.
        example: example inputs (:mod:`prunelab.core.inputs`: a tensor, a tuple, a dict or a shape).

    Raises:
        ConfigError: the model cannot run on ``example``.
        UnsupportedModelError: no layer with weights reaches any output.
    """
    candidates = _head_candidates(model)
    order, outputs = _run_order(model, example, candidates)
    found: list[str] = []
    for out in outputs:
        reaching = _reaching([out])
        for name, node in reversed(order):
            if node is not None and node in reaching:
                if name not in found:
                    found.append(name)
                break
    if not found and order and not any(o.grad_fn is not None for o in outputs):
        found.append(order[-1][0])  # no autograd graph (e.g. under inference mode): the last one ran
    if not found:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no layer with weights whose output reaches the model output; "
            "name the classifier head explicitly (model.head / head=)"
        )
    return found


def find_head(model: nn.Module, example: Any, head: str | None = None) -> str:
    """Qualified name of the model's classifier head: ``head`` when given, else found from the graph.

    The default is the last module with unit weights (a Linear, a convolution, a custom layer; not a
    normalisation layer) that runs in one forward pass and whose output reaches the model's (first)
    output: the layer producing the logits, whatever order the modules were registered in. A 1×1 conv
    followed by global pooling (SqueezeNet) is a head too. The pass runs once, in eval mode, on the
    example inputs (a shape gives a zero batch of one) on the model's device, so it costs one forward;
    the model's mode is restored.

    Args:
        model: the network.
        example: example inputs (:mod:`prunelab.core.inputs`) or the shape ``(C, H, W)`` of one input;
            unused when ``head`` is given.
        head: the head's qualified module name, to name it explicitly (checked, not traced).

    Returns:
        The head's qualified module name.

    Raises:
        ConfigError: ``head`` is not a module of ``model`` with unit weights (close matches named), or
            the model cannot run on ``example``.
        UnsupportedModelError: no layer with weights reaches the model's output.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        >>> find_head(model, (3, 3, 3))
        '3'
    """
    if head is not None:
        return check_head_name(model, head)
    return output_layers(model, example)[0]
