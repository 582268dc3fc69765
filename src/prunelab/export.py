"""Deployable files from a pruned network: ONNX, TorchScript or ``torch.export``, BatchNorm folded, verified.

:func:`export_model` turns any ``nn.Module`` (masked, compacted, reparametrized or plain) into one file
and proves it: the file is loaded back (ONNX Runtime for ONNX, ``torch.jit.load`` for TorchScript,
``torch.export.load`` for ``torch.export``), run on a seeded random batch and compared with the PyTorch
model it came from; only a file within the stated tolerance is written, atomically, to the path the
caller chose. Its latency is then measured on one thread, interleaved with the eager PyTorch model's
(:func:`prunelab.metrics.latency.interleaved_times`, the one timer of prunelab).
:func:`export_checkpoint` does the same for a run directory or a ``checkpoint.pt`` (rebuilt with
:func:`prunelab.checkpoint.build_from_checkpoint`, input shape from its architecture) and writes the report
JSON next to the file; ``prunelab export`` is its command line.

BatchNorm folding
-----------------
In eval mode a BatchNorm is a fixed per-channel affine map of its input,
``BN(z) = γ·(z − μ)/√(σ² + ε) + β`` (running mean μ, running variance σ², scale γ, shift β). When its input
is the output ``z = W∗x + b`` of one convolution (or linear layer) that nothing else reads, the two
compose into one convolution with, per output channel ``o`` and ``s_o = γ_o/√(σ²_o + ε)``::

    W'_o = W_o · s_o                    (every weight of output channel o scaled)
    b'_o = (b_o − μ_o) · s_o + β_o      (a bias is created when the convolution had none)

and the BatchNorm becomes ``nn.Identity``. The folded network computes the same function (up to float
rounding) with one layer less per pair: less memory traffic and one kernel less per pair in runtimes that
do not fuse BatchNorm themselves (eager PyTorch, TorchScript, ``torch.export`` programs), and a smaller
file without the BatchNorm tensors. Grouped and depthwise convolutions fold the same way (the scale is per
output channel); a transposed convolution's weight is ``(in, out/groups, k…)``, so its scale runs along the
second axis within each group; a ``Linear`` folds with a ``BatchNorm1d`` on its 2-D output.

Which pairs fold is decided on the model's own dataflow, not its module order: one forward pass under a
``TorchFunctionMode`` records every use of every convolution output; a BatchNorm folds when its input *is*
one convolution's output (the same tensor), that convolution and that BatchNorm run once, and no other
operation reads the tensor (shape queries excepted). A convolution output that also feeds a residual
branch, or a BatchNorm applied through an in-place ReLU, does not fold. Every fold is then checked: the
folded copy must equal the unfolded model on the verification batch within the tolerance; when it does not
(a convolution subclass that standardizes its weights, say), each pair is checked alone and only the pairs
that keep the outputs fold.

A BatchNorm subclass with its own ``forward`` keeps whatever that ``forward`` does besides normalizing.
timm's ``BatchNormAct2d`` normalizes, then applies its ``drop`` and ``act`` children: when the module's
children, run in order on the normalized input, reproduce its output (checked on the input it received),
it is replaced by them (``nn.Sequential(drop, act)``), so the activation stays and the normalization
goes. Otherwise the module is kept and its normalization made the exact identity after the fold
(γ = 1, β = 0, μ = 0, σ² = 1, ε = 0).

Masks and other parametrizations (:mod:`prunelab.core.masking`, interspace bases) are baked into plain
weights on a deep copy first, so the file holds the effective weights; the caller's model is never
modified.

The ONNX bytes come from prunelab's one ONNX export, :func:`prunelab.metrics.speed.onnx_bytes` (with the
``torch.export``-based exporter; a layer that offers an ``export_form()``, such as the option-A ResNet
shortcut, is exported as that form: :func:`prunelab.metrics.speed.with_export_forms`), and are loaded in
:func:`prunelab.metrics.speed.onnx_runtime_session`; both are re-exported here. The latency comparison of the structured methods uses the same two functions.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import io
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from prunelab._io import atomic_write_bytes, atomic_write_json
from prunelab.core import masking
from prunelab.core.inputs import (
    accepted_diff,
    as_call,
    is_shape,
    max_abs_diff,
    output_scale,
    output_tensors,
    random_like,
)
from prunelab.core.modules import copy_model
from prunelab.errors import ConfigError, PrunelabError, UnsupportedModelError
from prunelab.metrics.latency import interleaved_times
from prunelab.metrics.speed import (
    ONNX_EXPORTERS,
    _dynamic_shapes,
    _quiet,
    onnx_bytes,
    onnx_runtime_session,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ONNX_EXPORTERS",
    "SUFFIXES",
    "ExportReport",
    "ExportVerificationError",
    "FoldReport",
    "accepted_diff",
    "check_format",
    "default_export_path",
    "export_checkpoint",
    "export_model",
    "fold_batchnorm",
    "onnx_bytes",
    "onnx_runtime_session",
    "report_path_for",
]

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "torch-export")
"""The export formats, as ``format=`` and ``--format`` name them."""

SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "torch-export": ".pt2"}
"""File suffix of each format (``model.onnx``, ``model.torchscript.pt``, ``model.pt2``)."""

DEFAULT_TOLERANCE = 1e-4
"""Accepted difference per unit of output: outputs pass when their max |diff| from the PyTorch model's is
at most ``tolerance × max(1, largest |output|)`` (:func:`accepted_diff`) — absolute for outputs within ±1,
relative above, because float32 rounding grows with the magnitude of what is rounded."""

#: Seeds of the three input batches: verification, second batch size, the exporter's example.
_SEED_VERIFY, _SEED_SECOND, _SEED_EXAMPLE = 0, 1, 2

ExampleInputs = Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]


class ExportVerificationError(PrunelabError):
    """The exported file's outputs differ from the PyTorch model's by more than the tolerance."""


# --------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` folded.

    Attributes:
        folded: ``(conv, batchnorm)`` module names of the folded pairs, in module order.
        skipped: BatchNorm name → why it was not folded.
        subclasses: folded BatchNorm subclass with its own ``forward`` → what took its place.
        max_abs_diff: largest absolute output difference of the folded copy from the model on the
            verification batch (0.0 when nothing was folded).
    """

    folded: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    subclasses: dict[str, str] = field(default_factory=dict)
    max_abs_diff: float = 0.0

    @property
    def count(self) -> int:
        """Number of folded BatchNorm layers."""
        return len(self.folded)


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and measured.

    Attributes:
        format: ``"onnx"``, ``"torchscript"`` or ``"torch-export"``.
        path: the written file.
        bytes: its size on disk.
        pytorch_bytes: size of the model's plain state_dict saved with ``torch.save`` (for comparison).
        folded_bn: number of BatchNorm layers folded into their convolutions.
        folded: the folded ``(conv, batchnorm)`` pairs.
        skipped_bn: BatchNorm name → why it was not folded.
        bn_subclasses: folded BatchNorm subclass (timm's ``BatchNormAct2d``) → what took its place.
        fold_max_abs_diff: largest absolute difference of the folded PyTorch copy from the model.
        max_abs_diff: largest absolute difference of the exported file's outputs from the PyTorch model's
            (unfolded, masks applied), over every output tensor and every verified batch size.
        tolerance: the tolerance asked for (see :data:`DEFAULT_TOLERANCE`).
        accepted_diff: the largest ``max_abs_diff`` it accepted: ``tolerance × max(1, output_scale)``.
        output_scale: largest absolute value of the PyTorch model's outputs on the verification batches.
        output_spread: largest difference between two samples' outputs within a verification batch
            (``None`` when every verified batch has one sample). A spread at or below ``accepted_diff`` means
            the outputs barely depend on the input (a collapsed, e.g. untrained, network), and the check
            proves little; :meth:`summary_line` then says so.
        verified: ``max_abs_diff <= accepted_diff`` (always true for a written file).
        batch: batch size of the verification and latency inputs.
        batch_sizes_verified: every batch size the file was run and compared at.
        dynamic_batch: whether the file accepts other batch sizes (checked at a second one).
        input_shapes: shape of each input of the verification batch.
        latency: ``None`` when not measured, else medians (ms) at ``batch`` on one thread, interleaved:
            ``exported_ms`` (the loaded file), ``pytorch_ms`` (the eager model as given),
            ``pytorch_folded_ms`` (eager, BatchNorm folded), ``speedup`` (pytorch / exported),
            10th/90th percentiles, ``repeats``, ``warmup``, ``threads``, ``runtime``.
        versions: torch and, for ONNX, onnx / onnxruntime versions.
    """

    format: str
    path: str
    bytes: int
    pytorch_bytes: int
    folded_bn: int
    folded: list[tuple[str, str]]
    skipped_bn: dict[str, str]
    bn_subclasses: dict[str, str]
    fold_max_abs_diff: float
    max_abs_diff: float
    tolerance: float
    accepted_diff: float
    output_scale: float
    output_spread: float | None
    verified: bool
    batch: int | None
    batch_sizes_verified: list[int]
    dynamic_batch: bool
    input_shapes: list[list[int]]
    latency: dict[str, Any] | None
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-friendly data (pairs as ``[conv, bn]`` lists)."""
        out = asdict(self)
        out["folded"] = [list(pair) for pair in self.folded]
        return out

    def summary_line(self) -> str:
        """One line: format, file, size, fold count, verified difference and latency."""
        sizes = "/".join(str(b) for b in self.batch_sizes_verified)
        where = f"at batch {sizes}" if sizes else "at the example shapes"
        line = (
            f"{self.format}: {self.path} ({_size(self.bytes)}, PyTorch state {_size(self.pytorch_bytes)}), "
            f"{self.folded_bn} BN folded, verified max |diff| {self.max_abs_diff:.2e} <= {self.accepted_diff:.2g} "
            f"{where}{'' if self.dynamic_batch or not sizes else ' (fixed batch)'}"
        )
        if self.output_spread is not None and self.output_spread <= self.accepted_diff:
            line += (
                f" (but the outputs barely depend on the input: spread {self.output_spread:.1e} over the "
                "batch, so the check proves little)"
            )
        if self.latency:
            lat = self.latency
            line += (
                f"; latency {lat['exported_ms']:.3f} ms vs PyTorch {lat['pytorch_ms']:.3f} ms "
                f"({lat['speedup']:.2f}x, batch {self.batch}, {lat['threads']} thread)"
            )
        return line


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# --------------------------------------------------------------------------------------------------
# inputs and outputs
# --------------------------------------------------------------------------------------------------


def check_format(format: str) -> str:
    """``format`` if it is one of :data:`FORMATS`, else a one-line :class:`ConfigError` naming the choices."""
    if format in FORMATS:
        return format
    close = difflib.get_close_matches(str(format), FORMATS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"format: unknown export format {format!r}; {hint}choose one of {', '.join(FORMATS)}")


def _split_inputs(example_inputs: Any) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """``(args, kwargs)`` of a tensor, a tuple of tensors or a dict of keyword tensors (tensors only)."""
    try:
        args, kwargs = as_call(example_inputs) if not is_shape(example_inputs) else ((), {})
    except ConfigError:
        args, kwargs = (), {}
    if (args or kwargs) and all(isinstance(t, Tensor) for t in [*args, *kwargs.values()]):
        return tuple(args), dict(kwargs)
    raise ConfigError(
        f"example_inputs: got {type(example_inputs).__name__}; pass a tensor, a tuple of tensors "
        "(model(*inputs)) or a dict of keyword tensors (model(**inputs))"
    )


def _input_list(args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]) -> list[Tensor]:
    return [*args, *kwargs.values()]


def _batch_of(args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]) -> int | None:
    """The common leading size of every input, or ``None`` when they have none in common."""
    sizes = {int(t.shape[0]) if t.dim() else None for t in _input_list(args, kwargs)}
    return sizes.pop() if len(sizes) == 1 else None


def _random_inputs(
    args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor], batch: int | None, seed: int
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """Seeded random inputs of the shapes and dtypes of ``args``/``kwargs``, leading size ``batch``."""
    new_args, new_kwargs = random_like((tuple(args), dict(kwargs)), seed=seed, size=batch)
    return tuple(new_args), dict(new_kwargs)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRODUCERS = (*_CONVS, *_TRANSPOSED, nn.Linear)

#: Tensor methods and properties that read only metadata: a shape query is not a use of the values.
_METADATA = {
    "dim", "size", "numel", "ndimension", "nelement", "stride", "is_contiguous", "is_floating_point",
    "element_size", "get_device", "__len__", "shape", "ndim", "dtype", "device", "layout", "is_cuda",
    "requires_grad", "is_sparse", "is_quantized", "is_meta", "is_complex", "data_ptr", "grad_fn",
}  # fmt: skip


def _func_name(func: Any) -> str:
    owner = getattr(func, "__self__", None)  # a property getter: Tensor.shape.__get__
    if getattr(func, "__name__", "") == "__get__" and owner is not None:
        return getattr(owner, "__name__", "")
    return getattr(func, "__name__", "")


def _tensors_in(value: Any, out: list[Tensor]) -> list[Tensor]:
    if isinstance(value, Tensor):
        out.append(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _tensors_in(v, out)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _tensors_in(v, out)
    return out


class _UseRecorder(TorchFunctionMode):
    """Records, for every watched tensor passed to a torch function, the module stack at each use."""

    def __init__(self, stack: list[str], watched: Mapping[int, str]) -> None:
        super().__init__()
        self.stack = stack
        self.watched = watched
        self.uses: dict[int, list[tuple[str, ...]]] = defaultdict(list)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        """Record the uses of watched tensors among the arguments, then call ``func``."""
        kwargs = kwargs or {}
        if _func_name(func) not in _METADATA:
            where = tuple(self.stack)
            for t in _tensors_in(args, []) + _tensors_in(kwargs, []):
                # Only tensors produced (and kept alive) already: the id of a freed temporary is reused.
                if id(t) in self.watched:
                    self.uses[id(t)].append(where)
        return func(*args, **kwargs)


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _find_pairs(
    model: nn.Module, args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]
) -> tuple[list[tuple[str, str]], dict[str, str], dict[str, Tensor]]:
    """Foldable ``(producer, batchnorm)`` pairs found from one traced forward pass, why the other
    BatchNorms do not fold, and the input each BatchNorm received."""
    modules = dict(model.named_modules())
    bns = {n for n, m in modules.items() if _is_bn(m)}
    skipped: dict[str, str] = {}
    if not bns:
        return [], skipped, {}
    stack: list[str] = []
    calls: dict[str, int] = defaultdict(int)
    produced: dict[int, str] = {}  # id(output tensor) -> producer name
    bn_input: dict[str, int] = {}  # batchnorm name -> id(its input)
    bn_tensor: dict[str, Tensor] = {}
    keep_alive: list[Any] = []  # ids are only unique while the tensors live
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
            stack.append(name)
            calls[name] += 1
            if name in bns and inputs and isinstance(inputs[0], Tensor):
                bn_input[name] = id(inputs[0])
                bn_tensor[name] = inputs[0]

        return hook

    def post(name: str, producer: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
            if stack and stack[-1] == name:
                stack.pop()
            # A Linear's BatchNorm1d normalizes axis 1: only a 2-D output has its features there.
            if (
                producer
                and isinstance(output, Tensor)
                and (output.dim() == 2 or not isinstance(_m, nn.Linear))
            ):
                produced[id(output)] = name
                keep_alive.append(output)

        return hook

    recorder = _UseRecorder(stack, produced)
    try:
        for name, m in modules.items():
            if not name:
                continue
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name, isinstance(m, _PRODUCERS))))
        with torch.no_grad(), recorder:
            model(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a model the recorder cannot run is exported unfolded
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        return [], {n: f"dataflow could not be traced ({first})" for n in sorted(bns)}, {}
    finally:
        for h in handles:
            h.remove()

    pairs: list[tuple[str, str]] = []
    for bn_name in [n for n in modules if n in bns]:
        bn = modules[bn_name]
        reason = None
        source = produced.get(bn_input.get(bn_name, -1))
        if calls.get(bn_name, 0) == 0:
            reason = "not run by the forward pass"
        elif calls[bn_name] > 1:
            reason = f"applied {calls[bn_name]} times per forward pass"
        elif bn.running_mean is None or bn.running_var is None:
            reason = "no running statistics (track_running_stats=False): it normalizes with batch statistics"
        elif source is None:
            reason = "its input is not the output of a convolution (or of a linear layer, 2-D)"
        elif calls[source] > 1:
            reason = f"its convolution {source} runs {calls[source]} times per forward pass"
        elif any(bn_name not in where for where in recorder.uses[bn_input[bn_name]]):
            reason = f"the output of {source} is also read by another operation"
        else:
            reason = _shape_mismatch(modules[source], bn, source)
        if reason is None:
            pairs.append((source, bn_name))
        else:
            skipped[bn_name] = reason
    return pairs, skipped, bn_tensor


def _shape_mismatch(producer: nn.Module, bn: nn.Module, name: str) -> str | None:
    out = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if out != bn.num_features:
        return f"{name} has {out} outputs, the BatchNorm {bn.num_features} features"
    if isinstance(producer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
        return f"{name} is a linear layer followed by a {type(bn).__name__}"
    if not producer.weight.is_floating_point():
        return f"{name} has non-floating-point weights"
    return None


@torch.no_grad()
def _fold_pair(producer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``producer`` (new parameters; see the module docstring for the equations)."""
    w = producer.weight.detach().double()
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = producer.bias.detach().double() if producer.bias is not None else torch.zeros_like(mean)
    if isinstance(producer, _TRANSPOSED):
        groups = producer.groups
        grouped = w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
        s = scale.reshape(groups, 1, w.shape[1], *([1] * (w.dim() - 2)))
        new_w = (grouped * s).reshape(w.shape)
    else:
        new_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    new_b = (b - mean) * scale + beta
    dtype, device = producer.weight.dtype, producer.weight.device
    producer.weight = nn.Parameter(new_w.to(dtype), requires_grad=False)
    producer.bias = nn.Parameter(new_b.to(dtype=dtype, device=device), requires_grad=False)


@torch.no_grad()
def _neutralize(bn: nn.Module) -> None:
    """Make a BatchNorm's normalization the exact identity, keeping the rest of its ``forward``."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.eps = 0.0
    if bn.weight is not None:
        bn.weight.fill_(1.0)
    if bn.bias is not None:
        bn.bias.zero_()


def _has_own_forward(bn: nn.Module) -> bool:
    return type(bn).forward is not nn.modules.batchnorm._BatchNorm.forward


@torch.no_grad()
def _after_norm(bn: nn.Module, z: Tensor, tolerance: float) -> nn.Module | None:
    """For a BatchNorm subclass with its own ``forward``: its child modules in order, as one module,
    when they are exactly what it does after normalizing (timm's ``BatchNormAct2d``: ``drop``, ``act``),
    checked on its input ``z``; else ``None`` (the module is kept, its normalization neutralized)."""
    children = nn.Sequential(*bn.children()).eval()
    normalized = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    own = output_tensors(bn(z))
    try:
        diff, _ = max_abs_diff(own, output_tensors(children(normalized)))
    except Exception:  # noqa: BLE001 - the children do not even run on the normalized tensor
        return None
    return children if diff <= accepted_diff(tolerance, own) else None


def _replace(model: nn.Module, target: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``target`` is registered in ``model``."""
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is target:
                parent._modules[child_name] = new


def _apply_folds(
    model: nn.Module, pairs: Sequence[tuple[str, str]], after: Mapping[str, nn.Module | None]
) -> nn.Module:
    """A deep copy of ``model`` with ``pairs`` folded; ``after[bn]`` replaces a BatchNorm subclass."""
    folded = copy.deepcopy({"model": model, "after": dict(after)})  # one copy: shared submodules stay shared
    folded, after = folded["model"], folded["after"]
    modules = dict(folded.named_modules())
    for producer_name, bn_name in pairs:
        bn = modules[bn_name]
        _fold_pair(modules[producer_name], bn)
        if not _has_own_forward(bn):
            _replace(folded, bn, nn.Identity())
        elif after.get(bn_name) is not None:  # its activation (and dropout), without the normalization
            _replace(folded, bn, after[bn_name])
        else:  # its forward does more than normalizing: keep it, as an identity normalization
            _neutralize(bn)
    return folded


def _bake(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parametrization baked into plain weights."""
    plain = copy_model(model).eval()
    masking.bake(plain)  # prunelab masks (and anything stacked on them)
    for module in list(plain.modules()):
        if parametrize.is_parametrized(module):
            # A deep copy shares the generated Parametrized<Cls> class with the original, and removing a
            # parametrization edits that class: give the copy its own class first (as masking.bake does).
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(module.parametrizations.keys()):  # type: ignore[union-attr]
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain


def _run(model: nn.Module, args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]) -> list[Tensor]:
    with torch.no_grad():
        return output_tensors(model(*args, **kwargs))


def fold_batchnorm(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[nn.Module, FoldReport]:
    """A copy of ``model`` in eval mode with its masks baked and every foldable BatchNorm folded.

    The pairs are found and checked as the module docstring describes: on ``example_inputs`` (a tensor,
    a tuple of tensors or a dict of keyword tensors) the folded copy must equal ``model`` (in eval mode)
    within ``tolerance`` (:func:`accepted_diff`); a pair that changes the outputs on its own is not folded.

    Returns:
        ``(folded copy, report)``; ``model`` itself is not modified.
    """
    args, kwargs = _split_inputs(example_inputs)
    reference = _run(copy_model(model).eval(), args, kwargs)
    return _fold(model, args, kwargs, reference, tolerance)


def _fold(
    model: nn.Module,
    args: tuple[Tensor, ...],
    kwargs: Mapping[str, Tensor],
    reference: Sequence[Tensor],
    tolerance: float,
) -> tuple[nn.Module, FoldReport]:
    """:func:`fold_batchnorm` given the model's outputs ``reference`` on ``args``/``kwargs``."""
    plain = _bake(model)
    limit = accepted_diff(tolerance, reference)
    pairs, skipped, inputs = _find_pairs(plain, args, kwargs)
    report = FoldReport(skipped=skipped)
    if not pairs:
        return plain, report
    modules = dict(plain.named_modules())
    after = {
        bn: _after_norm(modules[bn], inputs[bn], tolerance)
        for _, bn in pairs
        if _has_own_forward(modules[bn])
    }
    folded = _apply_folds(plain, pairs, after)
    diff, _ = max_abs_diff(reference, _run(folded, args, kwargs))
    if not diff <= limit:
        # Some pair changes the function (a conv subclass transforming its weights, say): keep only the
        # pairs that preserve the outputs on their own, then check them together.
        kept = []
        for pair in pairs:
            alone, _ = max_abs_diff(reference, _run(_apply_folds(plain, [pair], after), args, kwargs))
            if alone <= limit:
                kept.append(pair)
            else:
                report.skipped[pair[1]] = f"folding into {pair[0]} changes the outputs by {alone:.2e}"
        pairs = kept
        folded = _apply_folds(plain, pairs, after) if pairs else plain
        diff, _ = max_abs_diff(reference, _run(folded, args, kwargs)) if pairs else (0.0, "")
        if not diff <= limit:
            for _, bn_name in pairs:
                report.skipped[bn_name] = f"the folds together change the outputs by {diff:.2e}"
            pairs, folded, diff = [], plain, 0.0
    report.folded = list(pairs)
    for _, bn in pairs:
        if bn in after:
            kids = after[bn]
            report.subclasses[bn] = (
                f"{type(modules[bn]).__name__} replaced by its children "
                f"({', '.join(type(c).__name__ for c in kids)})"
                if kids is not None
                else f"{type(modules[bn]).__name__} kept, its normalization made the identity"
            )
    report.max_abs_diff = float(diff)
    return folded, report


# --------------------------------------------------------------------------------------------------
# exporters and loaders
# --------------------------------------------------------------------------------------------------


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _export_bytes(
    fmt: str, model: nn.Module, args: tuple[Tensor, ...], kwargs: dict[str, Tensor], dynamic: bool
) -> bytes:
    """The exported file's bytes (nothing is written to disk)."""
    if fmt == "onnx":
        return onnx_bytes(model, args, kwargs, dynamic=dynamic, exporter="dynamo")
    shapes = _dynamic_shapes(model, args, kwargs) if dynamic else None
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        if fmt == "torchscript":
            if kwargs:
                traced = torch.jit.trace(model, example_kwarg_inputs=kwargs, strict=False, check_trace=False)
            else:
                traced = torch.jit.trace(model, args, strict=False, check_trace=False)
            torch.jit.save(traced, buffer)
        else:
            program = torch.export.export(model, args, kwargs or None, dynamic_shapes=shapes, strict=False)
            torch.export.save(program, buffer)
    return buffer.getvalue()


Runner = Callable[[tuple[Tensor, ...], Mapping[str, Tensor]], list[Tensor]]


def _load(fmt: str, data: bytes, model: nn.Module) -> tuple[Runner, Callable[[tuple, Mapping], Callable]]:
    """``(run, bind)`` for an exported file's bytes: ``run(args, kwargs)`` returns its output tensors,
    ``bind(args, kwargs)`` a zero-argument call for the timer (one thread)."""
    if fmt == "onnx":
        session = onnx_runtime_session(data, threads=1)
        names = [i.name for i in session.get_inputs()]
        try:
            signature: inspect.Signature | None = inspect.signature(model.forward)
        except (TypeError, ValueError):
            signature = None

        def feed(args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
            by_name: dict[str, Tensor] = dict(kwargs)
            if signature is not None:
                with contextlib.suppress(TypeError):
                    by_name = dict(signature.bind(*args, **kwargs).arguments)
            if all(n in by_name and isinstance(by_name[n], Tensor) for n in names):
                return {n: by_name[n].numpy() for n in names}
            return {n: t.numpy() for n, t in zip(names, _input_list(args, kwargs), strict=False)}

        def run(args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]) -> list[Tensor]:
            return [torch.from_numpy(np.asarray(o)) for o in session.run(None, feed(args, kwargs))]

        def bind(args: tuple, kwargs: Mapping) -> Callable[[], object]:
            inputs = feed(args, kwargs)
            return lambda: session.run(None, inputs)

        return run, bind
    with _quiet():
        if fmt == "torchscript":
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        else:
            module = torch.export.load(io.BytesIO(data)).module()

    def run_torch(args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]) -> list[Tensor]:
        with torch.no_grad():
            return output_tensors(module(*args, **kwargs))

    def bind_torch(args: tuple, kwargs: Mapping) -> Callable[[], object]:
        return lambda: module(*args, **kwargs)

    return run_torch, bind_torch


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------


def _state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(masking.plain_state_dict(model), buffer)
    return buffer.tell()


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause (the ONNX exporter wraps torch.export's error), no colours."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def export_model(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: str | Path,
    format: str = "onnx",
    *,
    fold_bn: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    batch: int | None = None,
    latency: bool = True,
    warmup: int = 10,
    repeats: int = 30,
) -> ExportReport:
    """Export ``model`` to one deployable file at ``path``, verified against the PyTorch model.

    The model is copied, its masks and parametrizations baked into plain weights and (with ``fold_bn``)
    its BatchNorms folded into their convolutions (:func:`fold_batchnorm`); the copy is exported with an
    automatic-dynamic batch axis where the exporter allows it, loaded back from the exported bytes and run
    on a seeded random batch of the example inputs' shapes at batch size ``batch`` and, when the file
    accepts other sizes, at a second one. Only when every output tensor is within ``tolerance`` (scaled by
    the outputs' magnitude when it exceeds 1, :func:`accepted_diff`) of the PyTorch model's (``model`` in
    eval mode, unfolded, masks applied) is the file written, atomically; otherwise nothing is written to
    ``path``.

    Args:
        model: any ``nn.Module`` on any device; not modified (its training mode included). The file is
            made from a CPU copy, and verified and timed on the CPU.
        example_inputs: a tensor, a tuple of tensors (``model(*inputs)``) or a dict of keyword tensors
            (``model(**inputs)``); their shapes and dtypes, not their values, are used.
        path: the file to write (folders are created).
        format: ``"onnx"`` (ONNX Runtime verifies and times it; needs ``prunelab[onnx]``),
            ``"torchscript"`` (traced) or ``"torch-export"`` (a ``.pt2`` ExportedProgram).
        fold_bn: fold BatchNorm layers into their convolutions first.
        tolerance: the accepted difference per unit of output (:data:`DEFAULT_TOLERANCE`).
        batch: batch size of the verification and latency inputs (default: the example inputs').
        latency: measure the loaded file and the eager model, interleaved, on one thread.
        warmup: untimed rounds before the latency measurement.
        repeats: timed rounds.

    Returns:
        The :class:`ExportReport`.

    Raises:
        ConfigError: bad format, inputs, batch or tolerance; ONNX without onnxruntime installed.
        UnsupportedModelError: the exporter cannot export the model.
        ExportVerificationError: the file's outputs differ from the model's by more than ``tolerance``.
    """
    fmt = check_format(format)
    if not tolerance >= 0:
        raise ConfigError(f"tolerance: must be >= 0 (got {tolerance})")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"batch: must be a positive integer (got {batch!r})")
    if latency and (warmup < 0 or repeats < 1):
        raise ConfigError(f"latency: need warmup >= 0 and repeats >= 1 (got {warmup}, {repeats})")
    if fmt == "onnx" and not _onnx_available():
        raise ConfigError(
            "format onnx needs onnx, onnxscript and onnxruntime; pip install 'prunelab[onnx]' "
            "(or export with --format torchscript / torch-export)"
        )
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory; pass the file to write, e.g. {path / ('model' + SUFFIXES[fmt])}"
        )
    args, kwargs = _split_inputs(example_inputs)
    args, kwargs = tuple(t.cpu() for t in args), {k: t.cpu() for k, t in kwargs.items()}
    own_batch = _batch_of(args, kwargs)
    if batch is not None and own_batch is None:
        raise ConfigError(
            "batch: the example inputs have no common leading (batch) axis; leave batch unset to verify "
            "at their own shapes"
        )
    batch = batch if batch is not None else own_batch
    example_batch = max(2, batch) if batch is not None else None  # size 1 would be specialized
    verify_args, verify_kwargs = _random_inputs(args, kwargs, batch, _SEED_VERIFY)

    # The reference: the model as given (masks applied), in eval mode, on a private CPU copy.
    source = copy_model(model).cpu().eval()
    try:
        reference = _run(source, verify_args, verify_kwargs)
    except Exception as exc:  # noqa: BLE001 - the model's own error, on inputs the caller described
        shapes = [list(t.shape) for t in _input_list(verify_args, verify_kwargs)]
        raise UnsupportedModelError(
            f"{type(model).__name__} fails on a seeded random batch of shapes {shapes} ({_first_line(exc)}); "
            "pass example inputs (and a batch size) the model accepts"
        ) from None
    if fold_bn:
        exported_model, folds = _fold(source, verify_args, verify_kwargs, reference, tolerance)
    else:
        exported_model, folds = _bake(source), FoldReport()

    data, run, bind, dynamic, first = _export_and_load(
        fmt, exported_model, args, kwargs, batch, example_batch
    )
    checks = [(batch, verify_args, verify_kwargs, reference)]
    if dynamic:
        second = example_batch + 1
        s_args, s_kwargs = _random_inputs(args, kwargs, second, _SEED_SECOND)
        try:
            checks.append((second, s_args, s_kwargs, _run(source, s_args, s_kwargs)))
        except Exception:  # noqa: BLE001 - the model itself runs at one batch size only
            dynamic = False
    worst, spread = 0.0, None
    expected_all = [t for *_, expected in checks for t in expected]
    limit = accepted_diff(tolerance, expected_all)
    verified_sizes: list[int] = []
    for size, c_args, c_kwargs, expected in checks:
        try:
            got = first if size == batch and first is not None else run(c_args, c_kwargs)
        except Exception as exc:  # noqa: BLE001 - a runtime error of the exported file
            if size != batch:  # the file refuses another batch size: a fixed-batch file, not a wrong one
                dynamic = False
                continue
            raise ExportVerificationError(
                f"the exported {fmt} file fails to run on the verification batch ({_first_line(exc)}); "
                f"nothing was written to {path} — try another format"
            ) from None
        diff, where = max_abs_diff(expected, got)
        if not diff <= limit:
            raise ExportVerificationError(
                f"the exported {fmt} file differs from the PyTorch model: max |diff| {diff:.3e} > {limit:.3g} "
                f"(tolerance {tolerance:g} × output scale) ({where}, batch {size}); nothing was written to "
                f"{path} — "
                + (
                    "a trace freezes Python control flow and values read from tensors; "
                    if fmt == "torchscript"
                    else ""
                )
                + "try another format or raise the tolerance"
            )
        worst = max(worst, diff)
        values = [t.detach().double() for t in expected if t.numel()]
        if size is not None and size > 1:
            spread = max([spread or 0.0, *(float((t - t[:1]).abs().max()) for t in values if t.dim())])
        if size is not None:
            verified_sizes.append(size)

    timing = None
    if latency:
        timing = _latency(source, exported_model, bind, verify_args, verify_kwargs, warmup, repeats)
        timing["runtime"] = {"onnx": "onnxruntime CPUExecutionProvider", "torchscript": "torch.jit.load",
                             "torch-export": "torch.export.load(...).module()"}[fmt]  # fmt: skip
    atomic_write_bytes(path, data)
    return ExportReport(
        format=fmt,
        path=str(path),
        bytes=path.stat().st_size,
        pytorch_bytes=_state_bytes(source),
        folded_bn=folds.count,
        folded=list(folds.folded),
        skipped_bn=dict(folds.skipped),
        bn_subclasses=dict(folds.subclasses),
        fold_max_abs_diff=folds.max_abs_diff,
        max_abs_diff=worst,
        output_scale=output_scale(expected_all),
        output_spread=spread,
        tolerance=float(tolerance),
        accepted_diff=limit,
        verified=True,
        batch=batch,
        batch_sizes_verified=verified_sizes,
        dynamic_batch=dynamic,
        input_shapes=[list(t.shape) for t in _input_list(verify_args, verify_kwargs)],
        latency=timing,
        versions=_versions(fmt),
    )


def _export_and_load(
    fmt: str,
    model: nn.Module,
    args: tuple[Tensor, ...],
    kwargs: dict[str, Tensor],
    batch: int | None,
    example_batch: int | None,
) -> tuple[bytes, Runner, Callable[[tuple, Mapping], Callable], bool, list[Tensor] | None]:
    """Export with an automatic-dynamic batch axis, else at the fixed size ``batch``.

    Returns the file's bytes, the loaded file's runner and binder, whether the batch axis may be dynamic,
    and the file's outputs on the verification batch when they were computed here already.
    """
    errors = []
    attempts = [(example_batch, True), (batch, False)] if batch is not None else [(None, False)]
    for size, dynamic in attempts:
        e_args, e_kwargs = _random_inputs(args, kwargs, size, _SEED_EXAMPLE)
        try:
            data = _export_bytes(fmt, model, e_args, e_kwargs, dynamic)
            run, bind = _load(fmt, data, model)
        except Exception as exc:  # noqa: BLE001 - exporters raise many types; the last one is reported
            errors.append(_first_line(exc))
            continue
        outputs = None
        if dynamic and batch != size:
            # Exported at another size than the verification batch's: the axis must really be dynamic.
            v_args, v_kwargs = _random_inputs(args, kwargs, batch, _SEED_VERIFY)
            try:
                outputs = run(v_args, v_kwargs)
            except Exception as exc:  # noqa: BLE001 - specialized to the example's batch size
                errors.append(_first_line(exc))
                continue
        return data, run, bind, dynamic, outputs
    raise UnsupportedModelError(
        f"{fmt} export of {type(model).__name__} failed ({errors[-1]}); try another format"
    )


def _latency(
    model: nn.Module,
    folded: nn.Module,
    bind: Callable[[tuple, Mapping], Callable],
    args: tuple[Tensor, ...],
    kwargs: Mapping[str, Tensor],
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Medians (ms) of the exported file, the eager model (a private copy) and its folded copy,
    interleaved, on one thread."""
    eager = model.eval()
    exported = bind(args, kwargs)
    fns = [exported, lambda: eager(*args, **kwargs), lambda: folded(*args, **kwargs)]
    with _threads(1), torch.no_grad(), parametrize.cached():
        times = interleaved_times(fns, warmup, repeats)
    exported_ms, pytorch_ms, folded_ms = (statistics.median(t) for t in times)
    p10, p90 = np.percentile(np.asarray(times[0]), [10, 90]).tolist()
    q10, q90 = np.percentile(np.asarray(times[1]), [10, 90]).tolist()
    return {
        "exported_ms": exported_ms,
        "pytorch_ms": pytorch_ms,
        "pytorch_folded_ms": folded_ms,
        "speedup": pytorch_ms / exported_ms if exported_ms > 0 else float("nan"),
        "exported_p10_ms": p10,
        "exported_p90_ms": p90,
        "pytorch_p10_ms": q10,
        "pytorch_p90_ms": q90,
        "warmup": warmup,
        "repeats": repeats,
        "threads": 1,
    }


def _versions(fmt: str) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions


# --------------------------------------------------------------------------------------------------
# checkpoints and run directories
# --------------------------------------------------------------------------------------------------


def default_export_path(source: str | Path, format: str) -> Path:
    """Where :func:`export_checkpoint` writes by default: ``RUN_DIR/model<suffix>`` for a run directory,
    ``<checkpoint stem><suffix>`` beside a checkpoint file (suffixes: :data:`SUFFIXES`)."""
    source = Path(source)
    suffix = SUFFIXES[check_format(format)]
    if source.is_dir():
        return source / f"model{suffix}"
    return source.with_name(source.name.removesuffix(".pt") + suffix)


def report_path_for(path: str | Path, format: str) -> Path:
    """The report JSON beside an exported file: ``export_<format>.json`` in its folder for the default
    name ``model<suffix>``, else ``<file name>.json``."""
    path = Path(path)
    if path.name == f"model{SUFFIXES[check_format(format)]}":
        return path.with_name(f"export_{format}.json")
    return path.with_name(f"{path.name}.json")


def export_checkpoint(
    source: str | Path,
    path: str | Path | None = None,
    format: str = "onnx",
    *,
    fold_bn: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    batch: int = 1,
    latency: bool = True,
    warmup: int = 10,
    repeats: int = 30,
    write_report: bool = True,
) -> ExportReport:
    """Export the model of a run directory or a prunelab ``checkpoint.pt`` (see :func:`export_model`).

    The model is rebuilt with :func:`prunelab.checkpoint.build_from_checkpoint` (masks and compacted widths
    included); its input is a seeded random batch of ``batch`` inputs of the checkpoint architecture's
    ``input_shape``. The file goes to ``path`` (default: :func:`default_export_path`) and, with
    ``write_report``, the report JSON beside it (:func:`report_path_for`).

    Raises:
        CheckpointError: ``source`` is missing, corrupted or not a prunelab checkpoint.
        ConfigError, UnsupportedModelError, ExportVerificationError: as :func:`export_model`.
    """
    from prunelab.checkpoint import build_from_checkpoint, load_checkpoint

    fmt = check_format(format)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch: must be a positive integer (got {batch!r})")
    arch = load_checkpoint(source)["arch"]
    input_shape = tuple(int(s) for s in arch["input_shape"])
    model = build_from_checkpoint(source)
    x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(_SEED_VERIFY))
    out = Path(path) if path is not None else default_export_path(source, fmt)
    report = export_model(
        model, x, out, fmt, fold_bn=fold_bn, tolerance=tolerance, batch=batch, latency=latency,
        warmup=warmup, repeats=repeats,
    )  # fmt: skip
    if write_report:
        atomic_write_json(report_path_for(out, fmt), {"source": str(source), **report.to_dict()})
    return report
