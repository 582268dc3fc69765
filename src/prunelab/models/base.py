"""Model registry, :func:`build_model` and the helpers every architecture file shares.

Every builder in the zoo is a plain function ``builder(num_classes=10, input_shape=(3, 32, 32), **options)``
registered in :data:`MODELS`. :func:`build_model` checks the option *names* against the builder's
signature before calling it, and the builders check the option *values* (through the ``check_*`` helpers
below), so a typo in a recipe fails with a one-line :class:`~prunelab.errors.ConfigError` instead of a
``TypeError`` deep inside a constructor.

Names with a ``:`` come from outside the zoo (:mod:`prunelab.models.external`): ``torchvision:<name>``,
``timm:<name>`` and ``package.module:callable``; :func:`build_model`, :func:`model_options` and
:func:`check_model_name` accept both kinds.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from prunelab.errors import ConfigError
from prunelab.models import external
from prunelab.registry import Registry

__all__ = [
    "MODELS",
    "build_model",
    "check_choice",
    "check_input_shape",
    "check_min_size",
    "check_model_name",
    "check_num_classes",
    "check_width",
    "init_weights",
    "is_model_name",
    "scale_channels",
]

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")
"""All architectures of the zoo, by name (``lenet5``, ``resnet20``, ``mobilenet_v1``, ...)."""

# Arguments every builder takes; they are not "model-specific options" in error messages.
_COMMON_ARGS = ("num_classes", "input_shape")


def build_model(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    **kwargs: Any,
) -> nn.Module:
    """Build the architecture registered as ``name``, or an external model.

    Args:
        name: a key of :data:`MODELS`, e.g. ``"resnet20"``; or ``torchvision:<name>``, ``timm:<name>`` or
            ``package.module:callable`` (see :func:`prunelab.models.external.build_external`).
        num_classes: size of the classifier output.
        input_shape: ``(C, H, W)`` of one input image; the channel count sets the first layer's input
            width, and models with a flattening classifier (LeNets) size it from ``H`` and ``W``.
        **kwargs: model-specific options (e.g. ``width=0.5``, ``stem="imagenet"``).

    Returns:
        A freshly initialised ``nn.Module`` in training mode.

    Raises:
        ConfigError: for an unknown model name, an option the model does not take, or an invalid value;
            for an external name also when its package is missing or fails to import, or its constructor
            fails or does not return an ``nn.Module``.
    """
    if external.is_external_name(name):
        return external.build_external(name, num_classes=num_classes, input_shape=input_shape, **kwargs)
    builder = MODELS.get(name)
    options = model_options(name)
    for key in kwargs:
        if key not in options:
            valid = ", ".join(options) if options else "none"
            raise ConfigError(f"model {name!r} has no option {key!r}; valid options: {valid}")
    return builder(num_classes=num_classes, input_shape=input_shape, **kwargs)


def model_options(name: str) -> list[str]:
    """The model-specific option names that ``build_model(name, ...)`` accepts, in signature order.

    For an external name see :func:`prunelab.models.external.external_options` (torchvision and timm
    forward any option to the constructor, so theirs are ``[]``).

    Raises:
        ConfigError: for an unknown model name.
    """
    if external.is_external_name(name):
        return external.external_options(name)
    params = inspect.signature(MODELS.get(name)).parameters
    return [p for p in params if p not in _COMMON_ARGS]


def check_model_name(name: Any) -> None:
    """Check that ``name`` names a model, without building it (for recipe validation).

    A zoo name must be in :data:`MODELS`; an external name is resolved (its package imported, the
    torchvision/timm model or the callable looked up), which is cheap.

    Raises:
        ConfigError: one line naming the problem and the fix (close matches for an unknown name).
    """
    if not isinstance(name, str):
        raise ConfigError(f"a model name must be a string, got {name!r}")
    if external.is_external_name(name):
        external.resolve_external(name)
    elif name not in MODELS:
        raise ConfigError(
            f"{MODELS.unknown_message(name)} (or torchvision:<name>, timm:<name>, package.module:callable)"
        )


def is_model_name(name: Any) -> bool:
    """Whether :func:`check_model_name` accepts ``name``."""
    try:
        check_model_name(name)
    except ConfigError:
        return False
    return True


def check_num_classes(num_classes: Any) -> int:
    """Validate a class count (a positive int) and return it.

    Raises:
        ConfigError: if it is not a positive integer.
    """
    # bool is an int subclass; True classes is certainly a mistake.
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """Validate an input shape ``(C, H, W)`` of positive ints and return it as a tuple.

    Raises:
        ConfigError: if it is not three positive integers.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ConfigError(f"input_shape must be (C, H, W) with three positive integers, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def check_min_size(model: str, input_shape: tuple[int, int, int], min_hw: int) -> None:
    """Reject inputs too small for the model's downsampling (``H`` or ``W`` below ``min_hw``).

    Raises:
        ConfigError: naming the model and the smallest size it accepts.
    """
    _, h, w = input_shape
    if h < min_hw or w < min_hw:
        raise ConfigError(
            f"model {model!r} needs inputs of at least {min_hw}x{min_hw} pixels, got input_shape "
            f"{input_shape}; resize the images (image_size) or pick another model"
        )


def check_width(width: Any) -> float:
    """Validate a width multiplier (a finite number > 0) and return it as a float.

    Raises:
        ConfigError: if it is not a positive finite number.
    """
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ConfigError(f"width must be a positive number (1.0 = the paper's widths), got {width!r}")
    return float(width)


def check_choice(option: str, value: Any, choices: Sequence[str]) -> str:
    """Validate that ``value`` is one of ``choices`` and return it.

    Raises:
        ConfigError: naming the option and its valid values.
    """
    if value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def scale_channels(channels: int, width: float) -> int:
    """``channels × width`` rounded half up to an int, and never below 1.

    Half-up rounding (not Python's banker's rounding) makes the result monotone in ``width``.
    """
    return max(1, math.floor(channels * width + 0.5))


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal initialise every conv and linear weight of ``model`` (in place) and zero their biases.

    ``fan_in`` mode with the ReLU gain keeps the forward activation variance constant (He et al., 2015);
    for a depthwise convolution the fan-in is the K×K window, which is what one output actually sees.
    BatchNorm layers keep PyTorch's defaults (γ = 1, β = 0).

    Returns:
        ``model``.
    """
    for module in model.modules():
        # A model built on the meta device (recipe validation) has nothing to initialise, and normal_'s
        # meta kernel is a Python decomposition whose first call imports torch._dynamo (about 4 s).
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.is_meta:
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
