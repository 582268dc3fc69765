"""The prunelab checkpoint: one file that rebuilds a (masked, compacted, reparametrized) network of any class.

A checkpoint is a ``torch.save`` of plain data only, so it loads with ``torch.load(weights_only=True)``:

* ``arch`` — how to rebuild the network: the model name (a zoo name, ``torchvision:<name>``,
  ``timm:<name>`` or ``package.module:callable``), its kwargs, class count, input shape, classifier head,
  the surgery's per-layer shapes (:func:`prunelab.surgery.arch_spec`) and the reparametrization's spec;
* ``state_dict`` — the plain weights (masked entries stored as zeros);
* ``masks`` — the pruning masks.

Runs write ``checkpoint.pt`` with :func:`save_checkpoint`; :func:`save_pruned` writes the same format
for a model pruned from Python (:func:`prunelab.prune_channels`), and :func:`load_pruned` (an alias of
:func:`build_from_checkpoint`) rebuilds either in a fresh process: it builds the model by name, resizes
its layers to the stored shapes and loads the weights. Nothing is unpickled, so a checkpoint from an
untrusted source cannot run code; building the model does import its package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab._io import atomic_torch_save, safe_torch_load
from prunelab.core import masking
from prunelab.errors import CheckpointError, ConfigError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "apply_arch",
    "build_from_checkpoint",
    "check_version",
    "is_checkpoint",
    "load_checkpoint",
    "load_pruned",
    "save_checkpoint",
    "save_pruned",
]

CHECKPOINT_FORMAT = "prunelab.checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, model: nn.Module, arch: dict[str, Any]) -> None:
    """Save ``model`` as a plain state_dict plus its masks and the architecture needed to rebuild it."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "state_dict": masking.plain_state_dict(model),
        "masks": masking.masks_state_dict(model),
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a prunelab checkpoint (``weights_only=True``) and check its format.

    Raises:
        CheckpointError: if the file is not a prunelab checkpoint or is corrupted.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    payload = safe_torch_load(path)
    if not is_checkpoint(payload):
        raise CheckpointError(f"{path} is not a prunelab checkpoint; pass a run directory or checkpoint.pt")
    return check_version(payload, path)


def check_version(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """``payload`` if this prunelab can read it, else a one-line :class:`CheckpointError` naming the fix.

    Checks the version, then the parts every reader of a checkpoint indexes: ``arch`` (a mapping with
    ``model``, ``kwargs``, ``num_classes`` and ``input_shape``), ``state_dict`` and ``masks`` (mappings of
    tensors; a state_dict's ``_extra_state`` entries may be anything). Whether the weights fit the architecture is checked when they are loaded
    (:func:`prunelab.core.masking.load_plain_state_dict`).
    """
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(
            f"{path}: checkpoint version {version!r} is not a number; the file is corrupted"
        )
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer prunelab; upgrade prunelab to read it")
    arch = payload.get("arch")
    missing = [
        k
        for k in ("model", "kwargs", "num_classes", "input_shape")
        if not isinstance(arch, dict) or k not in arch
    ]
    if missing:
        raise CheckpointError(
            f"{path}: the checkpoint's arch lacks {', '.join(missing)}; the file is corrupted or was edited — "
            "use the checkpoint as prunelab saved it, or re-create it"
        )
    for part in ("state_dict", "masks"):
        entries = payload.get(part)
        bad = None if isinstance(entries, dict) else part
        # A module's get_extra_state() is the one non-tensor entry a state_dict may hold.
        bad = bad or next(
            (
                f"{part}[{k!r}]"
                for k, v in entries.items()
                if not isinstance(v, torch.Tensor) and not str(k).endswith("_extra_state")
            ),
            None,
        )
        if bad:
            raise CheckpointError(
                f"{path}: the checkpoint's {bad} is not a tensor mapping; the file is corrupted or was edited — "
                "use the checkpoint as prunelab saved it, or re-create it"
            )
    return payload


def build_from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the model stored in a prunelab checkpoint, masks included.

    Raises:
        CheckpointError: one line: the file is unreadable or not a checkpoint; its architecture spec does
            not fit the model or its weights do not fit the spec (the first mismatching tensor is named);
            or a tensor holds NaN/inf.
    """
    from prunelab.models import build_model

    payload = load_checkpoint(path)
    arch = payload["arch"]
    model = build_model(
        arch["model"],
        num_classes=arch["num_classes"],
        input_shape=tuple(arch["input_shape"]),
        **arch["kwargs"],
    )
    apply_arch(model, arch)
    masking.load_masks(model, payload["masks"])
    masking.load_plain_state_dict(model, payload["state_dict"], source=str(path))
    return model


def apply_arch(model: nn.Module, arch: dict[str, Any], head: str | None = None) -> None:
    """Resize ``model`` to the checkpoint architecture ``arch`` (surgery widths, reparam bases), in place.

    ``head`` is the model's classifier (default: the one ``arch`` recorded, else found from the graph);
    the model was built for the current data, so the head keeps that class count.
    """
    # A structurally pruned run stores its per-layer widths under arch["surgery"] (prunelab.surgery).
    if arch.get("surgery") is not None:
        from prunelab.core.targets import find_head
        from prunelab.errors import UnsupportedModelError
        from prunelab.surgery import apply_arch_spec

        try:
            keep: tuple[str, ...] = (find_head(model, arch["input_shape"], head or arch.get("head")),)
        except UnsupportedModelError:
            keep = ()
        apply_arch_spec(model, arch["surgery"], keep_outputs=keep)
    # An interspace run's bases must exist before its coefficients, bases and masks are loaded.
    if arch.get("reparam") is not None:
        from prunelab.reparam import apply_reparam_spec

        apply_reparam_spec(model, arch["reparam"])


def is_checkpoint(payload: Any) -> bool:
    """Whether a loaded file is a prunelab checkpoint."""
    return isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT


def _builder_name(builder: Any) -> str:
    """The model-door name of ``builder``: a name as given, or ``module:qualname`` of a callable."""
    from prunelab.models import check_model_name

    if isinstance(builder, str):
        check_model_name(builder)
        return builder
    module, qualname = getattr(builder, "__module__", None), getattr(builder, "__qualname__", "")
    if not callable(builder) or not module or "<" in qualname or module == "__main__":
        raise ConfigError(
            "builder: give the model's name ('torchvision:resnet18', 'timm:resnet18', 'package.module:callable') "
            "or an importable function/class (not a lambda, a local function or one defined in __main__)"
        )
    return f"{module}:{qualname}"


def save_pruned(
    model: nn.Module,
    path: str | Path,
    *,
    builder: Any,
    kwargs: dict[str, Any] | None = None,
    head: str | None = None,
    example_inputs: Any = None,
    num_classes: int | None = None,
) -> Path:
    """Save a pruned model of any class (compacted, masked, or both) so :func:`load_pruned` rebuilds it.

    The file is a prunelab checkpoint (see the module docstring): the builder's name and kwargs, the
    model's shapes (:func:`prunelab.surgery.arch_spec`), its plain weights and masks. Written atomically.

    Args:
        model: the pruned model (e.g. the first result of :func:`prunelab.prune_channels`).
        path: the file to write.
        builder: how to build the unpruned model: ``"torchvision:<name>"``, ``"timm:<name>"``,
            ``"package.module:callable"``, a prunelab zoo name, or an importable function/class.
        kwargs: the builder's keyword arguments (as the model was built; ``num_classes`` separately).
        head: the classifier head's module name (default: found from the graph on ``example_inputs``).
        example_inputs: example inputs (:mod:`prunelab.core.inputs`); their shape is recorded when they
            are one image batch; needed to find the head when ``head`` is not given.
        num_classes: the class count the builder is called with (default: the head's outputs).

    Returns:
        The path written.

    Raises:
        ConfigError: a builder that cannot be named, or neither ``head`` nor ``example_inputs`` given.
    """
    from prunelab.core.inputs import is_shape
    from prunelab.core.targets import find_head
    from prunelab.surgery import arch_spec

    name = _builder_name(builder)
    if head is None and example_inputs is None:
        raise ConfigError("save_pruned: give head= (the classifier's module name) or example_inputs=")
    head = find_head(model, example_inputs, head)
    layer = model.get_submodule(head)
    kwargs = dict(kwargs or {})
    # The door passes the class count itself (model.kwargs may not set it), so it is recorded apart.
    classes = kwargs.pop("num_classes", None) or num_classes
    classes = classes or getattr(layer, "out_features", getattr(layer, "out_channels", None))
    shape = None
    if is_shape(example_inputs):
        shape = [int(s) for s in example_inputs]
    elif isinstance(example_inputs, torch.Tensor) and example_inputs.dim() == 4:
        shape = [int(s) for s in example_inputs.shape[1:]]
    arch = {
        "model": name,
        "kwargs": kwargs,
        "num_classes": int(classes) if classes is not None else None,
        "input_shape": shape or [3, 224, 224],
        "head": head,
        "surgery": arch_spec(model),
    }
    path = Path(path)
    save_checkpoint(path, model, arch)
    return path


def load_pruned(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (or a run's ``checkpoint.pt``), weights loaded, in eval mode.

    Loads with ``weights_only=True``; builds the model by its recorded name (importing its package),
    resizes its layers to the recorded shapes and loads the weights strictly.

    Raises:
        CheckpointError: not a prunelab checkpoint, written by a newer prunelab, or not matching the model.
        ConfigError: the builder cannot be imported or built here.
    """
    return build_from_checkpoint(path).eval()
