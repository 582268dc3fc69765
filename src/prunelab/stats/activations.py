"""Activation statistics accumulated over a calibration set (NN-relief's importance inputs).

:class:`ReliefStatistics` is a context manager that registers forward hooks on a model's ``nn.Linear``
and ``nn.Conv2d`` layers (and on any extra modules whose mean absolute output is wanted, e.g. the BN and
shortcut of a residual block), runs nothing itself, and *accumulates* sums over every batch the caller
pushes through the model. The hooks are always removed on exit, also when the forward pass raises.

Per ``nn.Linear`` layer with input ``x ∈ R^{N×m}`` it accumulates ``Σ_n |x_n|`` (shape ``(m,)``).
Per ``nn.Conv2d`` layer with input ``x_n ∈ R^{c_in×H×W}`` and kernels ``K ∈ R^{c_out×c_in×k_h×k_w}``:

- ``Σ_n |x_n|`` (shape ``(c_in, H, W)``), from which the official code's *norm of the mean*
  importance ``‖ |K_ji| ∗ mean_n |x_{n,i}| ‖_F`` is computed once at the end;
- when ``per_sample_norms`` is on, ``Σ_n ‖ |K_ji| ∗ |x_{n,i}| ‖_F`` (shape ``(c_out, c_in)``), the
  paper's *mean of norms* numerator. The weights must not change while statistics are collected.

The per-sample norms are exact but avoid materialising every response map. The direct route, a grouped
convolution of ``|x_n|`` channel by channel with every ``|K_ji|`` (``groups=c_in``,
:func:`conv_norms_grouped`, also used for the code variant's single mean sample), costs ``c_out·k·P``
MACs per input channel and sample (``P`` output positions, ``k = k_h·k_w``) in a poorly vectorised
layout. Instead, with ``X_{n,i} ∈ R^{k×P}`` the unfolded receptive fields of channel ``i``,
``‖K̂ ∗ x‖_F² = K̂ᵀ (X Xᵀ) K̂``: one symmetric ``k×k`` Gram matrix per (sample, channel) and one batched
matrix product for all quadratic forms — ``k(k+1)/2·(P + c_out)`` MACs (:func:`conv_norms_gram`).

Under DDP every sum and the sample count are all-reduced across ranks by :meth:`ReliefStatistics.finalize`
(each rank feeds its own shard), so every rank ends with the statistics of the whole calibration set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.errors import UnsupportedModelError
from prunelab.stats.hooks import ForwardHooks

#: Upper bound on the temporary tensors of one per-sample-norm computation (in elements); bigger
#: batches are processed in sample chunks so memory stays bounded whatever the batch size.
CHUNK_ELEMENTS = 1 << 24


@dataclass
class LayerStats:
    """Accumulated statistics of one layer or module.

    Attributes:
        kind: ``"linear"``, ``"conv"`` or ``"output"`` (a module whose output is summarised).
        count: samples seen.
        abs_input_sum: ``Σ_n |x_n|`` of the layer input (``None`` for ``"output"`` modules).
        abs_output_sum: ``Σ_n |y_n|`` of the module output (``"output"`` modules only).
        norm_sum: conv only, ``Σ_n ‖ |K_ji| ∗ |x_{n,i}| ‖_F`` of shape ``(c_out, c_in)`` when per-sample
            norms are collected.
        out_size: conv only, ``(H', W')`` of the output map.
    """

    kind: str
    count: int = 0
    abs_input_sum: Tensor | None = None
    abs_output_sum: Tensor | None = None
    norm_sum: Tensor | None = None
    out_size: tuple[int, int] | None = None

    def mean_abs_input(self) -> Tensor:
        """``mean_n |x_n|`` of the layer input."""
        if self.abs_input_sum is None or self.count == 0:
            raise ValueError("no input statistics were collected; run batches inside the context first")
        return self.abs_input_sum / self.count

    def mean_abs_output(self) -> Tensor:
        """``mean_n |y_n|`` of the module output."""
        if self.abs_output_sum is None or self.count == 0:
            raise ValueError("no output statistics were collected; run batches inside the context first")
        return self.abs_output_sum / self.count

    def mean_norms(self) -> Tensor:
        """``(1/N) Σ_n ‖ |K_ji| ∗ |x_{n,i}| ‖_F`` of shape ``(c_out, c_in)`` (conv, per-sample norms)."""
        if self.norm_sum is None or self.count == 0:
            raise ValueError("per-sample norms were not collected; pass per_sample_norms=True")
        return self.norm_sum / self.count


def _accumulate(current: Tensor | None, value: Tensor) -> Tensor:
    # float64 sums: 1000 samples of float32 activations would otherwise lose digits the tests compare.
    value = value.detach().to(torch.float64)
    return value if current is None else current + value


def _check_conv(module: nn.Conv2d) -> None:
    if module.groups != 1:
        raise UnsupportedModelError(
            f"relief statistics support ordinary convolutions only (groups=1), not groups={module.groups}; "
            "exclude grouped/depthwise layers with prune.exclude"
        )
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise UnsupportedModelError(
            "relief statistics need numeric zero padding; use padding=<int> with padding_mode='zeros'"
        )


def conv_norms_grouped(x_abs: Tensor, kernel_abs: Tensor, conv: nn.Conv2d) -> Tensor:
    """Per-sample ``‖ |K_ji| ∗ |x_{n,i}| ‖_F`` by one grouped convolution, shape ``(N, c_out, c_in)``.

    Args:
        x_abs: ``|x|`` of shape ``(N, c_in, H, W)``.
        kernel_abs: ``|K|`` of shape ``(c_out, c_in, k_h, k_w)``.
        conv: the layer (stride, padding and dilation are taken from it).
    """
    c_out, c_in, kh, kw = kernel_abs.shape
    # Group i convolves input channel i with every |K_ji|, j = 0..c_out-1: output channel i·c_out + j.
    weight = kernel_abs.transpose(0, 1).reshape(c_in * c_out, 1, kh, kw)
    response = F.conv2d(
        x_abs, weight, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=c_in
    )
    n = x_abs.shape[0]
    norms = response.reshape(n, c_in, c_out, -1).norm(dim=3)
    return norms.transpose(1, 2)


def _pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Index pairs ``u ≤ v`` of an ``n×n`` symmetric matrix and their weights (2 off the diagonal)."""
    u, v = torch.triu_indices(n, n, device=device)
    return u, v, torch.where(u == v, 1.0, 2.0)


@dataclass(frozen=True)
class QuadraticPlan:
    """How the squared norms ``‖K̂_ji ∗ x_{n,i}‖²`` of one layer are computed, as ``features @ coefficients``.

    Attributes:
        mode: ``"patches"`` — features are the upper triangle of the ``k×k`` Gram matrix of the
            unfolded receptive fields, coefficients the kernel pair products ``K̂_u K̂_v``; or
            ``"pixels"`` (maps with fewer pixels ``H·W`` than kernel taps ``k``, e.g. 2×2 maps under a
            3×3 kernel) — features are the products ``x_q x_r`` of input pixel pairs, coefficients the
            matching entries of ``T_Kᵀ T_K`` with ``T_K`` the (positions × pixels) matrix of the
            convolution by ``K̂_ji``. Both are exact; ``pixels`` uses ``HW(HW+1)/2 < k(k+1)/2`` pairs.
        coefficients: ``(c_in, pairs, c_out)``.
    """

    mode: str
    coefficients: Tensor


def kernel_pair_products(kernel_abs: Tensor) -> Tensor:
    """``K̂_u K̂_v`` for the pairs ``u ≤ v`` of each kernel (off-diagonal pairs doubled), ``(c_in, k', c_out)``.

    With ``k = k_h·k_w`` there are ``k' = k(k+1)/2`` pairs; together with the upper triangle of a
    patch Gram matrix ``G`` they give the quadratic form ``K̂ᵀ G K̂`` as one dot product.
    """
    c_out, c_in = kernel_abs.shape[:2]
    k = kernel_abs[0, 0].numel()
    u, v, doubled = _pairs(k, kernel_abs.device)
    flat = kernel_abs.reshape(c_out, c_in, k)
    pairs = flat[:, :, u] * flat[:, :, v] * doubled.to(kernel_abs.dtype)  # (c_out, c_in, k')
    return pairs.permute(1, 2, 0).contiguous()


def plan_quadratic(kernel_abs: Tensor, conv: nn.Conv2d, in_size: Sequence[int]) -> QuadraticPlan:
    """Choose and precompute the cheaper exact :class:`QuadraticPlan` for inputs of ``in_size`` (H, W)."""
    h, w = int(in_size[0]), int(in_size[1])
    c_out, c_in, kh, kw = kernel_abs.shape
    if h * w >= kh * kw:
        return QuadraticPlan("patches", kernel_pair_products(kernel_abs))
    # T_K by convolving one-hot pixel images: column q of T_K is the response to pixel q alone.
    basis = torch.eye(h * w, dtype=kernel_abs.dtype, device=kernel_abs.device).reshape(h * w, 1, h, w)
    response = F.conv2d(
        basis,
        kernel_abs.reshape(c_out * c_in, 1, kh, kw),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
    )
    t = response.reshape(h * w, c_out, c_in, -1).permute(2, 1, 0, 3)  # (c_in, c_out, HW, P)
    gram = t @ t.transpose(2, 3)  # (c_in, c_out, HW, HW)
    u, v, doubled = _pairs(h * w, kernel_abs.device)
    coefficients = gram[:, :, u, v] * doubled.to(kernel_abs.dtype)  # (c_in, c_out, pairs)
    return QuadraticPlan("pixels", coefficients.transpose(1, 2).contiguous())


def _norms(x_abs: Tensor, conv: nn.Conv2d, plan: QuadraticPlan) -> Tensor:
    """Per-sample norms laid out ``(c_in, N, c_out)``, the layout the batched product produces."""
    n, c_in = x_abs.shape[:2]
    if plan.mode == "pixels":
        flat = x_abs.reshape(n, c_in, -1)
        u, v, _ = _pairs(flat.shape[2], x_abs.device)
        features = (flat[:, :, u] * flat[:, :, v]).transpose(0, 1)  # (c_in, N, pairs)
    else:
        kh, kw = conv.kernel_size
        k = kh * kw
        patches = F.unfold(x_abs, (kh, kw), dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
        patches = patches.reshape(n, c_in, k, -1)
        gram = patches @ patches.transpose(2, 3)  # (N, c_in, k, k)
        u, v, _ = _pairs(k, x_abs.device)
        features = gram[:, :, u, v].transpose(0, 1)  # (c_in, N, k')
    quad = torch.bmm(features, plan.coefficients)  # (c_in, N, c_out)
    # Rounding can leave a tiny negative value where the exact form is 0. In place: this tensor is
    # the largest one of the computation.
    return quad.clamp_min_(0).sqrt_()


def conv_norms_gram(
    x_abs: Tensor, kernel_abs: Tensor, conv: nn.Conv2d, plan: QuadraticPlan | None = None
) -> Tensor:
    """Per-sample ``‖ |K_ji| ∗ |x_{n,i}| ‖_F`` as quadratic forms, shape ``(N, c_out, c_in)``.

    ``‖K̂ ∗ x‖_F² = Σ_p (Σ_u K̂_u X_{u,p})² = K̂ᵀ (X Xᵀ) K̂`` with ``X`` the unfolded receptive fields
    (zero padding included). ``G = X Xᵀ`` is symmetric, so only its upper triangle is used, and the
    quadratic forms of all ``c_out`` kernels of input channel ``i`` are one matrix product
    ``(N, k') @ (k', c_out)`` per channel. Maps smaller than the kernel use the pixel form instead
    (:class:`QuadraticPlan`).

    Args:
        x_abs: ``|x|`` of shape ``(N, c_in, H, W)``.
        kernel_abs: ``|K|`` of shape ``(c_out, c_in, k_h, k_w)``.
        conv: the layer (stride, padding and dilation are taken from it).
        plan: :func:`plan_quadratic` for this kernel and input size (computed if not given).
    """
    if plan is None:
        plan = plan_quadratic(kernel_abs, conv, x_abs.shape[2:])
    return _norms(x_abs, conv, plan).permute(1, 2, 0)


def conv_norm_sum(
    x: Tensor, conv: nn.Conv2d, kernel_abs: Tensor, plan: QuadraticPlan | None = None
) -> Tensor:
    """``Σ_n ‖ |K_ji| ∗ |x_{n,i}| ‖_F`` over the batch ``x``, shape ``(c_out, c_in)``, memory-bounded.

    Uses :func:`conv_norms_gram`: about ``k(k+1)/2·(P + c_out)`` multiply-adds per sample and input
    channel against the forward pass's ``k·P·c_out``, in large matrix products.
    """
    x_abs = x.detach().abs()
    n, c_in = x_abs.shape[:2]
    out_h, out_w = _out_size(conv, x_abs.shape[2:])
    positions = out_h * out_w
    k = conv.kernel_size[0] * conv.kernel_size[1]
    per_sample = c_in * (k * positions + k * k + conv.out_channels)
    chunk = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
    if plan is None:
        plan = plan_quadratic(kernel_abs, conv, x_abs.shape[2:])
    total = torch.zeros(c_in, conv.out_channels, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk):
        # Sum over samples in the product's own layout (a permuted view was 30x slower), in float32
        # within a chunk (a float64 reduction was 8x slower); chunks accumulate in float64.
        total += _norms(x_abs[start : start + chunk], conv, plan).sum(dim=1).double()
    return total.T


def _out_size(conv: nn.Conv2d, in_size: Sequence[int]) -> tuple[int, int]:
    sizes = []
    for d in range(2):
        k, s = conv.kernel_size[d], conv.stride[d]
        p, dil = conv.padding[d], conv.dilation[d]  # type: ignore[index]
        sizes.append((int(in_size[d]) + 2 * int(p) - dil * (k - 1) - 1) // s + 1)
    return sizes[0], sizes[1]


@dataclass
class ReliefStatistics(ForwardHooks):
    """Context manager accumulating the activation statistics NN-relief scores from.

    Args:
        layers: ``{name: module}`` of the ``nn.Linear`` / ``nn.Conv2d`` layers to summarise.
        outputs: ``{name: module}`` of further modules whose mean absolute output is accumulated (e.g.
            a residual block's last BN and its shortcut).
        per_sample_norms: also accumulate the conv mean-of-norms numerator (the paper's variant).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer = nn.Linear(3, 2)
        >>> with ReliefStatistics({"fc": layer}) as stats:
        ...     _ = layer(torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 0.0]]))
        >>> stats.finalize()["fc"].mean_abs_input().tolist()
        [2.0, 1.0, 0.0]
    """

    layers: dict[str, nn.Module]
    outputs: dict[str, nn.Module] = field(default_factory=dict)
    per_sample_norms: bool = True
    stats: dict[str, LayerStats] = field(default_factory=dict, init=False)
    _handles: list[Any] = field(default_factory=list, init=False, repr=False)
    _kernels: dict[str, tuple[Tensor, tuple[int, ...], QuadraticPlan]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __enter__(self) -> ReliefStatistics:  # noqa: PYI034 - py3.10 has no typing.Self
        """Register the hooks (previous statistics are discarded)."""
        self.stats = {}
        self._kernels = {}
        try:
            for name, module in self.layers.items():
                if isinstance(module, nn.Conv2d):
                    _check_conv(module)
                    self.stats[name] = LayerStats("conv")
                elif isinstance(module, nn.Linear):
                    self.stats[name] = LayerStats("linear")
                else:
                    raise UnsupportedModelError(
                        f"relief statistics: {name} is a {type(module).__name__}; only Linear and Conv2d "
                        "layers are scored"
                    )
                self._handles.append(module.register_forward_hook(self._layer_hook(name)))
            for name, module in self.outputs.items():
                self.stats[name] = LayerStats("output")
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def _layer_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach()
            entry = self.stats[name]
            if entry.kind == "linear":
                flat = x.reshape(-1, x.shape[-1])
                entry.abs_input_sum = _accumulate(entry.abs_input_sum, flat.abs().sum(dim=0))
                entry.count += flat.shape[0]
                return
            conv = module
            assert isinstance(conv, nn.Conv2d)
            entry.abs_input_sum = _accumulate(entry.abs_input_sum, x.abs().sum(dim=0))
            entry.count += x.shape[0]
            entry.out_size = (int(output.shape[2]), int(output.shape[3]))
            if self.per_sample_norms:
                cached = self._kernels.get(name)
                if cached is None or cached[1] != tuple(x.shape[2:]):
                    # |K| and its plan once per collection (and input size): the weights are fixed.
                    kernel = conv.weight.detach().abs().to(x.dtype)
                    cached = (kernel, tuple(x.shape[2:]), plan_quadratic(kernel, conv, x.shape[2:]))
                    self._kernels[name] = cached
                entry.norm_sum = _accumulate(entry.norm_sum, conv_norm_sum(x, conv, cached[0], cached[2]))

        return hook

    def _output_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            entry = self.stats[name]
            y = output.detach()
            entry.abs_output_sum = _accumulate(entry.abs_output_sum, y.abs().sum(dim=0))
            entry.count += y.shape[0]

        return hook

    def finalize(self) -> dict[str, LayerStats]:
        """All-reduce the sums and counts across DDP ranks (no-op single-process) and return them."""
        from prunelab.distributed import all_reduce_

        for entry in self.stats.values():
            count = torch.tensor([float(entry.count)], dtype=torch.float64)
            for attr in ("abs_input_sum", "abs_output_sum", "norm_sum"):
                value = getattr(entry, attr)
                if value is not None:
                    count = count.to(value.device)
                    setattr(entry, attr, all_reduce_(value))
            entry.count = int(all_reduce_(count).item())
        return self.stats


@torch.no_grad()
def collect(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    layers: dict[str, nn.Module],
    outputs: dict[str, nn.Module] | None = None,
    per_sample_norms: bool = True,
) -> dict[str, LayerStats]:
    """Run ``batches`` through ``model`` in eval mode and return the accumulated statistics.

    The model's train/eval mode is restored afterwards; the batches are moved to the model's device.
    """
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        with ReliefStatistics(layers, outputs or {}, per_sample_norms) as recorder:
            for x, _ in batches:
                model(x.to(device))
        return recorder.finalize()
    finally:
        model.train(was_training)
