"""The construct models (``tests/constructs.py``): they run, Torch-Pruning 1.6.1 handles exactly the ones
``REFUSED`` does not name, and prunelab's structured pruning + surgery works on each of those (one-line
refusal on the others). Needs only torch: runs in the main environment and in the zoo one."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from constructs import CONSTRUCTS, HANGS, HEADS, NORM_STATISTICS, REFUSED, call, graph_summary
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
    assert HANGS <= REFUSED


@pytest.mark.parametrize("name", sorted(HANGS))
def test_torch_pruning_search_does_not_end(name: str) -> None:
    """HANGS is where Torch-Pruning 1.6.1's own group search (what its pruners call first) does not end: a
    search from the stem grows past 50 entries per graph node, where the largest group of the zoo needs 1.6
    (unbounded it was still growing after 20 s). On every other construct the same bound is never reached."""
    import importlib

    import torch_pruning as tp

    graph = importlib.import_module("prunelab.surgery.graph")  # the search bound prunelab uses
    model, inputs = CONSTRUCTS[name]()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    with graph._bounded_search(dg, per_node=50), pytest.raises(graph._RunawaySearch) as stopped:
        list(dg.get_all_groups(ignored_layers=[model.get_submodule(h) for h in HEADS[name]]))
    assert stopped.value.budget == max(graph.SEARCH_BUDGET_FLOOR, 50 * len(dg.module2node))


@pytest.mark.parametrize("name", sorted(set(NAMES) - HANGS))
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


@pytest.mark.parametrize("name", NAMES)
def test_a_shape_traces_the_graph_a_batch_of_one_traces(name: str) -> None:
    """A shape is traced on an empty batch (or, where the model cannot run on one, a batch of one):
    the same groups, member pairs and Torch-Pruning nodes as a batch of one, or the same kind of error."""
    model, inputs = CONSTRUCTS[name]()
    if not isinstance(inputs, torch.Tensor):
        pytest.skip("several inputs: traced as given, there is no shape to trace")
    shape = tuple(inputs.shape[1:])
    assert graph_summary(shape, model) == graph_summary(torch.zeros(1, *shape), model)


def _export_format() -> str:
    return (
        "onnx"
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")
        else "torchscript"
    )


FULL_CHECKS = (
    importlib.util.find_spec("torchvision") is not None and importlib.util.find_spec("timm") is not None
)


@pytest.mark.skipif(
    not FULL_CHECKS,
    reason="the full prunelab checks of the constructs run in the zoo stage of .ci/run (the zoo virtualenv), "
    "where their minute is budgeted",
)
@pytest.mark.parametrize("name", NAMES)
def test_construct_prunelab_checks(name: str, zoo_dir: Any, reloader: Any) -> None:
    """Every prunelab check on the construct; REFUSED constructs may be refused (one line), no others."""
    from constructs import CONSTRUCTS as TABLE
    from zoo_checks import judge, problems, record, run_checks
    from zoo_models import KNOWN_DEFECTS, has_batchnorm

    model, inputs = TABLE[name]()
    cls = type(model).__name__
    outcomes = run_checks(
        model,
        inputs,
        HEADS[name][0],
        builder=f"constructs:{cls}",
        directory=zoo_dir,
        key=f"construct-{name}",
        export_format=_export_format(),
    )
    if outcomes["save"].status == "ok":
        outcomes["reload"] = reloader.load(outcomes["save"].details["path"])
    tp_works = name not in REFUSED
    record(
        f"construct-{name}",
        {
            "model": f"construct:{name}",
            "tp_works": tp_works,
            "checks": {k: o.to_dict() for k, o in outcomes.items()},
        },
    )
    failures = problems(outcomes, tp_works=tp_works, has_batchnorm=has_batchnorm(model))
    judge(f"construct:{name}", failures, KNOWN_DEFECTS)
