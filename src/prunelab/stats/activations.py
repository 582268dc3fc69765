r"""Activation statistics accumulated over a calibration set (NN-relief's importance inputs).

:class:`ReliefStatistics` is a context manager that registers forward hooks on a model's ``nn.Linear``,
``nn.Conv1d`` and ``nn.Conv2d`` layers (any ``groups``: ordinary, grouped and depthwise convolutions),
on modules whose mean absolute *input* only is wanted (the consumers NN-relief's dead-unit rule reads)
and on modules whose mean absolute *output* is wanted (e.g. the BN and shortcut of a residual block). It
runs nothing itself and *accumulates* sums over every batch the caller pushes through the model; the
hooks are always removed on exit, also when the forward pass raises.

**Linear** layer with input ``x_n ∈ R^m`` (shape ``(N, m)``): ``Σ_n |x_n|`` (shape ``(m,)``). A Linear
applied to a tensor with positions, ``x_n ∈ R^{P₁×…×m}`` (ConvNeXt's channels-last ``(N, H, W, C)``, a
token sequence ``(N, T, C)``), *is* a 1×1 convolution over the positions and is summarised as one:
``Σ_n |x_n|`` (shape ``(P₁, …, m)``) and ``Σ_n ‖x_{n,·,i}‖₂`` over the positions (shape ``(m,)``).

**Convolution** with ``G`` groups, input ``x_n ∈ R^{c_in×H×W}`` and kernels
``K ∈ R^{c_out×(c_in/G)×k_h×k_w}``. Filter ``j`` belongs to group ``γ(j) = ⌊j / (c_out/G)⌋`` and sees only
that group's ``c_in/G`` input channels: its kernel ``i`` (``0 ≤ i < c_in/G``) reads input channel

.. math:: \iota(j, i) = \gamma(j)\,\frac{c_{in}}{G} + i,

so the importance numerator of connection ``(j, i)`` exists only inside the group,

.. math:: n_{ji} = \frac{1}{N} \sum_n \bigl\lVert\, |K_{ji}| \ast |x_{n,\iota(j,i)}| \,\bigr\rVert_F
          \quad (\text{paper}), \qquad
          n_{ji} = \bigl\lVert\, |K_{ji}| \ast \tfrac{1}{N}\textstyle\sum_n |x_{n,\iota(j,i)}| \,\bigr\rVert_F
          \quad (\text{code}),

one per entry of ``K.shape[:2] = (c_out, c_in/G)``. ``G = 1`` is the ordinary convolution
(``ι(j, i) = i``); a depthwise convolution (``G = c_in``, ``c_in/G = 1``) has one kernel per filter,
reading input channel ``⌊j / (c_out/c_in)⌋``. ``∗`` is the layer's own correlation: its stride,
dilation and padding — numeric or ``"same"``/``"valid"``, zero, reflect, replicate or circular
(``|pad(x)| = pad(|x|)`` for every mode, so ``|x|`` is padded as the layer pads ``x``). A ``Conv1d`` is
the ``H = 1`` case (a ``1 × k`` kernel). Accumulated:

- ``Σ_n |x_n|`` (shape ``(c_in, H, W)``; ``(c_in, L)`` for Conv1d), from which the official code's
  *norm of the mean* is computed once at the end;
- when ``per_sample_norms`` is on, ``Σ_n ‖ |K_ji| ∗ |x_{n,ι(j,i)}| ‖_F`` (shape ``(c_out, c_in/G)``), the
  paper's *mean of norms* numerator. The weights must not change while statistics are collected.

The per-sample norms are exact but avoid materialising every response map. The direct route, a
convolution of ``|x_n|`` channel by channel with the ``c_out/G`` kernels ``|K_ji|`` that read that
channel (``groups=c_in``, :func:`conv_norms_grouped`, also used for the code variant's single mean
sample), costs ``(c_out/G)·k·P`` MACs per input channel and sample (``P`` output positions,
``k = k_h·k_w``) in a poorly vectorised layout. Instead, with ``X_{n,ι} ∈ R^{k×P}`` the unfolded
receptive fields of channel ``ι``, ``‖K̂ ∗ x‖_F² = K̂ᵀ (X Xᵀ) K̂``: one symmetric ``k×k`` Gram matrix per
(sample, channel) and one batched matrix product for all quadratic forms of the kernels reading the
channel — ``k(k+1)/2·(P + c_out/G)`` MACs (:func:`conv_norms_gram`). Two cases are cheaper still and
just as exact (:class:`QuadraticPlan`): a 1×1 kernel is a scalar, ``‖K̂_ji x‖_F = K̂_ji ‖x‖₂``, so a batch
needs only ``Σ_n ‖x_{n,ι}‖`` (``pointwise``); and a grouped or depthwise convolution with fewer than
``(k+1)/2`` kernels per input channel computes its responses directly (``direct``, ``(c_out/G)·k·P``
MACs, the depthwise convolution itself).

Transposed convolutions are not summarised: their weight is ``(c_in, c_out/G, …)``, so their units are
not dim 0 and NN-relief's per-output-unit rule (and the pruner's rows) do not apply to them.

Batches may feed a model with several inputs: the ``x`` of a calibration pair ``(x, y)`` is a tensor (one
argument), a tuple or list (positional arguments) or a dict (keyword arguments) — :func:`forward`.

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

from prunelab.core.inputs import call_model
from prunelab.core.modules import eval_mode
from prunelab.errors import ConfigError, UnsupportedModelError
from prunelab.stats.hooks import ForwardHooks

__all__ = [
    "CHUNK_ELEMENTS",
    "FEATURE_CHUNK_ELEMENTS",
    "NORM_BLOCK_ELEMENTS",
    "SUM_CHUNK_SAMPLES",
    "ConvGeometry",
    "LayerStats",
    "QuadraticPlan",
    "ReliefStatistics",
    "calibration_inputs",
    "collect",
    "conv_geometry",
    "conv_norm_sum",
    "conv_norms_gram",
    "conv_norms_grouped",
    "kernel_pair_products",
    "model_device",
    "plan_quadratic",
    "unsupported_reason",
]

#: Upper bound on the temporary tensors of one per-sample-norm computation (in elements); bigger
#: batches are processed in sample chunks so memory stays bounded whatever the batch size.
CHUNK_ELEMENTS = 1 << 24

#: Unfolded receptive fields (elements) per Gram-matrix step of the ``patches`` plan: a few MB, so that
#: the unfolded patches are still in cache when their Gram matrices read them.
FEATURE_CHUNK_ELEMENTS = 1 << 20

#: Squared norms (elements) per product → square root → sum step: about 1 MB, cache-resident.
NORM_BLOCK_ELEMENTS = 1 << 18

#: Samples per float32 partial sum of the per-sample norms; the partial sums accumulate in float64.
SUM_CHUNK_SAMPLES = 256

#: The layers whose incoming connections NN-relief scores (any ``groups`` for the convolutions).
SCORED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model without either."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@dataclass
class LayerStats:
    """Accumulated statistics of one layer or module.

    Attributes:
        kind: ``"linear"``, ``"conv"``, ``"input"`` (a module whose mean absolute input only is
            summarised) or ``"output"`` (a module whose output is summarised).
        count: samples seen.
        abs_input_sum: ``Σ_n |x_n|`` of the layer input (``None`` for ``"output"`` modules).
        abs_output_sum: ``Σ_n |y_n|`` of the module output (``"output"`` modules only).
        norm_sum: conv: ``Σ_n ‖ |K_ji| ∗ |x_{n,ι(j,i)}| ‖_F`` of shape ``(c_out, c_in/G)``; Linear over
            positions: ``Σ_n ‖x_{n,·,i}‖₂`` of shape ``(in,)``; when per-sample norms are collected.
        out_size: conv: ``(H', W')`` of the output map (``(1, L')`` for Conv1d); Linear over positions:
            the positions' shape (``None`` for a Linear on ``(N, in)`` inputs).
    """

    kind: str
    count: int = 0
    abs_input_sum: Tensor | None = None
    abs_output_sum: Tensor | None = None
    norm_sum: Tensor | None = None
    out_size: tuple[int, ...] | None = None

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
        """``(1/N) Σ_n`` of the per-sample norms (:attr:`norm_sum`; conv ``(c_out, c_in/G)``)."""
        if self.norm_sum is None or self.count == 0:
            raise ValueError("per-sample norms were not collected; pass per_sample_norms=True")
        return self.norm_sum / self.count


def _accumulate(current: Tensor | None, value: Tensor, name: str = "", what: str = "inputs") -> Tensor:
    # float64 sums: 1000 samples of float32 activations would otherwise lose digits the tests compare.
    value = value.detach().to(torch.float64)
    if current is None:
        return value
    if current.shape != value.shape:
        raise ConfigError(
            f"relief statistics: layer {name or '<root>'} saw {what} of shape {tuple(current.shape)} and then "
            f"{tuple(value.shape)} (per sample); feed calibration batches of one input size"
        )
    return current + value


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


@dataclass(frozen=True)
class ConvGeometry:
    """How a convolution slides over its input, in the 2-D form every statistic here is computed in.

    A ``Conv2d`` with numeric zero padding is its own geometry. A ``Conv1d`` is viewed as a 2-D
    convolution of height 1 (``(N, C, L) → (N, C, 1, L)``, kernel ``1 × k``). Padding the layer does not
    apply as symmetric zeros (``"same"``, which may be asymmetric, or a ``reflect``/``replicate``/
    ``circular`` mode) becomes an explicit :func:`torch.nn.functional.pad` of ``|x|`` (:attr:`pad`) before a
    padding-free convolution: exactly the layer's own arithmetic, since ``|pad(x)| = pad(|x|)``.

    Attributes:
        kernel_size, stride, padding, dilation: the 2-D convolution parameters (``padding`` is the
            symmetric zero padding left to the convolution after :attr:`pad`).
        groups: ``G``; filter ``j`` reads input channels ``γ(j)·c_in/G … (γ(j)+1)·c_in/G − 1``.
        in_channels, out_channels: ``c_in`` and ``c_out``.
        one_d: inputs and kernels are 1-D (a ``Conv1d``) and get a height-1 axis.
        pad: explicit ``(left, right, top, bottom)`` padding of the 2-D input, or ``None``.
        pad_mode: the :func:`~torch.nn.functional.pad` mode of :attr:`pad`.
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int = 1
    in_channels: int = 0
    out_channels: int = 0
    one_d: bool = False
    pad: tuple[int, int, int, int] | None = None
    pad_mode: str = "constant"

    @property
    def out_per_group(self) -> int:
        """``c_out / G``: the filters that read each input channel."""
        return self.out_channels // self.groups

    def view(self, x: Tensor) -> Tensor:
        """A batch of layer inputs in this geometry's 2-D form, explicitly padded (``(N, C, H, W)``)."""
        if self.one_d:
            x = x.unsqueeze(-2)
        if self.pad is not None:
            x = F.pad(x, self.pad, mode=self.pad_mode)
        return x

    def kernel(self, weight: Tensor) -> Tensor:
        """The kernels in 2-D form: ``(c_out, c_in/G, k_h, k_w)``."""
        return weight.unsqueeze(-2) if self.one_d else weight

    def inner(self) -> ConvGeometry:
        """The geometry for inputs and kernels already passed through :meth:`view` and :meth:`kernel`."""
        if not self.one_d and self.pad is None:
            return self
        return ConvGeometry(
            self.kernel_size, self.stride, self.padding, self.dilation, self.groups, self.in_channels,
            self.out_channels,
        )  # fmt: skip


def unsupported_reason(module: nn.Module) -> str | None:
    """Why NN-relief cannot score ``module``'s incoming connections (``None``: it can)."""
    if isinstance(module, SCORED_LAYERS):
        return None
    if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        return (
            f"a {type(module).__name__}, whose weight is (in, out, ...): the per-output-unit relief rule "
            "does not apply to it"
        )
    return f"a {type(module).__name__}; relief scores Linear, Conv1d and Conv2d layers (any groups)"


def conv_geometry(conv: nn.Module | ConvGeometry, name: str = "") -> ConvGeometry:
    """The :class:`ConvGeometry` of an ``nn.Conv1d`` / ``nn.Conv2d`` (a geometry is returned as it is).

    Raises:
        UnsupportedModelError: for any other layer (a transposed or 3-D convolution), named ``name``.
    """
    if isinstance(conv, ConvGeometry):
        return conv
    reason = unsupported_reason(conv)
    if reason is not None or isinstance(conv, nn.Linear):
        raise UnsupportedModelError(
            f"relief statistics: {name or type(conv).__name__} is {reason or 'a Linear, not a convolution'}; "
            "leave it out of the scored layers (exclude it)"
        )
    one_d = isinstance(conv, nn.Conv1d)
    kernel = (1, int(conv.kernel_size[0])) if one_d else _pair(conv.kernel_size)
    stride = (1, int(conv.stride[0])) if one_d else _pair(conv.stride)
    dilation = (1, int(conv.dilation[0])) if one_d else _pair(conv.dilation)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            numeric = (0, 0)
        else:  # "same": the total d·(k−1) per dimension, the extra pixel on the right/bottom (PyTorch's rule)
            numeric = None
            totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    else:
        numeric = (0, int(conv.padding[0])) if one_d else _pair(conv.padding)
    mode = conv.padding_mode
    if numeric is not None and mode == "zeros":
        return ConvGeometry(
            kernel, stride, numeric, dilation, int(conv.groups), int(conv.in_channels), int(conv.out_channels),
            one_d,
        )  # fmt: skip
    if numeric is not None:
        pad = (numeric[1], numeric[1], numeric[0], numeric[0])
    else:
        pad = (totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2)
    return ConvGeometry(
        kernel, stride, (0, 0), dilation, int(conv.groups), int(conv.in_channels), int(conv.out_channels),
        one_d, pad, "constant" if mode == "zeros" else mode,
    )  # fmt: skip


def _by_input(per_kernel: Tensor, groups: int) -> Tensor:
    """``(c_out, c_in/G, *rest)`` per kernel → ``(c_in, *rest, c_out/G)``: the kernels reading each input channel.

    Row ``ι = γ·c_in/G + i`` holds the kernels ``K_{γ·c_out/G + m, i}``, ``m = 0 … c_out/G − 1``.
    """
    c_out, c_in_g = per_kernel.shape[:2]
    rest = tuple(per_kernel.shape[2:])
    grouped = per_kernel.reshape(groups, c_out // groups, c_in_g, *rest)
    order = (0, 2, *range(3, 3 + len(rest)), 1)
    return grouped.permute(order).reshape(groups * c_in_g, *rest, c_out // groups).contiguous()


def _by_kernel(per_input: Tensor, groups: int) -> Tensor:
    """``(c_in, M, c_out/G)`` per input channel → ``(M, c_out, c_in/G)`` per kernel (inverse of :func:`_by_input`)."""
    c_in, m, c_out_g = per_input.shape
    c_in_g = c_in // groups
    return (
        per_input.reshape(groups, c_in_g, m, c_out_g).permute(2, 0, 3, 1).reshape(m, groups * c_out_g, c_in_g)
    )


def _layout(
    x_abs: Tensor, kernel_abs: Tensor, conv: nn.Module | ConvGeometry
) -> tuple[Tensor, Tensor, ConvGeometry]:
    """Inputs and kernels in 2-D form and the geometry that goes with them."""
    geometry = conv_geometry(conv)
    return geometry.view(x_abs), geometry.kernel(kernel_abs), geometry.inner()


def conv_norms_grouped(
    x_abs: Tensor, kernel_abs: Tensor, conv: nn.Module | ConvGeometry, order: float = 2
) -> Tensor:
    """Per-sample ``‖ |K_ji| ∗ |x_{n,ι(j,i)}| ‖_F`` by one grouped convolution, shape ``(N, c_out, c_in/G)``.

    Args:
        x_abs: ``|x|`` of shape ``(N, c_in, H, W)`` (``(N, c_in, L)`` for a Conv1d).
        kernel_abs: ``|K|`` of shape ``(c_out, c_in/G, k_h, k_w)`` (``(c_out, c_in/G, k)`` for a Conv1d).
        conv: the layer or its :class:`ConvGeometry` (stride, padding, dilation and groups are taken from it).
        order: the vector norm over output positions: 2 (Frobenius, the paper) or 1 (the sum of the
            non-negative responses, the official LeNet-5 code).
    """
    x_abs, kernel_abs, g = _layout(x_abs, kernel_abs, conv)
    c_out, c_in_g, kh, kw = kernel_abs.shape
    groups = g.groups
    c_out_g = c_out // groups
    c_in = c_in_g * groups
    # Channel ι of the input is convolved with the c_out/G kernels that read it: output ι·c_out/G + m.
    weight = (
        kernel_abs.reshape(groups, c_out_g, c_in_g, kh, kw).transpose(1, 2).reshape(c_in * c_out_g, 1, kh, kw)
    )
    response = F.conv2d(x_abs, weight, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=c_in)
    n = x_abs.shape[0]
    norms = torch.linalg.vector_norm(
        response.reshape(n, c_in, c_out_g, -1), ord=order, dim=3
    )  # (N, c_in, c_out/G)
    return _by_kernel(norms.transpose(0, 1), groups)


def _pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Index pairs ``u ≤ v`` of an ``n×n`` symmetric matrix and their weights (2 off the diagonal)."""
    u, v = torch.triu_indices(n, n, device=device)
    return u, v, torch.where(u == v, 1.0, 2.0)


@dataclass(frozen=True)
class QuadraticPlan:
    """How the squared norms ``‖K̂_ji ∗ x_{n,ι}‖²`` of one layer are computed, as ``features @ coefficients``.

    Attributes:
        mode: ``"patches"`` — features are the upper triangle of the ``k×k`` Gram matrix of the
            unfolded receptive fields, coefficients the kernel pair products ``K̂_u K̂_v``; or
            ``"pixels"`` (maps with fewer pixels ``H·W`` than kernel taps ``k``, e.g. 2×2 maps under a
            3×3 kernel) — features are the products ``x_q x_r`` of input pixel pairs, coefficients the
            matching entries of ``T_Kᵀ T_K`` with ``T_K`` the (positions × pixels) matrix of the
            convolution by ``K̂_ji``. Both are exact; ``pixels`` uses ``HW(HW+1)/2 < k(k+1)/2`` pairs; or
            ``"pointwise"`` (a 1×1 kernel, a scalar ``K̂_ji``): ``‖K̂_ji x_{n,ι}‖ = K̂_ji ‖x_{n,ι}‖``, so the
            feature is the norm of the sampled input channel and the coefficients are ``K̂`` itself — a
            batch sum needs ``Σ_n ‖x_{n,ι}‖`` only (about ``P`` MACs per channel and sample); or
            ``"direct"`` (grouped and depthwise convolutions whose ``c_out/G`` kernels per input channel
            are fewer than ``(k+1)/2``): the responses ``K̂_ji ∗ x_{n,ι}`` themselves by one convolution
            with ``groups = c_in`` (:func:`conv_norms_grouped`), ``(c_out/G)·k·P`` MACs instead of the
            Gram route's ``k(k+1)/2·(P + c_out/G)``; its coefficients are the kernels ``(c_out, c_in/G, k_h, k_w)``.
        coefficients: ``(c_in, pairs, c_out/G)``: for input channel ``ι``, the ``c_out/G`` kernels reading it
            (``pairs = 1`` and the kernels themselves for ``pointwise``).
        groups: the layer's ``G``.
    """

    mode: str
    coefficients: Tensor
    groups: int = 1


def kernel_pair_products(kernel_abs: Tensor, groups: int = 1) -> Tensor:
    """``K̂_u K̂_v`` for the pairs ``u ≤ v`` of each kernel (off-diagonal pairs doubled), ``(c_in, k', c_out/G)``.

    With ``k = k_h·k_w`` there are ``k' = k(k+1)/2`` pairs; together with the upper triangle of a
    patch Gram matrix ``G`` they give the quadratic form ``K̂ᵀ G K̂`` as one dot product. Row ``ι`` holds
    the kernels that read input channel ``ι`` (all ``c_out`` of them for ``groups = 1``).
    """
    c_out, c_in_g = kernel_abs.shape[:2]
    k = kernel_abs[0, 0].numel()
    u, v, doubled = _pairs(k, kernel_abs.device)
    flat = kernel_abs.reshape(c_out, c_in_g, k)
    pairs = flat[:, :, u] * flat[:, :, v] * doubled.to(kernel_abs.dtype)  # (c_out, c_in/G, k')
    return _by_input(pairs, groups)


def plan_quadratic(
    kernel_abs: Tensor, conv: nn.Module | ConvGeometry, in_size: Sequence[int]
) -> QuadraticPlan:
    """Choose and precompute the cheaper exact :class:`QuadraticPlan` for inputs of ``in_size`` (H, W).

    ``kernel_abs`` and ``in_size`` are in the 2-D form of ``conv``'s geometry (:meth:`ConvGeometry.view`,
    explicit padding included) when ``conv`` is a geometry; a layer's own kernels and input size otherwise.
    """
    g = conv_geometry(conv)
    if g.one_d or g.pad is not None:
        probe = g.view(torch.zeros(1, 1, *in_size[-(1 if g.one_d else 2) :]))
        kernel_abs, in_size, g = g.kernel(kernel_abs), probe.shape[2:], g.inner()
    h, w = int(in_size[0]), int(in_size[1])
    c_out, c_in_g, kh, kw = kernel_abs.shape
    groups = g.groups
    k = kh * kw
    if k == 1:
        return QuadraticPlan("pointwise", _by_input(kernel_abs.reshape(c_out, c_in_g, 1), groups), groups)
    if h * w >= k and groups > 1 and 2 * (c_out // groups) <= k + 1:
        return QuadraticPlan("direct", kernel_abs.contiguous(), groups)
    if h * w >= k:
        return QuadraticPlan("patches", kernel_pair_products(kernel_abs, groups), groups)
    # T_K by convolving one-hot pixel images: column q of T_K is the response to pixel q alone.
    basis = torch.eye(h * w, dtype=kernel_abs.dtype, device=kernel_abs.device).reshape(h * w, 1, h, w)
    response = F.conv2d(
        basis,
        kernel_abs.reshape(c_out * c_in_g, 1, kh, kw),
        stride=g.stride,
        padding=g.padding,
        dilation=g.dilation,
    )
    t = response.reshape(h * w, c_out, c_in_g, -1).permute(2, 1, 0, 3)  # (c_in/G, c_out, HW, P)
    gram = t @ t.transpose(2, 3)  # (c_in/G, c_out, HW, HW)
    u, v, doubled = _pairs(h * w, kernel_abs.device)
    coefficients = gram[:, :, u, v] * doubled.to(kernel_abs.dtype)  # (c_in/G, c_out, pairs)
    return QuadraticPlan("pixels", _by_input(coefficients.transpose(0, 1), groups), groups)


def _sampled_norms(x_abs: Tensor, g: ConvGeometry) -> Tensor:
    """``‖x_{n,ι}‖₂`` over the positions a 1×1 kernel reads (stride and zero padding applied), ``(N, c_in)``."""
    if g.padding == (0, 0):
        sampled = x_abs[:, :, :: g.stride[0], :: g.stride[1]]
    else:
        sampled = F.unfold(x_abs, (1, 1), padding=g.padding, stride=g.stride)
    return torch.linalg.vector_norm(sampled.flatten(2), dim=2)


def _features(x_abs: Tensor, g: ConvGeometry, plan: QuadraticPlan) -> Tensor:
    """The quadratic-form features of a ``patches`` or ``pixels`` plan, ``(c_in, N, pairs)``.

    ``patches``: the upper triangle of each (sample, channel) ``k×k`` Gram matrix of the unfolded
    receptive fields, computed :data:`FEATURE_CHUNK_ELEMENTS` of unfolded patches at a time: the
    unfolded tensor is ``k`` times the input, and unfolding it all at once spent most of the layer's
    time writing and re-reading memory (3x slower at 64 channels of 32×32 than cache-sized chunks).
    """
    n, c_in = x_abs.shape[:2]
    if plan.mode == "pixels":
        flat = x_abs.reshape(n, c_in, -1)
        u, v, _ = _pairs(flat.shape[2], x_abs.device)
        return (flat[:, :, u] * flat[:, :, v]).transpose(0, 1)  # (c_in, N, pairs)
    kh, kw = g.kernel_size
    k = kh * kw
    u, v, _ = _pairs(k, x_abs.device)
    positions = _out_size(g, x_abs.shape[2:])
    per_sample = c_in * k * positions[0] * positions[1]
    step = max(1, FEATURE_CHUNK_ELEMENTS // max(per_sample, 1))
    features = torch.empty(c_in, n, u.numel(), dtype=x_abs.dtype, device=x_abs.device)
    for start in range(0, n, step):
        part = x_abs[start : start + step]
        patches = F.unfold(part, (kh, kw), dilation=g.dilation, padding=g.padding, stride=g.stride)
        patches = patches.reshape(part.shape[0], c_in, k, -1)
        gram = patches @ patches.transpose(2, 3)  # (n, c_in, k, k)
        features[:, start : start + part.shape[0]] = gram[:, :, u, v].transpose(0, 1)
    return features


def _norms(x_abs: Tensor, g: ConvGeometry, plan: QuadraticPlan) -> Tensor:
    """Per-sample norms laid out ``(c_in, N, c_out/G)``, the layout the batched product produces."""
    if plan.mode == "pointwise":
        return torch.bmm(_sampled_norms(x_abs, g).T.unsqueeze(2), plan.coefficients)
    if plan.mode == "direct":
        return _by_input(conv_norms_grouped(x_abs, plan.coefficients, g).permute(1, 2, 0), plan.groups)
    quad = torch.bmm(_features(x_abs, g, plan), plan.coefficients)  # (c_in, N, c_out/G)
    # Rounding can leave a tiny negative value where the exact form is 0. In place: this tensor is
    # the largest one of the computation.
    return quad.clamp_min_(0).sqrt_()


def conv_norms_gram(
    x_abs: Tensor, kernel_abs: Tensor, conv: nn.Module | ConvGeometry, plan: QuadraticPlan | None = None
) -> Tensor:
    """Per-sample ``‖ |K_ji| ∗ |x_{n,ι(j,i)}| ‖_F`` as quadratic forms, shape ``(N, c_out, c_in/G)``.

    ``‖K̂ ∗ x‖_F² = Σ_p (Σ_u K̂_u X_{u,p})² = K̂ᵀ (X Xᵀ) K̂`` with ``X`` the unfolded receptive fields
    (zero padding included). ``G = X Xᵀ`` is symmetric, so only its upper triangle is used, and the
    quadratic forms of the ``c_out/G`` kernels reading input channel ``ι`` are one matrix product
    ``(N, k') @ (k', c_out/G)`` per channel. Maps smaller than the kernel use the pixel form instead
    (:class:`QuadraticPlan`).

    Args:
        x_abs: ``|x|`` of shape ``(N, c_in, H, W)`` (``(N, c_in, L)`` for a Conv1d).
        kernel_abs: ``|K|`` of shape ``(c_out, c_in/G, k_h, k_w)`` (``(c_out, c_in/G, k)`` for a Conv1d).
        conv: the layer or its :class:`ConvGeometry` (stride, padding, dilation and groups).
        plan: :func:`plan_quadratic` for these (2-D form) kernels and input size (computed if not given).
    """
    x_abs, kernel_abs, g = _layout(x_abs, kernel_abs, conv)
    if plan is None:
        plan = plan_quadratic(kernel_abs, g, x_abs.shape[2:])
    return _by_kernel(_norms(x_abs, g, plan), plan.groups)


def conv_norm_sum(
    x: Tensor, conv: nn.Module | ConvGeometry, kernel_abs: Tensor, plan: QuadraticPlan | None = None
) -> Tensor:
    """``Σ_n ‖ |K_ji| ∗ |x_{n,ι(j,i)}| ‖_F`` over the batch ``x``, shape ``(c_out, c_in/G)``, memory-bounded.

    Uses :func:`conv_norms_gram`: about ``k(k+1)/2·(P + c_out/G)`` multiply-adds per sample and input
    channel against the forward pass's ``k·P·c_out/G``, in large matrix products; a 1×1 kernel needs only
    ``Σ_n ‖x_{n,ι}‖`` (``pointwise`` plan).
    """
    x_abs, kernel_abs, g = _layout(x.detach().abs(), kernel_abs, conv)
    c_in = x_abs.shape[1]
    if plan is None:
        plan = plan_quadratic(kernel_abs, g, x_abs.shape[2:])
    c_out_g = kernel_abs.shape[0] // plan.groups
    if plan.mode == "pointwise":
        # Σ_n K̂_ji ‖x_{n,ι}‖ = K̂_ji Σ_n ‖x_{n,ι}‖: one norm per sample and channel, no per-kernel work.
        summed = _sampled_norms(x_abs, g).double().sum(dim=0)  # (c_in,)
        total = summed.view(c_in, 1) * plan.coefficients[:, 0, :].double()
    else:
        total = _quadratic_sum(x_abs, g, plan, c_out_g)
    if plan.groups == 1:
        return total.T
    return _by_kernel(total.unsqueeze(1), plan.groups)[0]


def _quadratic_sum(x_abs: Tensor, g: ConvGeometry, plan: QuadraticPlan, c_out_g: int) -> Tensor:
    """``Σ_n`` of the per-sample norms in the per-input layout ``(c_in, c_out/G)``, in bounded chunks.

    ``patches``/``pixels``: the features of a sample chunk (:func:`_features`) are turned into norms and
    summed a few input channels at a time, so that the ``(channels, N, c_out/G)`` block of squared norms
    stays cache-sized (:data:`NORM_BLOCK_ELEMENTS`) through the product, the square root and the sum: on
    a whole chunk these three passes were memory-bound (3x slower on VGG-16's 512-channel layers).
    """
    n, c_in = x_abs.shape[:2]
    out_h, out_w = _out_size(g, x_abs.shape[2:])
    positions = out_h * out_w
    if plan.mode == "direct":  # the responses: (c_out/G)·P per input channel, plus the input
        per_sample = c_in * (c_out_g * positions + int(x_abs[0, 0].numel()))
    else:  # the features and a one-channel block of norms
        per_sample = c_in * plan.coefficients.shape[1] + c_out_g
    # At most SUM_CHUNK_SAMPLES per float32 partial sum: its rounding stays ~1e-6 relative.
    chunk = max(1, min(SUM_CHUNK_SAMPLES, CHUNK_ELEMENTS // max(per_sample, 1)))
    total = torch.zeros(c_in, c_out_g, dtype=torch.float64, device=x_abs.device)
    if plan.mode == "direct":
        for start in range(0, n, chunk):
            # Sum over samples in the product's own layout (a permuted view was 30x slower), in float32
            # within a chunk (a float64 reduction was 8x slower); chunks accumulate in float64.
            total += _norms(x_abs[start : start + chunk], g, plan).sum(dim=1).double()
        return total
    partial = torch.empty(c_in, c_out_g, dtype=x_abs.dtype, device=x_abs.device)
    for start in range(0, n, chunk):
        features = _features(x_abs[start : start + chunk], g, plan)  # (c_in, n, pairs)
        rows = features.shape[1]
        block = max(1, NORM_BLOCK_ELEMENTS // max(rows * c_out_g, 1))
        buffer = torch.empty(min(block, c_in), rows, c_out_g, dtype=x_abs.dtype, device=x_abs.device)
        for first in range(0, c_in, block):
            last = min(c_in, first + block)
            quad = torch.bmm(features[first:last], plan.coefficients[first:last], out=buffer[: last - first])
            # Rounding can leave a tiny negative value where the exact form is 0.
            quad.clamp_min_(0).sqrt_()
            torch.sum(quad, dim=1, out=partial[first:last])  # float32 within a chunk, as above
        total += partial.double()
    return total


def _out_size(g: ConvGeometry, in_size: Sequence[int]) -> tuple[int, int]:
    sizes = []
    for d in range(2):
        k, s = g.kernel_size[d], g.stride[d]
        p, dil = g.padding[d], g.dilation[d]
        sizes.append((int(in_size[d]) + 2 * int(p) - dil * (k - 1) - 1) // s + 1)
    return sizes[0], sizes[1]


def _positions(x: Tensor) -> tuple[int, ...] | None:
    """The positions of a Linear input ``(N, *positions, in)`` (``None`` for ``(N, in)`` or ``(in,)``)."""
    return tuple(int(s) for s in x.shape[1:-1]) if x.dim() > 2 else None


@dataclass
class ReliefStatistics(ForwardHooks):
    """Context manager accumulating the activation statistics NN-relief scores from.

    Args:
        layers: ``{name: module}`` of the ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layers to score
            (convolutions of any ``groups``).
        outputs: ``{name: module}`` of further modules whose mean absolute output is accumulated (e.g.
            a residual block's last BN and its shortcut).
        per_sample_norms: also accumulate the conv mean-of-norms numerator (the paper's variant).
        inputs: ``{name: module}`` of further modules of any kind whose mean absolute input only is
            accumulated (kind ``"input"``; what the dead-unit rule reads of a layer it does not score).

    Raises:
        UnsupportedModelError: on entering, for a layer of ``layers`` that is not a Linear, Conv1d or
            Conv2d (a transposed or 3-D convolution): the message names it and the fix.

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
    inputs: dict[str, nn.Module] = field(default_factory=dict)
    stats: dict[str, LayerStats] = field(default_factory=dict, init=False)
    _handles: list[Any] = field(default_factory=list, init=False, repr=False)
    _kernels: dict[str, tuple[Tensor, tuple[int, ...], QuadraticPlan]] = field(
        default_factory=dict, init=False, repr=False
    )
    _geometry: dict[str, ConvGeometry] = field(default_factory=dict, init=False, repr=False)

    def __enter__(self) -> ReliefStatistics:  # noqa: PYI034 - py3.10 has no typing.Self
        """Register the hooks (previous statistics are discarded)."""
        self.stats = {}
        self._kernels = {}
        self._geometry = {}
        try:
            for name, module in self.layers.items():
                if isinstance(module, nn.Linear):
                    self.stats[name] = LayerStats("linear")
                else:
                    self._geometry[name] = conv_geometry(module, name or "<root>")
                    self.stats[name] = LayerStats("conv")
                self._handles.append(module.register_forward_hook(self._layer_hook(name)))
            for name, module in self.inputs.items():
                if name in self.stats:
                    continue  # a scored layer already accumulates its mean |input|
                self.stats[name] = LayerStats("linear" if isinstance(module, nn.Linear) else "input")
                self._handles.append(module.register_forward_hook(self._input_hook(name)))
            for name, module in self.outputs.items():
                self.stats[name] = LayerStats("output")
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def _input_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Any) -> None:
            x = inputs[0].detach()
            entry = self.stats[name]
            entry.abs_input_sum = _accumulate(entry.abs_input_sum, x.abs().sum(dim=0), name)
            entry.count += x.shape[0]

        return hook

    def _layer_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach()
            entry = self.stats[name]
            if entry.kind == "linear":
                positions = _positions(x)
                if positions is None:
                    flat = x.reshape(-1, x.shape[-1])
                    entry.abs_input_sum = _accumulate(entry.abs_input_sum, flat.abs().sum(dim=0), name)
                    entry.count += flat.shape[0]
                    return
                # A Linear over positions is a 1x1 convolution over them: samples are dim 0.
                entry.abs_input_sum = _accumulate(entry.abs_input_sum, x.abs().sum(dim=0), name)
                entry.count += x.shape[0]
                entry.out_size = positions
                if self.per_sample_norms:
                    wide = x.to(torch.promote_types(x.dtype, torch.float32))
                    norms = torch.linalg.vector_norm(wide.reshape(x.shape[0], -1, x.shape[-1]), dim=1)
                    entry.norm_sum = _accumulate(entry.norm_sum, norms.sum(dim=0), name)
                return
            geometry = self._geometry[name]
            entry.abs_input_sum = _accumulate(entry.abs_input_sum, x.abs().sum(dim=0), name)
            entry.count += x.shape[0]
            entry.out_size = (
                (1, int(output.shape[-1])) if geometry.one_d else (int(output.shape[2]), int(output.shape[3]))
            )
            if self.per_sample_norms:
                view = geometry.view(x)
                inner = geometry.inner()
                cached = self._kernels.get(name)
                if cached is None or cached[1] != tuple(view.shape[2:]):
                    # |K| and its plan once per collection (and input size): the weights are fixed.
                    kernel = geometry.kernel(module.weight.detach().abs().to(x.dtype))
                    cached = (kernel, tuple(view.shape[2:]), plan_quadratic(kernel, inner, view.shape[2:]))
                    self._kernels[name] = cached
                entry.norm_sum = _accumulate(
                    entry.norm_sum, conv_norm_sum(view, inner, cached[0], cached[2]), name, "kernels"
                )

        return hook

    def _output_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            entry = self.stats[name]
            y = output.detach()
            entry.abs_output_sum = _accumulate(entry.abs_output_sum, y.abs().sum(dim=0), name, "outputs")
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
def calibration_inputs(batch: Any, what: str, pair: str, hint: str = "") -> Any:
    """The inputs ``x`` of a calibration batch ``(x, y)``; a one-line ConfigError for anything else.

    ``what`` names the caller in the message, ``pair`` how it calls the pair, ``hint`` follows the error.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError(
            f"{what}: every calibration batch must be an {pair} pair; got a {type(batch).__name__}{hint}"
        )
    return batch[0]


def collect(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    layers: dict[str, nn.Module],
    outputs: dict[str, nn.Module] | None = None,
    per_sample_norms: bool = True,
    inputs: dict[str, nn.Module] | None = None,
) -> dict[str, LayerStats]:
    """Run ``batches`` through ``model`` in eval mode and return the accumulated statistics.

    Each batch is an ``(x, y)`` pair (``y`` is not read); ``x`` is a tensor, a tuple or list of positional
    arguments or a dict of keyword arguments (:func:`forward`), moved to the model's device. The model's
    train/eval mode is restored afterwards.

    Raises:
        UnsupportedModelError: a layer of ``layers`` relief does not score (see :class:`ReliefStatistics`).
        ConfigError: a batch that is not an ``(x, y)`` pair, or inputs whose size changes between batches.
    """
    with (
        eval_mode(model),
        ReliefStatistics(layers, outputs or {}, per_sample_norms, inputs or {}) as recorder,
    ):
        for batch in batches:
            call_model(
                model,
                calibration_inputs(
                    batch, "relief statistics", "(x, y)", " (use [(x, y), ...], y may be None)"
                ),
            )
        return recorder.finalize()
