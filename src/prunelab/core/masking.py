"""Pruning masks as ``torch.nn.utils.parametrize`` parametrizations.

A pruned tensor ``W`` is stored as its unconstrained original ``W₀`` plus a boolean keep-mask ``M``;
the module sees ``W = W₀ ⊙ M``. Because the product sits inside autograd, ``∂L/∂W₀ = ∂L/∂W ⊙ M``:
masked entries receive an exactly zero gradient, so neither momentum nor weight decay nor Adam's
moments can ever bring them back into the effective weight. Masks are boolean, ``True`` = keep, and
only ever shrink (:func:`update_mask` intersects the new mask with the old one).

All mask state is addressed by the qualified parameter name (``"features.0.weight"``), never by module
objects, so it can be saved, loaded and compared across processes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import CheckpointError, UnsupportedModelError

_P = TypeVar("_P", bound=nn.Module)

#: The fix named when a state_dict does not fit its model (an edited or mixed checkpoint, another model).
_MISMATCH_FIX = (
    "load weights saved from this very model (same builder, kwargs and architecture spec); a checkpoint "
    "whose spec was edited or whose weights come from another model cannot be loaded — re-save it"
)


class Mask(nn.Module):
    """Parametrization ``W = W₀ ⊙ M`` with a boolean keep-mask buffer ``M``.

    Args:
        shape: shape of the parametrized tensor.
        device: device of the mask buffer.
    """

    def __init__(self, shape: torch.Size | tuple[int, ...], device: torch.device | None = None) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))
        # (source mask, its version, the mask in the weight's dtype): see _mask_like.
        self._cache: tuple[Tensor, int, Tensor] | None = None

    def _mask_like(self, original: Tensor) -> Tensor:
        """The mask as a tensor of ``original``'s dtype and device, cast once and then reused.

        Casting the boolean mask on every forward was about half of the mask's cost in a training step
        (benchmarks/mask_overhead.py). The cast is reused while the buffer is the same tensor object at
        the same version counter: every in-place change (``update_mask``'s ``&=``, ``load_state_dict``'s
        ``copy_``, a DDP buffer broadcast) bumps the version, and ``.to()``/reassignment replaces the
        object, so a stale cast is never used. Under ``torch.compile`` the cast is traced into the graph
        instead (no cache, no graph break).
        """
        mask = self.mask
        if torch.compiler.is_compiling():
            # Under torch.compile the cast becomes part of the graph (fused with the multiplication), so
            # there is nothing to cache; and the cache's checks below (inference mode, the version
            # counter, object identity, the attribute write) are Python-side state Dynamo cannot trace:
            # ``torch.is_inference_mode_enabled`` alone broke the graph once per masked tensor.
            return mask.to(device=original.device, dtype=original.dtype)
        if torch.is_inference_mode_enabled() or mask.is_inference():
            # Inference tensors have no version counter, and a cast made here could not be saved for
            # backward by a later training forward: cast without caching.
            return mask.to(dtype=original.dtype)
        cached = getattr(self, "_cache", None)  # masks pickled before the cache existed lack it
        if (
            cached is not None
            and cached[0] is mask
            and cached[1] == mask._version
            and cached[2].dtype == original.dtype
            and cached[2].device == original.device
        ):
            return cached[2]
        value = mask.to(device=original.device, dtype=original.dtype)
        self._cache = (mask, mask._version, value)
        return value

    def forward(self, original: Tensor) -> Tensor:
        """Return the effective tensor ``original ⊙ mask``."""
        return original * self._mask_like(original)


def _split(fqn: str) -> tuple[str, str]:
    module_name, _, param_name = fqn.rpartition(".")
    return module_name, param_name


def find_parametrization(module: nn.Module, name: str, kind: type[_P]) -> _P | None:
    """The first parametrization of type ``kind`` on ``module.<name>``, or ``None``."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:  # type: ignore[index]
        if isinstance(p, kind):
            return p
    return None


def _mask_of(module: nn.Module, name: str) -> Mask | None:
    return find_parametrization(module, name, Mask)


def add_mask(module: nn.Module, name: str = "weight") -> Mask:
    """Attach an all-ones :class:`Mask` to ``module.<name>`` (idempotent) and return it.

    Attach masks *before* building the optimizer: parametrize replaces the parameter by a new
    ``original`` parameter only the first time a parametrization is registered.
    """
    existing = _mask_of(module, name)
    if existing is not None:
        return existing
    tensor = getattr(module, name)
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor and cannot be masked")
    mask = Mask(tensor.shape, device=tensor.device)
    # unsafe=True skips parametrize's consistency check, which would run a forward for nothing.
    parametrize.register_parametrization(module, name, mask, unsafe=True)
    return mask


def has_mask(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a prunelab :class:`Mask`."""
    return _mask_of(module, name) is not None


def get_mask(module: nn.Module, name: str = "weight") -> Tensor:
    """The boolean keep-mask of ``module.<name>`` (all ones if the tensor is not masked)."""
    mask = _mask_of(module, name)
    if mask is None:
        return torch.ones_like(getattr(module, name), dtype=torch.bool)
    return mask.mask


def original(module: nn.Module, name: str = "weight") -> Tensor:
    """The unconstrained tensor ``W₀`` behind ``module.<name>`` (the tensor itself if not parametrized).

    With several stacked parametrizations (e.g. an interspace filter basis), this is the input of the
    first one.
    """
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original  # type: ignore[index,return-value]
    return getattr(module, name)


@torch.no_grad()
def update_mask(module: nn.Module, name: str, keep: Tensor) -> Tensor:
    """Intersect the mask of ``module.<name>`` with ``keep`` and zero the pruned originals.

    The intersection guarantees that masks only shrink, whatever the criterion proposes. The
    originals at pruned positions are zeroed as well, so that baking, rewinding and weight decay all
    see the same zeros as the forward pass.

    Returns:
        The new mask.
    """
    mask = add_mask(module, name)
    if keep.shape != mask.mask.shape:
        raise ValueError(f"mask of shape {tuple(keep.shape)} does not fit tensor {tuple(mask.mask.shape)}")
    mask.mask &= keep.to(device=mask.mask.device, dtype=torch.bool)
    orig = original(module, name)
    if orig.shape == mask.mask.shape:
        orig.mul_(mask.mask.to(orig.dtype))
    return mask.mask


def iter_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor]]:
    """Yield ``(fqn, module, param_name, mask)`` for every masked tensor of ``model``."""
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):  # type: ignore[union-attr]
            mask = _mask_of(module, name)
            if mask is not None:
                fqn = f"{module_name}.{name}" if module_name else name
                yield fqn, module, name, mask.mask


def masks_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """All masks of ``model`` as ``{parameter fqn: bool tensor}`` (CPU copies)."""
    return {fqn: m.detach().cpu().clone() for fqn, _, _, m in iter_masks(model)}


@torch.no_grad()
def load_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Attach and set the masks in ``masks`` (as produced by :func:`masks_state_dict`).

    Every mask is checked before any is attached, so a refused set leaves the model untouched.

    Raises:
        CheckpointError: one line, if a mask names a tensor the model lacks, has the wrong shape, or holds
            values other than 0/1 (True/False).
    """
    modules = dict(model.named_modules())
    for fqn, keep in masks.items():
        module_name, name = _split(fqn)
        module = modules.get(module_name)
        if module is None or not isinstance(getattr(module, name, None), Tensor):
            raise CheckpointError(f"mask for {fqn!r} does not match any tensor of the model; {_MISMATCH_FIX}")
        if not isinstance(keep, Tensor) or tuple(getattr(module, name).shape) != tuple(keep.shape):
            shape = tuple(keep.shape) if isinstance(keep, Tensor) else type(keep).__name__
            raise CheckpointError(
                f"mask for {fqn!r} has shape {shape}, the model's tensor "
                f"{tuple(getattr(module, name).shape)}; {_MISMATCH_FIX}"
            )
        if keep.dtype != torch.bool and not bool(((keep == 0) | (keep == 1)).all()):
            raise CheckpointError(
                f"mask for {fqn!r} holds values other than 0 and 1; the checkpoint is corrupted — re-create it"
            )
    for fqn, keep in masks.items():
        module_name, name = _split(fqn)
        module = modules[module_name]
        mask = add_mask(module, name)
        mask.mask.copy_(keep.to(torch.bool))
        original(module, name).mul_(mask.mask.to(original(module, name).dtype))


def bake(model: nn.Module) -> nn.Module:
    """Replace every masked tensor by a plain parameter holding ``W₀ ⊙ M`` (in place).

    Other parametrizations stacked on the same tensor are baked with it.

    Returns:
        ``model``, now free of prunelab masks.
    """
    for _, module, name, _ in list(iter_masks(model)):
        _own_class(module)
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def _own_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of its generated ``Parametrized<Cls>`` class.

    ``remove_parametrizations`` deletes the tensor's property from the module's class, and a
    ``copy.deepcopy`` of a parametrized module shares that class with the original: baking the copy would
    strip the original's weight. A private class (same bases, same attributes) keeps baking local.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _reparam_prefixes(module_name: str, module: nn.Module) -> list[tuple[str, set[str]]]:
    """``(internal key prefix, mask buffer keys)`` of every tensor of ``module`` that carries a
    parametrization other than :class:`Mask` (a reparametrization such as an interspace filter basis)."""
    out = []
    prefix = f"{module_name}." if module_name else ""
    for name in module.parametrizations:  # type: ignore[union-attr]
        plist = module.parametrizations[name]  # type: ignore[index]
        if all(isinstance(p, Mask) for p in plist):
            continue
        inner = f"{prefix}parametrizations.{name}."
        out.append((inner, {f"{inner}{i}.mask" for i, p in enumerate(plist) if isinstance(p, Mask)}))
    return out


def _plain_entries(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The ``(key, tensor)`` pairs of :func:`plain_state_dict`, uncopied: the one walk behind it and
    :func:`plain_shapes` (parametrized tensors as their effective value, reparametrization internals kept)."""
    parametrized: set[str] = set()
    internals: list[tuple[str, set[str]]] = []
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{module_name}." if module_name else ""
            for name in module.parametrizations:  # type: ignore[union-attr]
                with torch.no_grad():  # the effective value; not yielded inside: no_grad would leak out
                    value = getattr(module, name)
                yield prefix + name, value
                parametrized.add(prefix + "parametrizations." + name + ".")
            internals.extend(_reparam_prefixes(module_name, module))
    for key, value in model.state_dict(keep_vars=True).items():
        keep_internal = any(key.startswith(p) and key not in masks for p, masks in internals)
        if isinstance(value, Tensor) and (keep_internal or not any(key.startswith(p) for p in parametrized)):
            yield key, value


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state_dict as it would be after :func:`bake`: effective tensors under plain names.

    The result is a snapshot (every tensor is a copy). Parametrized tensors appear under their ordinary
    key (``"conv.weight"``) with their masked value,
    and the parametrization internals (``original``, mask buffers) are left out, so a plain, unpruned
    copy of the architecture loads the result with ``load_state_dict``.

    Exception: a tensor carrying a *reparametrization* besides its mask (an interspace filter basis,
    :mod:`prunelab.reparam`) cannot be restored from its effective value alone, so its internals (the
    coefficients ``...parametrizations.weight.original`` and the basis) are included too, under the
    model's own state_dict keys; :func:`load_plain_state_dict` restores them exactly and skips them when
    the target model lacks that reparametrization. Masks are never included (see :func:`masks_state_dict`).
    """
    # A snapshot, not a view: state_dict() tensors share storage with the live parameters, so without a
    # copy a stored "initial" state would follow training (and rewinding would be a no-op).
    return {key: value.detach().clone() for key, value in _plain_entries(model)}


def require_real_weights(model: nn.Module, what: str) -> None:
    """Refuse a model without real weights: tensors on the meta device, or holding NaN/inf.

    A meta model has shapes but no values to score or copy; a model with NaN/inf weights (training
    diverged) would be scored, pruned and compacted into garbage without a word.

    Args:
        model: the model about to be pruned, traced or compacted.
        what: the operation, for the message (``"Pruner"``, ``"compact"``).

    Raises:
        UnsupportedModelError: one line naming the first such tensor and the fix.
    """
    tensors = (*model.named_parameters(), *model.named_buffers())
    for name, tensor in tensors:
        if tensor.is_meta:
            raise UnsupportedModelError(
                f"{what}: the model has no real weights ({name!r} is on the meta device); materialise it "
                "first, e.g. model.to_empty(device='cpu') and then load its weights (load_weights)"
            )
    for name, tensor in tensors:
        # A sum is NaN/inf whenever an entry is, and one reduction is an order of magnitude cheaper than
        # isfinite().all() on the CPU (which builds boolean tensors): at every Pruner.step over 31 M weights
        # the full check cost as much as the rest of the step outside the selection. A non-finite sum
        # of finite entries (overflow) is told apart by the full check.
        if (
            tensor.is_floating_point()
            and not bool(torch.isfinite(tensor.detach().sum()))
            and not bool(torch.isfinite(tensor.detach()).all())
        ):
            raise UnsupportedModelError(
                f"{what}: tensor {name!r} of the model holds NaN or inf values (did training diverge?); "
                "prune a model with finite weights: lower the learning rate or restore a good checkpoint"
            )


def check_finite(state: Mapping[str, Any], source: str) -> None:
    """Refuse a state_dict holding NaN or infinite values, so such a model is never trained or pruned silently.

    Args:
        state: ``{key: tensor}`` (non-tensor and non-floating entries are skipped).
        source: where the tensors come from (a file path), for the message.

    Raises:
        CheckpointError: one line naming the first non-finite tensor and the fix.
    """
    for key, value in state.items():
        if (
            isinstance(value, Tensor)
            and value.is_floating_point()
            and not value.is_meta
            and not bool(torch.isfinite(value).all())
        ):
            kind = "NaN" if bool(torch.isnan(value).any()) else "infinite"
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {kind} values; the file is corrupted or was saved after "
                "training diverged — re-create it from a run with finite weights, or re-download it"
            )


def plain_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The keys of :func:`plain_state_dict` and their shapes, without copying any tensor.

    Parametrized tensors appear under their ordinary key with their effective shape; reparametrization
    internals (see :func:`plain_state_dict`) appear under their own keys.
    """
    return {key: tuple(value.shape) for key, value in _plain_entries(model)}


def state_problems(model: nn.Module, state: Mapping[str, Tensor], strict: bool = True) -> list[str]:
    """What keeps ``state`` (a plain state_dict) from loading into ``model``, in the model's key order.

    A tensor whose shape differs is always a problem; with ``strict``, so are a tensor the model has but
    ``state`` lacks (reparametrization internals and ``num_batches_tracked`` may be absent) and a key the
    model does not have (internals of a reparametrization the model lacks are ignored, see
    :func:`load_plain_state_dict`).
    """
    expected = plain_shapes(model)
    problems: list[str] = []
    for key, shape in expected.items():
        if key in state:
            got = tuple(state[key].shape) if isinstance(state[key], Tensor) else None
            if got != shape:
                problems.append(f"tensor {key!r} has shape {got} in the file but {shape} in the model")
        elif strict and ".parametrizations." not in f".{key}" and not key.endswith("num_batches_tracked"):
            problems.append(f"tensor {key!r} of the model is missing from the file")
    if strict:
        problems += [
            f"unexpected tensor {key!r} in the file"
            for key, value in state.items()
            if key not in expected and isinstance(value, Tensor) and ".parametrizations." not in f".{key}"
        ]
    return problems


@torch.no_grad()
def load_plain_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], strict: bool = True, *, source: str = "state_dict"
) -> None:
    """Load a plain state_dict (see :func:`plain_state_dict`) into a possibly masked model.

    Values for masked tensors go into their originals and are then multiplied by the current mask, so
    the mask keeps winning over whatever the file holds. Everything is checked before anything is copied
    (:func:`state_problems`, :func:`check_finite`), so a refused state leaves the model untouched.

    Args:
        model: the model to load into (in place).
        state: the plain state_dict.
        strict: also refuse missing and unexpected tensors (shape mismatches are always refused).
        source: where ``state`` comes from (a checkpoint path), for the messages.

    Raises:
        CheckpointError: one line naming the first mismatching tensor (missing, unexpected, wrong shape)
            or the first tensor holding NaN/inf, and the fix.
    """
    problems = state_problems(model, state, strict)
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__} ({len(problems)} problem(s)); first: {problems[0]}; "
            f"{_MISMATCH_FIX}"
        )
    check_finite(state, source)
    modules = dict(model.named_modules())
    rest: dict[str, Tensor] = {}
    for key, value in state.items():
        module_name, name = _split(key)
        module = modules.get(module_name)
        if module is not None and parametrize.is_parametrized(module, name):
            orig = original(module, name)
            # A reparametrization (filter basis) turns the plain value into what its original stores;
            # the internals, when the state has them, are loaded afterwards and win.
            for p in reversed(list(module.parametrizations[name])):  # type: ignore[index]
                from_plain = getattr(p, "from_plain", None)
                if callable(from_plain):
                    value = from_plain(value)
            orig.copy_(value)
            mask = _mask_of(module, name)
            if mask is not None:
                orig.mul_(mask.mask.to(orig.dtype))
        else:
            rest[key] = value
    own = model.state_dict()
    # Reparametrization internals of a model that has them, loaded into one that does not (an
    # interspace checkpoint into a plain model): the effective value under the plain key suffices.
    rest = {k: v for k, v in rest.items() if ".parametrizations." not in f".{k}" or k in own}
    if not strict:
        rest = {k: v for k, v in rest.items() if k in own}
    # The per-module versions (state_dict()._metadata) do not survive a weights-only save; modules that
    # read them while loading (torchvision's MNASNet) get the freshly built model's own, the same code.
    loadable: Any = OrderedDict(rest)
    loadable._metadata = getattr(state, "_metadata", None) or getattr(own, "_metadata", None)
    model.load_state_dict(loadable, strict=False)
