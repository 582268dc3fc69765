"""The classifier head: found from the graph (the layer producing the output) or named (recipe and API)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from prunelab.checkpoint import build_from_checkpoint, load_checkpoint
from prunelab.core.targets import find_head
from prunelab.errors import ConfigError
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import recipe_from_dict
from prunelab.models import MODELS, build_model
from prunelab.surgery import ChannelGraph, compact

SHAPE = (1, 8, 8)


def _input_shape(name: str) -> tuple[int, int, int]:
    if name == "small_cnn":
        return SHAPE
    return (1, 28, 28) if name.startswith("lenet") else (3, 32, 32)


@pytest.mark.parametrize("name", MODELS.names())
def test_default_head_of_every_zoo_model_is_its_last_registered_linear(name: str) -> None:
    # The zoo registers its head last, so the graph default must agree with the former guess.
    shape = _input_shape(name)
    with torch.device("meta"):  # names only: the meta device is enough (and exercises that path)
        model = build_model(name, num_classes=5, input_shape=shape)
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert find_head(model, shape) == last_linear
    assert model.training  # the mode is restored


class HeadFirst(nn.Module):
    """A classifier registered before the body (and a hidden Linear registered last, executed first).

    With ``probe``, a Linear registered last also runs last, on the features, and its output is dropped.
    """

    def __init__(self, probe: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.hidden = nn.Linear(8, 16)
        self.probe = nn.Linear(8, 2) if probe else None

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, 3)."""
        h = self.features(x)
        logits = self.fc(torch.relu(self.hidden(h)))
        if self.probe is not None:
            self.probe(h)  # runs last, but its output does not reach the model's
        return logits


class ConvHead(nn.Module):
    """SqueezeNet-style: the classifier is a 1×1 conv followed by global average pooling."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(16, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))


def _half(graph: ChannelGraph) -> dict[str, Tensor]:
    return {g.name: torch.arange(g.size) % 2 == 0 for g in graph.groups}


def test_head_registered_first_is_found_and_its_classes_kept() -> None:
    torch.manual_seed(0)
    assert find_head(HeadFirst(probe=True), SHAPE) == "fc"  # not the discarded probe run last
    model = HeadFirst().eval()
    assert find_head(model, SHAPE) == "fc"  # not the last registered Linear
    graph = ChannelGraph(model, SHAPE)
    assert graph.head == "fc" and "fc" in graph.excluded
    assert "fc" not in graph.by_name and "hidden" in graph.by_name
    small, report = compact(model, _half(graph), SHAPE, graph=graph)
    assert report.max_abs_diff <= report.accepted_diff
    assert small.fc.out_features == 3 and small.hidden.out_features == 8
    assert small(torch.randn(2, *SHAPE)).shape == (2, 3)


def test_conv_classifier_through_channel_graph_and_compact() -> None:
    torch.manual_seed(0)
    model = ConvHead().eval()
    assert find_head(model, SHAPE) == "classifier.1"
    graph = ChannelGraph(model, SHAPE)
    assert graph.head == "classifier.1" and "classifier.1" not in graph.by_name
    small, report = compact(model, _half(graph), SHAPE, graph=graph)
    assert report.channels_removed > 0 and report.max_abs_diff <= report.accepted_diff
    assert small.classifier[1].out_channels == 5  # the classes are kept
    assert small(torch.randn(2, *SHAPE)).shape == (2, 5)


def test_named_head_is_used_and_checked() -> None:
    model = HeadFirst()
    assert find_head(model, (), head="fc") == "fc"  # named: checked, not traced (no input shape needed)
    assert ChannelGraph(model, SHAPE, head="fc").head == "fc"
    _, report = compact(model.eval(), {}, SHAPE, head="fc")
    assert report.channels_removed == 0
    with pytest.raises(ConfigError, match=r"^model\.head: 'fcc' is not a module .*known: fc") as err:
        ChannelGraph(model, SHAPE, head="fcc")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'features\.1' is not a module"):  # a BatchNorm is no head
        find_head(model, (), head="features.1")


def test_wrong_input_shape_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot run on an input of shape \(3, 8, 8\).*model\.head") as err:
        find_head(ConvHead(), (3, 8, 8))
    assert "\n" not in str(err.value)


def _recipe(**model: object) -> object:
    fast = {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}
    return recipe_from_dict(
        {
            "name": "t_head",
            "seed": 0,
            "model": {"name": "small_cnn", **model},
            "data": {"name": "digits"},
            "train": fast,
            "finetune": fast,
            "prune": {
                "method": "l1_filter",
                "sparsity": 0.25,
                "options": {"sparsity_train": fast, "speed_batch_sizes": []},
            },
            "eval": {"latency": False},
        }
    )


def test_recipe_head_typo_is_a_one_line_validation_error() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.head: 'clasifier' is not a module .*known: classifier"
    ) as err:
        _recipe(head="clasifier")
    assert "\n" not in str(err.value)


def test_recipe_with_named_head_runs_end_to_end(tmp_path: Path) -> None:
    summary = run_recipe(_recipe(head="classifier"), tmp_path, echo=None, progress=False)
    assert summary["surgery"]["max_abs_diff"] <= 1e-4
    assert summary["structured"]["params_after"] < summary["structured"]["params_before"]
    arch = load_checkpoint(tmp_path)["arch"]
    assert arch["head"] == "classifier"
    rebuilt = build_from_checkpoint(tmp_path)
    assert rebuilt.classifier.out_features == 10
    assert rebuilt(torch.zeros(2, *SHAPE)).shape == (2, 10)
