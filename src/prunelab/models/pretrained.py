"""Pretrained weights: where they come from, how to find and verify them, and how to load them.

Registered weights (all verified by sha256 before use):

- ``resnet20_cifar10`` and ``resnet56_cifar10``: CIFAR-10 ResNets of Y. Idelbayev,
  *Proper ResNet Implementation for CIFAR10/CIFAR100 in PyTorch*,
  https://github.com/akamaster/pytorch_resnet_cifar10 (BSD-2-Clause), reproducing K. He et al., *Deep
  Residual Learning for Image Recognition*, CVPR 2016 (reported 91.73 % and 93.39 % top-1). They expect
  RGB in [0, 1] normalised with the ImageNet mean/std.
- ``mobilenet_v1_075_imagenet``: the Keras ``MobileNet(alpha=0.75)`` ImageNet-1k weights (A. G. Howard
  et al., *MobileNets*, arXiv:1704.04861; reported 68.4 % top-1), converted from TF.js to a plain
  PyTorch state_dict for :func:`prunelab.models.mobilenet_v1` with ``stem="imagenet"``. They expect
  ``x / 127.5 - 1`` (the "inception" normalisation). There is no official PyTorch download; the file comes
  with the project's shared data.

Weights live in ``<data_dir>/weights/<file>``, where ``data_dir`` defaults to ``$PRUNELAB_DATA`` and then
``~/.cache/prunelab``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab._io import download_url, file_digest, safe_torch_load
from prunelab.core.masking import check_finite, load_plain_state_dict, plain_shapes
from prunelab.core.targets import find_head
from prunelab.errors import CheckpointError, DataNotFoundError
from prunelab.models.base import build_model
from prunelab.registry import Registry

__all__ = [
    "NORMALIZATIONS",
    "PRETRAINED",
    "PretrainedWeights",
    "build_pretrained",
    "check_pretrained_present",
    "default_data_dir",
    "find_pretrained",
    "load_weights",
]

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # (mean, std) per RGB channel for inputs already scaled to [0, 1].
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # x / 127.5 - 1 on the 0–255 scale is (x01 - 0.5) / 0.5 on the [0, 1] scale.
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""Input normalisations that pretrained weights expect, as ``(mean, std)`` on the [0, 1] scale."""

_AKAMASTER_COMMIT = "d5489e8995e81e91ce6b1d69dcc98ad579b0b153"
_AKAMASTER_URL = (
    "https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/"
    + _AKAMASTER_COMMIT
    + "/pretrained_models/"
)


@dataclass(frozen=True)
class PretrainedWeights:
    """Description of one set of pretrained weights.

    Attributes:
        name: registry key, e.g. ``"resnet20_cifar10"``.
        model: the :data:`~prunelab.models.MODELS` name of the architecture.
        model_kwargs: options for :func:`~prunelab.models.build_model` (e.g. ``{"width": 0.75}``).
        filename: file name inside ``<data_dir>/weights/``.
        sha256: expected sha256 of the file (a full hex digest or a prefix of one).
        num_classes: classes of the stored classifier.
        input_shape: ``(C, H, W)`` the weights were trained/evaluated at.
        normalize: key of :data:`NORMALIZATIONS` for the expected input scaling (the same names as
            ``prunelab.data.load_dataset(normalize=...)`` and a recipe's ``data.normalize``).
        dataset: the training dataset (``"cifar10"``, ``"imagenet"``).
        url: official download URL, or ``None`` when there is none.
        reported_top1: top-1 accuracy (%) reported by the source, for reference.
        source: where the weights come from, and their license.
    """

    name: str
    model: str
    filename: str
    sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    normalize: str
    dataset: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    url: str | None = None
    reported_top1: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        # A read-only view, so that a shared registry entry cannot be edited by accident.
        object.__setattr__(self, "model_kwargs", MappingProxyType(dict(self.model_kwargs)))

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean on the [0, 1] scale that inputs must be normalised with."""
        return NORMALIZATIONS[self.normalize][0]

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel std on the [0, 1] scale that inputs must be normalised with."""
        return NORMALIZATIONS[self.normalize][1]

    def how_to_get(self, dest: Path) -> str:
        """A short instruction for obtaining the file at ``dest``."""
        if self.url:
            return f"pass download=True (fetches {self.url}) or place the file at {dest} by hand"
        return (
            f"there is no official download: copy {self.filename} from the project's shared data "
            f"(shared/data/weights/) to {dest.parent}/ or set PRUNELAB_DATA to the shared data folder"
        )


PRETRAINED: Registry[PretrainedWeights] = Registry("pretrained weights")
"""All known pretrained weights, by name."""

_WEIGHTS: tuple[PretrainedWeights, ...] = (
    PretrainedWeights(
        name="resnet20_cifar10",
        model="resnet20",
        filename="resnet20-12fca82f.th",
        sha256="12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        num_classes=10,
        input_shape=(3, 32, 32),
        normalize="imagenet",
        dataset="cifar10",
        url=_AKAMASTER_URL + "resnet20-12fca82f.th",
        reported_top1=91.73,
        source="akamaster/pytorch_resnet_cifar10 (BSD-2-Clause, (c) 2018 Yerlan Idelbayev)",
    ),
    PretrainedWeights(
        name="resnet56_cifar10",
        model="resnet56",
        filename="resnet56-4bfd9763.th",
        sha256="4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        num_classes=10,
        input_shape=(3, 32, 32),
        normalize="imagenet",
        dataset="cifar10",
        url=_AKAMASTER_URL + "resnet56-4bfd9763.th",
        reported_top1=93.39,
        source="akamaster/pytorch_resnet_cifar10 (BSD-2-Clause, (c) 2018 Yerlan Idelbayev)",
    ),
    PretrainedWeights(
        name="mobilenet_v1_075_imagenet",
        model="mobilenet_v1",
        model_kwargs={"width": 0.75, "stem": "imagenet"},
        filename="mobilenet_v1_0.75_224_imagenet_from_tfjs.pth",
        sha256="93a7672b219b65ca43f20073d2730ee55e19355f17e043c7b0e4623d9939545a",
        num_classes=1000,
        input_shape=(3, 224, 224),
        normalize="inception",
        dataset="imagenet",
        url=None,
        reported_top1=68.4,
        source="Keras MobileNet(alpha=0.75) ImageNet weights (MIT) via TF.js (Apache-2.0), converted",
    ),
)
for _spec in _WEIGHTS:
    _options = "".join(f", {k}={v}" for k, v in _spec.model_kwargs.items())
    PRETRAINED.register(
        _spec.name,
        help=f"{_spec.model}{_options} on {_spec.dataset} ({_spec.reported_top1} % top-1 reported)",
    )(_spec)


def default_data_dir() -> Path:
    """``$PRUNELAB_DATA`` if set, else ``~/.cache/prunelab``."""
    env = os.environ.get("PRUNELAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunelab"


def _weights_path(spec: PretrainedWeights, data_dir: str | os.PathLike[str] | None) -> Path:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return root / "weights" / spec.filename


def check_pretrained_present(
    name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> None:
    """Check that the file of the pretrained weights ``name`` is there, without reading it.

    Checks, in order: ``name`` is registered; ``<data_dir>/weights/<file>`` (``data_dir`` defaulting to
    :func:`default_data_dir`) exists and is not empty — or it is absent, ``download`` is true and the
    weights have an official URL (the network is not probed). The sha256 is not computed here;
    :func:`find_pretrained` verifies it when the run starts.

    Raises:
        ConfigError: for an unknown name.
        CheckpointError: one line: the file is absent (where it looked, how to get it) or empty.
    """
    spec = PRETRAINED.get(name)
    path = _weights_path(spec, data_dir)
    if path.is_file():
        if path.stat().st_size == 0:
            raise CheckpointError(
                f"pretrained weights {name!r} at {path} are an empty file; delete it, then {spec.how_to_get(path)}"
            )
        return
    if not (download and spec.url):
        raise CheckpointError(
            f"pretrained weights {name!r} not found: looked for {path}; {spec.how_to_get(path)}"
        )


def find_pretrained(
    name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> Path:
    """Locate the verified weights file of the pretrained weights ``name``.

    Args:
        name: a key of :data:`PRETRAINED`.
        data_dir: folder holding ``weights/``; defaults to :func:`default_data_dir`.
        download: fetch the file from its official URL when it is missing (only where one exists).

    Returns:
        The path of the file, whose sha256 has been checked.

    Raises:
        ConfigError: for an unknown name.
        CheckpointError: the file is missing (and cannot or may not be downloaded) or its sha256 differs.
    """
    check_pretrained_present(name, data_dir, download)
    spec = PRETRAINED.get(name)
    path = _weights_path(spec, data_dir)
    if not path.is_file():
        try:
            download_url(spec.url, path, sha256=spec.sha256)
        except DataNotFoundError as exc:
            raise CheckpointError(str(exc)) from None
    digest = file_digest(path, "sha256")
    if not digest.startswith(spec.sha256.lower()):
        raise CheckpointError(
            f"pretrained weights {name!r} at {path} have sha256 {digest[:16]}…, expected {spec.sha256[:16]}…; "
            f"the file is corrupted or a different version — delete it, then {spec.how_to_get(path)}"
        )
    return path


def _unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensor mapping inside a loaded checkpoint, with DataParallel/compile prefixes stripped."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state_dict; pass a weights file")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        name = str(key)
        # DataParallel/DDP save under "module.", torch.compile under "_orig_mod.".
        for prefix in ("module.", "_orig_mod."):
            name = name.removeprefix(prefix)
        state[name] = value
    return state


def load_weights(
    model: nn.Module,
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = True,
    reset_head: bool = False,
    head: str | None = None,
    input_shape: Sequence[int] = (3, 32, 32),
) -> nn.Module:
    """Load weights into ``model`` (in place), checking every key and shape first.

    The file is read with ``weights_only=True``. A ``{"state_dict": ...}`` (or ``{"model": ...}``) wrapper
    is unwrapped and ``module.`` prefixes are stripped. Missing ``num_batches_tracked`` buffers are fine
    (older checkpoints do not store them). Masked models work too: values go to the unmasked originals and
    the current masks are re-applied.

    Args:
        model: the model to load into.
        path_or_state: a checkpoint path, or an already loaded state_dict.
        strict: require every model key to be present and every file key to be used. Shape mismatches are
            always errors.
        reset_head: keep the model's (freshly initialised) classifier where the file's classifier has a
            different shape, e.g. to fine-tune ImageNet weights on 10 classes.
        head: the classifier's module name for ``reset_head``; ``None`` = found from the graph
            (:func:`~prunelab.core.targets.find_head`).
        input_shape: ``(C, H, W)`` of one input, to find the head from the graph (the zoo's default
            ``(3, 32, 32)`` unless given); unused when ``head`` is given or ``reset_head`` is off.

    Returns:
        ``model``.

    Raises:
        CheckpointError: unreadable file, a key/shape mismatch (the message names the first bad key), or a
            tensor holding NaN/inf (named): such weights are never loaded.
        ConfigError: ``head`` is not a layer of ``model`` (see :func:`~prunelab.core.targets.find_head`).
    """
    if isinstance(path_or_state, Mapping):
        source = "state_dict"
        state = _unwrap(path_or_state, source)
    else:
        source = str(path_or_state)
        state = _unwrap(safe_torch_load(path_or_state), source)
    expected = plain_shapes(model)

    skipped: set[str] = set()
    if reset_head:
        head = find_head(model, input_shape, head)
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in state and key in expected and tuple(state[key].shape) != expected[key]:
                skipped.add(key)
    state = {k: v for k, v in state.items() if k not in skipped}

    problems: list[str] = []
    for key, shape in expected.items():
        if key in skipped:
            continue
        if key not in state:
            # A reparametrization's internals are optional: the plain value under the ordinary key suffices.
            optional = key.endswith("num_batches_tracked") or ".parametrizations." in f".{key}"
            if strict and not optional:
                problems.append(f"key {key!r} is missing from the file")
        elif tuple(state[key].shape) != shape:
            problems.append(
                f"key {key!r} has shape {tuple(state[key].shape)} in the file but {shape} in the model"
            )
    if strict:
        problems += [f"unexpected key {key!r} in the file" for key in state if key not in expected]
    if problems:
        hint = "use weights saved from the same architecture and options" + (
            "" if reset_head else ", or reset_head=True for a different class count"
        )
        raise CheckpointError(
            f"weights {source} do not fit {type(model).__name__} ({len(problems)} problem(s)); first: "
            f"{problems[0]}; {hint}"
        )

    state = {k: v for k, v in state.items() if k in expected}
    check_finite(state, source)
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        load_plain_state_dict(model, state, strict=False, source=source)
    else:
        model.load_state_dict(state, strict=False)
    return model


def build_pretrained(
    name: str,
    num_classes: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    download: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build the architecture of the pretrained weights ``name`` and load them.

    Args:
        name: a key of :data:`PRETRAINED`.
        num_classes: classes of the returned model; when it differs from the weights' class count the
            classifier is freshly initialised (``reset_head=True``) and everything else is loaded.
        data_dir: folder holding ``weights/`` (see :func:`find_pretrained`).
        input_shape: ``(C, H, W)``; defaults to the weights' own input shape.
        download: fetch missing weights from their official URL where one exists.
        **kwargs: further :func:`~prunelab.models.build_model` options, overriding the weights' own.

    Returns:
        The model with the weights loaded, in training mode.

    Raises:
        ConfigError: unknown name or model option.
        CheckpointError: missing or corrupted file, or options that change the architecture's shapes.
    """
    spec = PRETRAINED.get(name)
    classes = spec.num_classes if num_classes is None else num_classes
    options = {**spec.model_kwargs, **kwargs}
    model = build_model(
        spec.model, num_classes=classes, input_shape=input_shape or spec.input_shape, **options
    )
    path = find_pretrained(name, data_dir=data_dir, download=download)
    return load_weights(
        model, path, reset_head=classes != spec.num_classes, input_shape=input_shape or spec.input_shape
    )
