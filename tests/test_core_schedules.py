"""Schedules: endpoints, monotonicity, AGP update steps, validation, immutability."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from prunelab.core.schedules import AGP, SCHEDULES, Iterative, OneShot
from prunelab.errors import ConfigError


def test_one_shot_has_one_round_at_the_target() -> None:
    assert OneShot(0.8).targets() == [0.8]


@pytest.mark.parametrize("spacing", ["geometric", "linear"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_iterative_targets_end_exactly_at_the_sparsity(spacing: str, sparsity: float) -> None:
    assert Iterative(sparsity, rounds=5, spacing=spacing).targets()[-1] == sparsity


@pytest.mark.parametrize("spacing", ["geometric", "linear"])
def test_iterative_targets_increase_strictly(spacing: str) -> None:
    targets = Iterative(0.9, rounds=6, spacing=spacing).targets()
    assert all(a < b for a, b in itertools.pairwise(targets))


def test_geometric_rounds_remove_the_same_fraction_of_survivors() -> None:
    # s = 0.875 in 3 rounds: 1 - 0.125^(k/3) = 0.5, 0.75, 0.875
    assert Iterative(0.875, rounds=3).targets() == pytest.approx([0.5, 0.75, 0.875], abs=1e-12)


def test_linear_rounds_are_evenly_spaced() -> None:
    assert Iterative(0.9, rounds=3, spacing="linear").targets() == pytest.approx([0.3, 0.6, 0.9], abs=1e-12)


def test_agp_is_at_the_initial_sparsity_at_start() -> None:
    assert AGP(0.9, initial_sparsity=0.1, start=0.2, end=0.6).sparsity_at(20, 100) == 0.1


def test_agp_reaches_the_final_sparsity_exactly_at_end() -> None:
    assert AGP(0.9, initial_sparsity=0.1, start=0.2, end=0.6).sparsity_at(60, 100) == 0.9


def test_agp_follows_the_cubic_in_between() -> None:
    # t = 40 is halfway through [20, 60]: 0.9 + (0.1 - 0.9) * 0.5^3 = 0.8
    assert AGP(0.9, initial_sparsity=0.1, start=0.2, end=0.6).sparsity_at(40, 100) == pytest.approx(
        0.8, abs=1e-12
    )


def test_agp_is_monotone_over_the_whole_run() -> None:
    agp = AGP(0.95, initial_sparsity=0.05, start=0.1, end=0.7)
    values = [agp.sparsity_at(t, 200) for t in range(201)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert (values[0], values[-1]) == (0.05, 0.95)


def test_agp_is_due_every_frequency_steps_inside_the_window() -> None:
    agp = AGP(0.8, start=0.2, end=0.6, frequency=10)
    assert [t for t in range(101) if agp.due(t, 100)] == [20, 30, 40, 50, 60]


def test_agp_is_due_at_end_even_off_the_frequency_grid() -> None:
    assert AGP(0.5, start=0.0, end=0.55, frequency=20).update_steps(100) == [0, 20, 40, 55]


def test_agp_zero_length_window_jumps_to_the_target() -> None:
    agp = AGP(0.5, start=0.5, end=0.6)
    assert (agp.update_steps(2), agp.sparsity_at(1, 2)) == ([1], 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.2}, r"outside \[0, 1\]"),
        ({"sparsity": 0.5, "initial_sparsity": 0.6}, "above the final sparsity"),
        ({"sparsity": 0.5, "start": 0.6, "end": 0.6}, "need start < end"),
        ({"sparsity": 0.5, "end": 1.5}, r"end must be a fraction in \[0, 1\]"),
        ({"sparsity": 0.5, "frequency": 0}, "frequency must be an integer >= 1"),
    ],
)
def test_agp_validates_its_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AGP(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": -0.1}, r"outside \[0, 1\]"),
        ({"sparsity": 0.5, "rounds": 0}, "rounds must be an integer >= 1"),
        ({"sparsity": 0.5, "spacing": "cubic"}, "spacing must be 'geometric' or 'linear'"),
    ],
)
def test_iterative_validates_its_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Iterative(**kwargs)


def test_schedules_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AGP(0.5).sparsity = 0.9  # type: ignore[misc]


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_registered_schedule_builds_by_name_and_ends_at_its_sparsity(name: str) -> None:
    schedule = SCHEDULES.build(name, sparsity=0.7)
    final = schedule.targets()[-1] if hasattr(schedule, "targets") else schedule.sparsity_at(100, 100)
    assert final == 0.7
