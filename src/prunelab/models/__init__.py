"""Model zoo: CNN architectures for pruning experiments, and their pretrained weights.

Importing this package registers every architecture in :data:`MODELS` (LeNets, CIFAR VGGs, CIFAR ResNets
with option-A shortcuts, MobileNetV1/V2, DenseNet-40, a small CNN for the offline demo) and every set of pretrained weights in
:data:`PRETRAINED`; installed plugins add theirs through the entry-point group ``prunelab.models``.
:func:`build_model` also builds models from outside the zoo (:mod:`prunelab.models.external`):
``torchvision:<name>``, ``timm:<name>`` and ``package.module:callable``.

Example:
    >>> from prunelab.models import build_model
    >>> model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    >>> model = build_model("torchvision:resnet18", num_classes=10)  # doctest: +SKIP
"""

# Imported for their side effect: each module registers its builders in MODELS.
from prunelab.models import densenet, lenet, mobilenet_v1, mobilenet_v2, resnet, small, vgg  # noqa: F401
from prunelab.models.base import MODELS, build_model, check_model_name, is_model_name, model_options
from prunelab.models.external import describe_sources
from prunelab.models.pretrained import (
    NORMALIZATIONS,
    PRETRAINED,
    PretrainedWeights,
    build_pretrained,
    default_data_dir,
    find_pretrained,
    load_weights,
)
from prunelab.registry import load_plugins

__all__ = [
    "MODELS",
    "NORMALIZATIONS",
    "PRETRAINED",
    "PretrainedWeights",
    "build_model",
    "build_pretrained",
    "check_model_name",
    "default_data_dir",
    "describe_sources",
    "find_pretrained",
    "is_model_name",
    "load_weights",
    "model_options",
]

# Third-party models/datasets register themselves through this entry-point group (see prunelab.registry).
load_plugins("prunelab.models")
