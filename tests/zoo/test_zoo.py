"""The real third-party zoo: ≥ 15 torchvision and ≥ 8 timm models through every prunelab check.

For each model (random weights, 10 classes, a small input): unstructured masks, L1-filter, BN-scale and
PLS+VIP structured pruning with surgery (equivalence ≤ 1e-4), NN-relief, interspace, save → reload in a
fresh process (one process for all models), export → verify. A model fails on any traceback-type error,
an equivalence diff above the tolerance, or a refusal of a model Torch-Pruning 1.6.1 prunes
(``zoo_checks.problems``). Runs in the zoo virtualenv (``.ci/run``); skipped without torchvision/timm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("timm")

import torch
from constructs import graph_summary
from zoo_checks import CHECKS, judge, problems, record, run_checks
from zoo_models import KNOWN_DEFECTS, TP_FAILS, TP_HANGS, ZOO, build, has_batchnorm

from prunelab.errors import UnsupportedModelError
from prunelab.surgery import ChannelGraph

pytestmark = pytest.mark.usefixtures("one_thread")


def test_zoo_size() -> None:
    assert sum(e.library == "torchvision" for e in ZOO) >= 15
    assert sum(e.library == "timm" for e in ZOO) >= 8
    assert set(TP_FAILS) <= {e.builder for e in ZOO}
    assert TP_HANGS <= set(TP_FAILS)


@pytest.mark.parametrize("entry", ZOO, ids=[e.id for e in ZOO])
def test_zoo_model(entry: Any, zoo_dir: Path, reloader: Any) -> None:
    torch.manual_seed(0)
    model, inputs = build(entry)
    assert model.get_submodule(entry.head) is not None
    outcomes = run_checks(
        model,
        inputs,
        entry.head,
        builder=entry.builder,
        kwargs=entry.kwargs,
        directory=zoo_dir,
        key=entry.id,
        checks=CHECKS,
        export_format=entry.export,
        unstructured_exclude=entry.unstructured_exclude,
    )
    if outcomes["save"].status == "ok":
        outcomes["reload"] = reloader.load(outcomes["save"].details["path"])
    tp_works = entry.builder not in TP_FAILS
    record(
        entry.id,
        {
            "model": entry.builder,
            "input_shape": list(entry.input_shape),
            "tp_works": tp_works,
            "checks": {name: o.to_dict() for name, o in outcomes.items()},
        },
    )
    failures = problems(outcomes, tp_works=tp_works, has_batchnorm=has_batchnorm(model))
    judge(entry.builder, failures, KNOWN_DEFECTS)


@pytest.mark.parametrize("entry", ZOO, ids=[e.id for e in ZOO])
def test_zoo_shape_traces_the_graph_a_batch_of_one_traces(entry: Any) -> None:
    """``ChannelGraph(model, shape)`` traces an empty batch: it must find what a batch of one finds (groups,
    member pairs, Torch-Pruning's nodes), or fail the same way."""
    torch.manual_seed(0)
    model, _ = build(entry)
    shape = tuple(entry.input_shape)
    assert graph_summary(shape, model) == graph_summary(torch.zeros(1, *shape), model)


@pytest.mark.parametrize("entry", ZOO, ids=[e.id for e in ZOO])
def test_zoo_group_search_bound_stops_only_the_searches_that_do_not_end(entry: Any) -> None:
    """The graph's bound on Torch-Pruning's group search (8 entries per graph node; the largest zoo group
    needs 1.6) stops a search on the models where it does not end, and on no other."""
    torch.manual_seed(0)
    model, inputs = build(entry)
    try:
        graph = ChannelGraph(model, inputs, head=entry.head)
    except UnsupportedModelError:
        assert entry.builder in TP_FAILS
        return
    stopped = [name for name, why in graph.refused.items() if "does not end" in why]
    assert bool(stopped) == (entry.builder in TP_HANGS), graph.refused
    assert graph.groups  # the other groups are found
