"""Versioned JSON description of a compacted network's per-layer widths.

A compacted model is the zoo model with some layers narrowed, so it is stored as the zoo recipe
(``model``, ``kwargs``) plus this spec and an ordinary ``state_dict``: no pickled modules, loadable
with ``torch.load(weights_only=True)``. :func:`apply_arch_spec` rebuilds the narrowed layers in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from prunelab.errors import CheckpointError
from prunelab.surgery.layers import ChannelMappingLayer

__all__ = ["ARCH_FORMAT", "ARCH_VERSION", "apply_arch_spec", "arch_spec"]

ARCH_FORMAT = "prunelab.arch"
ARCH_VERSION = 1


def arch_spec(model: nn.Module) -> dict[str, Any]:
    """The per-layer widths of every Conv2d, Linear, BatchNorm and channel-mapping layer of ``model``.

    A channel-mapping layer (:class:`~prunelab.surgery.layers.ChannelMappingLayer`, e.g. the option-A
    shortcut ``PadShortcut``) is stored as ``{"type": its class name, **layer.arch_entry()}``.
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            layers[name] = {
                "type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "groups": m.groups, "bias": m.bias is not None,
            }  # fmt: skip
        elif isinstance(m, nn.Linear):
            layers[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                            "bias": m.bias is not None}  # fmt: skip
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            layers[name] = {"type": type(m).__name__, "num_features": m.num_features}
        elif isinstance(m, ChannelMappingLayer):
            layers[name] = {"type": type(m).__name__, **m.arch_entry()}
    return {"format": ARCH_FORMAT, "version": ARCH_VERSION, "layers": layers}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_arch_spec(model: nn.Module, spec: dict[str, Any], keep_outputs: Sequence[str] = ()) -> nn.Module:
    """Narrow the layers of a freshly built zoo ``model`` to the widths in ``spec`` (in place).

    Args:
        model: the zoo model, built with the same name and kwargs as the one the spec describes.
        spec: the architecture spec (``arch["surgery"]`` of a checkpoint).
        keep_outputs: layers whose output size stays the model's own: the classifier when a compacted
            network is fine-tuned on a dataset with another class count (its inputs still narrow).

    Raises:
        CheckpointError: if the spec is of another format, a newer version, or names a missing layer.
    """
    if spec.get("format") != ARCH_FORMAT:
        raise CheckpointError("architecture spec has an unknown format; it was not written by prunelab")
    if int(spec.get("version", 0)) > ARCH_VERSION:
        raise CheckpointError(
            "architecture spec was written by a newer prunelab; upgrade prunelab to read it"
        )
    for name, layer in spec["layers"].items():
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
        _replace(model, name, new)
    return model
