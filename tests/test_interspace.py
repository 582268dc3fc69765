"""Invariants of interspace pruning (prunelab.reparam.interspace): one invariant per test."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab._io import atomic_torch_save, safe_torch_load
from prunelab.core import masking
from prunelab.errors import ConfigError
from prunelab.metrics import count_parameters, layer_table
from prunelab.pruning.pruner import Pruner
from prunelab.reparam import (
    CompactInterspaceConv2d,
    FilterBasis,
    attach_interspace,
    compact_interspace,
    dct_basis,
    interspace_costs,
    interspace_state_dict,
    load_interspace_state_dict,
)
from prunelab.reparam.interspace import filter_basis_of, masked_coefficients


class Net(nn.Module):
    """Two 3×3 convs (one strided, one dilated with bias), a 1×1 conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=2, dilation=2, bias=True)
        self.point = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x).relu()).relu()
        return self.fc(self.point(x).relu().flatten(1))


pytestmark = pytest.mark.usefixtures("one_thread")


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _ip(init: str = "identity", per_channel: bool = False, sparsity: float | None = 0.8) -> Net:
    torch.manual_seed(0)
    net = Net()
    pruner = Pruner(net, reparam="interspace", reparam_kwargs={"init": init, "per_channel": per_channel})
    pruner.prepare()
    if sparsity is not None:
        pruner.step(sparsity)
    return net


def _perturb_basis(net: nn.Module) -> None:
    # A trained basis is no longer the initial one: make every test see a generic basis.
    with torch.no_grad():
        for m in (net.conv1, net.conv2):
            b = filter_basis_of(m)
            assert b is not None
            b.basis.add_(0.1 * torch.randn_like(b.basis))


def test_dct_basis_is_orthonormal() -> None:
    b = dct_basis(3)
    torch.testing.assert_close(b.T @ b, torch.eye(9), atol=1e-6, rtol=0)


def test_dct_basis_first_filter_is_constant() -> None:
    torch.testing.assert_close(dct_basis(3)[:, 0], torch.full((9,), 1 / 3))


def test_identity_basis_ip_forward_equals_sp_forward() -> None:
    torch.manual_seed(0)
    sp = Net()
    ip = copy.deepcopy(sp)
    Pruner(sp).prepare().step(0.7)
    Pruner(ip, reparam="interspace").prepare().step(0.7)
    torch.testing.assert_close(ip(_x()), sp(_x()), atol=0, rtol=0)


@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per_channel"])
def test_dct_attach_keeps_the_function(per_channel: bool) -> None:
    torch.manual_seed(0)
    net = Net()
    ref = net(_x())
    Pruner(net, reparam="interspace", reparam_kwargs={"init": "dct", "per_channel": per_channel}).prepare()
    torch.testing.assert_close(net(_x()), ref, atol=1e-5, rtol=1e-5)


def test_one_by_one_convs_and_linear_layers_fall_back_to_standard_pruning() -> None:
    net = _ip(sparsity=None)
    assert filter_basis_of(net.conv1) is not None and filter_basis_of(net.conv2) is not None
    assert filter_basis_of(net.point) is None and filter_basis_of(net.fc) is None
    assert masking.has_mask(net.point) and masking.has_mask(net.fc)


def test_masks_act_on_the_coefficients() -> None:
    net = _ip(init="dct")
    mask = masking.get_mask(net.conv2)
    assert not bool(mask.all())
    assert bool((masked_coefficients(net.conv2)[~mask] == 0).all())
    # ...while the effective weight is spatially dense (the point of the interspace).
    assert float((net.conv2.weight == 0).float().mean()) < float((~mask).float().mean())


def test_masked_coefficient_gets_zero_gradient() -> None:
    net = _ip(init="dct")
    net(_x()).square().sum().backward()
    coeffs = masking.original(net.conv2)
    assert coeffs.grad is not None
    assert bool((coeffs.grad[~masking.get_mask(net.conv2)] == 0).all())


def test_masked_coefficient_stays_zero_after_sgd_momentum_step() -> None:
    net = _ip(init="dct")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        net(_x()).square().sum().backward()
        opt.step()
    assert bool((masked_coefficients(net.conv1)[~masking.get_mask(net.conv1)] == 0).all())
    assert bool((masking.original(net.conv1)[~masking.get_mask(net.conv1)] == 0).all())


def test_basis_receives_gradient() -> None:
    net = _ip()
    net(_x()).square().sum().backward()
    basis = filter_basis_of(net.conv1)
    assert basis is not None and basis.basis.grad is not None
    assert float(basis.basis.grad.abs().sum()) > 0


def test_basis_is_in_model_parameters() -> None:
    net = _ip()
    basis = filter_basis_of(net.conv2)
    assert basis is not None
    assert any(p is basis.basis for p in net.parameters())


def test_bake_keeps_outputs() -> None:
    net = _ip(init="dct", per_channel=True)
    _perturb_basis(net)
    before = net(_x())
    masking.bake(net)
    assert not any(isinstance(m, FilterBasis) for m in net.modules())
    torch.testing.assert_close(net(_x()), before, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per_channel"])
def test_compact_form_equals_baked_conv(per_channel: bool) -> None:
    net = _ip(init="dct", per_channel=per_channel)
    _perturb_basis(net)
    compact = compact_interspace(net)
    assert isinstance(compact.conv1, CompactInterspaceConv2d)
    assert isinstance(compact.conv2, CompactInterspaceConv2d)
    baked = copy.deepcopy(net)
    masking.bake(baked)
    torch.testing.assert_close(compact(_x()), baked(_x()), atol=1e-5, rtol=1e-5)


def test_compact_form_leaves_the_original_model_intact() -> None:
    net = _ip()
    before = net(_x())
    compact_interspace(net)
    torch.testing.assert_close(net(_x()), before, atol=0, rtol=0)


def test_compact_layer_matches_its_conv_with_stride_padding_dilation_and_bias() -> None:
    net = _ip(init="dct")
    _perturb_basis(net)
    x = torch.randn(2, 6, 4, 4)
    layer = CompactInterspaceConv2d.from_conv(net.conv2)
    torch.testing.assert_close(layer(x), net.conv2(x), atol=1e-5, rtol=1e-5)


def test_cost_accounting_counts_nonzero_coefficients_plus_basis() -> None:
    net = _ip(init="dct")
    costs = interspace_costs(net, (3, 8, 8))
    nnz = int((masked_coefficients(net.conv1) != 0).sum()) + int((masked_coefficients(net.conv2) != 0).sum())
    assert costs["coefficients_nonzero"] == nnz
    assert costs["basis_params"] == 2 * 81
    assert costs["coefficients"] == 6 * 3 * 9 + 5 * 6 * 9


def test_cost_accounting_macs_of_both_stages() -> None:
    net = _ip(init="dct")
    costs = interspace_costs(net, (3, 8, 8))
    nnz1 = int((masked_coefficients(net.conv1) != 0).sum())
    nnz2 = int((masked_coefficients(net.conv2) != 0).sum())
    # conv1: 4×4 outputs, c_in 3; conv2: 4×4 outputs, c_in 6; basis stage c_in·n·K² per output pixel.
    assert costs["macs_basis"] == 16 * 3 * 81 + 16 * 6 * 81
    assert costs["macs_combination"] == 16 * (nnz1 + nnz2)


def test_layer_table_reports_the_compact_cost_of_interspace_layers() -> None:
    net = _ip(init="dct")
    row = {r["name"]: r for r in layer_table(net, (3, 8, 8))}["conv2"]
    nnz = int((masked_coefficients(net.conv2) != 0).sum())
    assert row["params"] == 5 * 6 * 9 + 81
    assert row["macs_effective"] == 16 * (6 * 81 + nnz)


def test_count_parameters_counts_coefficients_and_basis_not_the_dense_weight() -> None:
    net = _ip(init="dct")
    total, nonzero = count_parameters(net)
    dense_total, _ = count_parameters(Net())
    assert total == dense_total + 2 * 81
    expected = sum(int((t != 0).sum()) for t in (net.point.weight, net.fc.weight))
    expected += int((masked_coefficients(net.conv1) != 0).sum()) + int(
        (masked_coefficients(net.conv2) != 0).sum()
    )
    expected += 2 * 81 + sum(int((b != 0).sum()) for b in (net.conv2.bias, net.point.bias, net.fc.bias))
    assert nonzero == expected


def test_plain_state_dict_round_trip_restores_coefficients_and_basis(tmp_path: Path) -> None:
    net = _ip(init="dct", per_channel=True)
    _perturb_basis(net)
    path = tmp_path / "state.pt"
    atomic_torch_save({"state": masking.plain_state_dict(net), "masks": masking.masks_state_dict(net)}, path)
    payload = safe_torch_load(path)  # weights_only=True
    fresh = _ip(init="dct", per_channel=True, sparsity=None)
    masking.load_masks(fresh, payload["masks"])
    masking.load_plain_state_dict(fresh, payload["state"])
    torch.testing.assert_close(fresh(_x()), net(_x()), atol=0, rtol=0)


def test_interspace_state_dict_round_trip_by_qualified_name(tmp_path: Path) -> None:
    net = _ip(init="dct")
    _perturb_basis(net)
    path = tmp_path / "ip.pt"
    atomic_torch_save(interspace_state_dict(net), path)
    state = safe_torch_load(path)
    assert set(state) == {"conv1.weight", "conv2.weight"}
    fresh = Net()  # a plain model: the loader attaches the bases again
    load_interspace_state_dict(fresh, state)
    rest = {
        k: v for k, v in masking.plain_state_dict(net).items() if "conv1" not in k and "conv2.weight" not in k
    }
    rest = {k: v for k, v in rest.items() if ".parametrizations." not in k}
    masking.load_masks(fresh, {k: v for k, v in masking.masks_state_dict(net).items() if k not in state})
    masking.load_plain_state_dict(fresh, rest, strict=False)
    torch.testing.assert_close(fresh(_x()), net(_x()), atol=1e-6, rtol=1e-6)


def test_interspace_checkpoint_loads_into_a_plain_model_as_effective_weights() -> None:
    net = _ip(init="dct")
    _perturb_basis(net)
    plain = Net()
    masking.load_plain_state_dict(plain, masking.plain_state_dict(net))
    torch.testing.assert_close(plain(_x()), net(_x()), atol=1e-6, rtol=1e-6)


def test_loading_plain_weights_rewinds_coefficients_and_basis() -> None:
    torch.manual_seed(0)
    net = Net()
    init = masking.plain_state_dict(net)
    pruner = Pruner(net, reparam="interspace", reparam_kwargs={"init": "dct"}).prepare()
    _perturb_basis(net)
    pruner.step(0.5)
    masking.load_plain_state_dict(net, init)
    basis = filter_basis_of(net.conv1)
    assert basis is not None
    torch.testing.assert_close(basis.basis, basis.basis_init)
    # The surviving coefficients are the initial ones: Λ₀ = coefficients of W₀ in B₀.
    lam0 = basis.coefficients_of(init["conv1.weight"], basis.basis_init)
    mask = masking.get_mask(net.conv1)
    torch.testing.assert_close(masking.original(net.conv1), lam0 * mask, atol=1e-6, rtol=1e-6)


def test_rewind_basis_false_keeps_the_trained_basis() -> None:
    torch.manual_seed(0)
    net = Net()
    init = masking.plain_state_dict(net)
    Pruner(net, reparam="interspace", reparam_kwargs={"init": "dct", "rewind_basis": False}).prepare()
    _perturb_basis(net)
    basis = filter_basis_of(net.conv1)
    assert basis is not None
    trained = basis.basis.detach().clone()
    masking.load_plain_state_dict(net, init)
    torch.testing.assert_close(basis.basis.detach(), trained)


def test_non_identity_basis_cannot_be_attached_to_a_pruned_layer() -> None:
    net = Net()
    Pruner(net).prepare().step(0.5)
    with pytest.raises(ConfigError, match="before pruning"):
        attach_interspace(net.conv1, init="dct")


def test_unknown_basis_init_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="identity, dct"):
        attach_interspace(Net().conv1, init="haar")


def test_pruner_state_dict_rebuilds_the_interspace_pruner() -> None:
    net = _ip(init="dct")
    state = Pruner(net, reparam="interspace", reparam_kwargs={"init": "dct"}).prepare().state_dict()
    fresh = Net()
    rebuilt = Pruner.from_state_dict(fresh, state)
    assert rebuilt.reparametrized == ["conv1.weight", "conv2.weight"]
    torch.testing.assert_close(masking.get_mask(fresh.conv2), masking.get_mask(net.conv2))


def test_magnitude_scores_the_coefficients() -> None:
    net = _ip(init="dct", sparsity=None)
    pruner = Pruner(net, reparam="interspace", reparam_kwargs={"init": "dct"}, include=["conv2"]).prepare()
    pruner.step(0.5)
    lam = masking.original(net.conv2).detach()
    kept, dropped = lam[masking.get_mask(net.conv2)], lam[~masking.get_mask(net.conv2)]
    assert bool((dropped == 0).all())
    assert float(kept.abs().min()) > 0


def test_baking_a_deep_copy_leaves_the_original_intact() -> None:
    net = _ip(init="dct")
    before = net(_x())
    copied = copy.deepcopy(net)
    masking.bake(copied)
    torch.testing.assert_close(copied(_x()), before, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(net(_x()), before, atol=0, rtol=0)
