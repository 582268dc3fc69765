"""``copy_model`` is ``copy.deepcopy`` for modules: same classes, state, sharing and outputs, no aliasing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab.core import masking
from prunelab.core.modules import copy_model, eval_mode, training_mode
from prunelab.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def _assert_same_as_deepcopy(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``copy_model(model)`` against ``copy.deepcopy(model)``: everything equal, no tensor shared with ``model``."""
    want, got = copy.deepcopy(model), copy_model(model)
    assert [type(m) for m in got.modules()] == [type(m) for m in want.modules()]
    assert [n for n, _ in got.named_modules(remove_duplicate=False)] == [
        n for n, _ in want.named_modules(remove_duplicate=False)
    ]
    for (name, a), (_, b) in zip(_tensors(want), _tensors(got), strict=True):
        assert type(a) is type(b) and a.dtype == b.dtype and a.stride() == b.stride(), name
        assert a.requires_grad == b.requires_grad and torch.equal(a, b), name
    originals = {t.untyped_storage().data_ptr() for _, t in _tensors(model) if t.numel()}
    assert not originals & {t.untyped_storage().data_ptr() for _, t in _tensors(got) if t.numel()}
    for a, b in zip(want.modules(), got.modules(), strict=True):
        assert a.training == b.training
        assert set(vars(a)) == set(vars(b))
    with torch.no_grad():
        assert torch.equal(want.eval()(x), got.eval()(x))
    return got


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenet_v2", "densenet40"])
def test_zoo_models_copy_like_deepcopy(name: str) -> None:
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32))
    model.train()
    model.features_seen = [1, 2]  # a user attribute: copied, not shared
    got = _assert_same_as_deepcopy(model, torch.randn(2, 3, 32, 32))
    assert got.features_seen == [1, 2] and got.features_seen is not model.features_seen


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.again = self.block  # the same submodule twice
        self.out = nn.Linear(4, 4)
        self.out.weight = self.embed.weight  # a tied weight
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("scratch", torch.ones(3), persistent=False)
        self.calls: list[int] = []
        self.register_forward_hook(lambda m, a, out: m.calls.append(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.again(self.block(self.embed(x))))


def test_tied_weights_shared_modules_and_hooks_stay_as_deepcopy_leaves_them() -> None:
    model = _Tied()
    got = _assert_same_as_deepcopy(model, torch.randn(2, 4))
    assert got.out.weight is got.embed.weight and got.out.weight is not model.embed.weight
    assert got.again is got.block and got.block is not model.block
    assert got._non_persistent_buffers_set == {"scratch"}
    assert len(got._forward_hooks) == 1 and got.calls == [1] and model.calls == []


def test_the_copy_is_independent_of_the_original() -> None:
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = copy_model(model)
    with torch.no_grad():
        for tensor in (*got.parameters(), *got.buffers()):
            tensor.add_(1)
    got.conv1.out_channels = 3
    assert model.conv1.out_channels == 16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_masked_layers_and_buffers_sharing_storage_copy_like_deepcopy() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    masking.add_mask(model[0])
    masking.update_mask(model[0], "weight", torch.rand(4, 2, 3, 3) > 0.5)
    _assert_same_as_deepcopy(model, torch.randn(2, 2, 6, 6))

    shared = nn.BatchNorm2d(4)
    shared.register_buffer("alias", shared.running_mean[:2])  # a second buffer on the same storage
    got = copy_model(shared)
    assert got.alias.untyped_storage().data_ptr() == got.running_mean.untyped_storage().data_ptr()
    assert got.running_mean.untyped_storage().data_ptr() != shared.running_mean.untyped_storage().data_ptr()
    got.running_mean.fill_(2.0)
    assert torch.equal(got.alias, torch.full((2,), 2.0)) and torch.equal(shared.alias, torch.zeros(2))


def test_eval_mode_restores_mixed_modes_exactly() -> None:
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).train()
    model.bn1.eval()  # a frozen norm inside a training model
    before = [m.training for m in model.modules()]
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before  # model.train(True) would have unfrozen bn1
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError
    assert [m.training for m in model.modules()] == before


def test_training_mode_switches_to_training_and_back() -> None:
    model = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32)).eval()
    with training_mode(model, True):
        assert all(m.training for m in model.modules())
    assert not any(m.training for m in model.modules())
