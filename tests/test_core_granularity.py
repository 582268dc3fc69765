"""Granularities: unit shapes, reduce sums and reduce/expand round trips."""

from __future__ import annotations

import pytest
import torch

from prunelab.core.granularity import GRANULARITIES
from prunelab.errors import ConfigError

CONV = (4, 3, 2, 2)
LINEAR = (5, 6)

UNIT_SHAPES = {
    ("element", CONV): (4, 3, 2, 2),
    ("kernel", CONV): (4, 3, 1, 1),
    ("filter", CONV): (4, 1, 1, 1),
    ("channel", CONV): (1, 3, 1, 1),
    ("element", LINEAR): (5, 6),
    ("kernel", LINEAR): (5, 6),
    ("filter", LINEAR): (5, 1),
    ("channel", LINEAR): (1, 6),
    ("element", (7,)): (7,),
    ("kernel", (7,)): (7,),
    ("filter", (7,)): (7,),
}


@pytest.mark.parametrize(("name", "shape"), sorted(UNIT_SHAPES))
def test_unit_shape(name: str, shape: tuple[int, ...]) -> None:
    assert tuple(GRANULARITIES.get(name).unit_shape(shape)) == UNIT_SHAPES[(name, shape)]


def test_filter_reduce_sums_each_filter() -> None:
    scores = torch.arange(48, dtype=torch.float64).reshape(CONV)
    # filter f holds entries 12f .. 12f + 11
    expected = torch.tensor([66.0, 210.0, 354.0, 498.0], dtype=torch.float64).reshape(4, 1, 1, 1)
    torch.testing.assert_close(GRANULARITIES.get("filter").reduce(scores), expected, rtol=0, atol=0)


def test_channel_reduce_sums_each_input_channel() -> None:
    scores = torch.ones(CONV)
    torch.testing.assert_close(
        GRANULARITIES.get("channel").reduce(scores), torch.full((1, 3, 1, 1), 16.0), rtol=0, atol=0
    )


def test_kernel_reduce_sums_each_kernel() -> None:
    scores = torch.arange(48, dtype=torch.float64).reshape(CONV)
    reduced = GRANULARITIES.get("kernel").reduce(scores)
    assert reduced[1, 2, 0, 0].item() == 20 + 21 + 22 + 23  # kernel (1, 2) holds entries 20..23


def test_element_reduce_is_identity() -> None:
    scores = torch.rand(CONV)
    torch.testing.assert_close(GRANULARITIES.get("element").reduce(scores), scores, rtol=0, atol=0)


@pytest.mark.parametrize("name", GRANULARITIES.names())
@pytest.mark.parametrize("shape", [CONV, LINEAR], ids=["conv", "linear"])
def test_expand_then_reduce_counts_each_kept_unit_once_per_entry(name: str, shape: tuple[int, ...]) -> None:
    g = GRANULARITIES.get(name)
    unit_mask = torch.rand(g.unit_shape(shape), generator=torch.Generator().manual_seed(3)) > 0.5
    full = g.expand(unit_mask, shape)
    unit_size = int(torch.Size(shape).numel()) // g.num_units(shape)
    assert full.shape == torch.Size(shape) and full.dtype == torch.bool
    torch.testing.assert_close(g.reduce(full.double()), unit_mask.double() * unit_size, rtol=0, atol=0)


@pytest.mark.parametrize("name", GRANULARITIES.names())
def test_reduce_output_broadcasts_onto_the_tensor(name: str) -> None:
    scores = torch.rand(CONV)
    assert (GRANULARITIES.get(name).reduce(scores) + scores).shape == scores.shape


def test_expand_rejects_a_mask_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        GRANULARITIES.get("filter").expand(torch.ones(3, 1, 1, 1, dtype=torch.bool), CONV)


def test_channel_granularity_rejects_one_dimensional_tensors() -> None:
    with pytest.raises(ConfigError, match="channel granularity needs"):
        GRANULARITIES.get("channel").unit_shape((7,))


def test_unknown_granularity_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="did you mean filter"):
        GRANULARITIES.get("filtre")
