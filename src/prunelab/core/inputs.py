"""Example inputs of any model: one tensor, several positional tensors, or keyword tensors.

Structured pruning traces the model once and verifies the result on a batch, so it must call models
the way their ``forward`` wants. Everything that calls a user's model with example inputs goes through
here: :func:`as_call` turns the three accepted forms (and the legacy ``(C, H, W)`` shape of one image)
into ``(args, kwargs)``; :func:`output_tensors` flattens what came back (a tensor, a tuple or list, a
dict, nested), so outputs of any structure can be compared, and :func:`accepted_diff` says by how much
two such outputs may differ when they should be equal.

The forms:

* a tensor ``x`` → ``model(x)``;
* a tuple or list of tensors ``(x, y)`` → ``model(x, y)``;
* a dict ``{"image": x, "mask": m}`` → ``model(image=x, mask=m)``;
* a shape ``(C, H, W)`` (a sequence of ints) → ``model(x)`` with ``x`` of shape ``(batch, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import ConfigError

__all__ = [
    "ExampleInputs",
    "accepted_diff",
    "as_call",
    "call_model",
    "describe_inputs",
    "is_shape",
    "max_abs_diff",
    "output_scale",
    "output_tensors",
    "random_like",
]

#: A tensor, a tuple/list of tensors, a dict of keyword tensors, or the shape ``(C, H, W)`` of one input.
ExampleInputs = Any


def is_shape(value: object) -> bool:
    """Whether ``value`` is a shape (a non-empty sequence of ints), not example tensors."""
    return (
        isinstance(value, (tuple, list, torch.Size))
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _device(model: nn.Module | None) -> torch.device | None:
    first = None if model is None else next(iter(model.parameters()), None)
    return None if first is None else first.device


def _to(value: Any, device: torch.device | None) -> Any:
    if isinstance(value, Tensor):
        return value if device is None or value.device.type == "meta" else value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def as_call(
    example: ExampleInputs, model: nn.Module | None = None, *, batch: int = 1
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` to call a model with, from example inputs in any accepted form.

    Args:
        example: a tensor, a tuple/list of tensors, a dict of keyword tensors, or a shape ``(C, H, W)``.
        model: the model the inputs are for; tensors are moved to its device.
        batch: the batch size of the zero batch built for a shape.

    Raises:
        ConfigError: ``example`` is none of the accepted forms.
    """
    device = _device(model)
    if is_shape(example):
        return (torch.zeros(batch, *(int(s) for s in example), device=device),), {}
    if isinstance(example, Tensor):
        return (_to(example, device),), {}
    if isinstance(example, Mapping) and example and all(isinstance(k, str) for k in example):
        return (), {k: _to(v, device) for k, v in example.items()}
    if isinstance(example, (tuple, list)) and example:
        return tuple(_to(v, device) for v in example), {}
    raise ConfigError(
        f"example inputs must be a tensor, a tuple of tensors, a dict of keyword tensors or a shape (C, H, W); "
        f"got {type(example).__name__}"
    )


def call_model(model: nn.Module, example: ExampleInputs) -> Any:
    """``model`` applied to ``example`` (any accepted form; a shape gives a zero batch of one)."""
    args, kwargs = as_call(example, model)
    return model(*args, **kwargs)


def output_tensors(value: object) -> list[Tensor]:
    """Every tensor in a (nested) forward output: a tensor, tuple, list or dict (in order)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in output_tensors(item)]
    return []


def max_abs_diff(reference: Sequence[Tensor], got: Sequence[Tensor]) -> tuple[float, str]:
    """Largest absolute difference over paired output tensors, and where it is (``"output k"``, or why
    the two cannot be compared: another count or shape of tensors, then the difference is infinite).

    Equal infinities, and NaN where the reference has NaN, count as agreement; any other NaN as an
    infinite difference. Compared in float64, so the comparison adds no rounding of its own."""
    if len(reference) != len(got):
        return float("inf"), f"{len(got)} output tensors instead of {len(reference)}"
    worst, where = 0.0, "output 0"
    for k, (a, b) in enumerate(zip(reference, got, strict=True)):
        if tuple(a.shape) != tuple(b.shape):
            return float("inf"), f"output {k} has shape {tuple(b.shape)} instead of {tuple(a.shape)}"
        a, b = a.detach().double(), b.detach().double()
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        diff = torch.where(same, torch.zeros_like(a), (a - b).abs()).nan_to_num(nan=float("inf"))
        value = float(diff.max()) if diff.numel() else 0.0
        if value > worst:
            worst, where = value, f"output {k}"
    return worst, where


def output_scale(tensors: Sequence[Tensor]) -> float:
    """Largest finite absolute value in ``tensors`` (0.0 when there is none)."""
    scale = 0.0
    for t in tensors:
        t = t.detach()
        finite = t[torch.isfinite(t)]
        if finite.numel():
            scale = max(scale, float(finite.abs().max()))
    return scale


def accepted_diff(tolerance: float, reference: Sequence[Tensor]) -> float:
    """The largest max |diff| accepted from outputs that should equal ``reference``:
    ``tolerance × max(1, output_scale(reference))`` — absolute for outputs within ±1, relative above.

    Every check of prunelab that two models compute the same function (surgery's equivalence check, the
    exported file against the model, the sparse form against the dense one, the latency comparison's ONNX
    file) accepts this much: float32 rounding grows with the magnitude of what is rounded, so a network
    whose logits reach 60 differs by ~60× more after a correct reordering of its arithmetic than one
    whose outputs stay within ±1, while a wrong computation differs by a sizeable share of the outputs."""
    return tolerance * max(1.0, output_scale(reference))


def random_like(
    example: ExampleInputs, *, batch: int = 8, seed: int = 0, size: int | None = None
) -> ExampleInputs:
    """Seeded random inputs of the same form, shapes and dtypes as ``example`` (a verification batch).

    A shape gives ``batch`` standard-normal inputs of that shape. Tensors are redrawn with their own
    shapes, or with leading size ``size`` when given: floating tensors standard-normal, booleans fair
    coin flips, integer tensors uniform over their own ``[min, max]`` (indices stay valid); anything
    else is kept as it is.
    """
    gen = torch.Generator().manual_seed(seed)
    if is_shape(example):
        return torch.randn(batch, *(int(s) for s in example), generator=gen)

    def draw(value: Any) -> Any:
        if isinstance(value, Tensor):
            shape = (size, *value.shape[1:]) if size is not None and value.dim() else tuple(value.shape)
            if value.is_floating_point() or value.is_complex():
                return torch.randn(shape, generator=gen, dtype=value.dtype).to(value.device)
            if value.dtype == torch.bool:
                return (torch.rand(shape, generator=gen) > 0.5).to(value.device)
            low, high = (int(value.min()), int(value.max()) + 1) if value.numel() else (0, 1)
            return torch.randint(low, high, shape, generator=gen, dtype=value.dtype).to(value.device)
        if isinstance(value, dict):
            return {k: draw(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(draw(v) for v in value)
        return value

    return draw(example)


def describe_inputs(example: ExampleInputs) -> str:
    """A short description of example inputs for messages, e.g. ``(2, 3, 32, 32)`` or ``x=(2, 3, 8, 8)``."""
    if is_shape(example):
        return str(tuple(example))
    args, kwargs = as_call(example)
    parts = [str(tuple(a.shape)) if isinstance(a, Tensor) else type(a).__name__ for a in args]
    parts += [
        f"{k}={tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}" for k, v in kwargs.items()
    ]
    return ", ".join(parts)
