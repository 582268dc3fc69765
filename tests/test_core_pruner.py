"""Pruner, GradualPruningHook and prunelab.prune: behaviour end to end on small models."""

from __future__ import annotations

import copy
import doctest
import io
import subprocess
import sys
from collections.abc import Mapping, Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

import prunelab
from prunelab.core import criterion as criterion_protocol
from prunelab.core import cumulative, granularity, masking, schedules, selectors, targets
from prunelab.core.criterion import TargetView
from prunelab.core.schedules import AGP, Iterative
from prunelab.criteria import magnitude, random_scores, registry
from prunelab.errors import ConfigError
from prunelab.pruning import pruner
from prunelab.pruning.pruner import GradualPruningHook, Pruner

pytestmark = pytest.mark.usefixtures("one_thread")


class UserNet(nn.Module):
    """An arbitrary user module: conv + BN + linear, not from the model zoo."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)  # 216 weights, 8 filters
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)  # 80 weights, 10 rows

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bn(self.conv(x)).relu().mean(dim=(2, 3)))


def _x() -> Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(11))


def _set(layer: nn.Module, values: Tensor) -> None:
    with torch.no_grad():
        layer.weight.copy_(values)


def _hand_model() -> nn.Module:
    """conv (3, 2, 2, 2) with filter L1 norms 8, 16, 24; fc (2, 3) with row L1 norms 1.5, 30."""
    model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(3, 2))
    signs = torch.tensor([1.0, -1.0]).repeat(4).reshape(1, 2, 2, 2)
    _set(model[0], torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1) * signs)
    _set(model[2], torch.tensor([[0.5, -0.5, 0.5], [10.0, -10.0, 10.0]]))
    return model


def test_global_filter_pruning_removes_the_lowest_norm_units_across_layers() -> None:
    # Ascending unit scores: fc row0 1.5, conv f0 8, conv f1 16, conv f2 24, fc row1 30; k = round(0.4 * 5) = 2
    model = _hand_model()
    Pruner(model, granularity="filter").prepare().step(0.4)
    assert masking.get_mask(model[0]).reshape(3, -1).all(dim=1).tolist() == [False, True, True]
    assert masking.get_mask(model[2]).all(dim=1).tolist() == [False, True]


def test_report_counts_units_and_entries() -> None:
    report = Pruner(_hand_model(), granularity="filter").prepare().step(0.4)
    assert (report.units_removed, report.units_total, report.entries_removed, report.entries_total) == (
        2,
        5,
        11,
        30,
    )
    assert report.per_tensor == {"0.weight": 8 / 24, "2.weight": 3 / 6}
    assert (report.sparsity, report.unit_sparsity) == (11 / 30, 0.4)


def test_layer_filter_pruning_keeps_the_same_fraction_in_each_layer() -> None:
    model = _hand_model()
    Pruner(model, granularity="filter", scope="layer").prepare().step(0.5)  # conv: round(1.5)=2, fc: 1
    assert masking.get_mask(model[0]).reshape(3, -1).all(dim=1).tolist() == [False, False, True]
    assert masking.get_mask(model[2]).all(dim=1).tolist() == [False, True]


def test_kernel_pruning_removes_whole_kernels() -> None:
    conv = nn.Conv2d(2, 2, 2)
    _set(conv, torch.tensor([1.0, 4.0, 3.0, 2.0]).reshape(2, 2, 1, 1).expand(2, 2, 2, 2))
    Pruner(conv, granularity="kernel").prepare().step(0.5)
    kept_kernels = masking.get_mask(conv).all(dim=(2, 3))
    assert kept_kernels.tolist() == [[False, True], [True, False]]


def test_channel_pruning_removes_input_columns() -> None:
    fc = nn.Linear(4, 2)
    _set(fc, torch.tensor([[1.0, 5.0, 2.0, 8.0], [1.0, 5.0, 2.0, 8.0]]))
    Pruner(fc, granularity="channel").prepare().step(0.5)
    assert masking.get_mask(fc).tolist() == [[False, True, False, True]] * 2


@pytest.mark.parametrize("gran", ["element", "kernel", "filter", "channel"])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_removed_units_match_the_exact_count(gran: str, scope: str, sparsity: float) -> None:
    model = UserNet()
    p = Pruner(model, criterion="random", granularity=gran, scope=scope, min_keep=0).prepare()
    g = granularity.GRANULARITIES.get(gran)
    units = {t.fqn: g.num_units(t.module.weight.shape) for t in p.targets}
    report = p.step(sparsity)
    if scope == "global":
        assert report.units_removed == round(sparsity * sum(units.values()))
    else:
        for t in p.targets:
            removed = int((~(g.reduce(masking.get_mask(t.module).float()) > 0)).sum())
            assert removed == round(sparsity * units[t.fqn])


def _reference_global_masks(
    pruner: Pruner, sparsity: float, previous: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Global top-k by a full stable sort, without a guard (``min_keep=0``): what the step must select."""
    g = pruner.granularity
    units = {}
    for t in pruner.targets:
        scores = masking.original(t.module, t.param).detach().abs() * previous[t.fqn]
        units[t.fqn] = g.reduce(scores).reshape(-1)
    alive = torch.cat([(g.reduce(previous[t.fqn]) > 0).reshape(-1) for t in pruner.targets])
    flat = torch.cat(list(units.values()))
    remove = round(sparsity * flat.numel()) - int((~alive).sum())
    order = torch.sort(flat, stable=True).indices
    order = order[alive[order]]
    keep = alive.clone()
    keep[order[: max(remove, 0)]] = False
    out = {}
    for t, part in zip(pruner.targets, keep.split([u.numel() for u in units.values()]), strict=True):
        shape = masking.get_mask(t.module, t.param).shape
        out[t.fqn] = g.expand(part.reshape(g.unit_shape(shape)), shape) & previous[t.fqn]
    return out


@pytest.mark.parametrize("gran", ["element", "kernel", "filter", "channel"])
@pytest.mark.parametrize("name", ["lenet300_100", "resnet20", "vgg11"])
@pytest.mark.parametrize("ties", [False, True])
def test_global_magnitude_steps_match_a_stable_sort_reference(gran: str, name: str, ties: bool) -> None:
    # The step avoids copies and float casts; its masks must stay exactly those of the full sort,
    # over iterative rounds and with many tied scores (weights rounded to a coarse grid).
    from prunelab.models import build_model

    shape = (1, 28, 28) if name.startswith("lenet") else (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(
        name, num_classes=10, input_shape=shape, **({"width": 0.25} if name == "vgg11" else {})
    )
    if ties:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((p * 8).round() / 8)
    p = Pruner(model, granularity=gran, min_keep=0).prepare()
    for sparsity in (0.3, 0.6, 0.9):
        previous = {t.fqn: masking.get_mask(t.module, t.param).clone() for t in p.targets}
        expected = _reference_global_masks(p, sparsity, previous)
        p.step(sparsity)
        for fqn, mask in p.masks().items():
            assert torch.equal(mask, expected[fqn]), (fqn, sparsity)


def test_negative_and_non_finite_scores_are_refused() -> None:
    class Constant:
        def __init__(self, value: float) -> None:
            self.value = value

        def score(self, view: TargetView, stats: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
            return torch.full_like(view.value, self.value)

    for value, message in ((-1.0, "negative"), (float("nan"), "NaN or inf"), (float("inf"), "NaN or inf")):
        p = Pruner(UserNet(), criterion=Constant(value)).prepare()
        with pytest.raises(ValueError, match=message):
            p.step(0.5)


class Contrarian:
    """A criterion that would rather keep what is already pruned: masks must still only shrink."""

    requires: frozenset[str] = frozenset()

    def score(self, view: TargetView, stats: Mapping[str, object]) -> Tensor:
        return (~view.mask).float() * 100.0 + view.value.abs()


def test_masks_only_shrink_even_if_the_criterion_would_revive_entries() -> None:
    model = UserNet()
    p = Pruner(model).prepare()
    p.step(0.5)
    before = p.masks()
    p.criterion = Contrarian()
    p.step(0.7)
    for fqn, mask in p.masks().items():
        assert not bool((mask & ~before[fqn]).any()), f"{fqn} grew back"
    assert p.sparsity() == pytest.approx(0.7, abs=1 / 296)


def test_asking_for_a_lower_sparsity_changes_nothing() -> None:
    p = Pruner(UserNet()).prepare()
    p.step(0.6)
    before = p.masks()
    p.step(0.3)
    for fqn, mask in p.masks().items():
        torch.testing.assert_close(mask, before[fqn], rtol=0, atol=0)


def test_step_before_prepare_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"call Pruner.prepare\(\) before step"):
        Pruner(UserNet()).step(0.5)


def test_prepare_is_idempotent() -> None:
    model = UserNet()
    p = Pruner(model).prepare()
    p.step(0.5)
    masks = p.masks()
    p.prepare()
    assert len(model.conv.parametrizations.weight) == 1
    torch.testing.assert_close(p.masks()["conv.weight"], masks["conv.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("sparsity", [-0.01, 1.01])
def test_step_rejects_sparsity_outside_unit_interval(sparsity: float) -> None:
    with pytest.raises(ConfigError, match=r"outside \[0, 1\]"):
        Pruner(UserNet()).prepare().step(sparsity)


def test_unknown_criterion_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="criterion 'magnitude': bad options"):
        Pruner(UserNet(), criterion_kwargs={"q": 1})


def test_channel_granularity_on_a_bn_scale_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="channel granularity needs"):
        Pruner(UserNet(), targets=["bn.weight"], granularity="channel")


def test_bn_scales_can_be_targets() -> None:
    model = UserNet()
    _set(model.bn, torch.arange(1.0, 9.0))
    Pruner(model, targets=["bn.weight"], granularity="filter").prepare().step(0.25)
    assert masking.get_mask(model.bn).tolist() == [False, False] + [True] * 6


class ActivationWeighted:
    """A data-driven criterion in the style of NN-relief: |w| times the mean |input| per input unit."""

    requires: frozenset[str] = frozenset({"input_abs_mean"})

    def __init__(self) -> None:
        self.fitted_on: list[str] = []

    def fit(self, views: Sequence[TargetView], stats: Mapping[str, Mapping[str, Tensor]]) -> None:
        self.fitted_on = [v.fqn for v in views]

    def score(self, view: TargetView, stats: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
        return view.value.abs() * stats["input_abs_mean"][view.fqn]


def test_missing_statistics_are_a_config_error() -> None:
    p = Pruner(nn.Linear(3, 2), criterion=ActivationWeighted()).prepare()
    with pytest.raises(ConfigError, match=r"needs statistics \['input_abs_mean'\]"):
        p.step(0.5)


def test_statistics_reach_the_criterion_and_fit_runs_first() -> None:
    fc = nn.Linear(3, 2)
    _set(fc, torch.ones(2, 3))
    criterion = ActivationWeighted()
    p = Pruner(fc, criterion=criterion, granularity="channel").prepare()
    p.step(1 / 3, stats={"input_abs_mean": {"weight": torch.tensor([5.0, 0.1, 2.0])}})
    assert criterion.fitted_on == ["weight"]
    assert masking.get_mask(fc).tolist() == [[True, False, True]] * 2


class Connectivity:
    """A SNIP-style criterion, |w · ∂L/∂w|, whose fit runs its own forward and backward pass."""

    requires: frozenset[str] = frozenset()

    def __init__(self, model: nn.Module, batch: Tensor) -> None:
        self.model, self.batch, self.scores = model, batch, {}

    def fit(self, views: Sequence[TargetView], stats: Mapping[str, object]) -> None:
        self.model.zero_grad()
        self.model(self.batch).square().sum().backward()
        for v in views:
            self.scores[v.fqn] = (v.value * masking.original(v.module, v.target.param).grad).abs()

    def score(self, view: TargetView, stats: Mapping[str, object]) -> Tensor:
        return self.scores[view.fqn]


def test_a_gradient_based_criterion_can_run_autograd_in_fit() -> None:
    model = UserNet()
    report = Pruner(model, criterion=Connectivity(model, _x())).prepare().step(0.5)
    assert report.entries_removed == 148


def test_a_selector_callable_plugs_in_without_core_changes() -> None:
    def keep_above(
        unit_scores: Mapping[str, Tensor],
        level: float,
        *,
        scope: str,
        previous: Mapping[str, Tensor] | None,
        min_keep: int,
    ) -> dict[str, Tensor]:
        # "zeros"-style rule: keep what scores above `level`, never regrow.
        return {k: (s > level) & previous[k] for k, s in unit_scores.items()}

    fc = nn.Linear(4, 1)
    _set(fc, torch.tensor([[0.0, 0.3, 0.0, 0.9]]))
    Pruner(fc, selector=keep_above).prepare().step(0.1)
    assert masking.get_mask(fc).tolist() == [[False, True, False, True]]


class FilterBasis(nn.Module):
    """Interspace-style reparametrization: a k×k kernel = coefficients (o, i, b) @ basis (b, k·k)."""

    def forward(self, coeffs: Tensor, basis: Tensor) -> Tensor:
        k = int(basis.shape[1] ** 0.5)
        return (coeffs @ basis).reshape(*coeffs.shape[:2], k, k)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        o, i, k, _ = weight.shape
        return weight.reshape(o, i, k * k).clone(), torch.eye(k * k)


def test_a_mask_stacked_under_another_parametrization_prunes_its_coefficients() -> None:
    # The interspace plug-in path: mask the basis coefficients, not the weight, with no core change.
    conv = nn.Conv2d(2, 3, 3)
    parametrize.register_parametrization(conv, "weight", FilterBasis())
    fqn = "parametrizations.weight.original0"
    p = Pruner(conv, targets=[fqn], granularity="kernel").prepare()
    report = p.step(0.5)
    coeffs = conv.parametrizations.weight.original0  # the masked (effective) coefficients
    assert (report.units_removed, report.units_total) == (3, 6)
    torch.testing.assert_close(conv.weight, (coeffs @ torch.eye(9)).reshape(3, 2, 3, 3), rtol=0, atol=0)
    assert int((conv.weight.abs().sum(dim=(2, 3)) == 0).sum()) == 3


def test_pruned_model_gives_the_same_outputs_after_bake() -> None:
    model = UserNet().eval()
    p = prunelab.prune(model, 0.5, granularity="filter")
    before = model(_x())
    p.bake()
    torch.testing.assert_close(model(_x()), before, rtol=0, atol=0)


def test_bake_leaves_no_parametrizations_on_targets() -> None:
    model = UserNet()
    prunelab.prune(model, 0.5).bake()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_into_a_fresh_model_gives_identical_masks() -> None:
    source = UserNet()
    p = Pruner(source, criterion="random", criterion_kwargs={"seed": 3}, granularity="kernel").prepare()
    p.step(0.6)
    restored = Pruner.from_state_dict(UserNet(), _round_trip(p.state_dict()))
    for fqn, mask in p.masks().items():
        torch.testing.assert_close(restored.masks()[fqn], mask, rtol=0, atol=0)


def test_state_dict_round_trip_into_a_fresh_model_gives_identical_outputs() -> None:
    source = UserNet().eval()
    p = Pruner(source, granularity="filter").prepare()
    p.step(0.5)
    fresh = UserNet().eval()
    Pruner.from_state_dict(fresh, _round_trip(p.state_dict()))
    masking.load_plain_state_dict(fresh, _round_trip(masking.plain_state_dict(source)))
    torch.testing.assert_close(fresh(_x()), source(_x()), rtol=0, atol=0)


def test_state_dict_round_trip_continues_the_random_sequence() -> None:
    source = UserNet()
    p = Pruner(source, criterion="random").prepare()
    p.step(0.3)
    restored = Pruner.from_state_dict(copy.deepcopy(source), _round_trip(p.state_dict()))
    p.step(0.6)
    restored.step(0.6)
    for fqn, mask in p.masks().items():
        torch.testing.assert_close(restored.masks()[fqn], mask, rtol=0, atol=0)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75, 0.875])
def test_prune_reaches_the_requested_sparsity_exactly_on_a_user_module(sparsity: float) -> None:
    # 296 = 8 · 37 targeted weights, so every multiple of 1/8 is reachable exactly.
    assert prunelab.prune(UserNet(), sparsity).sparsity() == sparsity


def test_prune_rounds_an_unreachable_sparsity_to_the_nearest_count() -> None:
    assert prunelab.prune(UserNet(), 0.3).report().entries_removed == 89  # round(88.8)


def test_prune_leaves_bn_and_biases_dense() -> None:
    model = UserNet()
    prunelab.prune(model, 0.9)
    assert [fqn for fqn, *_ in masking.iter_masks(model)] == ["conv.weight", "fc.weight"]


def test_gradual_hook_reaches_the_final_sparsity_in_a_training_loop() -> None:
    torch.manual_seed(0)
    model = UserNet()
    p = Pruner(model).prepare()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    hook = GradualPruningHook(p, AGP(0.8, start=0.1, end=0.6, frequency=5))
    total = 30
    for step in range(1, total + 1):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(_x()), torch.tensor([0, 1, 2, 3]))
        assert hook.penalty(model) is None
        loss.backward()
        hook.after_backward(model)
        optimizer.step()
        hook.after_step(model, 0.05)
        hook.on_step_end(step, total)
    hook.on_epoch_end(1, {})
    assert [r.requested for r in hook.reports] == [
        AGP(0.8, start=0.1, end=0.6, frequency=5).sparsity_at(t, 30) for t in (3, 8, 13, 18)
    ]
    assert hook.reports[-1].sparsity == round(0.8 * 296) / 296
    assert all(a.sparsity <= b.sparsity for a, b in zip(hook.reports, hook.reports[1:]))
    pruned = model.conv.weight[~masking.get_mask(model.conv)]
    torch.testing.assert_close(pruned, torch.zeros_like(pruned), rtol=0, atol=0)


def test_gradual_hook_rejects_a_round_based_schedule() -> None:
    with pytest.raises(ConfigError, match="not step-based"):
        GradualPruningHook(Pruner(UserNet()).prepare(), Iterative(0.9, rounds=3))


def test_gradual_hook_state_dict_restores_the_pruner() -> None:
    p = Pruner(UserNet(), criterion="random").prepare()
    hook = GradualPruningHook(p, AGP(0.5))
    hook.on_step_end(0, 10)
    hook.on_step_end(8, 10)
    fresh = GradualPruningHook(Pruner(UserNet(), criterion="random"), AGP(0.5))
    fresh.load_state_dict(_round_trip(hook.state_dict()))
    for fqn, mask in p.masks().items():
        torch.testing.assert_close(fresh.pruner.masks()[fqn], mask, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# Companions: a tensor with one entry per output unit (the bias) competing in its unit's row


def _biased_fc() -> nn.Linear:
    """Rows of |w| [5, 3, 1] and [1, 1, 1]; biases 1 and 7: row totals 10 with the bias, 9 and 3 without."""
    fc = nn.Linear(3, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[5.0, -3.0, 1.0], [1.0, 1.0, -1.0]]))
        fc.bias.copy_(torch.tensor([-1.0, 7.0]))
    return fc


def test_a_companion_competes_in_its_output_units_row() -> None:
    fc = _biased_fc()
    p = Pruner(fc, selector="cumulative_mass", companion="bias").prepare()
    p.step(0.7)
    # Row 0 [5, 3, 1 | 1]: 5 + 3 reach 7 of 10. Row 1 [1, 1, 1 | 7]: the bias alone carries 70 %.
    assert masking.get_mask(fc, "weight").tolist() == [[True, True, False], [False, False, False]]
    assert masking.get_mask(fc, "bias").tolist() == [False, True]
    rows = torch.cat([fc.weight.detach().abs(), fc.bias.detach().abs().unsqueeze(1)], dim=1)
    assert rows.ne(0).tolist() == cumulative.cumulative_mass_rows(rows, 0.7).tolist()
    assert p.report().per_tensor == {"weight": 4 / 6}  # the report counts the targets only
    assert set(p.masks()) == {"weight", "bias"}


def test_an_unpruned_companion_counts_in_the_row_but_keeps_its_mask() -> None:
    fc = _biased_fc()
    Pruner(fc, selector="cumulative_mass", companion="bias", prune_companion=False).prepare().step(0.7)
    assert masking.get_mask(fc, "weight").tolist() == [[True, True, False], [False, False, False]]
    assert not masking.has_mask(fc, "bias") and fc.bias.tolist() == [-1.0, 7.0]
    # Without the companion, row 1 [1, 1, 1] needs all three inputs to reach 70 % of its mass.
    plain = _biased_fc()
    Pruner(plain, selector="cumulative_mass").prepare().step(0.7)
    assert masking.get_mask(plain, "weight").tolist() == [[True, True, False], [True, True, True]]


def test_a_companion_is_one_more_unit_for_topk() -> None:
    fc = nn.Linear(2, 2)
    _set(fc, torch.tensor([[4.0, 3.0], [2.0, 1.0]]))
    with torch.no_grad():
        fc.bias.copy_(torch.tensor([0.5, 10.0]))
    Pruner(fc, companion="bias").prepare().step(0.5)  # 6 units, the 3 lowest go: 0.5, 1, 2
    assert masking.get_mask(fc, "weight").tolist() == [[True, True], [False, False]]
    assert masking.get_mask(fc, "bias").tolist() == [False, True]


def test_default_pruner_has_no_companions_and_leaves_biases_alone() -> None:
    model = UserNet()
    p = Pruner(model).prepare()
    p.step(0.5)
    assert p.companions == {} and not masking.has_mask(model.fc, "bias")


def test_layers_without_the_companion_tensor_have_none() -> None:
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2))
    p = Pruner(model, selector="cumulative_mass", companion="bias").prepare()
    assert {fqn: c.fqn for fqn, c in p.companions.items()} == {"1.weight": "1.bias"}
    p.step(0.5)
    assert masking.has_mask(model[1], "bias") and not masking.has_mask(model[0], "bias")


def test_companion_misuse_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must keep the output dimension"):
        Pruner(_biased_fc(), granularity="channel", companion="bias")
    with pytest.raises(ConfigError, match="has no attribute 'bais'"):
        Pruner(_biased_fc(), companion="bais")
    with pytest.raises(ConfigError, match=r"one entry per output unit of its target, shape \(2,\)"):
        Pruner(_biased_fc(), companion="weight")
    with pytest.raises(ConfigError, match="both a target and a companion"):
        Pruner(UserNet(), targets=["fc.weight", "fc.bias"], companion="bias")


def test_the_criterion_fits_on_and_scores_the_companions() -> None:
    fc = nn.Linear(3, 2)
    criterion = ActivationWeighted()
    stats = {"input_abs_mean": {"weight": torch.ones(3), "bias": torch.ones(2)}}
    Pruner(fc, criterion=criterion, companion="bias").prepare().step(0.5, stats=stats)
    assert criterion.fitted_on == ["weight", "bias"]


def test_companion_masks_survive_a_state_dict_round_trip_and_are_baked() -> None:
    source = UserNet()
    p = Pruner(source, criterion="random", granularity="kernel", companion="bias").prepare()
    p.step(0.6)
    assert {"conv.bias", "fc.bias"} <= set(p.masks())
    restored = Pruner.from_state_dict(UserNet(), _round_trip(p.state_dict()))
    assert restored.companion == "bias" and restored.prune_companion
    for fqn, mask in p.masks().items():
        torch.testing.assert_close(restored.masks()[fqn], mask, rtol=0, atol=0)
    keep = masking.get_mask(source.fc, "bias").clone()
    p.bake()
    assert not parametrize.is_parametrized(source.fc, "bias")
    assert bool((source.fc.bias.detach()[~keep] == 0).all())


@pytest.mark.parametrize(
    "module",
    [
        targets,
        granularity,
        selectors,
        cumulative,
        criterion_protocol,
        schedules,
        pruner,
        registry,
        magnitude,
        random_scores,
    ],
)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert (result.failed, result.attempted > 0) == (0, True)


def test_importing_prunelab_does_not_import_torch_until_prune_is_used() -> None:
    code = (
        "import sys, prunelab; a = 'torch' in sys.modules; prunelab.prune; print(a, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
