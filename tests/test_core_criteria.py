"""Criteria: the scoring contract for every registered criterion, magnitude values, random seeding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.core.targets import find_targets
from prunelab.criteria import CRITERIA, Criterion, TargetView
from prunelab.errors import CheckpointError, ConfigError


def _view(module: nn.Module) -> TargetView:
    weight = module.weight.detach()
    return TargetView(find_targets(module)[0], weight, torch.ones_like(weight, dtype=torch.bool))


@pytest.mark.parametrize("name", CRITERIA.names())
@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3), nn.Linear(5, 2)], ids=["conv", "linear"])
def test_every_data_free_criterion_returns_non_negative_finite_scores_of_the_tensor_shape(
    name: str, layer: nn.Module
) -> None:
    criterion = CRITERIA.build(name)
    if criterion.requires:
        pytest.skip(f"{name} needs statistics; covered by its own tests")
    scores = criterion.score(_view(layer), {})
    assert isinstance(criterion, Criterion)
    assert scores.shape == layer.weight.shape
    assert bool(torch.isfinite(scores).all()) and bool((scores >= 0).all())


def test_magnitude_p1_is_the_absolute_value() -> None:
    layer = nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-2.0, 0.5, 0.0]]))
    torch.testing.assert_close(
        CRITERIA.build("magnitude", p=1).score(_view(layer), {}),
        torch.tensor([[2.0, 0.5, 0.0]]),
        rtol=0,
        atol=0,
    )


def test_magnitude_p2_is_the_square() -> None:
    layer = nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-2.0, 0.5, 0.0]]))
    torch.testing.assert_close(
        CRITERIA.build("magnitude", p=2).score(_view(layer), {}),
        torch.tensor([[4.0, 0.25, 0.0]]),
        rtol=0,
        atol=0,
    )


def test_magnitude_rejects_other_exponents() -> None:
    with pytest.raises(ConfigError, match="p must be 1 or 2"):
        CRITERIA.build("magnitude", p=3)


def test_random_is_identical_for_the_same_seed_and_call_sequence() -> None:
    layer = nn.Conv2d(3, 4, 3)
    first, second = CRITERIA.build("random", seed=7), CRITERIA.build("random", seed=7)
    for _ in range(2):
        torch.testing.assert_close(
            first.score(_view(layer), {}), second.score(_view(layer), {}), rtol=0, atol=0
        )


def test_random_differs_between_seeds() -> None:
    layer = nn.Conv2d(3, 4, 3)
    a = CRITERIA.build("random", seed=0).score(_view(layer), {})
    b = CRITERIA.build("random", seed=1).score(_view(layer), {})
    assert not torch.equal(a, b)


def test_random_does_not_depend_on_the_global_torch_seed() -> None:
    layer = nn.Linear(4, 4)
    torch.manual_seed(1)
    a = CRITERIA.build("random", seed=3).score(_view(layer), {})
    torch.manual_seed(2)
    b = CRITERIA.build("random", seed=3).score(_view(layer), {})
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_random_state_dict_resumes_the_sequence() -> None:
    layer = nn.Linear(4, 4)
    original = CRITERIA.build("random", seed=5)
    original.score(_view(layer), {})
    resumed = CRITERIA.build("random", seed=5)
    resumed.load_state_dict(original.state_dict())
    torch.testing.assert_close(
        resumed.score(_view(layer), {}), original.score(_view(layer), {}), rtol=0, atol=0
    )


def test_random_state_from_another_seed_is_refused() -> None:
    with pytest.raises(CheckpointError, match="seed 1"):
        CRITERIA.build("random", seed=2).load_state_dict(CRITERIA.build("random", seed=1).state_dict())


def test_unknown_criterion_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="did you mean magnitude"):
        CRITERIA.get("magnitud")
