"""The construct models (``tests/constructs.py``): they run, Torch-Pruning 1.6.1 handles exactly the ones
``REFUSED`` does not name, and prunelab's structured pruning + surgery works on each of those (one-line
refusal on the others). Needs only torch: runs in the main environment and in the zoo one."""

from __future__ import annotations

import pytest
import torch
from constructs import CONSTRUCTS, HEADS, NORM_STATISTICS, REFUSED, call
from tp_reference import flat_output, tp_prune

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = sorted(CONSTRUCTS)


@pytest.mark.parametrize("name", NAMES)
def test_construct_runs_deterministically(name: str) -> None:
    model, inputs = CONSTRUCTS[name]()
    again, inputs2 = CONSTRUCTS[name]()
    assert not model.training
    assert model.__doc__ and CONSTRUCTS[name].__doc__
    for head in HEADS[name]:
        model.get_submodule(head)
    with torch.no_grad():
        out, out2 = flat_output(call(model, inputs)), flat_output(call(again, inputs2))
    assert torch.isfinite(out).all()
    assert torch.equal(out, out2)


def test_tables_agree() -> None:
    assert set(HEADS) == set(CONSTRUCTS)
    assert REFUSED <= set(CONSTRUCTS) and NORM_STATISTICS <= set(CONSTRUCTS)
    assert not REFUSED & NORM_STATISTICS


@pytest.mark.parametrize("name", NAMES)
def test_torch_pruning_reference(name: str) -> None:
    """REFUSED is what Torch-Pruning 1.6.1 measurably cannot do (its pruned model fails or is wrong)."""
    model, inputs = CONSTRUCTS[name]()
    result = tp_prune(model, inputs, HEADS[name], 0.3)
    if name in REFUSED:
        assert not result.works, f"Torch-Pruning now handles {name}: take it out of REFUSED"
    elif name in NORM_STATISTICS:
        assert result.params_after < result.params_before, result.error
        assert "differs from the masked original" in result.error
    else:
        assert result.works, result.error
        assert result.params_after < result.params_before
