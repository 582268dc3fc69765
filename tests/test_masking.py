"""Invariants of the mask parametrization (prunelab.core.masking): one invariant per test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunelab.core import masking


class ConvNet(nn.Module):
    """A conv + linear model, the smallest shape of a real CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().flatten(1))


pytestmark = pytest.mark.usefixtures("one_thread")


def _half_mask(shape: torch.Size, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) > 0.5


def _mask_all(model: nn.Module) -> dict[str, torch.Tensor]:
    """Mask about half of every weight; returns the masks by fqn."""
    masks = {}
    for name, module in (("conv", model.conv), ("fc", model.fc)):
        keep = _half_mask(module.weight.shape)
        masking.update_mask(module, "weight", keep)
        masks[f"{name}.weight"] = keep
    return masks


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 2, 6, 6), torch.randint(0, 5, (n,))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        x, y = _batch()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_masked_entries_get_exactly_zero_gradient() -> None:
    model = ConvNet()
    masks = _mask_all(model)
    x, y = _batch()
    nn.functional.cross_entropy(model(x), y).backward()
    grad = masking.original(model.conv, "weight").grad
    assert grad is not None
    torch.testing.assert_close(
        grad[~masks["conv.weight"]], torch.zeros_like(grad[~masks["conv.weight"]]), rtol=0, atol=0
    )
    assert grad[masks["conv.weight"]].abs().sum() > 0  # the kept entries do learn


OPTIMIZERS = {
    "sgd_momentum_wd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
}


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("warm_state", [False, True], ids=["fresh_state", "state_before_pruning"])
def test_masked_entries_stay_zero_through_training(optimizer_name: str, warm_state: bool) -> None:
    model = ConvNet()
    if warm_state:
        # Momentum / Adam moments built up on the dense weights, then the weights are pruned: the old
        # state keeps pushing the originals, but the effective weights must stay exactly zero.
        masking.add_mask(model.conv, "weight")
        masking.add_mask(model.fc, "weight")
        optimizer = OPTIMIZERS[optimizer_name](model.parameters())
        _train(model, optimizer, 5)
        masks = _mask_all(model)
    else:
        masks = _mask_all(model)
        optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    _train(model, optimizer, 20)
    for fqn, keep in masks.items():
        effective = model.get_submodule(fqn.split(".")[0]).weight
        torch.testing.assert_close(effective[~keep], torch.zeros_like(effective[~keep]), rtol=0, atol=0)


def test_adam_state_before_pruning_moves_originals_but_not_effective_weights() -> None:
    # Documents *why* the effective weight (not the original) is what counts: Adam's old moments do
    # move the masked originals, so a mask that only zeroed the originals once would be revived.
    model = ConvNet()
    masking.add_mask(model.conv, "weight")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 5)
    keep = _half_mask(model.conv.weight.shape)
    masking.update_mask(model.conv, "weight", keep)
    _train(model, optimizer, 3)
    assert masking.original(model.conv, "weight")[~keep].abs().max() > 0
    torch.testing.assert_close(
        model.conv.weight[~keep], torch.zeros_like(model.conv.weight[~keep]), rtol=0, atol=0
    )


def test_all_ones_mask_is_identity_in_forward() -> None:
    dense = ConvNet()
    masked = copy.deepcopy(dense)
    masking.add_mask(masked.conv, "weight")
    masking.add_mask(masked.fc, "weight")
    x, _ = _batch()
    torch.testing.assert_close(masked(x), dense(x), rtol=0, atol=0)


def test_all_ones_mask_is_identity_in_gradient() -> None:
    dense = ConvNet()
    masked = copy.deepcopy(dense)
    masking.add_mask(masked.conv, "weight")
    x, y = _batch()
    nn.functional.cross_entropy(dense(x), y).backward()
    nn.functional.cross_entropy(masked(x), y).backward()
    torch.testing.assert_close(
        masking.original(masked.conv, "weight").grad, dense.conv.weight.grad, rtol=0, atol=0
    )


def test_bake_keeps_outputs() -> None:
    model = ConvNet()
    _mask_all(model)
    x, _ = _batch()
    before = model(x)
    masking.bake(model)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_bake_leaves_no_parametrizations() -> None:
    model = ConvNet()
    _mask_all(model)
    masking.bake(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in ConvNet().named_parameters()}


def test_update_mask_only_shrinks() -> None:
    model = ConvNet()
    first = _half_mask(model.conv.weight.shape, seed=1)
    second = _half_mask(model.conv.weight.shape, seed=2)
    masking.update_mask(model.conv, "weight", first)
    result = masking.update_mask(model.conv, "weight", second)
    torch.testing.assert_close(result, first & second, rtol=0, atol=0)


def test_masks_state_dict_round_trip() -> None:
    source = ConvNet()
    masks = _mask_all(source)
    target = ConvNet()
    masking.load_masks(target, masking.masks_state_dict(source))
    for fqn, keep in masks.items():
        module = target.get_submodule(fqn.split(".")[0])
        torch.testing.assert_close(masking.get_mask(module, "weight"), keep, rtol=0, atol=0)


def test_plain_state_dict_loads_into_an_unmasked_model() -> None:
    source = ConvNet()
    _mask_all(source)
    plain = ConvNet()
    plain.load_state_dict(masking.plain_state_dict(source))
    x, _ = _batch()
    torch.testing.assert_close(plain(x), source(x), rtol=0, atol=0)


def _fill_originals(module: nn.Module, value: float) -> None:
    # Stands in for an optimizer's old momentum moving the originals behind the mask.
    with torch.no_grad():
        masking.original(module, "weight").fill_(value)


def test_effective_weight_follows_update_mask_after_a_forward() -> None:
    # The mask's float cast is cached between forwards; an in-place update must invalidate it.
    layer = nn.Linear(4, 3)
    masking.add_mask(layer, "weight")
    _ = layer.weight  # builds the cache
    keep = _half_mask(layer.weight.shape)
    masking.update_mask(layer, "weight", keep)
    _fill_originals(layer, 1.0)
    torch.testing.assert_close(layer.weight, keep.float(), rtol=0, atol=0)


def test_effective_weight_follows_a_mask_loaded_through_load_state_dict() -> None:
    source, target = ConvNet(), ConvNet()
    keep = _mask_all(source)["fc.weight"]
    masking.add_mask(target.conv, "weight")
    masking.add_mask(target.fc, "weight")
    _ = target.fc.weight  # builds the cache with an all-ones mask
    target.load_state_dict(source.state_dict())
    _fill_originals(target.fc, 1.0)
    torch.testing.assert_close(target.fc.weight, keep.float(), rtol=0, atol=0)


def test_effective_weight_follows_a_dtype_change() -> None:
    layer = nn.Linear(4, 3)
    masking.update_mask(layer, "weight", _half_mask(layer.weight.shape))
    _ = layer.weight  # caches a float32 mask
    layer.half()
    assert layer.weight.dtype == torch.float16  # a stale float32 mask would promote it to float32


def test_training_after_an_inference_mode_forward_works() -> None:
    # A cast made under inference_mode cannot be saved for backward; the mask must not cache it.
    model = ConvNet()
    keep = _mask_all(model)["conv.weight"]
    x, y = _batch()
    with torch.inference_mode():
        model(x)
    nn.functional.cross_entropy(model(x), y).backward()
    grad = masking.original(model.conv, "weight").grad
    torch.testing.assert_close(grad[~keep], torch.zeros_like(grad[~keep]), rtol=0, atol=0)


def test_plain_state_dict_is_a_snapshot() -> None:
    """Later training must not change a stored state (rewinding relies on it)."""
    from torch import nn

    from prunelab.core.masking import add_mask, plain_state_dict

    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    add_mask(model[0])
    state = plain_state_dict(model)
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for key, value in state.items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_pruned_model_traces_as_one_graph_under_dynamo() -> None:
    # The mask cast cache is Python-side state (inference mode, version counter); under torch.compile it
    # once broke the graph at every masked tensor (28 breaks on this model). A resnet20 with masks from
    # the real pruner must trace as a single graph.
    from prunelab.models import build_model
    from prunelab.pruning.pruner import Pruner

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    Pruner(model).prepare().step(0.5)
    assert sum(1 for _ in masking.iter_masks(model)) >= 19  # every conv and the classifier
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    finally:
        torch._dynamo.reset()
    reasons = [r.reason.splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, reasons[:3]


def test_compiled_masked_model_matches_eager_and_masked_entries_get_zero_gradient() -> None:
    # aot_eager: dynamo + autograd tracing without a C++ compiler, so the test runs on any CPU.
    model = ConvNet()
    masks = _mask_all(model)
    x, y = _batch()
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend="aot_eager")
        nn.functional.cross_entropy(compiled(x), y).backward()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    finally:
        torch._dynamo.reset()
    for fqn, keep in masks.items():
        module = getattr(model, fqn.split(".")[0])
        grad = masking.original(module, "weight").grad
        assert grad is not None and bool((grad[~keep] == 0).all()) and bool(grad[keep].abs().sum() > 0), fqn


def test_require_real_weights_refuses_nan_and_inf_but_not_a_sum_that_overflows() -> None:
    from prunelab.errors import UnsupportedModelError

    model = ConvNet()
    with torch.no_grad():
        # Finite entries whose sum overflows to inf: the cheap sum test flags them, the full check clears.
        model.fc.weight.fill_(3e38)
    masking.require_real_weights(model, "test")
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.conv.weight[1, 0, 2, 2] = bad
        with pytest.raises(UnsupportedModelError, match=r"'conv\.weight' .*NaN or inf"):
            masking.require_real_weights(broken, "test")
