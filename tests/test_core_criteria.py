"""Criteria: the contract of every registered criterion at every level it has, with real statistics.

The contract (driven by the registry, so a new criterion is covered by being registered): a criterion
reads only standard statistics, returns finite non-negative scores of the tensor's shape (entry level) or
of the group's size (group level), and gives the same scores when built again with the same options on
the same model and statistics (every rank of a DDP run must decide alike). The statistics are real: a
small CNN trained for a few steps on the digits data, calibration batches of that data, NN-relief's
accumulated activations, the model's traced channel graph. Then the criteria's own values (magnitude,
random seeding, the group reductions) and the level errors.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.core.criterion import (
    LEVELS,
    STANDARD_STATS,
    EntryCriterion,
    GroupCriterion,
    Level,
    MemberGroupCriterion,
    TargetView,
    criterion_levels,
    score_groups,
)
from prunelab.core.targets import find_targets
from prunelab.criteria import CRITERIA, build_criterion, check_level, describe_criteria, levels_of, names_at
from prunelab.criteria.relief import relief_importance
from prunelab.data import load_dataset
from prunelab.errors import CheckpointError, ConfigError
from prunelab.models import build_model
from prunelab.pruning import Pruner
from prunelab.stats import calibration_batches
from prunelab.stats.activations import collect
from prunelab.surgery import ChannelGraph

pytestmark = pytest.mark.usefixtures("one_thread")

# Every (criterion, level) pair the registry holds: the parametrisation of the contract tests.
PAIRS = [(name, level) for name in CRITERIA.names() for level in levels_of(name)]
WRONG = [(name, level) for name in CRITERIA.names() for level in LEVELS if level not in levels_of(name)]


@dataclass
class World:
    """A real model, its data and every standard statistic, built once for the module."""

    model: nn.Module
    stats: dict[str, Any]
    graph: ChannelGraph
    state: dict[str, Tensor] = field(default_factory=dict)

    def reset(self) -> None:
        """Put the weights back: a criterion's fit must not depend on what an earlier test did."""
        self.model.load_state_dict(self.state)


@pytest.fixture(scope="module")
def world() -> World:
    torch.manual_seed(0)
    data = load_dataset("digits", val_fraction=0.0, train_subset=400)
    model = build_model("small_cnn", input_shape=(1, 8, 8))
    # A few training steps: BN scales and weights that differ between channels, as after real training.
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for x, y in calibration_batches(data.train, 400, 50, seed=1):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    batches = calibration_batches(data.train, 96, 32, seed=2)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    activity = collect(model, batches, layers)
    relief = {f"{n}.weight": relief_importance(m, activity[n])[0] for n, m in layers.items()}
    stats = {
        "model": model,
        "batches": batches,
        "data": data.train,
        "num_classes": data.num_classes,
        "seed": 0,
        "relief": relief,
    }
    graph = ChannelGraph(model, (1, 8, 8))
    return World(model, stats, graph, {k: v.clone() for k, v in model.state_dict().items()})


def _entry_scores(name: str, world: World) -> dict[str, Tensor]:
    """Score every target of the world's model with a fresh ``name`` criterion, as the pruner does."""
    world.reset()
    criterion = build_criterion(name, "entry")
    pruner = Pruner(world.model, criterion=criterion).prepare()
    try:
        views = [pruner._view(t) for t in pruner.targets]
        fit = getattr(criterion, "fit", None)
        if callable(fit):
            fit(views, world.stats)
        return {v.fqn: criterion.score(v, world.stats) for v in views}
    finally:
        pruner.bake()  # the plain model again, for the next test


def test_the_registry_holds_every_built_in_criterion_at_its_levels() -> None:
    expected = {
        "magnitude": ("entry",),
        "random": ("entry", "group"),
        "relief": ("entry",),
        "snip": ("entry",),
        "grasp": ("entry",),
        "synflow": ("entry",),
        "bn_scale": ("group",),
        "l1_filter": ("group",),
        "pls_vip": ("group",),
    }
    assert {name: levels_of(name) for name in expected} == expected
    assert [(n, lv) for n, lv, _ in describe_criteria()] == [(n, levels_of(n)) for n in CRITERIA.names()]
    assert all(text for _, _, text in describe_criteria())


@pytest.mark.parametrize(("name", "level"), PAIRS, ids=[f"{n}-{lv}" for n, lv in PAIRS])
def test_every_criterion_reads_only_standard_statistics(name: str, level: Level) -> None:
    criterion = build_criterion(name, level)
    assert isinstance(criterion, EntryCriterion if level == "entry" else GroupCriterion)
    assert set(criterion.requires) <= set(STANDARD_STATS)


@pytest.mark.parametrize("name", names_at("entry"))
def test_every_entry_criterion_scores_finite_non_negative_tensors_of_the_target_shape(
    name: str, world: World
) -> None:
    scores = _entry_scores(name, world)
    for target in find_targets(world.model):
        s = scores[target.fqn]
        assert s.shape == getattr(target.module, target.param).shape, target.fqn
        assert bool(torch.isfinite(s).all()) and bool((s >= 0).all()), target.fqn
        assert float(s.sum()) > 0, f"{name} scores every entry of {target.fqn} zero"


@pytest.mark.parametrize("name", names_at("entry"))
def test_every_entry_criterion_is_deterministic(name: str, world: World) -> None:
    first, second = _entry_scores(name, world), _entry_scores(name, world)
    for fqn, s in first.items():
        torch.testing.assert_close(s, second[fqn], rtol=0, atol=0)


@pytest.mark.parametrize("name", names_at("group"))
def test_every_group_criterion_scores_each_channel_of_every_group(name: str, world: World) -> None:
    world.reset()
    scores = score_groups(build_criterion(name, "group"), world.graph.groups, world.model, world.stats)
    assert list(scores) == [g.name for g in world.graph.groups]
    for group in world.graph.groups:
        s = scores[group.name]
        assert s.shape == (group.size,) and s.device.type == "cpu"
        assert bool(torch.isfinite(s).all()) and bool((s >= 0).all())
        assert float(s.sum()) > 0, f"{name} scores every channel of {group.name} zero"


@pytest.mark.parametrize("name", names_at("group"))
def test_every_group_criterion_is_deterministic(name: str, world: World) -> None:
    world.reset()
    groups = world.graph.groups
    first = score_groups(build_criterion(name, "group"), groups, world.model, world.stats)
    second = score_groups(build_criterion(name, "group"), groups, world.model, world.stats)
    for key, s in first.items():
        torch.testing.assert_close(s, second[key], rtol=0, atol=0)


@pytest.mark.parametrize(("name", "level"), WRONG, ids=[f"{n}-{lv}" for n, lv in WRONG])
def test_a_criterion_at_a_level_it_lacks_is_a_config_error_naming_its_level(name: str, level: Level) -> None:
    has = levels_of(name)[0]
    wording = {"entry": "tensor entries (entry level)", "group": "channel groups (group level)"}
    message = f"criterion '{name}' scores {wording[has]}; "
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_level(name, level)
    listing = f"{level}-level criterion: {', '.join(names_at(level))}"
    with pytest.raises(ConfigError, match=re.escape(listing)):
        build_criterion(name, level)


def test_the_pruner_refuses_a_group_criterion_at_construction() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(
        ConfigError, match="'bn_scale' scores channel groups .*the pruner needs an entry-level"
    ):
        Pruner(model, criterion="bn_scale")
    with pytest.raises(ConfigError, match="has no entry level"):
        Pruner(model, criterion=build_criterion("l1_filter", "group"))


def test_score_groups_refuses_an_entry_criterion_and_missing_statistics(world: World) -> None:
    with pytest.raises(ConfigError, match="has no group level"):
        score_groups(build_criterion("magnitude", "entry"), world.graph.groups, world.model, {})
    with pytest.raises(ConfigError, match=r"needs statistics \['data', 'num_classes', 'seed'\]"):
        score_groups(build_criterion("pls_vip", "group"), world.graph.groups, world.model, {})


def test_score_groups_checks_the_shape_and_sign_of_group_scores(world: World) -> None:
    class Bad:
        requires: frozenset[str] = frozenset()

        def __init__(self, result: Tensor) -> None:
            self.result = result

        def score_group(self, group: Any, model: nn.Module, stats: Any) -> Tensor:
            return self.result

    groups = world.graph.groups[:1]
    with pytest.raises(ValueError, match=r"must have shape \(16,\)"):
        score_groups(Bad(torch.ones(3)), groups, world.model)
    with pytest.raises(ValueError, match="negative"):
        score_groups(Bad(-torch.ones(16)), groups, world.model)
    with pytest.raises(ValueError, match="NaN or inf"):
        score_groups(Bad(torch.full((16,), float("nan"))), groups, world.model)


def test_a_fresh_process_finds_every_criterion_by_name() -> None:
    # Registration is complete by importing the package: no method module needs to be imported first.
    code = (
        "from torch import nn; from prunelab import Pruner; "
        "Pruner(nn.Sequential(nn.Linear(4, 4)), criterion='relief'); "
        "from prunelab.criteria import CRITERIA; print(','.join(CRITERIA.names()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ",".join(CRITERIA.names())


def test_criterion_levels_reads_classes_objects_and_declared_factories() -> None:
    def factory() -> object: ...

    factory.levels = ("group",)  # type: ignore[attr-defined]
    assert criterion_levels(CRITERIA.get("random")) == ("entry", "group")
    assert criterion_levels(build_criterion("magnitude", "entry")) == ("entry",)
    assert criterion_levels(factory) == ("group",)
    assert criterion_levels(object()) == ()


# ----------------------------------------------------------------------------------------------------
# Group reduction


def _group(size: int, *members: tuple[str, list[tuple[int, int]]]) -> SimpleNamespace:
    # A duck-typed group: criteria never import the surgery's classes.
    ms = [SimpleNamespace(name=n, kind="Conv2d", role="out", pairs=pairs) for n, pairs in members]
    return SimpleNamespace(name="g", size=size, members=ms, producers=lambda: ms, bns=list)


class _Fixed(MemberGroupCriterion):
    """Member scores from a table, to check the reduction alone."""

    def __init__(self, table: dict[str, Tensor], reduction: Any = None) -> None:
        super().__init__(reduction)
        self.table = table

    def members(self, group: Any) -> Any:
        return group.members

    def member_scores(self, member: Any, model: nn.Module, stats: Any) -> Tensor:
        return self.table[member.name]


@pytest.mark.parametrize(
    ("reduction", "expected"), [("sum", [5.0, 2.0, 0.0]), ("mean", [2.5, 2.0, 0.0]), ("max", [4.0, 2.0, 0.0])]
)
def test_member_scores_reduce_onto_the_group_channels(reduction: str, expected: list[float]) -> None:
    # Channel 0 is produced by both members, channel 1 by one, channel 2 by none.
    table = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([9.0, 4.0])}
    group = _group(3, ("a", [(0, 0), (1, 1)]), ("b", [(0, 1)]))
    scores = _Fixed(table, reduction).score_group(group, nn.Identity(), {})
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=0, atol=0)


def test_the_default_reductions_are_the_papers() -> None:
    assert build_criterion("bn_scale", "group").reduction == "max"
    assert build_criterion("l1_filter", "group").reduction == "sum"
    assert build_criterion("pls_vip", "group").reduction == "mean"
    with pytest.raises(ConfigError, match="reduction 'prod' is unknown"):
        build_criterion("l1_filter", "group", reduction="prod")


def test_l1_filter_p2_is_the_squared_l2_norm_of_each_filter() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([-3.0, 2.0]).reshape(2, 1, 1, 1))
    group = _group(2, ("0", [(0, 0), (1, 1)]))
    l2 = build_criterion("l1_filter", "group", p=2).score_group(group, model, {})
    l1 = build_criterion("l1_filter", "group").score_group(group, model, {})
    assert l2.tolist() == [9.0, 4.0] and l1.tolist() == [3.0, 2.0]


# ----------------------------------------------------------------------------------------------------
# Entry-level values


def _view(module: nn.Module) -> TargetView:
    weight = module.weight.detach()
    return TargetView(find_targets(module)[0], weight, torch.ones_like(weight, dtype=torch.bool))


def test_magnitude_p1_is_the_absolute_value() -> None:
    layer = nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-2.0, 0.5, 0.0]]))
    torch.testing.assert_close(
        build_criterion("magnitude", "entry", p=1).score(_view(layer), {}),
        torch.tensor([[2.0, 0.5, 0.0]]),
        rtol=0,
        atol=0,
    )


def test_magnitude_p2_is_the_square() -> None:
    layer = nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-2.0, 0.5, 0.0]]))
    torch.testing.assert_close(
        build_criterion("magnitude", "entry", p=2).score(_view(layer), {}),
        torch.tensor([[4.0, 0.25, 0.0]]),
        rtol=0,
        atol=0,
    )


def test_magnitude_rejects_other_exponents_and_unknown_options() -> None:
    with pytest.raises(ConfigError, match="p must be 1 or 2"):
        build_criterion("magnitude", "entry", p=3)
    with pytest.raises(ConfigError, match="criterion 'magnitude': bad options"):
        build_criterion("magnitude", "entry", q=1)


def test_random_is_identical_for_the_same_seed_and_call_sequence() -> None:
    layer = nn.Conv2d(3, 4, 3)
    first, second = build_criterion("random", "entry", seed=7), build_criterion("random", "entry", seed=7)
    for _ in range(2):
        torch.testing.assert_close(
            first.score(_view(layer), {}), second.score(_view(layer), {}), rtol=0, atol=0
        )


def test_random_differs_between_seeds() -> None:
    layer = nn.Conv2d(3, 4, 3)
    a = build_criterion("random", "entry", seed=0).score(_view(layer), {})
    b = build_criterion("random", "entry", seed=1).score(_view(layer), {})
    assert not torch.equal(a, b)


def test_random_does_not_depend_on_the_global_torch_seed() -> None:
    layer = nn.Linear(4, 4)
    torch.manual_seed(1)
    a = build_criterion("random", "entry", seed=3).score(_view(layer), {})
    torch.manual_seed(2)
    b = build_criterion("random", "entry", seed=3).score(_view(layer), {})
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_random_groups_are_drawn_group_by_group_from_one_seeded_generator(world: World) -> None:
    groups = world.graph.groups
    scores = score_groups(build_criterion("random", "group", seed=1), groups, world.model)
    generator = torch.Generator().manual_seed(1)
    for group in groups:
        torch.testing.assert_close(
            scores[group.name], torch.rand(group.size, generator=generator), rtol=0, atol=0
        )
    other = score_groups(build_criterion("random", "group", seed=2), groups, world.model)
    assert all(not torch.equal(scores[k], other[k]) for k in scores)


def test_random_state_dict_resumes_the_sequence() -> None:
    layer = nn.Linear(4, 4)
    original = build_criterion("random", "entry", seed=5)
    original.score(_view(layer), {})
    resumed = build_criterion("random", "entry", seed=5)
    resumed.load_state_dict(original.state_dict())
    torch.testing.assert_close(
        resumed.score(_view(layer), {}), original.score(_view(layer), {}), rtol=0, atol=0
    )


def test_random_state_from_another_seed_is_refused() -> None:
    with pytest.raises(CheckpointError, match="seed 1"):
        CRITERIA.build("random", seed=2).load_state_dict(CRITERIA.build("random", seed=1).state_dict())


def test_unknown_criterion_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="did you mean magnitude"):
        build_criterion("magnitud", "entry")
