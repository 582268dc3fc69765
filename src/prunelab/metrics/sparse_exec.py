"""Sparse execution of unstructured-pruned models on the CPU: CSR weights, chosen per layer by measurement.

Dense kernels do not get faster with zeros, so an unstructured-pruned model runs as slowly as the dense
one. :func:`to_sparse` returns an *inference copy* of a pruned model in which each ``nn.Linear`` (and
``nn.Conv2d``, through im2col) whose weight is sparse enough is replaced by a module holding the weight
as a ``torch.sparse_csr`` tensor:

- linear: ``yᵀ = b·1ᵀ + W_csr · xᵀ`` (``torch.addmm`` with a CSR left operand, MKL's sparse kernel). The
  result is returned as the transpose of a contiguous ``(out, N)`` matrix, so a following sparse linear
  layer reads its ``xᵀ`` without a copy;
- convolution: ``cols = unfold(x)`` of shape ``(C·kh·kw, N·L)``, ``y = b·1ᵀ + W_csr · cols`` reshaped to
  ``(N, out, oh, ow)``.

Whether a layer is converted is **measured, never guessed**: each candidate layer is timed dense and
sparse on its real input (captured at the given batch size, with the layers before it already decided,
so it sees the memory layout it will get), with prunelab's one interleaved timer
(:func:`prunelab.metrics.latency.interleaved_times`), at the given thread count; the sparse form is kept
only where its median is faster by ``margin``. A layer left dense is the very module
of the baked model, so the copy is never slower than dense where the sparse form is not used (up to
measurement noise). The copy is checked against the original on the measurement batch; a mismatch above
the tolerance raises :class:`~prunelab.errors.PrunelabError` (never a silently wrong model).

The converted model is for inference only: masks and other parametrizations are baked into the copy
(``W₀ ⊙ M``), sparse weights are buffers (no gradients), and a sparse layer refuses to run in training
mode. Keep the masked model (or :func:`prunelab.save_pruned`) for training and checkpoints and convert
at deployment. CPU only; GPU 2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) is
not implemented here, but it fits the same per-layer choice: another candidate form of a layer, timed
beside the dense one.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.core.inputs import accepted_diff, max_abs_diff, output_tensors
from prunelab.core.masking import bake
from prunelab.core.modules import copy_model
from prunelab.errors import ConfigError, PrunelabError, UnsupportedModelError
from prunelab.metrics.latency import interleaved_times

__all__ = ["LayerChoice", "SparseConv2d", "SparseLinear", "SparseReport", "to_sparse"]

#: Forms a layer may be forced into with ``to_sparse(..., force=...)``.
_FORMS = ("sparse", "dense")


def _csr(matrix: Tensor) -> Tensor:
    """``matrix`` (2-D) as a CSR tensor with 32-bit indices.

    MKL's sparse kernels take 32-bit indices; with torch's default 64-bit ones every product first
    converts the index arrays, which doubled the time of LeNet-300-100's 98 %-sparse fc1 at batch 64.
    """
    with warnings.catch_warnings():
        # torch flags CSR as "beta" on every construction; the converter checks its own outputs.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = matrix.to_sparse_csr()
        if csr.values().numel() >= 2**31 - 1:
            return csr
        return torch.sparse_csr_tensor(
            csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape, check_invariants=True
        )


def _check_inference(module: nn.Module) -> None:
    if module.training:
        raise PrunelabError(
            f"{type(module).__name__} is an inference-only sparse layer and the model is in training mode; "
            "call model.eval(), or train the masked model and convert it again with to_sparse"
        )


class SparseLinear(nn.Module):
    """``nn.Linear`` with a CSR weight: ``y = x Wᵀ + b`` computed as ``(b·1ᵀ + W_csr · xᵀ)ᵀ``.

    Args:
        linear: the (baked, plain-weight) linear layer to copy.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("weight", _csr(weight))
        bias = (
            linear.bias.detach()
            if linear.bias is not None
            else torch.zeros(weight.shape[0], dtype=weight.dtype)
        )
        # A column, so addmm broadcasts it over the batch columns of W · xᵀ.
        self.register_buffer("bias", bias.reshape(-1, 1).clone())
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x Wᵀ + b`` for ``x`` of shape ``(..., in_features)``."""
        _check_inference(self)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        # MKL's CSR product reads a row-major right operand faster than a transposed one, even counting
        # the copy (98 %-sparse fc1 at batch 256: 0.78 ms vs 1.17 ms); after a sparse layer it is free.
        out = torch.addmm(self.bias, self.weight, flat.t().contiguous()).t()
        return out.reshape(*lead, self.out_features) if len(lead) != 1 else out

    def extra_repr(self) -> str:
        """Shape and stored non-zeros, as ``nn.Linear`` shows its shape."""
        nnz = int(self.weight._nnz())
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (``groups=1``, zero padding) as im2col plus a CSR matrix product.

    Args:
        conv: the (baked, plain-weight) convolution to copy.

    Raises:
        UnsupportedModelError: for grouped convolutions, non-zero padding modes or string padding.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        problem = _conv_problem(conv)
        if problem:
            raise UnsupportedModelError(f"SparseConv2d: {problem}; leave this layer dense")
        self.out_channels = conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        weight = conv.weight.detach()
        self.register_buffer("weight", _csr(weight.reshape(weight.shape[0], -1)))
        bias = (
            conv.bias.detach() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
        )
        self.register_buffer("bias", bias.reshape(-1, 1).clone())
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """Return the convolution of ``x`` of shape ``(N, C, H, W)``."""
        _check_inference(self)
        n, _, h, w = x.shape
        oh, ow = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride)
        )
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, CKK, L)
        # One matrix product over the whole batch: (CKK, N·L); for N = 1 the transpose is free.
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        out = torch.addmm(self.bias, self.weight, cols)  # (out, N·L)
        # Contiguous NCHW, so the BatchNorm / pooling after it run at their usual speed and the per-layer
        # measurement includes this copy (a strided result made vgg11 at batch 64 slower than dense).
        return out.reshape(self.out_channels, n, oh, ow).transpose(0, 1).contiguous()

    def extra_repr(self) -> str:
        """Kernel geometry and stored non-zeros."""
        return (
            f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, nnz={int(self.weight._nnz())}"
        )


def _conv_problem(conv: nn.Conv2d) -> str:
    """Why ``conv`` has no sparse form here ("" when it has one)."""
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups})"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}"
    return ""


@dataclass(frozen=True)
class LayerChoice:
    """The measured decision for one layer.

    Attributes:
        name: qualified module name.
        kind: ``"linear"`` or ``"conv2d"``.
        density: non-zeros / entries of the baked weight.
        form: ``"sparse"`` or ``"dense"`` — what the converted model runs.
        dense_ms: median time of the dense layer on its real input (``None`` if not timed).
        sparse_ms: median time of the sparse form (``None`` if not timed).
        reason: why this form (``"measured"``, ``"forced"``, ``"density above max_density"``, ...).
    """

    name: str
    kind: str
    density: float
    form: str
    dense_ms: float | None
    sparse_ms: float | None
    reason: str

    @property
    def speedup(self) -> float | None:
        """``dense_ms / sparse_ms`` of the layer alone (``None`` if not timed)."""
        if self.dense_ms is None or self.sparse_ms is None:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class SparseReport:
    """What :func:`to_sparse` measured and chose.

    Attributes:
        layers: one :class:`LayerChoice` per linear / conv2d layer, in module order.
        batch_size: batch size of the measurement.
        threads: intra-op threads of the measurement.
        margin: the speed-up a sparse form needed to be kept.
        max_abs_diff: largest absolute difference between the converted and the original model's
            outputs on the measurement batch.
    """

    layers: list[LayerChoice]
    batch_size: int
    threads: int
    margin: float
    max_abs_diff: float = 0.0

    @property
    def sparse_layers(self) -> list[str]:
        """Names of the layers that run sparse."""
        return [c.name for c in self.layers if c.form == "sparse"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (each layer with its ``speedup``)."""
        out = asdict(self)
        for row, choice in zip(out["layers"], self.layers, strict=True):
            row["speedup"] = choice.speedup
        return out


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    return None


def _sparse_form(module: nn.Module) -> nn.Module:
    return SparseLinear(module) if isinstance(module, nn.Linear) else SparseConv2d(module)  # type: ignore[arg-type]


def _capture_inputs(model: nn.Module, names: Sequence[str], x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The input tensor of each named layer in one forward pass of ``x``, and the model's output."""
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}
    handles = [
        modules[name].register_forward_pre_hook(
            lambda _m, args, name=name: seen.setdefault(name, args[0].detach().clone())
        )
        for name in names
    ]
    try:
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen, out


def _check_args(input_shape: Sequence[int], batch_size: int, margin: float, max_density: float,
                warmup: int, repeats: int, threads: int | None) -> None:  # fmt: skip
    if not input_shape or not all(isinstance(s, int) and s > 0 for s in input_shape):
        raise ConfigError(
            f"to_sparse: input_shape must be positive ints such as (1, 28, 28), got {input_shape!r}"
        )
    if batch_size < 1 or repeats < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise ConfigError(
            f"to_sparse: need batch_size >= 1, repeats >= 1, warmup >= 0, threads >= 1 "
            f"(got {batch_size}, {repeats}, {warmup}, {threads})"
        )
    if not margin > 0 or not 0.0 <= max_density <= 1.0:
        raise ConfigError(
            f"to_sparse: need margin > 0 and max_density in [0, 1] (got {margin}, {max_density})"
        )


@torch.no_grad()
def to_sparse(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 64,
    *,
    margin: float = 1.1,
    max_density: float = 0.5,
    threads: int | None = 1,
    warmup: int = 5,
    repeats: int = 30,
    force: Mapping[str, str] | None = None,
    rtol: float = 1e-4,
) -> tuple[nn.Module, SparseReport]:
    """An inference copy of ``model`` whose sparse-enough layers run with CSR weights where that is faster.

    ``model`` itself is left untouched (masked or not). The copy is baked (masks multiplied in), put in
    eval mode, and every ``nn.Linear`` / ``nn.Conv2d`` whose weight density is at most ``max_density`` is
    timed dense and sparse on its real input, interleaved, at ``threads`` threads; the sparse form
    replaces the layer only if ``dense_ms / sparse_ms >= margin``. The choice holds for that batch size and
    thread count: convert again for another deployment.

    Args:
        model: a pruned model (masked by prunelab, baked, or plain with zeros in its weights).
        input_shape: ``(C, H, W)`` (or ``(features,)``) of one input, without the batch dimension.
        batch_size: inputs per forward pass of the deployment, used for the measurement.
        margin: speed-up the sparse form must reach to be kept (1.1 = 10 % faster).
        max_density: layers denser than this stay dense without being timed.
        threads: intra-op CPU threads during the measurement (``None`` keeps the current setting).
        warmup: untimed rounds per layer.
        repeats: timed rounds per layer (medians are compared).
        force: ``{layer name: "sparse" | "dense"}`` to override the measurement for those layers.
        rtol: tolerance of the output check: ``max |y_sparse − y| <= rtol · max(1, max |y|)``.

    Returns:
        ``(converted model, report)``.

    Raises:
        ConfigError: bad arguments, or ``force`` naming a layer that is not a linear / conv2d of the model.
        UnsupportedModelError: a forced layer that has no sparse form (grouped convolution, ...).
        PrunelabError: the converted model's outputs differ from the original's beyond the tolerance.
    """
    _check_args(input_shape, batch_size, margin, max_density, warmup, repeats, threads)
    force = dict(force or {})
    converted = bake(copy_model(model)).eval()
    layers = {name: m for name, m in converted.named_modules() if _kind(m) is not None}
    unknown = sorted(set(force) - set(layers))
    bad = sorted(k for k, v in force.items() if v not in _FORMS and k in layers)
    if unknown:
        raise ConfigError(
            f"to_sparse: force names {unknown}, not linear/conv2d layers of the model; use one of {sorted(layers)}"
        )
    if bad:
        raise ConfigError(
            f"to_sparse: force gives {bad} a form other than 'sparse' or 'dense'; use one of those"
        )
    ref = next((p for p in converted.parameters()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *input_shape), generator=gen, dtype=dtype)
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        inputs, expected = _capture_inputs(converted, list(layers), x)
        # Decide in execution order (the capture's order) on the input each layer gets once the layers
        # before it are decided: a sparse linear layer hands on a transposed (out, N) result, which
        # the next layer's xᵀ reads without a copy, so a contiguous capture would misjudge it.
        chosen: dict[str, LayerChoice] = {}
        for name in [*inputs, *(n for n in layers if n not in inputs)]:
            x_in = inputs.get(name)
            if x_in is not None and any(c.form == "sparse" for c in chosen.values()):
                x_in = _capture_inputs(converted, [name], x)[0][name]
            choice = _choose(name, layers[name], x_in, force.get(name), margin, max_density, warmup, repeats)
            if choice.form == "sparse":
                converted.set_submodule(name, _sparse_form(layers[name]))
            chosen[name] = choice
        choices = [chosen[name] for name in layers]
        diff, _ = max_abs_diff(output_tensors(expected), output_tensors(converted(x)))
    finally:
        torch.set_num_threads(old_threads)
    limit = accepted_diff(rtol, output_tensors(expected))
    if not diff <= limit:
        raise PrunelabError(
            f"to_sparse: the converted model's outputs differ from the original's by {diff:.3g} "
            f"(tolerance {limit:.3g}); keep the dense model and report this model"
        )
    report = SparseReport(choices, batch_size, threads or old_threads, margin, diff)
    return converted, report


def _choose(name: str, module: nn.Module, x: Tensor | None, forced: str | None, margin: float,
            max_density: float, warmup: int, repeats: int) -> LayerChoice:  # fmt: skip
    """Decide one layer's form: forced, ruled out, or timed dense vs sparse on its real input ``x``."""
    kind = _kind(module)
    assert kind is not None
    weight = module.weight
    density = float(torch.count_nonzero(weight)) / weight.numel() if weight.numel() else 1.0
    row: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "density": density,
        "dense_ms": None,
        "sparse_ms": None,
    }
    problem = ""
    if parametrize.is_parametrized(module):
        problem = "weight carries a parametrization other than a mask"
    elif isinstance(module, nn.Conv2d):
        problem = _conv_problem(module)
    if forced == "sparse" and problem:
        raise UnsupportedModelError(
            f"to_sparse: layer {name!r} cannot run sparse ({problem}); do not force it"
        )
    if forced is not None:
        return LayerChoice(**row, form=forced, reason="forced")
    if problem:
        return LayerChoice(**row, form="dense", reason=problem)
    if density > max_density:
        return LayerChoice(**row, form="dense", reason="density above max_density")
    if x is None:
        return LayerChoice(**row, form="dense", reason="not reached by the forward pass")
    sparse = _sparse_form(module)
    dense_t, sparse_t = interleaved_times([lambda: module(x), lambda: sparse(x)], warmup, repeats)
    row["dense_ms"], row["sparse_ms"] = statistics.median(dense_t), statistics.median(sparse_t)
    faster = row["dense_ms"] >= margin * row["sparse_ms"]  # type: ignore[operator]
    return LayerChoice(**row, form="sparse" if faster else "dense", reason="measured")
