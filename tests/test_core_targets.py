"""find_targets / Target: which tensors a pruner touches."""

from __future__ import annotations

import pytest
from torch import nn

from prunelab.core.targets import Target, find_targets
from prunelab.errors import ConfigError


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)),  # "0.*"
        nn.Flatten(),
        nn.Linear(16, 8),  # "2"
        nn.Linear(8, 2),  # "3"
    )


def test_default_targets_are_every_conv_and_linear_weight_in_module_order() -> None:
    assert [t.fqn for t in find_targets(_model())] == ["0.0.weight", "0.3.weight", "2.weight", "3.weight"]


def test_target_carries_module_and_param_name() -> None:
    model = _model()
    target = find_targets(model)[2]
    assert (target.module_name, target.param, target.module) == ("2", "weight", model[2])


def test_include_globs_select_by_module_name() -> None:
    assert [t.fqn for t in find_targets(_model(), include="0.*")] == ["0.0.weight", "0.3.weight"]


def test_exclude_globs_remove_modules() -> None:
    assert [t.fqn for t in find_targets(_model(), exclude=["3", "0.0"])] == ["0.3.weight", "2.weight"]


def test_include_matching_nothing_names_the_pattern_and_lists_modules() -> None:
    with pytest.raises(ConfigError, match=r"'features\.\*' matches no .*available: 0\.0, 0\.3, 2, 3"):
        find_targets(_model(), include="features.*")


def test_selection_left_empty_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no conv/linear layer left to prune"):
        find_targets(_model(), exclude="*")


def test_bn_layer_type_targets_batchnorm_scales() -> None:
    assert [t.fqn for t in find_targets(_model(), layer_types=("bn",))] == ["0.1.weight"]


def test_unknown_layer_type_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown layer type"):
        find_targets(_model(), layer_types=("lstm",))


def test_targets_compare_by_name_across_model_copies() -> None:
    assert find_targets(_model()) == find_targets(_model())


def test_target_of_builds_a_target_from_an_fqn() -> None:
    model = _model()
    assert Target.of(model, "0.1.weight").module is model[0][1]


def test_target_of_unknown_tensor_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no tensor '0.9.weight'"):
        Target.of(_model(), "0.9.weight")
