"""Models from outside the zoo: ``torchvision:<name>``, ``timm:<name>`` and ``package.module:callable``.

:func:`~prunelab.models.build_model` sends every name with a ``:`` here. The three forms:

- ``torchvision:<name>`` builds ``torchvision.models.get_model(name, weights=None, num_classes=..., **kw)``;
- ``timm:<name>`` builds ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=C, **kwargs)``;
- ``package.module:callable`` imports ``package.module`` and calls ``callable`` (a function or an
  ``nn.Module`` class; ``attr.sub`` paths are allowed) with the recipe's kwargs, plus ``num_classes`` and
  ``input_shape`` where its signature takes them (by name or through ``**kwargs``). The module is found
  on ``sys.path`` (an installed package, ``PYTHONPATH``) or in the working directory.

Nothing is ever downloaded: weights come from a local file through a recipe's ``model.init: <file>``.
torchvision and timm are imported lazily, only when a name asks for them, so prunelab does not depend on
them. Every user error (a package not installed, an unknown model, a module that fails to import, a missing
attribute, a callable that does not return an ``nn.Module``, bad kwargs) is a one-line
:class:`~prunelab.errors.ConfigError` naming the problem and the fix.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunelab.errors import ConfigError

__all__ = [
    "ExternalModel",
    "build_external",
    "describe_sources",
    "external_options",
    "is_external_name",
    "resolve_external",
]

#: The prefixes naming a third-party model library (the rest of the name is that library's model name).
LIBRARIES = ("torchvision", "timm")

# Options the door sets itself: a recipe that passes them would collide or download weights.
_RESERVED = {
    "torchvision": ("num_classes", "weights", "progress"),
    "timm": ("num_classes", "pretrained", "pretrained_cfg_overlay", "checkpoint_path"),
    "callable": ("num_classes", "input_shape"),
}
_RESERVED_FIX = {
    "num_classes": "it comes from the dataset",
    "input_shape": "it comes from the dataset",
    "weights": "load weights from a local file with model.init: <file>",
    "pretrained": "load weights from a local file with model.init: <file>",
    "checkpoint_path": "load weights from a local file with model.init: <file>",
    "pretrained_cfg_overlay": "load weights from a local file with model.init: <file>",
    "progress": "prunelab never downloads weights",
}

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class ExternalModel:
    """A resolved external model name.

    Attributes:
        name: the name as written (``"torchvision:resnet18"``, ``"mypkg.models:build"``).
        source: ``"torchvision"``, ``"timm"`` or ``"callable"``.
        target: the library's model name, or the callable's attribute path inside its module.
        builder: the library's factory (``get_model``/``create_model``) or the user's callable.
    """

    name: str
    source: str
    target: str
    builder: Callable[..., Any]


def is_external_name(name: object) -> bool:
    """Whether ``name`` uses the external syntax (``source:target``), valid or not."""
    return isinstance(name, str) and ":" in name


def _split(name: str) -> tuple[str, str]:
    prefix, _, target = name.partition(":")
    prefix, target = prefix.strip(), target.strip()
    if not prefix or not target:
        raise ConfigError(
            f"model name {name!r} is incomplete; "
            "write torchvision:<name>, timm:<name> or package.module:callable"
        )
    return prefix, target


def _import_library(library: str) -> Any:
    """Import torchvision or timm, or fail with the pip command that installs it."""
    if importlib.util.find_spec(library) is None:
        raise ConfigError(f"model source {library!r} is not installed; pip install {library}")
    try:
        return importlib.import_module(library)
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways
        raise ConfigError(
            f"{library} is installed but failed to import ({_one_line(exc)}); "
            f"reinstall a {library} built for this torch"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _unknown(library: str, model: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(f'{library}:{c}' for c in close)}?"
        if close
        else (f"see {library}.models.list_models()" if library == "torchvision" else "see timm.list_models()")
    )
    return ConfigError(f"unknown {library} model {model!r}; {hint}")


def _resolve_torchvision(name: str, model: str) -> ExternalModel:
    _import_library("torchvision")
    import torchvision.models as tvm

    known = tvm.list_models()
    if model not in known:
        raise _unknown("torchvision", model, known)
    return ExternalModel(name, "torchvision", model, tvm.get_model)


def _resolve_timm(name: str, model: str) -> ExternalModel:
    timm = _import_library("timm")
    # is_model accepts pretrained tags (resnet18.a1_in1k); hub names (hf-hub:...) are not models here.
    if not timm.is_model(model):
        raise _unknown("timm", model, timm.list_models())
    return ExternalModel(name, "timm", model, timm.create_model)


def _import_user_module(module_name: str) -> Any:
    """Import a user's module; if its top-level package is not found, look in the working directory too.

    ``python -m prunelab`` has the working directory on ``sys.path`` but the ``prunelab`` console script
    does not; appending it (last, so it never shadows an installed package) makes ``mymodels:build`` work
    from the directory holding ``mymodels.py`` either way, in sweep workers too (they inherit the cwd).
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = module_name.partition(".")[0]
        if exc.name != top or any(os.path.abspath(p or ".") == cwd for p in sys.path):
            raise
        if importlib.machinery.PathFinder.find_spec(top, [cwd]) is None:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _resolve_callable(name: str, module_name: str, attr_path: str) -> ExternalModel:
    if not _DOTTED.match(module_name) or not _DOTTED.match(attr_path):
        raise ConfigError(
            f"model name {name!r} is not package.module:callable (dotted Python names); "
            "or use a zoo name, torchvision:<name> or timm:<name>"
        )
    try:
        module = _import_user_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the module raises at import
        raise ConfigError(
            f"model {name!r}: cannot import module {module_name!r} ({_one_line(exc)}); "
            "install it or add its directory to PYTHONPATH"
        ) from None
    obj: Any = module
    walked = module_name
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = [a for a in dir(obj) if not a.startswith("_")]
            close = difflib.get_close_matches(part, public, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "check the name after the ':'"
            raise ConfigError(f"model {name!r}: {walked!r} has no attribute {part!r}; {hint}")
        obj = getattr(obj, part)
        walked = f"{walked}.{part}"
    if not callable(obj):
        raise ConfigError(
            f"model {name!r}: {walked!r} is a {type(obj).__name__}, not a callable; "
            "name a function or an nn.Module class that builds the model"
        )
    return ExternalModel(name, "callable", attr_path, obj)


def resolve_external(name: str) -> ExternalModel:
    """Resolve an external model name without building the model (cheap: imports only).

    Raises:
        ConfigError: for a malformed name, torchvision/timm not installed or failing to import, an unknown
            torchvision/timm model (with close matches), a module that fails to import, a missing
            attribute, or an attribute that is not callable.
    """
    prefix, target = _split(name)
    if prefix == "torchvision":
        return _resolve_torchvision(name, target)
    if prefix == "timm":
        return _resolve_timm(name, target)
    return _resolve_callable(name, prefix, target)


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return None


def _accepts(sig: inspect.Signature | None, param: str) -> bool:
    if sig is None:
        return False
    if param in sig.parameters:
        return sig.parameters[param].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.VAR_POSITIONAL,
        )
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def external_options(name: str) -> list[str]:
    """The option names an external model declares, in signature order.

    For ``package.module:callable`` these are the callable's keyword parameters other than ``num_classes``
    and ``input_shape``. torchvision and timm forward any keyword to the model's constructor, so their
    options are not enumerable: the result is ``[]`` and the constructor itself rejects a bad one.

    Raises:
        ConfigError: as :func:`resolve_external`.
    """
    resolved = resolve_external(name)
    if resolved.source != "callable":
        return []
    sig = _signature(resolved.builder)
    if sig is None:
        return []
    return [
        p.name
        for p in sig.parameters.values()
        if p.name not in _RESERVED["callable"]
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def _check_reserved(name: str, source: str, kwargs: dict[str, Any]) -> None:
    for key in _RESERVED[source]:
        if key in kwargs:
            raise ConfigError(f"model {name!r}: model.kwargs may not set {key!r}; {_RESERVED_FIX[key]}")


def build_external(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    **kwargs: Any,
) -> nn.Module:
    """Build the external model ``name`` (see the module docstring for the three forms).

    Args:
        name: ``torchvision:<name>``, ``timm:<name>`` or ``package.module:callable``.
        num_classes: size of the classifier output.
        input_shape: ``(C, H, W)`` of one input; timm receives ``in_chans=C`` (unless ``kwargs`` set it),
            torchvision models require ``C == 3``, a callable receives it if its signature takes it.
        **kwargs: the recipe's ``model.kwargs``, forwarded to the constructor.

    Returns:
        The freshly built ``nn.Module`` (random weights; nothing is downloaded).

    Raises:
        ConfigError: for every failure listed in :func:`resolve_external`, kwargs the constructor rejects
            (its ``TypeError``), an exception raised while building, or a result that is not an ``nn.Module``.
    """
    resolved = resolve_external(name)
    _check_reserved(name, resolved.source, kwargs)
    shape = tuple(input_shape)
    if resolved.source == "torchvision":
        if len(shape) == 3 and shape[0] != 3:
            raise ConfigError(
                f"model {name!r} takes 3-channel images, the data has {shape[0]}; "
                f"use a 3-channel dataset or timm:{resolved.target} (timm adapts in_chans)"
            )
        args: dict[str, Any] = {"weights": None, "num_classes": num_classes, **kwargs}
        call = functools.partial(resolved.builder, resolved.target, **args)
    elif resolved.source == "timm":
        args = {"pretrained": False, "num_classes": num_classes, **kwargs}
        if len(shape) == 3:
            args.setdefault("in_chans", shape[0])
        call = functools.partial(resolved.builder, resolved.target, **args)
    else:
        sig = _signature(resolved.builder)
        args = dict(kwargs)
        if _accepts(sig, "num_classes"):
            args["num_classes"] = num_classes
        if _accepts(sig, "input_shape"):
            args["input_shape"] = shape
        if sig is not None:
            try:
                sig.bind(**args)
            except TypeError as exc:
                valid = ", ".join(external_options(name)) or "none"
                raise ConfigError(
                    f"model {name!r}: bad model.kwargs ({exc}); valid options: {valid}"
                ) from None
        call = functools.partial(resolved.builder, **args)
    try:
        model = call()
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(
            f"model {name!r} rejected its options {sorted(kwargs)} ({_one_line(exc)}); fix model.kwargs"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the constructor failed: say so in one line
        raise ConfigError(
            f"model {name!r} failed to build ({_one_line(exc)}); check model.kwargs and the model's code"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module; "
            "make the callable return the network"
        )
    return model


def _library_status(library: str) -> str:
    if importlib.util.find_spec(library) is None:
        return f"not installed (pip install {library})"
    try:
        lib = _import_library(library)
        count = len(lib.models.list_models() if library == "torchvision" else lib.list_models())
    except ConfigError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - `list` reports it rather than crash
        return f"installed, cannot list models ({_one_line(exc)})"
    version = getattr(lib, "__version__", "?")
    return f"installed ({library} {version}), {count} models"


def describe_sources() -> list[tuple[str, str]]:
    """``(syntax, description)`` rows for the model sources beyond the zoo, for ``prunelab list models``.

    Importing torchvision/timm here is what makes the count real; it happens only when listing.
    """
    return [
        (
            "torchvision:<name>",
            f"torchvision.models.get_model(name, weights=None): {_library_status('torchvision')}",
        ),
        ("timm:<name>", f"timm.create_model(name, pretrained=False): {_library_status('timm')}"),
        (
            "package.module:callable",
            "your own model: a function or nn.Module class, given num_classes/input_shape if it takes them",
        ),
    ]
