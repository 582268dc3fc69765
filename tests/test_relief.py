"""NN-relief: statistics, importance scores, cumulative-mass selector, structural rules and the driver."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.core import masking
from prunelab.core.cumulative import cumulative_mass_rows, select_cumulative_mass
from prunelab.core.selectors import SELECTORS
from prunelab.core.targets import Target
from prunelab.criteria.relief import relief_importance
from prunelab.errors import ConfigError
from prunelab.methods.relief import ReliefOptions, ReliefPruner, analyze
from prunelab.stats.activations import (
    ReliefStatistics,
    collect,
    conv_norms_gram,
    conv_norms_grouped,
    plan_quadratic,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# Scores against hand computation and a naive per-sample loop


def _naive_linear(layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = layer.weight.detach().double()
    scores = torch.zeros_like(w)
    for n in range(x.shape[0]):
        for j in range(w.shape[0]):
            for i in range(w.shape[1]):
                scores[j, i] += abs(float(w[j, i]) * float(x[n, i]))
    return scores / x.shape[0], layer.bias.detach().double().abs()


def _naive_conv(conv: nn.Conv2d, x: torch.Tensor, variant: str) -> torch.Tensor:
    k = conv.weight.detach().double().abs()
    xa = x.double().abs()
    c_out, c_in = k.shape[:2]
    out = torch.zeros(c_out, c_in, dtype=torch.float64)
    for j in range(c_out):
        for i in range(c_in):
            kernel = k[j, i][None, None]
            if variant == "code":
                mean = xa[:, i].mean(dim=0)[None, None]
                out[j, i] = F.conv2d(mean, kernel, stride=conv.stride, padding=conv.padding).norm()
            else:
                for n in range(x.shape[0]):
                    resp = F.conv2d(xa[n, i][None, None], kernel, stride=conv.stride, padding=conv.padding)
                    out[j, i] += resp.norm() / x.shape[0]
    return out


def test_linear_scores_by_hand_and_naive_loop() -> None:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0]]))
        layer.bias.copy_(torch.tensor([1.0, -0.5]))
    x = torch.tensor([[1.0, 2.0], [-3.0, 0.0]])  # mean |x| = [2, 1]
    stats = collect(layer, [(x, torch.zeros(2))], {"": layer})
    for variant in ("paper", "code"):
        weights, bias = relief_importance(layer, stats[""], variant)  # type: ignore[arg-type]
        assert weights.tolist() == [[2.0, 2.0], [1.0, 1.0]]
        assert bias is not None and bias.tolist() == [1.0, 0.5]
        naive_w, naive_b = _naive_linear(layer, x)
        torch.testing.assert_close(weights, naive_w)
        torch.testing.assert_close(bias, naive_b)
    # The normalised score of input 0 of neuron 0 is 2 / (2 + 2 + 1).
    row = torch.cat([weights[0], bias[:1]])
    assert float(row[0] / row.sum()) == pytest.approx(0.4)


def test_conv_scores_by_hand() -> None:
    conv = nn.Conv2d(1, 1, kernel_size=1, bias=True)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(-3.0)
    # Sample 0 all ones, sample 1 all threes on a 2×2 map: responses 2 and 6 at 4 positions.
    x = torch.cat([torch.ones(1, 1, 2, 2), 3 * torch.ones(1, 1, 2, 2)])
    stats = collect(conv, [(x, torch.zeros(2))], {"": conv})
    paper, bias = relief_importance(conv, stats[""], "paper")
    code, _ = relief_importance(conv, stats[""], "code")
    assert float(paper) == pytest.approx((4.0 + 12.0) / 2)  # mean of ‖2·1‖=4 and ‖2·3‖=12
    assert float(code) == pytest.approx(8.0)  # ‖2·mean(1, 3)‖ = ‖4‖ over 4 positions
    assert bias is not None and float(bias) == pytest.approx(3.0 * 2.0)  # |b|·sqrt(4)
    # The two variants differ once the samples differ in shape, not only in scale.
    x2 = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    stats2 = collect(conv, [(x2, torch.zeros(2))], {"": conv})
    assert float(relief_importance(conv, stats2[""], "paper")[0]) == pytest.approx(2.0)
    assert float(relief_importance(conv, stats2[""], "code")[0]) == pytest.approx(2 * (2 * 0.25) ** 0.5)


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 7), (2, 0, 9), (1, 2, 5), (1, 1, 2), (2, 1, 2)])
@pytest.mark.parametrize("variant", ["paper", "code"])
def test_conv_scores_match_naive_loop(stride: int, padding: int, size: int, variant: str) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, kernel_size=3, stride=stride, padding=padding)
    x = torch.randn(5, 3, size, size)
    stats = collect(conv, [(x, torch.zeros(5))], {"": conv})
    weights, bias = relief_importance(conv, stats[""], variant)  # type: ignore[arg-type]
    torch.testing.assert_close(weights, _naive_conv(conv, x, variant), rtol=1e-5, atol=1e-6)
    out = conv(x)
    positions = out.shape[2] * out.shape[3]
    assert bias is not None
    torch.testing.assert_close(bias, conv.bias.detach().double().abs() * positions**0.5)


@pytest.mark.parametrize("size", [10, 2])
def test_gram_and_grouped_paths_agree(size: int) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, kernel_size=3, padding=1, stride=2)
    x = torch.randn(3, 4, size, size).abs()
    k = conv.weight.detach().abs()
    assert plan_quadratic(k, conv, (size, size)).mode == ("patches" if size == 10 else "pixels")
    torch.testing.assert_close(
        conv_norms_gram(x, k, conv), conv_norms_grouped(x, k, conv), rtol=1e-4, atol=1e-5
    )


def test_accumulation_over_batches_equals_full_batch() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x = torch.randn(12, 2, 6, 6)
    layers = {"0": model[0], "3": model[3]}
    whole = collect(model, [(x, torch.zeros(12))], layers)
    parts = collect(
        model, [(x[:5], torch.zeros(5)), (x[5:9], torch.zeros(4)), (x[9:], torch.zeros(3))], layers
    )
    for name in layers:
        assert whole[name].count == parts[name].count == 12
        torch.testing.assert_close(whole[name].mean_abs_input(), parts[name].mean_abs_input())
    torch.testing.assert_close(whole["0"].mean_norms(), parts["0"].mean_norms())


def test_hooks_removed_even_on_exception() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(RuntimeError), ReliefStatistics({"fc": layer}):
        assert len(layer._forward_hooks) == 1
        layer(torch.randn(2, 5))  # wrong width: the forward raises inside the context
    assert len(layer._forward_hooks) == 0
    with ReliefStatistics({"fc": layer}) as stats:
        layer(torch.randn(4, 3))
    assert len(layer._forward_hooks) == 0 and stats.stats["fc"].count == 4


# ----------------------------------------------------------------------------------------------------
# Cumulative-mass selector


def test_cumulative_mass_hand_examples() -> None:
    s = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]])
    assert cumulative_mass_rows(s, 0.8).tolist() == [[True, False, True], [False, True, True]]
    assert cumulative_mass_rows(s, 0.5).tolist() == [[True, False, False], [False, True, False]]
    # α = 1: the paper keeps every input with mass; the code's pivot still drops the smallest.
    assert cumulative_mass_rows(s, 1.0).tolist() == [[True, True, True], [True, True, True]]
    assert cumulative_mass_rows(s, 1.0, "code").tolist() == [[True, False, True], [False, True, True]]


def test_cumulative_mass_pivot_ties() -> None:
    s = torch.tensor([[0.4, 0.3, 0.3]])
    # p₀ = 2 (0.4 + 0.3 ≥ 0.5·1.0): the paper keeps ties with ŝ_{p₀}; the code prunes ≤ ŝ_{p₀+1} = 0.3.
    assert cumulative_mass_rows(s, 0.5).tolist() == [[True, True, True]]
    assert cumulative_mass_rows(s, 0.5, "code").tolist() == [[True, False, False]]
    # Exactly reaching α on the first element stops there.
    assert cumulative_mass_rows(torch.tensor([[0.8, 0.1, 0.1]]), 0.8).tolist() == [[True, False, False]]
    # A row without mass carries no information and is left alone.
    assert cumulative_mass_rows(torch.zeros(1, 3), 0.5).tolist() == [[True, True, True]]


def test_selector_registered_respects_previous_and_alphas() -> None:
    select = SELECTORS.get("cumulative_mass")
    scores = {"a": torch.tensor([[0.5, 0.2, 0.3]]), "b": torch.tensor([[0.5, 0.2, 0.3]])}
    previous = {"a": torch.tensor([[False, True, True]]), "b": torch.ones(1, 3, dtype=torch.bool)}
    keep = select(scores, 0.6, scope="layer", previous=previous, min_keep=1, alphas={"b": 0.4})
    # a: 0.5 is already gone, so the row is [0, 0.2, 0.3]: 0.3 reaches 60 % of 0.5.
    assert keep["a"].tolist() == [[False, False, True]]
    assert keep["b"].tolist() == [[True, False, False]]
    for fqn in keep:
        assert not bool((keep[fqn] & ~previous[fqn]).any())
    with pytest.raises(ConfigError, match="alpha"):
        select(scores, 1.5, scope="layer", previous=None, min_keep=1)


def test_min_keep_rescues_a_row_the_code_rule_empties() -> None:
    # One live entry: the code rule's threshold is that entry's own score (pivot capped at the end).
    scores = {"w": torch.tensor([[0.7, 0.0]])}
    previous = {"w": torch.tensor([[True, False]])}
    assert select_cumulative_mass(scores, 0.9, previous=previous, rule="code", min_keep=1)["w"].tolist() == [
        [True, False]
    ]


# ----------------------------------------------------------------------------------------------------
# Structural rules


def _chain() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.ones(4, 3))
        model[0].weight[0] = -1.0  # unit 0 of layer 0 never fires on positive inputs: dead
        model[0].bias.zero_()
        model[2].weight.copy_(torch.ones(3, 4))
        model[2].bias.zero_()
        model[4].weight.copy_(torch.ones(2, 3))
        model[4].bias.zero_()
    return model


def test_dead_units_removed_with_their_outgoing_weights() -> None:
    model = _chain()
    opts = ReliefOptions(alpha_fc=1.0, rule="paper")
    pruner = ReliefPruner(model, opts).prepare()
    assert [(link.producer, link.consumer) for link in pruner.structure.links] == [("0", "2"), ("2", "4")]
    x = torch.rand(8, 3) + 0.1
    counts = pruner.step(pruner.collect([(x, torch.zeros(8))]))
    assert counts["dead_units"] == 1
    w0 = masking.get_mask(model[0], "weight")
    assert not bool(w0[0].any()) and bool(w0[1:].all())
    assert not bool(masking.get_mask(model[0], "bias")[0])
    # Its (zero-activity) outgoing column is gone too; everything else survives at α = 1.
    w2 = masking.get_mask(model[2], "weight")
    assert not bool(w2[:, 0].any()) and bool(w2[:, 1:].all())


def test_backward_pruning_of_units_without_outgoing_connections() -> None:
    model = _chain()
    with torch.no_grad():
        model[0].weight[0] = 1.0  # no dead unit this time
    pruner = ReliefPruner(model, ReliefOptions(alpha_fc=1.0)).prepare()
    # Cut every connection leaving unit 1 of the middle layer (column 1 of the last layer).
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[:, 1] = False
    masking.update_mask(model[4], "weight", keep)
    x = torch.rand(8, 3) + 0.1
    counts = pruner.step(pruner.collect([(x, torch.zeros(8))]))
    assert counts["backward_units"] == 1
    assert not bool(masking.get_mask(model[2], "weight")[1].any())
    assert not bool(masking.get_mask(model[2], "bias")[1])
    assert bool(masking.get_mask(model[2], "weight")[[0, 2]].all())
    # Without the rule the orphan keeps its incoming weights.
    model2 = _chain()
    with torch.no_grad():
        model2[0].weight[0] = 1.0
    pruner2 = ReliefPruner(model2, ReliefOptions(alpha_fc=1.0, backward=False)).prepare()
    masking.update_mask(model2[4], "weight", keep)
    pruner2.step(pruner2.collect([(x, torch.zeros(8))]))
    assert bool(masking.get_mask(model2[2], "weight")[1].all())


def test_flatten_link_repeat_for_lenet5() -> None:
    from prunelab.models import build_model

    structure = analyze(build_model("lenet5", input_shape=(1, 28, 28)))
    assert [(link.producer, link.consumer, link.repeat) for link in structure.links] == [
        ("features.0", "features.3", 1),
        ("features.3", "classifier.0", 16),
        ("classifier.0", "classifier.2", 1),
    ]


def test_resnet20_block_rule_runs_and_masks_only_shrink() -> None:
    from prunelab.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", width=0.25, input_shape=(3, 16, 16))
    with torch.no_grad():
        model.layer1[0].bn2.weight[0] = 1e-6  # channel 0 of the first block's main path is negligible
        model.layer1[0].bn2.bias[0] = 0.0
    pruner = ReliefPruner(model, ReliefOptions(alpha_conv=0.9, alpha_fc=0.99)).prepare()
    assert len(pruner.structure.blocks) == 9 and len(pruner.structure.links) == 9
    x = torch.randn(8, 3, 16, 16)  # small maps keep the test fast; the rules do not depend on size
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(4))]
    before = masking.masks_state_dict(model)
    counts = pruner.step(pruner.collect(batches))
    after = masking.masks_state_dict(model)
    assert counts["block_channels"] >= 1
    assert not bool(after["layer1.0.conv2.weight"][0].any())
    assert not bool(after["layer1.0.bn2.weight"][0]) and not bool(after["layer1.0.bn2.bias"][0])
    for fqn, mask in after.items():
        assert not bool((mask & ~before[fqn]).any()), fqn
    assert sum(int(m.sum()) for m in after.values()) < sum(int(m.sum()) for m in before.values())
    pruner.step(pruner.collect(batches))
    again = masking.masks_state_dict(model)
    for fqn, mask in again.items():
        assert not bool((mask & ~after[fqn]).any()), fqn
    assert model(x[:2]).shape == (2, 10)


def test_options_validation_messages() -> None:
    from prunelab.methods.base import parse_options

    with pytest.raises(ConfigError, match=r"prune\.options\.alpha_fc: must be a fraction"):
        parse_options("relief", {"alpha_fc": 1.5})
    with pytest.raises(ConfigError, match=r"prune\.options\.variant"):
        parse_options("relief", {"variant": "both"})
    assert parse_options("relief", {"rounds": 3}).rounds == 3


# ----------------------------------------------------------------------------------------------------
# DDP: statistics are all-reduced across ranks

_WORKER = """
import sys, torch
from torch import nn
from prunelab import distributed
from prunelab.stats.activations import collect
distributed.init_distributed("gloo")
rank, world = distributed.rank(), distributed.world_size()
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
x = torch.randn(10, 2, 5, 5)
shard = x[rank::world]
stats = collect(model, [(shard, torch.zeros(len(shard)))], {"0": model[0], "3": model[3]})
torch.save({k: (v.count, v.mean_abs_input(), v.mean_norms() if v.norm_sum is not None else None)
            for k, v in stats.items()}, sys.argv[1] + f"/rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reference_stats() -> dict[str, tuple[int, torch.Tensor, torch.Tensor | None]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
    x = torch.randn(10, 2, 5, 5)
    stats = collect(model, [(x, torch.zeros(10))], {"0": model[0], "3": model[3]})
    return {
        k: (v.count, v.mean_abs_input(), v.mean_norms() if v.norm_sum is not None else None)
        for k, v in stats.items()
    }


def test_statistics_single_process_path() -> None:
    # Without a process group the all-reduce is the identity: the figures are the local ones.
    ref = _reference_stats()
    assert ref["0"][0] == 10 and ref["3"][0] == 10


@pytest.mark.slow
def test_statistics_all_reduced_across_two_ranks(tmp_path: Path) -> None:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path)], env=env))
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    ref = _reference_stats()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, (count, mean_abs, norms) in ref.items():
            assert got[name][0] == count == 10
            torch.testing.assert_close(got[name][1], mean_abs)
            if norms is not None:
                torch.testing.assert_close(got[name][2], norms)


# ----------------------------------------------------------------------------------------------------
# Driver end to end on the offline digits data

FAST = {"epochs": 1, "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0}


@pytest.mark.parametrize(
    "model,options",
    [
        ("small_cnn", {"rounds": 2, "calibration_samples": 200, "alpha_conv": 0.9, "alpha_fc": 0.95}),
        ("lenet300_100", {"rounds": 2, "calibration_samples": 200, "rewind": True, "variant": "code"}),
    ],
)
def test_relief_driver_end_to_end(tmp_path: Path, model: str, options: dict) -> None:
    from prunelab.experiments.runner import load_checkpoint, run_recipe
    from prunelab.experiments.schema import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "relief_test",
            "model": {"name": model},
            "data": {"name": "digits", "train_subset": 400, "test_subset": 200},
            "train": FAST,
            "finetune": {**FAST, "select": "best_val"},
            "prune": {"method": "relief", "options": options},
            "eval": {"latency": False},
        }
    )
    summary = run_recipe(recipe, tmp_path, echo=None, progress=False)
    rows = list(csv.DictReader((tmp_path / "rounds.csv").read_text().splitlines()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    remaining = [float(r["relief_remaining_percent"]) for r in rows]
    assert 0 < remaining[1] <= remaining[0] < 100
    for column in ("accuracy_before_finetune", "accuracy_after_finetune", "compression", "macs_effective"):
        assert column in rows[0]
    assert (tmp_path / "relief_report.png").stat().st_size > 1000
    assert "| round |" in (tmp_path / "relief_report.md").read_text()
    relief = json.loads((tmp_path / "summary.json").read_text())["relief"]
    assert relief["remaining_percent_conv_fc_weights_biases"] == pytest.approx(remaining[1], abs=1e-3)
    assert summary["params_nonzero"] < summary["params_total"]
    masks = load_checkpoint(tmp_path)["masks"]
    assert any(fqn.endswith("bias") for fqn in masks) or model == "small_cnn"
    assert 0.0 <= summary["accuracy"] <= 1.0


def test_relief_criterion_with_generic_pruner() -> None:
    from prunelab.pruning.pruner import Pruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(6, 2, 4, 4)
    stats = collect(model, [(x, torch.zeros(6))], {"0": model[0], "3": model[3]})
    numerators = {f"{n}.weight": relief_importance(model[int(n)], stats[n])[0] for n in ("0", "3")}
    pruner = Pruner(
        model, criterion="relief", granularity="kernel", scope="layer", selector="cumulative_mass"
    )
    pruner.prepare().step(0.8, stats={"relief": numerators})
    conv_keep = masking.get_mask(model[0], "weight")[:, :, 0, 0]
    torch.testing.assert_close(conv_keep, cumulative_mass_rows(numerators["0.weight"], 0.8))
    assert 0.0 < pruner.sparsity() < 1.0


def _reference_rule(model: nn.Module, stats: dict, layers: list[str], options: ReliefOptions) -> dict:
    """The cumulative-mass step written out by hand: one row per unit, its inputs then its bias."""
    scores, previous, alphas = {}, {}, {}
    for name in layers:
        layer = model.get_submodule(name)
        weights, bias = relief_importance(layer, stats[name], options.variant)
        mask = masking.get_mask(layer, "weight")
        alive = mask if mask.dim() == 2 else mask.flatten(2).any(dim=2)
        scores[name] = torch.cat([weights, bias.unsqueeze(1)], dim=1)
        previous[name] = torch.cat([alive, masking.get_mask(layer, "bias").unsqueeze(1)], dim=1)
        alphas[name] = options.alpha_fc if isinstance(layer, nn.Linear) else options.alpha_conv
    return select_cumulative_mass(
        scores, options.alpha_fc, previous=previous, rule=options.rule, alphas=alphas
    )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"rule": "code", "variant": "code"}, {"prune_bias": False, "alpha_conv": 0.6, "alpha_fc": 0.7}],
)
def test_step_is_the_cumulative_rule_over_weight_and_bias_rows(overrides: dict) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6))
    options = ReliefOptions(remove_dead=False, backward=False, block_rule=False, **overrides)
    pruner = ReliefPruner(model, options).prepare()
    assert pruner.pruner.companions.keys() == {"0.weight", "3.weight"}
    batches = [(torch.randn(8, 2, 5, 5), torch.zeros(8))]
    for _ in range(2):
        stats = pruner.collect(batches)
        expected = _reference_rule(model, stats, ["0", "3"], options)
        bias_before = {n: masking.get_mask(model.get_submodule(n), "bias").clone() for n in ("0", "3")}
        pruner.step(stats)
        assert 0 < pruner.pruner.sparsity() < 1  # the rule pruned, and not everything
        for name in ("0", "3"):
            layer = model.get_submodule(name)
            mask = masking.get_mask(layer, "weight")
            kernels = mask if mask.dim() == 2 else mask.flatten(2).all(dim=2)
            assert torch.equal(kernels, expected[name][:, :-1]), name
            bias = expected[name][:, -1] if options.prune_bias else bias_before[name]
            assert torch.equal(masking.get_mask(layer, "bias"), bias), name


def test_relief_criterion_scores_biases_and_sums_kernels_back_exactly() -> None:
    from prunelab.core.criterion import TargetView
    from prunelab.core.targets import find_targets
    from prunelab.criteria import build_criterion
    from prunelab.criteria.relief import relief_statistics

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    stats = collect(model, [(torch.randn(6, 3, 6, 6), torch.zeros(6))], {"0": model[0], "3": model[3]})
    targets = find_targets(model)
    numerators = relief_statistics(targets, stats)
    assert sorted(numerators) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    relief = build_criterion("relief", "entry")
    conv = model[0].weight.detach()
    mask = torch.ones_like(conv, dtype=torch.bool)
    mask[0, 0, 0, :2] = False  # a partly pruned kernel: its first live entry carries the score
    scores = relief.score(TargetView(targets[0], conv, mask), {"relief": numerators})
    # x + 0 + … + 0 = x: the kernel granularity gives back the numerators bit for bit.
    assert torch.equal(scores.sum(dim=(2, 3)), numerators["0.weight"])
    assert float(scores[0, 0, 0, 2]) == float(numerators["0.weight"][0, 0]) > 0
    bias_view = TargetView(
        Target.of(model, "0.bias"), model[0].bias.detach(), torch.ones(4, dtype=torch.bool)
    )
    assert torch.equal(relief.score(bias_view, {"relief": numerators}), numerators["0.bias"])
    with pytest.raises(ConfigError, match=r"relief statistics of 0.bias have shape \(3,\); expected \(4,\)"):
        relief.score(bias_view, {"relief": {"0.bias": torch.ones(3)}})
    with pytest.raises(ConfigError, match="relief statistics lack 0.bias"):
        relief.score(bias_view, {"relief": {}})


def test_recipes_ship_both_sizes() -> None:
    for name in ("lenet300_mnist", "lenet5_mnist", "vgglike_cifar10", "resnet20_cifar10"):
        assert (REPO / "recipes/relief" / f"{name}.yaml").is_file(), name
        assert (REPO / "recipes/relief" / f"{name}_paper.yaml").is_file(), name


def test_rewind_restores_initial_weights(tmp_path: Path) -> None:
    """With rewind and no retraining, surviving weights end exactly at their initial values."""
    from prunelab.experiments.runner import load_checkpoint, run_recipe
    from prunelab.experiments.schema import recipe_from_dict

    base = {
        "name": "rewind_test",
        "model": {"name": "lenet300_100"},
        "data": {"name": "digits", "train_subset": 300, "test_subset": 100},
        "eval": {"latency": False},
    }
    # The same seed and build path with no training: the checkpoint holds the initial weights.
    run_recipe(
        recipe_from_dict({**base, "train": {**FAST, "epochs": 0}, "prune": {"method": "dense"}}),
        tmp_path / "init",
        echo=None,
        progress=False,
    )
    run_recipe(
        recipe_from_dict(
            {
                **base,
                "train": FAST,
                "finetune": {**FAST, "epochs": 0},
                "prune": {
                    "method": "relief",
                    "options": {"rounds": 1, "calibration_samples": 100, "rewind": True},
                },
            }
        ),
        tmp_path / "relief",
        echo=None,
        progress=False,
    )
    init = load_checkpoint(tmp_path / "init")["state_dict"]
    after = load_checkpoint(tmp_path / "relief")
    masks = after["masks"]
    for name in ("fc1.weight", "fc2.weight", "fc3.bias"):
        keep = masks[name]
        assert 0 < int(keep.sum()) < keep.numel() or name == "fc3.bias"
        torch.testing.assert_close(after["state_dict"][name], init[name] * keep)
