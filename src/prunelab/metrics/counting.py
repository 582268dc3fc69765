"""Parameter, non-zero and multiply-accumulate counts of (possibly masked) models.

Conventions (the same for every method, so compression figures are comparable):

- **parameters** are all learnable tensors of the model — convolutions, linear layers, biases and
  batch-norm affine parameters — counted once each; a masked (parametrized) tensor counts by its
  *effective* value ``W₀ ⊙ M`` under its ordinary name, so its masked entries are zeros and the
  parametrization's internals (``original``, the mask buffer) are never counted twice. Buffers (BN
  running statistics) are not parameters.
- **dense MACs** are measured with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass:
  ``MACs = FLOPs / 2`` (the counter counts a multiply-add as two FLOPs, for convolutions and matrix
  products only — element-wise ops, BN and pooling are not counted).
- **effective MACs** scale each convolution / linear layer by the density of its weight (non-zeros /
  entries): ``effective = dense − Σ_layers MACs_layer × (1 − density_layer)``. This is the work a
  sparse kernel that skips zero weights would do; it is not a measured speed-up (see
  :func:`prunelab.metrics.measure_latency` for that).

Nothing here bakes masks or otherwise changes the model; the training/eval mode is restored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from prunelab.core.inputs import as_call, is_shape
from prunelab.core.modules import eval_mode

__all__ = [
    "WEIGHTED_LAYERS",
    "ParamCount",
    "channel_macs",
    "count_parameters",
    "dense_macs",
    "effective_macs",
    "effective_parameters",
    "layer_table",
]

#: Layer types listed by :func:`layer_table` and scaled by density in :func:`effective_macs`.
WEIGHTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class ParamCount(NamedTuple):
    """Parameter totals of a model; unpacks as ``total, nonzero = count_parameters(model)``.

    Attributes:
        total: number of parameter entries.
        nonzero: entries whose effective value is not zero.
    """

    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of zero entries, ``1 − nonzero / total`` (0 for an empty model)."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    @property
    def compression(self) -> float:
        """``total / nonzero`` (``inf`` when every entry is zero)."""
        return self.total / self.nonzero if self.nonzero else float("inf")


def _is_parameter_backed(module: nn.Module, name: str) -> bool:
    # A parametrization may sit on a buffer; only tensors whose originals are Parameters are parameters.
    plist = module.parametrizations[name]  # type: ignore[index]
    return any(isinstance(t, nn.Parameter) for _, t in plist.named_parameters(recurse=False))


def _stored_form(module: nn.Module, name: str) -> tuple[Any, Tensor] | None:
    """``(reparametrization, its masked input)`` when ``module.<name>`` is stored in another form.

    A parametrization with ``stored_tensors``/``cost`` (the interspace filter basis) is what a deployed
    model keeps instead of the weight, so it is what parameters and MACs are counted on. The masked input
    is the output of the parametrizations before it (the pruned coefficients ``Λ ⊙ M``).
    """
    plist = module.parametrizations[name]  # type: ignore[index]
    x = plist.original if hasattr(plist, "original") else None
    for p in plist:
        if callable(getattr(p, "stored_tensors", None)) and callable(getattr(p, "cost", None)):
            return (p, x.detach()) if x is not None else None
        if x is not None:
            x = p(x)
    return None


@torch.no_grad()
def effective_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(qualified name, effective tensor)`` for every parameter of ``model``, each once.

    Parametrized tensors are yielded under their plain name (``"features.0.weight"``) with their
    effective, masked value; the parametrization's own parameters are skipped. Shared parameters appear
    once. A reparametrized tensor (interspace filter basis) is yielded as what its compact form stores:
    the masked coefficients (``"<fqn>.coefficients"``) and the basis (``"<fqn>.basis"``).
    """
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        prefix = f"{module_name}." if module_name else ""
        for name in module.parametrizations:  # type: ignore[union-attr]
            if _is_parameter_backed(module, name):
                stored = _stored_form(module, name)
                if stored is not None:
                    for key, tensor in stored[0].stored_tensors(stored[1]).items():
                        yield f"{prefix}{name}.{key}", tensor
                    continue
                yield prefix + name, getattr(module, name)
    for name, param in model.named_parameters():
        if ".parametrizations." in f".{name}" or id(param) in seen:
            continue
        seen.add(id(param))
        yield name, param


def count_parameters(model: nn.Module) -> ParamCount:
    """Count all parameters of ``model`` and their non-zero entries (effective values, see module doc).

    Example:
        >>> total, nonzero = count_parameters(nn.Linear(3, 2))
        >>> total, nonzero > 0
        (8, True)
    """
    total = nonzero = 0
    for _, tensor in effective_parameters(model):
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return ParamCount(total, nonzero)


def _example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> Tensor:
    ref = next((t for t in model.parameters() if t.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    return torch.zeros((batch_size, *tuple(int(s) for s in input_shape)), device=device, dtype=dtype)


def _count_flops(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one eval-mode forward, and FLOPs per module qualified name."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Example inputs of any form (a tensor, a tuple, a dict) are used as given; a shape gives zeros.
    if is_shape(input_shape):
        args: tuple[Any, ...] = (_example_input(model, input_shape, batch_size),)
        kwargs: dict[str, Any] = {}
    else:
        args, kwargs = as_call(input_shape, model)
    # Compute parametrized weights once *before* counting: a reparametrization's weight reconstruction
    # (the interspace Λ Bᵀ product) is a training-time cost, not part of the network's forward.
    with eval_mode(model), torch.no_grad(), parametrize.cached():
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for name in module.parametrizations:  # type: ignore[union-attr]
                    getattr(module, name)
        with FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    # FlopCounterMode names modules "<RootClass>.<qualified name>"; strip the root to get plain names.
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == root:
            per_module[""] = int(sum(ops.values()))
        elif key.startswith(root + "."):
            per_module[key[len(root) + 1 :]] = int(sum(ops.values()))
    return int(counter.get_total_flops()), per_module


def dense_macs(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass of ``batch_size`` inputs of shape ``input_shape``.

    Measured by ``FlopCounterMode`` (``MACs = FLOPs // 2``) in eval mode without gradients; masks do not
    change it (that is :func:`effective_macs`).

    Args:
        model: the model (masked or not).
        input_shape: ``(C, H, W)`` of one input, without the batch dimension, or example inputs of any
            form (:mod:`prunelab.core.inputs`), used as given.
        batch_size: inputs per forward pass (for a shape).
    """
    total, _ = _count_flops(model, input_shape, batch_size)
    return total // 2


def channel_macs(model: nn.Module, groups: Sequence[Any], input_shape: Sequence[int]) -> dict[str, Tensor]:
    """MACs one forward (batch 1) spends on each channel of each channel group: what removing it saves.

    A layer's measured MACs are spread evenly over the indices of the dimension the group touches —
    its output channels for an ``"out"`` member, its input channels for an ``"in"`` member — and a
    group channel sums the shares of every member index it maps to. A layer is counted once per index
    even when it is both an ``"in"`` and an ``"out"`` member (a depthwise convolution). Layers with no
    measured MACs (normalisations, bare parameters) add nothing.

    Args:
        model: the model the groups were traced on.
        groups: its channel groups (:class:`prunelab.surgery.ChannelGroup`).
        input_shape: ``(C, H, W)`` of one input, or example inputs of any form.

    Returns:
        ``{group name: float64 tensor of size group.size}``.
    """
    _, per_module = _count_flops(model, input_shape, 1)
    modules = dict(model.named_modules())
    costs: dict[str, Tensor] = {}
    for group in groups:
        cost = torch.zeros(group.size, dtype=torch.float64)
        seen: set[tuple[str, int]] = set()
        for member in group.members:
            module = modules.get(member.name)
            macs = per_module.get(member.name, 0) / 2
            weight = getattr(module, "weight", None)
            if not macs or not isinstance(weight, Tensor) or weight.dim() < 2:
                continue
            if isinstance(module, nn.Linear):
                size = module.out_features if member.role == "out" else module.in_features
            elif member.role == "out":
                size = int(getattr(module, "out_channels", weight.shape[0]))
            else:
                size = int(getattr(module, "in_channels", weight.shape[1]))
            for channel, index in member.pairs:
                if (member.name, index) not in seen:
                    seen.add((member.name, index))
                    cost[channel] += macs / size
        costs[group.name] = cost
    return costs


def _layer_type(module: nn.Module) -> str:
    # parametrize swaps the class for a generated "ParametrizedConv2d" subclass; report the real layer.
    cls = type(module)
    if parametrize.is_parametrized(module) and len(cls.__mro__) > 1:
        cls = cls.__mro__[1]
    return cls.__name__


@torch.no_grad()
def _rows(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> tuple[int, list[dict[str, Any]]]:
    total_flops, per_module = _count_flops(model, input_shape, batch_size)
    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHTED_LAYERS):
            continue
        weight = module.weight  # effective (masked) value when parametrized
        params = weight.numel()
        nonzero = int(torch.count_nonzero(weight))
        density = nonzero / params if params else 0.0
        macs = per_module.get(name, 0) // 2
        row = {
            "name": name,
            "type": _layer_type(module),
            "shape": [int(s) for s in weight.shape],
            "params": params,
            "nonzero": nonzero,
            "sparsity": 1.0 - density,
            "macs_dense": macs,
            "macs_effective": round(macs * density),
        }
        stored = _stored_form(module, "weight") if parametrize.is_parametrized(module, "weight") else None
        if stored is not None:
            # Interspace: count the compact form (basis conv + sparse 1×1), not the dense weight.
            cost = stored[0].cost(stored[1], macs // max(params, 1))
            row.update(
                type=row["type"] + "(interspace)",
                params=cost["params"],
                nonzero=cost["nonzero"],
                sparsity=1.0 - cost["nonzero"] / cost["params"],
                macs_effective=cost["macs"],
            )
        rows.append(row)
    return total_flops // 2, rows


def layer_table(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> list[dict[str, Any]]:
    """One row per convolution / linear layer, in module order.

    Each row has ``name`` (qualified module name), ``type`` (class name), ``shape`` (weight shape),
    ``params`` (weight entries; biases are counted by :func:`count_parameters` only), ``nonzero`` (of the
    effective weight), ``sparsity`` (``1 − nonzero / params``), ``macs_dense`` (measured, per forward of
    ``batch_size`` inputs) and ``macs_effective`` (``macs_dense × density``, rounded).

    Args:
        model: the model (masked or not).
        input_shape: ``(C, H, W)`` of one input.
        batch_size: inputs per forward pass.
    """
    return _rows(model, input_shape, batch_size)[1]


def effective_macs(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> int:
    """Dense MACs minus the MACs of zero weights: ``dense − Σ_layers macs_layer × (1 − density_layer)``.

    Only convolution and linear layers are scaled; any other counted op stays dense.

    Args:
        model: the model (masked or not).
        input_shape: ``(C, H, W)`` of one input.
        batch_size: inputs per forward pass.
    """
    total, rows = _rows(model, input_shape, batch_size)
    # Subtract the table's rounded per-layer figures so the total always matches layers.csv exactly.
    return total - sum(row["macs_dense"] - row["macs_effective"] for row in rows)
