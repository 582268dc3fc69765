"""Interspace pruning: convolution filters as coefficients over a trainable filter basis.

Wimmer, Mehnert, Condurache, "Interspace Pruning: Using Adaptive Filter Representations to Improve
Training of Sparse CNNs", CVPR 2022 (arXiv 2203.07808).

A convolution weight ``W ∈ R^{c_out × c_in × K_h × K_w}`` (``n = K_h K_w``) is written as

    vec(w_{o,i}) = B_i · Λ_{o,i,:}        i.e.  W_flat = Λ Bᵀ  (per filter),

with coefficients ``Λ ∈ R^{c_out × c_in × n}`` and a filter basis ``B ∈ R^{n × n}`` whose column ``j`` is
the flattened basis filter ``F^(j)`` (one basis shared by the layer, or one ``B_i`` per input channel).
Pruning masks act on the coefficients: the effective weight is ``W = (Λ ⊙ M) Bᵀ``. Standard pruning
(SP) is the special case ``B = I`` frozen; in interspace pruning (IP) ``Λ`` and ``B`` are trained
jointly, so ``∂L/∂B = Σ_{o,i} vec(∂L/∂w_{o,i}) (Λ ⊙ M)_{o,i,:}ᵀ`` reshapes every filter, sparse ones
included, while ``∂L/∂Λ = Bᵀ vec(∂L/∂w) ⊙ M`` keeps pruned coefficients at exactly zero.

How it is built: the coefficients are stored in the weight's own shape ``(c_out, c_in, K_h, K_w)`` (entry
``[o, i, a, b]`` is ``Λ_{o,i,a·K_w+b}``), as the *original* of a ``torch.nn.utils.parametrize`` stack
``[Mask, FilterBasis]`` on ``conv.weight``: the :class:`~prunelab.core.masking.Mask` (first) masks the
coefficients and :class:`FilterBasis` (second, owning the trainable ``basis``) maps them to the weight.
Every pruning component therefore sees the coefficients where it used to see the weight
(``masking.original`` is ``Λ``), and criteria, granularities, selectors and schedules run unchanged.

Layers where IP degenerates to SP (``n = 1``: 1×1 convolutions, Linear layers) or that are grouped
(depthwise) keep standard pruning.

Inference ("by the linearity of convolutions"): ``y_o = Σ_i Σ_n Λ̃_{o,i,n} (F_i^(n) ⋆ x_i)``, i.e. a
grouped basis convolution (``groups = c_in``, ``c_in·n`` outputs) followed by a sparse 1×1 convolution
with weight ``Λ̃`` reshaped to ``(c_out, c_in·n)`` (:class:`CompactInterspaceConv2d`). Its costs are
``params = nnz(Λ̃) + |B|`` (``n²`` shared, ``c_in·n²`` per channel) and
``MACs = H'W'·(c_in·n·K_h K_w + nnz(Λ̃))`` per image.

Choices the paper's text could not confirm (see docs/methods/interspace.md): the basis is initialised
to the identity (IP starts exactly as SP) or to the orthonormal 2-D DCT-II basis; one basis per layer
(default) or per input channel; the basis is trained with the same optimizer settings as the weights;
lottery-ticket rewinding also rewinds the basis (``rewind_basis=True``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.core import masking
from prunelab.core.modules import copy_model
from prunelab.errors import ConfigError

__all__ = [
    "BASIS_INITS",
    "CompactInterspaceConv2d",
    "FilterBasis",
    "attach_interspace",
    "compact_interspace",
    "dct_basis",
    "filter_basis_of",
    "interspace_costs",
    "interspace_layers",
    "interspace_state_dict",
    "load_interspace_state_dict",
    "supports_interspace",
]

#: Basis initialisations: ``identity`` (IP starts as SP) and ``dct`` (orthonormal 2-D DCT-II).
BASIS_INITS: tuple[str, ...] = ("identity", "dct")


def dct_basis(kh: int, kw: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthonormal 2-D DCT-II basis of ``kh × kw`` filters as an ``(n, n)`` matrix, ``n = kh·kw``.

    Column ``j = p·kw + q`` is the flattened basis filter ``F^(j)[a, b] = c_p(a) c_q(b)`` with the 1-D
    DCT-II vectors ``c_p(a) = α_p cos(π (2a + 1) p / (2K))``, ``α_0 = √(1/K)``, ``α_p = √(2/K)``. Column 0
    is the constant filter; the matrix is orthogonal (``Bᵀ B = I``).
    """
    kw = kh if kw is None else kw

    def dct_1d(k: int) -> Tensor:
        a = torch.arange(k, dtype=torch.float64)
        p = a[:, None]
        c = torch.cos(math.pi * (2 * a[None, :] + 1) * p / (2 * k)) * math.sqrt(2.0 / k)
        c[0] /= math.sqrt(2.0)
        return c  # rows = frequencies p, columns = positions a

    # kron(C_h, C_w)[p·kw+q, a·kw+b] = c_p(a) c_q(b): rows are flattened basis filters.
    return torch.kron(dct_1d(kh), dct_1d(kw)).T.contiguous().to(dtype)


def _initial_basis(init: str, n: int, kh: int, kw: int) -> Tensor:
    if init == "identity":
        return torch.eye(n, dtype=torch.float64)
    if init == "dct":
        return dct_basis(kh, kw, dtype=torch.float64)
    raise ConfigError(f"interspace basis init {init!r} is unknown; use one of {', '.join(BASIS_INITS)}")


class FilterBasis(nn.Module):
    """Parametrization ``Λ ↦ W`` with ``W[o, i] = reshape(B_i · vec(Λ[o, i]))`` and a trainable basis.

    Register it *after* a :class:`~prunelab.core.masking.Mask` on the same tensor (see
    :func:`attach_interspace`), so that the mask acts on the coefficients.

    Args:
        kernel_size: ``(K_h, K_w)`` of the convolution.
        in_channels: ``c_in`` (the number of bases with ``per_channel``).
        init: ``identity`` or ``dct`` (see :data:`BASIS_INITS`).
        per_channel: one basis per input channel instead of one per layer.
        rewind_basis: when a plain weight is loaded into the layer (lottery-ticket rewinding), also
            reset the basis to its initial value; otherwise only the coefficients are rewound.
        device: device of the basis.
        dtype: dtype of the basis.

    Attributes:
        basis: ``(n, n)`` or ``(c_in, n, n)`` trainable basis; column ``j`` is basis filter ``j``.
        basis_init: the initial basis (a buffer: it defines what loading a plain weight means).
    """

    def __init__(
        self,
        kernel_size: tuple[int, int],
        in_channels: int,
        *,
        init: str = "identity",
        per_channel: bool = False,
        rewind_basis: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        kh, kw = int(kernel_size[0]), int(kernel_size[1])
        n = kh * kw
        self.kernel_size = (kh, kw)
        self.in_channels = int(in_channels)
        self.init = init
        self.per_channel = bool(per_channel)
        self.rewind_basis = bool(rewind_basis)
        b0 = _initial_basis(init, n, kh, kw).to(dtype=dtype, device=device)
        if self.per_channel:
            b0 = b0.expand(self.in_channels, n, n).clone()
        self.basis = nn.Parameter(b0.clone())
        self.register_buffer("basis_init", b0.clone())

    @property
    def n(self) -> int:
        """Number of basis filters (``K_h·K_w``)."""
        return self.kernel_size[0] * self.kernel_size[1]

    def combine(self, coefficients: Tensor, basis: Tensor) -> Tensor:
        """``W`` from weight-shaped coefficients and a basis (shared ``(n, n)`` or ``(c_in, n, n)``)."""
        if basis.dim() == 2:
            # W_flat = Λ Bᵀ as one plain 2-D mm: matmul's batched folding of a 3-D operand added copies
            # and views that doubled the per-layer overhead of a training step.
            n = basis.shape[0]
            return torch.mm(coefficients.reshape(-1, n), basis.t()).view(coefficients.shape)
        o, i = coefficients.shape[:2]
        w = torch.einsum("oin,ikn->oik", coefficients.reshape(o, i, self.n), basis)
        return w.reshape(coefficients.shape)

    def forward(self, coefficients: Tensor) -> Tensor:
        """The effective weight for (masked) coefficients."""
        return self.combine(coefficients, self.basis)

    def coefficients_of(self, weight: Tensor, basis: Tensor | None = None) -> Tensor:
        """Weight-shaped coefficients ``Λ`` with ``combine(Λ, basis) == weight`` (default: current basis)."""
        basis = self.basis if basis is None else basis
        o, i = weight.shape[:2]
        w = weight.reshape(o, i, self.n).to(basis.dtype)
        if basis.dim() == 2:
            lam = torch.linalg.solve(basis, w.reshape(-1, self.n).T).T
        else:
            # Per input channel: solve B_i λ = w for every (o, i) in one batched call.
            lam = torch.linalg.solve(basis, w.permute(1, 2, 0)).permute(2, 0, 1)
        return lam.reshape(weight.shape).to(weight.dtype)

    def right_inverse(self, weight: Tensor) -> Tensor:
        """Coefficients of ``weight`` in the current basis (what ``module.weight = W`` stores)."""
        return self.coefficients_of(weight)

    @torch.no_grad()
    def from_plain(self, weight: Tensor) -> Tensor:
        """Coefficients to store when a plain weight is loaded (``masking.load_plain_state_dict``).

        A plain weight carries no basis, so it is read in the *initial* basis: rewinding a lottery
        ticket to the initial weights restores the initial coefficients ``Λ_0``. With ``rewind_basis`` the
        basis is reset to ``B_0`` as well (the effective weight is then exactly ``weight``); without it
        the trained basis is kept.
        """
        lam = self.coefficients_of(weight, self.basis_init)
        if self.rewind_basis:
            self.basis.copy_(self.basis_init)
        return lam

    def stored_tensors(self, coefficients: Tensor) -> dict[str, Tensor]:
        """What the compact form stores: the (masked) coefficients and the basis (for parameter counts)."""
        return {"coefficients": coefficients, "basis": self.basis}

    def cost(self, coefficients: Tensor, out_pixels: int) -> dict[str, int]:
        """Parameters and MACs of the compact form for (masked) coefficients and ``out_pixels`` outputs.

        ``params = nnz(Λ̃) + |B|``, ``MACs = H'W'·(c_in·n·K_h K_w + nnz(Λ̃))`` (basis stage + 1×1 stage).
        """
        nnz = int(torch.count_nonzero(coefficients))
        basis_params = self.basis.numel()
        c_in = coefficients.shape[1]
        kh, kw = self.kernel_size
        return {
            "params": coefficients.numel() + basis_params,
            "nonzero": nnz + int(torch.count_nonzero(self.basis)),
            "basis_params": basis_params,
            "coefficients_nonzero": nnz,
            "macs_basis": out_pixels * c_in * self.n * kh * kw,
            "macs_combination": out_pixels * nnz,
            "macs": out_pixels * (c_in * self.n * kh * kw + nnz),
        }

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"kernel_size={self.kernel_size}, init={self.init!r}, per_channel={self.per_channel}"


def supports_interspace(module: nn.Module, name: str = "weight") -> bool:
    """Whether IP applies to ``module.<name>``: an ungrouped ``Conv2d`` weight with more than one tap.

    1×1 convolutions and Linear layers (``n = 1``: a one-element basis is a scalar, IP = SP) and grouped
    or depthwise convolutions keep standard pruning.
    """
    if not isinstance(module, nn.Conv2d) or name != "weight" or module.groups != 1:
        return False
    kh, kw = module.kernel_size
    return kh * kw > 1


def filter_basis_of(module: nn.Module, name: str = "weight") -> FilterBasis | None:
    """The :class:`FilterBasis` on ``module.<name>``, or ``None``."""
    return masking.find_parametrization(module, name, FilterBasis)


@torch.no_grad()
def attach_interspace(
    module: nn.Module,
    name: str = "weight",
    *,
    init: str = "identity",
    per_channel: bool = False,
    rewind_basis: bool = True,
) -> bool:
    """Reparametrize ``module.<name>`` as masked coefficients times a filter basis (idempotent).

    Attaches a :class:`~prunelab.core.masking.Mask` first (if the tensor has none), then a
    :class:`FilterBasis`, and converts the stored original into the coefficients of the current weight,
    so the layer computes exactly the same function afterwards. Call it before building the optimizer
    (the basis is a new parameter) and before pruning.

    Returns:
        ``True`` if the tensor now carries a filter basis, ``False`` if IP does not apply to it
        (:func:`supports_interspace`) and it stays under standard pruning.

    Raises:
        ConfigError: an unknown ``init``, or a non-identity basis for a tensor that is already pruned
            (its zeros would not be zeros in the new basis).
    """
    if init not in BASIS_INITS:
        raise ConfigError(f"interspace basis init {init!r} is unknown; use one of {', '.join(BASIS_INITS)}")
    if filter_basis_of(module, name) is not None:
        return True
    if not supports_interspace(module, name):
        return False
    masking.add_mask(module, name)
    if parametrize.is_parametrized(module, name) and len(module.parametrizations[name]) != 1:  # type: ignore[index]
        raise ConfigError(
            f"{type(module).__name__}.{name} already has other parametrizations; attach the interspace "
            "basis directly after the mask"
        )
    mask = masking.get_mask(module, name)
    if init != "identity" and not bool(mask.all()):
        raise ConfigError(
            "cannot attach a non-identity interspace basis to an already pruned layer; attach it before "
            "pruning (or use init: identity)"
        )
    orig = masking.original(module, name)
    basis = FilterBasis(
        module.kernel_size,  # type: ignore[arg-type]
        module.in_channels,  # type: ignore[arg-type]
        init=init,
        per_channel=per_channel,
        rewind_basis=rewind_basis,
        device=orig.device,
        dtype=orig.dtype,
    )
    # The original held W; from now on it holds Λ with (Λ ⊙ M) B = W (exact for the identity basis).
    orig.copy_(basis.coefficients_of(orig))
    # unsafe=True: the shapes match by construction, and the check would run a forward for nothing.
    parametrize.register_parametrization(module, name, basis, unsafe=True)
    return True


def interspace_layers(model: nn.Module) -> list[tuple[str, nn.Module, FilterBasis]]:
    """``(module name, module, FilterBasis)`` for every interspace-reparametrized weight of ``model``."""
    out = []
    for module_name, module in model.named_modules():
        basis = filter_basis_of(module, "weight")
        if basis is not None:
            out.append((module_name, module, basis))
    return out


def masked_coefficients(module: nn.Module, name: str = "weight") -> Tensor:
    """``Λ ⊙ M`` of an interspace layer, in the weight's shape (a detached tensor)."""
    with torch.no_grad():
        x = masking.original(module, name)
        for p in module.parametrizations[name]:  # type: ignore[index]
            if isinstance(p, FilterBasis):
                break
            x = p(x)
        return x.detach()


def interspace_state_dict(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{weight fqn: {"coefficients", "basis", "mask", "init", "per_channel", "rewind_basis"}}``.

    Coefficients are ``(c_out, c_in, n)`` (masked), the mask has the same shape; plain tensors and
    strings only, so the result loads with ``torch.load(..., weights_only=True)``.
    """
    state: dict[str, dict[str, Any]] = {}
    for module_name, module, basis in interspace_layers(model):
        o, i = module.weight.shape[:2]
        fqn = f"{module_name}.weight" if module_name else "weight"
        state[fqn] = {
            "coefficients": masked_coefficients(module).reshape(o, i, basis.n).cpu().clone(),
            "mask": masking.get_mask(module, "weight").reshape(o, i, basis.n).cpu().clone(),
            "basis": basis.basis.detach().cpu().clone(),
            "init": basis.init,
            "per_channel": basis.per_channel,
            "rewind_basis": basis.rewind_basis,
        }
    return state


@torch.no_grad()
def load_interspace_state_dict(model: nn.Module, state: dict[str, dict[str, Any]]) -> None:
    """Attach (if needed) and restore what :func:`interspace_state_dict` saved, by qualified name.

    Raises:
        ConfigError: an entry naming a tensor the model lacks or that IP does not apply to.
    """
    modules = dict(model.named_modules())
    for fqn, entry in state.items():
        module_name, _, name = fqn.rpartition(".")
        module = modules.get(module_name)
        if module is None or not attach_interspace(
            module,
            name,
            init=entry["init"],
            per_channel=entry["per_channel"],
            rewind_basis=entry["rewind_basis"],
        ):
            raise ConfigError(f"interspace state for {fqn!r} does not fit the model; build the same model")
        basis = filter_basis_of(module, name)
        assert basis is not None
        shape = module.parametrizations[name].original.shape  # type: ignore[index]
        masking.load_masks(model, {fqn: entry["mask"].reshape(shape)})
        basis.basis.copy_(entry["basis"])
        orig = masking.original(module, name)
        orig.copy_(entry["coefficients"].reshape(shape))


# --------------------------------------------------------------------------------------------------
# Compact inference form and its costs


class CompactInterspaceConv2d(nn.Module):
    """An interspace convolution as a grouped basis convolution followed by a sparse 1×1 combination.

    ``z = conv2d(x, F, stride, padding, dilation, groups=c_in)`` computes the ``n`` basis responses of
    every input channel (``c_in·n`` channels), then ``y = conv2d(z, Λ̃) + bias`` combines them with the
    pruned coefficients. Equal to the baked convolution by linearity.

    Args:
        basis_filters: ``(c_in·n, 1, K_h, K_w)``; filter ``i·n + j`` is basis filter ``j`` of channel ``i``.
        combination: ``(c_out, c_in·n)`` masked coefficients (mostly zeros).
        bias: the convolution's bias or ``None``.
        stride, padding, dilation: those of the original convolution.
        in_channels: ``c_in``.
    """

    def __init__(
        self,
        basis_filters: Tensor,
        combination: Tensor,
        bias: Tensor | None,
        *,
        stride: tuple[int, ...],
        padding: Any,
        dilation: tuple[int, ...],
        in_channels: int,
    ) -> None:
        super().__init__()
        self.basis_filters = nn.Parameter(basis_filters.detach().clone())
        self.combination = nn.Parameter(combination.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.in_channels = in_channels

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> CompactInterspaceConv2d:
        """Build the compact form of an interspace-reparametrized ``conv``.

        Raises:
            ConfigError: if ``conv`` has no filter basis or uses a padding mode other than zeros.
        """
        basis = filter_basis_of(conv)
        if basis is None:
            raise ConfigError("compact form needs an interspace conv; call attach_interspace first")
        if conv.padding_mode != "zeros":
            raise ConfigError(
                f"compact interspace form supports padding_mode='zeros', not {conv.padding_mode!r}"
            )
        kh, kw = basis.kernel_size
        c_in, n = conv.in_channels, basis.n
        b = basis.basis.detach()
        b = b.expand(c_in, n, n) if b.dim() == 2 else b
        # Column j of B_i is basis filter j of channel i.
        filters = b.transpose(1, 2).reshape(c_in * n, 1, kh, kw)
        lam = masked_coefficients(conv).reshape(conv.out_channels, c_in * n)
        return cls(
            filters,
            lam,
            None if conv.bias is None else conv.bias.detach(),
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            in_channels=c_in,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Basis responses, then their sparse combination."""
        z = F.conv2d(x, self.basis_filters, None, self.stride, self.padding, self.dilation, self.in_channels)
        return F.conv2d(z, self.combination[:, :, None, None], self.bias)

    def cost(self, out_pixels: int) -> dict[str, int]:
        """Non-zero coefficients, bias size and the MACs of both stages for ``out_pixels`` outputs."""
        kh, kw = self.basis_filters.shape[-2:]
        nnz = int(torch.count_nonzero(self.combination))
        basis_rows = self.basis_filters.shape[0]
        n = basis_rows // self.in_channels
        # A shared basis is stored once (n²) even though the grouped conv replicates it per channel.
        return {
            "coefficients_nonzero": nnz,
            "macs_basis": out_pixels * basis_rows * kh * kw,
            "macs_combination": out_pixels * nnz,
            "macs": out_pixels * (basis_rows * kh * kw + nnz),
            "bias": 0 if self.bias is None else self.bias.numel(),
            "n": n,
        }


@torch.no_grad()
def _unparametrize_copy(module: nn.Module) -> None:
    """Turn a *deep copy's* parametrized tensors into plain parameters holding their effective values.

    ``parametrize.remove_parametrizations`` deletes the tensor's property from the module's generated
    class, and a deep copy shares that class with the original, so calling it on a copy would strip the
    original model's weights. Swapping the copy back to the plain base class touches only the copy.
    """
    values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}  # type: ignore[union-attr]
    del module._modules["parametrizations"]
    module.__class__ = type(module).__mro__[1]  # the class parametrize derived "Parametrized<Cls>" from
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value))


def compact_interspace(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every interspace conv replaced by :class:`CompactInterspaceConv2d`.

    Every other mask is baked into a plain weight of the copy. ``model`` itself is left unchanged.
    """
    compact = copy_model(model)
    for module_name, module, _ in interspace_layers(compact):
        replacement = CompactInterspaceConv2d.from_conv(module)  # type: ignore[arg-type]
        parent_name, _, child = module_name.rpartition(".")
        setattr(compact.get_submodule(parent_name) if parent_name else compact, child, replacement)
    for module in compact.modules():
        if parametrize.is_parametrized(module):
            _unparametrize_copy(module)
    return compact


def interspace_costs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Honest costs of the compact IP inference form of ``model`` for one input of ``input_shape``.

    Interspace layers count ``nnz(Λ̃) + |B|`` parameters and the MACs of the basis and the 1×1 stages;
    every other weighted layer counts its non-zero weights and density-scaled MACs
    (:func:`prunelab.metrics.layer_table`), and biases/BN parameters are added as in
    :func:`prunelab.metrics.count_parameters`.

    Returns:
        ``{"ip_layers", "basis_params", "coefficients", "coefficients_nonzero", "params_nonzero",
        "macs_ip_layers", "macs_basis", "macs_combination"}``.
    """
    from prunelab.metrics.counting import _count_flops

    _, per_module = _count_flops(model, input_shape, 1)
    out = {
        "ip_layers": 0,
        "basis_params": 0,
        "coefficients": 0,
        "coefficients_nonzero": 0,
        "macs_ip_layers": 0,
        "macs_basis": 0,
        "macs_combination": 0,
    }
    for module_name, module, basis in interspace_layers(model):
        lam = masked_coefficients(module)
        out_pixels = (per_module.get(module_name, 0) // 2) // lam.numel()
        c = basis.cost(lam, out_pixels)
        out["ip_layers"] += 1
        out["basis_params"] += c["basis_params"]
        out["coefficients"] += lam.numel()
        out["coefficients_nonzero"] += c["coefficients_nonzero"]
        out["macs_ip_layers"] += c["macs"]
        out["macs_basis"] += c["macs_basis"]
        out["macs_combination"] += c["macs_combination"]
    return out


def attach_to_targets(
    targets: Iterable[Any], *, init: str = "identity", per_channel: bool = False, rewind_basis: bool = True
) -> list[str]:
    """Attach a filter basis to every target (``Target`` objects) IP applies to; returns their fqns."""
    attached = []
    for t in targets:
        if attach_interspace(
            t.module, t.param, init=init, per_channel=per_channel, rewind_basis=rewind_basis
        ):
            attached.append(t.fqn)
    return attached
