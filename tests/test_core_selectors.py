"""select_topk: exact counts, previous masks, the min_keep guard and tie-breaking (hand-computed); the
threshold rules' guard_min_keep and the channel selection select_channels."""

from __future__ import annotations

import pytest
import torch

from prunelab.core.selectors import SELECTORS, guard_min_keep, select_channels, select_topk
from prunelab.errors import ConfigError


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def _b(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def _scores() -> dict[str, torch.Tensor]:
    # Ascending order over both: b1 .05, a0 .1, b0 .2, a2 .3, a1 .5, b2 .7, a3 .9
    return {"a": _t(0.1, 0.5, 0.3, 0.9), "b": _t(0.2, 0.05, 0.7)}


def _as_lists(masks: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: v.int().tolist() for k, v in masks.items()}


GLOBAL_CASES = [
    (0.0, {"a": [1, 1, 1, 1], "b": [1, 1, 1]}),
    (2 / 7, {"a": [0, 1, 1, 1], "b": [1, 0, 1]}),
    (0.5, {"a": [0, 1, 0, 1], "b": [0, 0, 1]}),  # round(3.5) = 4 (ties to even)
    (5 / 7, {"a": [0, 0, 0, 1], "b": [0, 0, 1]}),
]


@pytest.mark.parametrize(("sparsity", "expected"), GLOBAL_CASES)
def test_global_topk_removes_the_lowest_units_over_all_tensors(sparsity: float, expected: dict) -> None:
    assert _as_lists(select_topk(_scores(), sparsity, scope="global")) == expected


def test_layer_topk_counts_per_tensor_at_a_quarter() -> None:
    assert _as_lists(select_topk(_scores(), 0.25, scope="layer")) == {"a": [0, 1, 1, 1], "b": [1, 0, 1]}


def test_layer_topk_counts_per_tensor_at_a_half() -> None:
    # a: round(2.0) = 2 → a0, a2; b: round(1.5) = 2 → b1, b0
    assert _as_lists(select_topk(_scores(), 0.5, scope="layer")) == {"a": [0, 1, 0, 1], "b": [0, 0, 1]}


def test_layer_topk_counts_per_tensor_at_six_tenths() -> None:
    # a: round(2.4) = 2; b: round(1.8) = 2
    assert _as_lists(select_topk(_scores(), 0.6, scope="layer")) == {"a": [0, 1, 0, 1], "b": [0, 0, 1]}


def test_layer_topk_counts_per_tensor_at_three_quarters() -> None:
    # a: round(3.0) = 3; b: round(2.25) = 2
    assert _as_lists(select_topk(_scores(), 0.75, scope="layer")) == {"a": [0, 0, 0, 1], "b": [0, 0, 1]}


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.8, 0.95])
def test_removed_count_is_exactly_round_of_sparsity_times_units(scope: str, sparsity: float) -> None:
    g = torch.Generator().manual_seed(0)
    scores = {
        "x": torch.rand(10, 1, 1, 1, generator=g),
        "y": torch.rand(300, generator=g),
        "z": torch.rand(40, 25, generator=g),
    }
    masks = select_topk(scores, sparsity, scope=scope, min_keep=0)
    if scope == "global":
        assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * 1310)
    else:
        assert {k: int((~m).sum()) for k, m in masks.items()} == {
            k: round(sparsity * s.numel()) for k, s in scores.items()
        }


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_equals_a_stable_sort_of_the_scores_with_many_ties(scope: str, seed: int) -> None:
    # Reference semantics: remove the first k units of a stable ascending sort (tensor order, index).
    g = torch.Generator().manual_seed(seed)
    scores = {
        "x": torch.randint(0, 4, (37,), generator=g).float(),
        "y": torch.randint(0, 4, (50,), generator=g).float(),
    }
    masks = select_topk(scores, 0.6, scope=scope, min_keep=0)
    groups = [scores] if scope == "global" else [{k: v} for k, v in scores.items()]
    for group in groups:
        flat = torch.cat(list(group.values()))
        expected = torch.ones_like(flat, dtype=torch.bool)
        expected[torch.sort(flat, stable=True).indices[: round(0.6 * flat.numel())]] = False
        torch.testing.assert_close(torch.cat([masks[k] for k in group]), expected, rtol=0, atol=0)


def test_masks_keep_the_shape_of_the_unit_scores() -> None:
    scores = {"conv": torch.rand(4, 1, 1, 1), "fc": torch.rand(1, 6)}
    masks = select_topk(scores, 0.5)
    assert {k: tuple(m.shape) for k, m in masks.items()} == {"conv": (4, 1, 1, 1), "fc": (1, 6)}


def test_previously_pruned_units_count_as_removed_and_go_first() -> None:
    # a1 (score .5) is already pruned; at 2/7 one more unit goes: the lowest alive, b1.
    previous = {"a": _b(1, 0, 1, 1)}
    masks = select_topk(_scores(), 2 / 7, previous=previous)
    assert _as_lists(masks) == {"a": [1, 0, 1, 1], "b": [1, 0, 1]}


def test_previously_pruned_units_never_come_back() -> None:
    # The previous state already removes 3 units, more than a sparsity of 2/7 asks for.
    previous = {"a": _b(0, 1, 1, 0), "b": _b(1, 1, 0)}
    masks = select_topk(_scores(), 2 / 7, previous=previous)
    assert _as_lists(masks) == {"a": [0, 1, 1, 0], "b": [1, 1, 0]}


def test_global_guard_redirects_removals_and_keeps_the_count_exact() -> None:
    # The 3 lowest are a0, a1, b0; min_keep=1 protects a1 (a's best), so b1 goes instead.
    scores = {"a": _t(0.01, 0.02), "b": _t(0.5, 0.6, 0.7, 0.8)}
    assert _as_lists(select_topk(scores, 0.5, min_keep=1)) == {"a": [0, 1], "b": [0, 0, 1, 1]}


def test_global_guard_off_lets_a_tensor_be_emptied() -> None:
    scores = {"a": _t(0.01, 0.02), "b": _t(0.5, 0.6, 0.7, 0.8)}
    assert _as_lists(select_topk(scores, 0.5, min_keep=0)) == {"a": [0, 0], "b": [0, 1, 1, 1]}


def test_global_guard_makes_an_impossible_sparsity_a_config_error() -> None:
    # 7 units, min_keep=1 in each of 2 tensors: at most 5 can go; 6/7 needs 6.
    with pytest.raises(ConfigError, match="min_keep=1 per tensor allows at most sparsity 0.714"):
        select_topk(_scores(), 6 / 7)


def test_layer_guard_clamps_a_small_tensor_and_lowers_its_sparsity() -> None:
    # b: round(0.9 * 3) = 3 would empty it; the guard keeps its best unit (b2).
    masks = select_topk(_scores(), 0.9, scope="layer", min_keep=1)
    assert _as_lists(masks) == {"a": [0, 0, 0, 1], "b": [0, 0, 1]}


def test_min_keep_larger_than_a_tensor_keeps_the_whole_tensor() -> None:
    scores = {"a": _t(0.1, 0.2), "b": _t(0.3, 0.4, 0.5, 0.6, 0.7, 0.8)}
    # a (2 units) is fully protected, so all 3 removals come from b.
    assert _as_lists(select_topk(scores, 0.375, min_keep=3)) == {"a": [1, 1], "b": [0, 0, 0, 1, 1, 1]}


def test_ties_break_by_flat_index_within_a_tensor() -> None:
    assert _as_lists(select_topk({"a": _t(1, 1, 1, 1)}, 0.5)) == {"a": [0, 0, 1, 1]}


def test_ties_break_by_tensor_order_across_tensors() -> None:
    scores = {"a": _t(1, 1), "b": _t(1, 1)}
    assert _as_lists(select_topk(scores, 0.5, min_keep=0)) == {"a": [0, 0], "b": [1, 1]}


def test_ties_with_the_guard_fall_to_the_next_tensor() -> None:
    scores = {"a": _t(1, 1), "b": _t(1, 1)}
    assert _as_lists(select_topk(scores, 0.5, min_keep=1)) == {"a": [0, 1], "b": [0, 1]}


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_a_config_error(sparsity: float) -> None:
    with pytest.raises(ConfigError, match=r"outside \[0, 1\]"):
        select_topk(_scores(), sparsity)


def test_unknown_scope_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown scope 'local'"):
        select_topk(_scores(), 0.5, scope="local")


def test_non_finite_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        select_topk({"a": _t(0.1, float("nan"))}, 0.5)


def test_topk_is_registered_as_a_selector() -> None:
    assert SELECTORS.get("topk") is select_topk


# ----------------------------------------------------------------------------------------------------
# guard_min_keep: what a threshold rule keeps back


def test_guard_adds_the_best_scored_units_to_a_mask_that_keeps_too_few() -> None:
    keep = guard_min_keep(_b(0, 0, 1, 0), _t(0.9, 0.1, 0.2, 0.5), 3)
    assert keep.tolist() == [True, False, True, True]


def test_guard_leaves_a_mask_that_keeps_enough_untouched() -> None:
    mask = _b(0, 1, 1, 0)
    assert guard_min_keep(mask, _t(0.9, 0.1, 0.2, 0.5), 2) is mask


def test_guard_takes_ties_in_index_order_and_never_more_than_the_tensor() -> None:
    assert guard_min_keep(_b(0, 0, 0), _t(0.5, 0.5, 0.5), 2).tolist() == [True, True, False]
    assert guard_min_keep(_b(0, 0), _t(0.1, 0.2), 5).tolist() == [True, True]
    assert guard_min_keep(_b(0, 0), _t(0.1, 0.2), 0).tolist() == [False, False]


def test_guard_equals_the_stable_argsort_rule_on_random_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 12, (1,), generator=gen))
        scores = torch.randint(0, 4, (n,), generator=gen).float()  # many ties
        mask = torch.rand(n, generator=gen) < 0.3
        need = min(3, n)
        expected = mask.clone()
        if int(mask.sum()) < need:
            expected[torch.argsort(scores, descending=True, stable=True)[:need]] = True
        assert torch.equal(guard_min_keep(mask, scores, 3), expected)


def test_guard_per_row_rescues_only_live_entries_of_each_row() -> None:
    mask = torch.tensor([[False, False, False], [False, True, False], [False, False, False]])
    alive = torch.tensor([[True, False, True], [True, True, True], [False, False, False]])
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.1, 0.2], [0.4, 0.5, 0.6]])
    keep = guard_min_keep(mask, scores, 1, alive=alive, per_row=True)
    # Row 0 keeps its best live entry (not the pruned 0.9), row 1 already keeps one, row 2 has none alive.
    assert keep.int().tolist() == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_guard_rejects_a_negative_min_keep_and_mismatched_scores() -> None:
    with pytest.raises(ConfigError, match="min_keep must be an integer >= 0"):
        guard_min_keep(_b(1), _t(1.0), -1)
    with pytest.raises(ValueError, match="do not match"):
        guard_min_keep(_b(1, 0), _t(1.0), 1)


def test_select_channels_is_topk_over_the_group_scores() -> None:
    scores = {"a": torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64), "b": torch.tensor([0.5, 4.0])}
    keep = select_channels(scores, 0.4)
    assert _as_lists(keep) == {"a": [1, 0, 1], "b": [0, 1]}
    # Per group: round(1.5) = 2 of 3 and round(1.0) = 1 of 2 go.
    per_group = select_channels(scores, 0.5, scope="layer", min_keep=1)
    assert _as_lists(per_group) == {"a": [1, 0, 0], "b": [0, 1]}
