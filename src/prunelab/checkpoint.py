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

from torch import nn

from prunelab._io import atomic_torch_save, safe_torch_load
from prunelab.core import masking
from prunelab.errors import CheckpointError

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
    """``payload`` if this prunelab can read its version, else a :class:`CheckpointError` naming the fix."""
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer prunelab; upgrade prunelab to read it")
    return payload


def build_from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the model stored in a prunelab checkpoint, masks included."""
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
    masking.load_plain_state_dict(model, payload["state_dict"])
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
