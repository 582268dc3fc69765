"""Channel surgery: equivalence on every zoo model, shift folding, failure on mismatch, arch spec, report."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from constructs import graph_summary
from torch import nn

from prunelab.errors import CheckpointError, ConfigError, UnsupportedModelError
from prunelab.models import MODELS, build_model, model_options
from prunelab.surgery import (
    ChannelGraph,
    ChannelMappingLayer,
    SurgeryMismatchError,
    apply_arch_spec,
    arch_spec,
    check_equivalence,
    compact,
    find_unremovable,
    zero_channels,
)
from prunelab.surgery.compact import ChannelRemovalError

#: Small inputs/widths so that every zoo model is checked in the fast suite.
SHAPES = {
    "densenet40": (3, 4, 4),
    "small_cnn": (1, 8, 8),
    "lenet300_100": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "vgg_like": (3, 32, 32),
    **{f"vgg{d}": (3, 16, 16) for d in (11, 13, 16, 19)},
}
#: Deep ResNets exercise the same code paths as resnet20/32 and take long on a loaded CPU.
SLOW = {"resnet44", "resnet56", "resnet110"}
#: A coupling each of these models must expose (and have pruned) — residual, concat, depthwise.
COUPLING = {
    "resnet20": "residual",
    "densenet40": "concat",
    "mobilenet_v1": "depthwise",
    "mobilenet_v2": "residual",
}


def _build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    shape = SHAPES.get(name, (3, 8, 8))
    kwargs = {"width": 0.25} if "width" in model_options(name) else {}
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, **kwargs)
    # Non-trivial BN statistics and shifts, so that a wrong channel mapping cannot go unnoticed.
    for n, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                # Residual branches get small scales so that the stream of a 110-layer net stays O(1).
                m.weight.uniform_(0.05, 0.2) if n.endswith("bn2") else m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), shape


def _random_keep(graph: ChannelGraph, share: float = 0.5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    keep = {}
    for g in graph.groups:
        mask = torch.rand(g.size, generator=gen) >= share
        mask[int(torch.randint(g.size, (1,), generator=gen))] = True
        if g.size > 1 and bool(mask.all()):
            mask[0] = False  # every group loses at least one channel
        keep[g.name] = mask
    return keep


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS.names()]
)
def test_compact_matches_masked_model_on_every_zoo_model(name: str) -> None:
    model, shape = _build(name)
    graph = ChannelGraph(model, shape)
    assert graph.groups, f"{name}: no prunable channel group found"
    keep = _random_keep(graph)
    x = torch.randn(4, *shape)
    small, report = compact(model, keep, shape, graph=graph, batch=x)
    assert report.max_abs_diff <= 1e-4
    if name in COUPLING:  # coupled groups are found and lose channels too
        coupled = [g for g in graph.groups if COUPLING[name] in g.coupling]
        assert coupled and all(report.groups[g.name][1] < g.size for g in coupled)
    if name == "mobilenet_v2":
        assert any("depthwise" in g.coupling for g in graph.groups)
    assert report.channels_removed == sum(int((~k).sum()) for k in keep.values())
    # The result is physically smaller and still maps inputs to logits of the same shape.
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert small(x).shape == model(x).shape
    # The original is untouched.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in _build(name)[0].parameters())


class _Chain(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-GAP-linear with a chosen kernel/padding for the second conv."""

    def __init__(self, kernel: int, padding: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 5, kernel, padding=padding, bias=False), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _shifted_chain(kernel: int, padding: int) -> nn.Module:
    torch.manual_seed(0)
    model = _Chain(kernel, padding).eval()
    with torch.no_grad():
        model.b1.bias.uniform_(0.5, 1.0)  # positive: ReLU passes the constant shift on
        model.b2.bias.uniform_(0.5, 1.0)
    return model


def test_bn_shift_fold_is_exact_without_padding() -> None:
    model = _shifted_chain(kernel=1, padding=0)
    graph = ChannelGraph(model, (3, 6, 6))
    keep = {
        "c1": torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool),
        "c2": torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool),
    }
    _, report = compact(model, keep, (3, 6, 6), graph=graph)
    assert set(report.folds_exact) == {"c2", "fc"}
    assert not report.folds_inexact
    # The compacted model equals the γ-masked model (removed channels carrying their BN shift).
    assert report.shift_max_abs_diff <= 1e-5


def test_bn_shift_fold_with_padding_is_reported_inexact() -> None:
    model = _shifted_chain(kernel=3, padding=1)
    graph = ChannelGraph(model, (3, 6, 6))
    keep = {"c1": torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool)}
    _, report = compact(model, keep, (3, 6, 6), graph=graph)
    assert "c2" in report.folds_inexact and "zero padding" in report.folds_inexact["c2"]
    assert report.shift_max_abs_diff > 1e-4  # border pixels differ, and the report says so
    assert report.max_abs_diff <= 1e-4  # while the surgery itself is exact


def test_mismatch_above_tolerance_is_an_error() -> None:
    model, shape = _build("small_cnn")
    graph = ChannelGraph(model, shape)
    small, _ = compact(model, _random_keep(graph), shape, graph=graph)
    broken = build_model("small_cnn", input_shape=shape)
    apply_arch_spec(broken, arch_spec(small))
    broken.load_state_dict(small.state_dict())
    with torch.no_grad():
        broken.classifier.bias[0] += 1e-3  # a silently wrong model must be caught
    x = torch.randn(4, *shape)
    assert check_equivalence(small, small, x) == 0.0
    with pytest.raises(SurgeryMismatchError, match="tolerance"):
        check_equivalence(small, broken, x)


def test_arch_spec_round_trip_weights_only() -> None:
    model, shape = _build("resnet20")
    graph = ChannelGraph(model, shape)
    small, _ = compact(model, _random_keep(graph), shape, graph=graph)
    spec = json.loads(json.dumps(arch_spec(small)))  # the spec is plain JSON
    assert spec["format"] == "prunelab.arch" and spec["version"] == 2
    buf = io.BytesIO()
    torch.save({"arch": spec, "state_dict": small.state_dict()}, buf)
    buf.seek(0)
    payload = torch.load(buf, weights_only=True)
    rebuilt = apply_arch_spec(build_model("resnet20", input_shape=shape, width=0.25), payload["arch"])
    rebuilt.load_state_dict(payload["state_dict"], strict=True)
    x = torch.randn(4, *shape)
    assert torch.equal(rebuilt.eval()(x), small.eval()(x))
    with pytest.raises(CheckpointError, match="newer prunelab"):
        apply_arch_spec(build_model("resnet20", input_shape=shape, width=0.25), {**spec, "version": 99})


def test_prunability_report_lists_groups_exclusions_and_reasons() -> None:
    model, shape = _build("resnet20")
    report = ChannelGraph(model, shape).report()
    assert report["excluded"]["linear"].startswith("classifier head")
    residual = [g for g in report["groups"] if "residual" in g["coupling"]]
    assert len(residual) == 3  # one residual stream per stage
    assert any("layer2.0.shortcut" in g["shortcuts"] for g in residual)
    assert report["channels_total"] == sum(g["channels"] for g in report["groups"])
    lenet = ChannelGraph(build_model("lenet300_100", input_shape=(1, 28, 28)), (1, 28, 28)).report()
    assert lenet["groups_without_batchnorm"] == ["fc1", "fc2"]
    dense = ChannelGraph(*_build("densenet40")).report()
    assert any(len(g["batchnorms"]) > 5 and "concat" in g["coupling"] for g in dense["groups"])


def test_bad_masks_and_unsupported_layers_raise() -> None:
    model, shape = _build("small_cnn")
    graph = ChannelGraph(model, shape)
    with pytest.raises(ConfigError, match="entries"):
        compact(model, {"features.0": torch.ones(3, dtype=torch.bool)}, shape, graph=graph)
    with pytest.raises(ConfigError, match="keep at least"):
        compact(
            model,
            {"features.0": torch.zeros(graph.by_name["features.0"].size, dtype=torch.bool)},
            shape,
            graph=graph,
        )
    with pytest.raises(ConfigError, match="no such prunable group"):
        compact(model, {"classifier": torch.ones(10, dtype=torch.bool)}, shape, graph=graph)
    odd = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModelError, match="Embedding.*exclude it") as err:
        ChannelGraph(odd, (torch.zeros(2, 1, dtype=torch.long),))
    assert "\n" not in str(err.value)


class _Reverse(nn.Module):
    """A user's own channel-mapping layer (not from prunelab): output ``j`` copies input ``source[j]``.

    Built as a channel reversal; ``-1`` marks an all-zero output. It implements the surgery's
    ``ChannelMappingLayer`` protocol by its methods alone.
    """

    source: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inputs = channels
        self.register_buffer("source", torch.arange(channels - 1, -1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        present = (self.source >= 0).to(x.dtype).view(1, -1, 1, 1)
        return x.index_select(1, self.source.clamp(min=0)) * present

    def channel_counts(self) -> tuple[int, int]:
        return self.inputs, len(self.source)

    def prune_outputs(self, idxs: Sequence[int]) -> None:
        keep = torch.ones(len(self.source), dtype=torch.bool)
        keep[list(idxs)] = False
        self.source = self.source[keep]

    def prune_inputs(self, idxs: Sequence[int]) -> None:
        gone = {int(i) for i in idxs}
        # Surviving inputs move down by the number of removed inputs before them.
        kept = [-1 if s < 0 or s in gone else s - sum(g < s for g in gone) for s in self.source.tolist()]
        self.source = torch.tensor(kept)
        self.inputs -= len(gone)

    def zero_outputs(self, idxs: Sequence[int]) -> None:
        self.source[list(idxs)] = -1

    def zero_inputs(self, idxs: Sequence[int]) -> None:
        self.source[torch.isin(self.source, torch.tensor(list(idxs)))] = -1

    def arch_entry(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "source": self.source.tolist()}

    def load_arch_entry(self, entry: Mapping[str, Any]) -> None:
        self.inputs, self.source = int(entry["inputs"]), torch.tensor(entry["source"])


class _ReversedResidual(nn.Module):
    """conv-BN-ReLU, then a residual block whose shortcut is the user's ``_Reverse``, GAP, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.shortcut = _Reverse(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)) + self.shortcut(h))
        return self.fc(h.mean(dim=(2, 3)))


def test_a_user_layer_implementing_the_protocol_passes_through_surgery() -> None:
    torch.manual_seed(0)
    model, shape = _ReversedResidual().eval(), (3, 6, 6)
    assert isinstance(model.shortcut, ChannelMappingLayer)
    graph = ChannelGraph(model, shape)
    assert set(graph.by_name) == {"c1", "c2"}
    assert all("shortcut" in g["shortcuts"] for g in graph.report()["groups"])
    keep = {
        "c1": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool),  # the shortcut's inputs
        "c2": torch.tensor([0, 1, 1, 0, 1, 1], dtype=torch.bool),  # the residual stream: its outputs
    }
    x = torch.randn(4, *shape)
    small, report = compact(model, keep, shape, graph=graph, batch=x)
    assert report.max_abs_diff <= 1e-4
    assert small.shortcut.channel_counts() == (4, 4)
    spec = json.loads(json.dumps(arch_spec(small)))
    assert spec["layers"]["shortcut"]["type"] == "_Reverse"
    assert spec["layers"]["shortcut"]["entry"] == small.shortcut.arch_entry()
    rebuilt = apply_arch_spec(_ReversedResidual(), spec)
    rebuilt.load_state_dict(small.state_dict(), strict=True)
    assert torch.equal(rebuilt.eval()(x), small.eval()(x))


def test_compact_reuses_the_given_graph_and_leaves_it_reusable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_pruning as tp

    model, shape = _build("resnet20")
    graph = ChannelGraph(model, shape)
    keep = _random_keep(graph)
    traces: list[int] = []
    build = tp.DependencyGraph.build_dependency

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        traces.append(1)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", counted)
    x = torch.randn(4, *shape)
    first, report = compact(model, keep, shape, graph=graph, batch=x)
    second, _ = compact(model, keep, shape, graph=graph, batch=x)  # the graph is not consumed
    assert not traces  # no second trace: the removal replays the given graph on the copy
    assert report.max_abs_diff <= 1e-4
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    # The graph still describes the untouched original.
    assert all(model.get_submodule(g.name).out_channels == g.size for g in graph.groups)


def _count_forwards(model: nn.Module) -> list[int]:
    """A list that grows by one at every forward pass of ``model`` or of a deep copy of it (hooks are copied)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    return calls


class _SigmoidChain(nn.Module):
    """conv-BN-sigmoid-conv-BN-ReLU-GAP-linear: a removed channel carries sigmoid(0) = 0.5 even with β = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 5, 1, bias=False), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_graph_traces_and_finds_the_head_in_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = build_model("vgg11", input_shape=(3, 16, 16)).eval()
    calls = _count_forwards(model)
    graph = ChannelGraph(model, (3, 16, 16))
    assert len(calls) == 1  # Torch-Pruning's trace is the head search's forward pass
    assert graph.head == "classifier" and "classifier" in graph.excluded
    with pytest.raises(ConfigError, match="cannot run"):
        ChannelGraph(model, (3, 5, 5, 5))  # the head search's own error, not a Torch-Pruning one


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS.names()]
)
def test_graph_traced_on_an_empty_batch_equals_the_one_traced_on_a_batch_of_one(name: str) -> None:
    model, shape = _build(name)
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: batches.append(int(args[0].shape[0])))
    # Element-wise nodes included: a batch norm must not turn into four of them on the empty batch.
    empty = graph_summary(shape, model, elementwise=True)  # a shape: traced on an empty batch
    one = graph_summary(torch.zeros(1, *shape), model, elementwise=True)  # a tensor: traced as given
    assert batches == [0, 1]
    assert empty == one and isinstance(empty, list)


class _ViewOverBatch(nn.Module):
    """``x.view(x.size(0), -1)``: cannot run on an empty batch (-1 is ambiguous for 0 elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).relu().view(x.size(0), -1))


def _hook_counts(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


def test_a_model_that_cannot_run_on_an_empty_batch_is_traced_on_one_and_keeps_no_hooks() -> None:
    model = _ViewOverBatch().eval()
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: batches.append(int(args[0].shape[0])))
    hooks = _hook_counts(model)
    graph = ChannelGraph(model, (3, 6, 6))
    assert batches == [0, 1] and [g.name for g in graph.groups] == ["conv"]
    assert _hook_counts(model) == hooks  # the failed empty-batch trace left none of its hooks behind
    with pytest.raises(ConfigError, match="cannot run"):
        ChannelGraph(model, (3, 5, 5))  # fails on both batches: the batch of one's error
    assert _hook_counts(model) == hooks


def test_weight_screen_refuses_nan_and_accepts_sums_that_overflow() -> None:
    torch.manual_seed(0)
    model = _Chain(kernel=1, padding=0).eval()
    with torch.no_grad():
        model.c2.weight[0, 0] = 3e38
        model.c2.weight[0, 1] = 3e38  # finite weights whose sum is inf: the exact check lets them through
    assert not bool(model.c2.weight.sum().isfinite())
    ChannelGraph(model, (3, 6, 6))
    with torch.no_grad():
        model.b1.running_var[2] = float("nan")
    with pytest.raises(UnsupportedModelError, match=r"'b1.running_var'.*NaN"):
        ChannelGraph(model, (3, 6, 6))


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])  # resnet20: option-A shortcuts (channel maps)
def test_unshifted_model_needs_no_reference_pass_and_wrong_removals_still_fail(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape=(3, 16, 16)).eval()  # fresh BN layers: every shift is 0
    graph = ChannelGraph(model, (3, 16, 16))
    # Removing the same positions from every group keeps a shortcut's removed outputs reading removed
    # inputs, so they are zero in the γ-masked model as well.
    keep = {g.name: torch.arange(g.size) % 2 == 0 for g in graph.groups}
    calls = _count_forwards(model)
    small, report = compact(model, keep, (3, 16, 16), graph=graph)
    assert len(calls) == 2  # the γ-masked pass is the reference; then the compacted model
    assert report.max_abs_diff == report.shift_max_abs_diff <= 1e-4 and not report.folds_exact
    # Checked independently: the masked model (every removed entry zeroed) on other inputs.
    masked = copy.deepcopy(model)
    zero_channels(masked, graph.groups, {n: torch.nonzero(~k).flatten().tolist() for n, k in keep.items()})
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert float((small(x) - masked(x)).abs().max()) <= 1e-4
    # A removal of the wrong channels (same widths) is caught on this path too.
    remove = graph.remove
    sizes = {g.name: g.size for g in graph.groups}

    def wrong(target: nn.Module, removed: Mapping[str, Sequence[int]]) -> None:
        remove(target, {n: sorted((c + 1) % sizes[n] for c in chans) for n, chans in removed.items()})

    graph.remove = wrong  # type: ignore[method-assign]
    with pytest.raises(ChannelRemovalError):
        compact(model, keep, (3, 16, 16), graph=graph, diagnose=False)


def test_nonzero_constant_without_shift_falls_back_to_the_folding_path() -> None:
    torch.manual_seed(0)
    model = _SigmoidChain().eval()
    graph = ChannelGraph(model, (3, 6, 6))
    keep = {"c1": torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool)}
    calls = _count_forwards(model)
    _, report = compact(model, keep, (3, 6, 6), graph=graph)
    assert len(calls) == 4  # one sample shows a non-zero constant; then γ-masked, reference, compacted
    assert report.folds_exact == ["c2"]  # sigmoid(0) = 0.5 folded into c2's (new) bias
    assert report.max_abs_diff <= 1e-4 and report.shift_max_abs_diff <= 1e-5


def test_fold_shifts_off_skips_the_masked_pass() -> None:
    model = _shifted_chain(kernel=3, padding=1)
    graph = ChannelGraph(model, (3, 6, 6))
    keep = {"c1": torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool)}
    calls = _count_forwards(model)
    _, report = compact(model, keep, (3, 6, 6), graph=graph, fold_shifts=False)
    assert len(calls) == 2  # reference and compacted only
    assert report.shift_max_abs_diff is None and not report.folds_exact and not report.folds_inexact
    assert report.max_abs_diff <= 1e-4


def test_a_group_search_that_does_not_end_is_stopped_and_its_channels_stay() -> None:
    """Torch-Pruning's search for the channels coupled to the stream of a partial residual (timm's ReXNet)
    does not end; the graph stops it at its budget, refuses that layer in one line, keeps the channels of
    every layer the search had reached, and finds the other groups, which then prune and verify."""
    import importlib

    from constructs import CONSTRUCTS

    import prunelab

    graph_module = importlib.import_module("prunelab.surgery.graph")
    base = graph_module.tp_graph.Group
    model, x = CONSTRUCTS["partial_residual"]()
    graph = ChannelGraph(model, x)
    assert graph_module.tp_graph.Group is base  # Torch-Pruning's own class again afterwards
    # The first search to run away starts from the last block (Torch-Pruning's order); it had reached the
    # whole stream: the stem, every block's second conv and their BatchNorms (9 layers besides itself).
    assert list(graph.refused) == ["blocks.3.1"], graph.refused
    why = graph.refused["blocks.3.1"]
    assert "does not end" in why and "\n" not in why and "9 layers it had coupled" in why
    stream = {"stem.0", *(f"blocks.{i}.1" for i in range(4))}
    out_members = {m.name for g in graph.groups for m in g.members if m.role == "out"}
    assert not stream & out_members  # no group removes a channel of the stream
    assert {g.name for g in graph.groups} == {f"blocks.{i}.0.0" for i in range(4)}  # the inner ones
    excluded = graph.report()["excluded"]
    assert "'blocks.3.1', whose channel-group search does not end" in excluded["stem.0"]
    small, report = prunelab.prune_channels(model, x, 0.5, scope="layer")
    assert report.surgery.max_abs_diff <= report.surgery.accepted_diff
    assert report.channels_after < report.channels_before and "blocks.3.1" in report.refused
    assert small.get_submodule("stem.0").out_channels == 16  # the stream keeps its channels


def test_the_search_bound_restores_torch_pruning_after_an_error() -> None:
    import importlib

    import torch_pruning as tp

    graph_module = importlib.import_module("prunelab.surgery.graph")
    base = graph_module.tp_graph.Group
    dg = tp.DependencyGraph().build_dependency(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8)
    )
    with pytest.raises(RuntimeError, match="inside"), graph_module._bounded_search(dg) as budget:
        assert graph_module.tp_graph.Group is not base and budget == graph_module.SEARCH_BUDGET_FLOOR
        raise RuntimeError("inside")
    assert graph_module.tp_graph.Group is base


def test_a_group_whose_mapping_cannot_be_right_is_named() -> None:
    """Torch-Pruning's index mappings around slices and concatenations can point past a layer's channels
    (timm's rexnet_100) or leave channels no layer produces (ghostnet_100); the graph refuses such a group
    instead of failing later in scoring or spending the pruning budget on channels that are not there."""
    from dataclasses import replace

    from constructs import CONSTRUCTS

    model, x = CONSTRUCTS["residual_add"]()
    graph = ChannelGraph(model, x)
    group = graph.groups[0]
    assert graph._mismatch(group) is None
    member = next(m for m in group.members if m.kind == "Conv2d" and m.role == "in")
    width = model.get_submodule(member.name).in_channels
    broken = replace(group, members=[replace(member, pairs=[*member.pairs, (0, width)])])
    why = graph._mismatch(broken)
    assert why is not None and f"index {width} of {member.name!r} (input channels), which has {width}" in why
    # A channel no layer produces (timm's ghostnet_100, mixnet_s): removing it would remove nothing.
    phantom = replace(group, size=group.size + 1)
    why = graph._mismatch(phantom)
    assert why is not None and f"maps only {group.size} of this group's {group.size + 1} channels" in why


@pytest.mark.parametrize("name", ["split_chunk", "split_sized", "concat_slice_ghost"])
def test_find_unremovable_names_the_failing_groups_without_tracing_again(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The groups are tried on copies through the graph's own removal (what compact applies), so the
    search needs no new trace, and the groups it lets pass do remove together and verify."""
    import importlib

    from constructs import CONSTRUCTS

    graph_module = importlib.import_module("prunelab.surgery.graph")
    model, x = CONSTRUCTS[name]()
    graph = ChannelGraph(model, x)
    traces: list[int] = []
    trace = graph_module._trace
    monkeypatch.setattr(graph_module, "_trace", lambda *a, **k: traces.append(1) or trace(*a, **k))
    bad = find_unremovable(model, graph, x)
    assert not traces
    for group, why in bad.items():
        assert group in graph.by_name and why and "\n" not in why
    keep = {}
    for group in graph.groups:
        if group.name not in bad and group.size > group.divisions:
            keep[group.name] = torch.ones(group.size, dtype=torch.bool)
            keep[group.name][group.periodic([0])] = False
    _, report = compact(model, keep, x, graph=graph)
    assert report.channels_removed == len(keep) > 0
    assert report.max_abs_diff <= report.accepted_diff


class _GhostResidualNet(nn.Module):
    """Residual GhostNet blocks (timm's ghostnet): the stream's group reaches consumers that read none of
    some of its channels (the ghost modules' slices)."""

    def __init__(self) -> None:
        super().__init__()
        from constructs import GhostModule, _cbr

        self.stem = _cbr(3, 16)
        self.blocks = nn.ModuleList(nn.Sequential(GhostModule(16, 32), GhostModule(32, 16)) for _ in range(2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.fc(x.mean((2, 3)))


def test_removing_a_channel_some_consumer_does_not_read_compacts() -> None:
    """A consumer that reads none of the removed channels has nothing to observe or fold (the shift fold
    once failed there: an empty index, "index_select(): Expected dtype int32 or int64")."""
    from constructs import calibrate_bn, example_batch, randomize_norms

    torch.manual_seed(0)
    x = example_batch(3, 16, 16)
    model = calibrate_bn(randomize_norms(_GhostResidualNet()), x)  # BN shifts != 0: the folding path
    graph = ChannelGraph(model, x)
    cases = [
        (group, channel)
        for group in graph.groups
        for member in group.members
        if member.role == "in" and member.kind in ("Conv2d", "Linear")
        for channel in sorted(set(range(group.size)) - {c for c, _ in member.pairs})[:1]
    ]
    assert cases  # the model has such a consumer
    for group, channel in cases:
        keep = {group.name: torch.ones(group.size, dtype=torch.bool)}
        keep[group.name][channel] = False
        _, report = compact(model, keep, x, graph=graph)
        assert report.channels_removed == 1 and report.max_abs_diff <= report.accepted_diff
