"""Versioned JSON description of a compacted network's shapes, for any module class.

A compacted model is the original model with some layers narrowed, so it is stored as the builder
(model name and kwargs) plus this spec and an ordinary ``state_dict``: no pickled modules, loadable
with ``torch.load(weights_only=True)``. :func:`apply_arch_spec` resizes a freshly built model in place.

Version 2 (written now) is generic: for every module it records the shape of each of its own
parameters and buffers and its integer configuration attributes (``in_channels``, ``num_features``,
``normalized_shape``, ``groups``, …). Loading resizes those tensors and sets those attributes on the
module the builder made, so every class survives the round trip with its own behaviour — a timm
``BatchNormAct2d`` keeps its activation, a LayerNorm its ``eps``, a user's layer its code — and bare
parameters are covered like any other. Channel-mapping layers
(:class:`~prunelab.surgery.layers.ChannelMappingLayer`) additionally keep their own entry
(``arch_entry``/``load_arch_entry``) for state that is not a tensor. Version 1 (Conv2d, Linear,
BatchNorm and channel-mapping entries only) is still read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunelab.errors import CheckpointError
from prunelab.surgery.layers import ChannelMappingLayer

__all__ = ["ARCH_FORMAT", "ARCH_VERSION", "apply_arch_spec", "arch_spec"]

ARCH_FORMAT = "prunelab.arch"
ARCH_VERSION = 2

#: Attributes never recorded: state flags, not shapes.
_SKIP_ATTRS = frozenset({"training"})


def _shape_attrs(module: nn.Module) -> dict[str, Any]:
    """The module's public integer (or integer-tuple) attributes: its configuration, surgery-edited ones included."""
    attrs: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in _SKIP_ATTRS:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            attrs[key] = value
        elif (
            isinstance(value, (tuple, list))
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            attrs[key] = list(value)
    return attrs


def _type_name(module: nn.Module) -> str:
    """The module's class name; for a parametrized (masked) module, that of the class it was built as."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]  # parametrize swaps in a generated subclass "Parametrized<Cls>"
    return cls.__name__


def arch_spec(model: nn.Module) -> dict[str, Any]:
    """The shapes of ``model``: per module, its own tensors' shapes and its integer configuration.

    A channel-mapping layer (:class:`~prunelab.surgery.layers.ChannelMappingLayer`, e.g. the option-A
    shortcut ``PadShortcut``) also stores ``layer.arch_entry()`` under ``"entry"``. A masked
    (parametrized) tensor is recorded under its plain name with its effective shape, and the
    parametrizations' own modules are left out: masks are saved apart and re-attached on loading.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if ".parametrizations." in f".{name}.":
            continue
        entry: dict[str, Any] = {"type": _type_name(m), "attrs": _shape_attrs(m)}
        tensors = {k: list(t.shape) for k, t in m._parameters.items() if t is not None}
        if parametrize.is_parametrized(m):
            with torch.no_grad():
                tensors.update({k: list(getattr(m, k).shape) for k in m.parametrizations})  # type: ignore[union-attr]
        tensors.update({k: list(t.shape) for k, t in m._buffers.items() if t is not None})
        if tensors:
            entry["tensors"] = tensors
        if isinstance(m, ChannelMappingLayer):
            entry["entry"] = m.arch_entry()
        layers[name] = entry
    return {"format": ARCH_FORMAT, "version": ARCH_VERSION, "layers": layers}


def _resize(module: nn.Module, key: str, shape: Sequence[int]) -> bool:
    """Replace tensor ``key`` of ``module`` by an uninitialised one of ``shape`` (the state_dict fills it).

    Returns whether a tensor was created or replaced.
    """
    if key in module._parameters and module._parameters[key] is None:
        # The surgery added it (a shift folded into a bias-free consumer): create it.
        like = next(iter(module.parameters()), torch.empty(0))
        module._parameters[key] = nn.Parameter(
            torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
        )
        return True
    old = module._parameters.get(key)
    if old is not None:
        if tuple(old.shape) != tuple(shape):
            module._parameters[key] = nn.Parameter(
                torch.empty(tuple(shape), dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
            )
            return True
        return False
    buf = module._buffers.get(key)
    if buf is not None and tuple(buf.shape) != tuple(shape):
        module._buffers[key] = torch.empty(tuple(shape), dtype=buf.dtype, device=buf.device)
        return True
    return False


def _malformed(name: str, exc: BaseException) -> CheckpointError:
    """The one-line error for a spec entry that cannot be applied (a key missing, a wrong type, a bad shape)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(
        f"architecture spec entry of layer {name!r} is malformed ({type(exc).__name__}: {text[:120]}); "
        "the checkpoint is corrupted or was edited — use it as prunelab saved it, or re-save it"
    )


def _check_shape(name: str, key: str, shape: Any) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise _malformed(name, ValueError(f"tensor {key!r} has shape {shape!r}, not a list of sizes >= 0"))
    return list(shape)


def _apply_v2(model: nn.Module, layers: Mapping[str, Any], keep_outputs: Sequence[str]) -> None:
    modules = dict(model.named_modules())
    for name, entry in layers.items():
        try:
            _apply_v2_entry(model, modules, name, entry, keep_outputs)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise _malformed(name, exc) from None


def _apply_v2_entry(
    model: nn.Module, modules: Mapping[str, nn.Module], name: str, entry: Any, keep_outputs: Sequence[str]
) -> None:
    if not isinstance(entry, Mapping):
        raise _malformed(name, TypeError(f"entry is a {type(entry).__name__}, not a mapping"))
    module = modules.get(name)
    if module is None:
        raise CheckpointError(f"architecture spec names layer {name!r}, which the model lacks; "
                              "rebuild with the same model and kwargs")  # fmt: skip
    if entry["type"] != _type_name(module):
        raise CheckpointError(f"architecture spec layer {name!r} is a {entry['type']}, the model has "
                              f"{_type_name(module)}; rebuild with the same model")  # fmt: skip
    if isinstance(module, ChannelMappingLayer) and "entry" in entry:
        module.load_arch_entry(entry["entry"])
    keep = name in keep_outputs
    for key, value in entry.get("attrs", {}).items():
        ints = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise _malformed(name, ValueError(f"attribute {key!r} is {value!r}, not an integer (list)"))
        if keep and key in ("out_features", "out_channels"):
            continue  # the classifier keeps the class count of the model it is loaded into
        if hasattr(module, key) and not callable(getattr(module, key)):
            setattr(module, key, tuple(value) if isinstance(getattr(module, key), tuple) else value)
    resized = False
    for key, shape in entry.get("tensors", {}).items():
        shape = _check_shape(name, key, shape)
        current = getattr(module, key, None)
        if keep and isinstance(current, torch.Tensor) and current.dim() > 0:
            shape = [current.shape[0], *shape[1:]]
        resized |= _resize(module, key, shape)
    if keep and resized:
        _reinitialise(module)


def _reinitialise(module: nn.Module) -> None:
    """Give a kept-output layer (a new classifier) fresh weights after its tensors were resized.

    The checkpoint's state dict does not fill such a layer (its class count differs), so the
    uninitialised memory ``_resize`` left would otherwise be trained from — garbage, sometimes NaN.
    """
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    with torch.no_grad():
        for tensor in module.parameters(recurse=False):
            if tensor.dim() > 1:
                nn.init.kaiming_uniform_(tensor, a=5**0.5)  # nn.Linear's default
            else:
                tensor.zero_()


def apply_arch_spec(model: nn.Module, spec: dict[str, Any], keep_outputs: Sequence[str] = ()) -> nn.Module:
    """Resize the layers of a freshly built ``model`` to the shapes in ``spec`` (in place).

    Args:
        model: the model, built with the same builder and kwargs as the one the spec describes.
        spec: the architecture spec (``arch["surgery"]`` of a checkpoint).
        keep_outputs: layers whose output size stays the model's own: the classifier when a compacted
            network is fine-tuned on a dataset with another class count (its inputs still narrow).

    Raises:
        CheckpointError: one line, if the spec is of another format or a newer version, names a missing
            layer or a layer of another type, or has a malformed entry (the layer is named).
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("layers"), Mapping):
        raise CheckpointError(
            "architecture spec is not a mapping with 'layers'; the checkpoint is corrupted or was edited — re-save it"
        )
    if spec.get("format") != ARCH_FORMAT:
        raise CheckpointError("architecture spec has an unknown format; it was not written by prunelab")
    if int(spec.get("version", 0)) > ARCH_VERSION:
        raise CheckpointError(
            "architecture spec was written by a newer prunelab; upgrade prunelab to read it"
        )
    if int(spec.get("version", 0)) >= 2:
        _apply_v2(model, spec["layers"], keep_outputs)
        return model
    try:
        _apply_v1(model, spec["layers"], keep_outputs)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise _malformed("(version 1 spec)", exc) from None
    return model


def _apply_v1(model: nn.Module, layers: Mapping[str, Any], keep_outputs: Sequence[str]) -> None:
    """Version-1 specs: Conv2d, Linear, BatchNorm widths and channel-mapping entries, by replacement."""
    for name, layer in layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise CheckpointError(f"architecture spec names layer {name!r}, which the model lacks; "
                                  "rebuild with the same model and kwargs") from exc  # fmt: skip
        kind = layer["type"]
        if kind == "Conv2d" and isinstance(old, nn.Conv2d):
            new: nn.Module = nn.Conv2d(
                layer["in_channels"],
                old.out_channels if name in keep_outputs else layer["out_channels"],
                old.kernel_size,
                old.stride,
                old.padding,  # type: ignore[arg-type]
                old.dilation,
                layer["groups"],
                layer["bias"],
                old.padding_mode,  # type: ignore[arg-type]
            )
        elif kind == "Linear" and isinstance(old, nn.Linear):
            out = old.out_features if name in keep_outputs else layer["out_features"]
            new = nn.Linear(layer["in_features"], out, layer["bias"])
        elif kind in ("BatchNorm2d", "BatchNorm1d") and isinstance(old, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new = type(old)(layer["num_features"], old.eps, old.momentum, old.affine, old.track_running_stats)
        elif isinstance(old, ChannelMappingLayer) and kind == type(old).__name__:
            # Resized in place: the freshly built model's own layer knows how to take the spec.
            old.load_arch_entry(layer)
            continue
        else:
            raise CheckpointError(f"architecture spec layer {name!r} is a {kind}, the model has "
                                  f"{type(old).__name__}; rebuild with the same model")  # fmt: skip
        model.set_submodule(name, new)
