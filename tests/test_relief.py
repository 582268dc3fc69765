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
from prunelab.errors import ConfigError, UnsupportedModelError
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
            elif variant == "code_l1":  # the official LeNet-5 code: sum over the positions
                mean = xa[:, i].mean(dim=0)[None, None]
                out[j, i] = F.conv2d(mean, kernel, stride=conv.stride, padding=conv.padding).sum()
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
@pytest.mark.parametrize("variant", ["paper", "code", "code_l1"])
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
    scale = positions if variant == "code_l1" else positions**0.5  # |b| at every position: L1 or L2
    torch.testing.assert_close(bias, conv.bias.detach().double().abs() * scale)


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 7), (1, 1, 2)])
def test_paper_norms_equal_the_naive_loop_across_chunk_boundaries(
    monkeypatch: pytest.MonkeyPatch, stride: int, padding: int, size: int
) -> None:
    """Tiny chunk, block and partial-sum sizes: every sample chunk, Gram step and channel block is cut."""
    from prunelab.stats import activations

    torch.manual_seed(4)
    conv = nn.Conv2d(5, 7, kernel_size=3, stride=stride, padding=padding)
    x = torch.randn(11, 5, size, size)
    whole = collect(conv, [(x, None)], {"": conv})[""].mean_norms()
    monkeypatch.setattr(activations, "FEATURE_CHUNK_ELEMENTS", 1)  # one sample per Gram step
    monkeypatch.setattr(activations, "NORM_BLOCK_ELEMENTS", 1)  # one input channel per block
    monkeypatch.setattr(activations, "SUM_CHUNK_SAMPLES", 3)  # float32 partial sums of 3 samples
    cut = collect(conv, [(x, None)], {"": conv})[""].mean_norms()
    naive = _naive_conv(conv, x, "paper")
    torch.testing.assert_close(cut, naive, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(whole, naive, rtol=1e-6, atol=1e-7)


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
        assert proc.wait(timeout=1800) == 0
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


# ----------------------------------------------------------------------------------------------------
# Grouped, depthwise and 1-D convolutions, Linear over positions, any model (#13)


def _single_kernel_conv(conv: nn.Module, kernel: torch.Tensor) -> nn.Module:
    """A 1-in 1-out copy of ``conv``'s geometry (stride, padding and its mode, dilation) with ``kernel``."""
    cls = type(conv)
    one = cls(
        1, 1, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
        bias=False, padding_mode=conv.padding_mode,
    )  # fmt: skip
    with torch.no_grad():
        one.weight.copy_(kernel.reshape(one.weight.shape))
    return one.double()


def _brute_force_grouped(conv: nn.Module, x: torch.Tensor, variant: str) -> torch.Tensor:
    """The equation, entry by entry: n_ji = mean_n ‖ |K_ji| ∗ |x_{n,ι(j,i)}| ‖_F, ι = γ(j)·c_in/G + i."""
    k = conv.weight.detach().double().abs()
    xa = x.double().abs()
    c_out, c_in_g = k.shape[:2]
    c_out_g = c_out // conv.groups
    out = torch.zeros(c_out, c_in_g, dtype=torch.float64)
    for j in range(c_out):
        for i in range(c_in_g):
            channel = (j // c_out_g) * c_in_g + i  # the input channel kernel (j, i) reads
            one = _single_kernel_conv(conv, k[j, i])
            with torch.no_grad():
                if variant == "code":
                    out[j, i] = one(xa[:, channel : channel + 1].mean(dim=0, keepdim=True)).norm()
                else:
                    out[j, i] = sum(
                        one(xa[n : n + 1, channel : channel + 1]).norm() for n in range(len(x))
                    ) / len(x)
    return out


GROUPED = [
    ("groups2", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (5, 4, 7, 7)),
    (
        "groups2_stride2_dilated",
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        (5, 4, 9, 9),
    ),
    ("depthwise", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (5, 4, 6, 6)),
    ("depthwise_multiplier", lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3), (5, 3, 6, 6)),
    ("groups2_patches", lambda: nn.Conv2d(4, 12, 3, padding=1, groups=2), (5, 4, 6, 6)),  # 6 kernels/channel
    ("pointwise_grouped_strided", lambda: nn.Conv2d(4, 6, 1, stride=2, padding=1, groups=2), (5, 4, 7, 7)),
    ("pointwise", lambda: nn.Conv2d(3, 5, 1, stride=2), (5, 3, 7, 7)),
    ("depthwise_pixels", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (5, 4, 2, 2)),  # map < kernel
    ("grouped_pixels", lambda: nn.Conv2d(6, 4, 3, padding=1, groups=2), (5, 6, 2, 2)),
    ("same_even_kernel", lambda: nn.Conv2d(4, 4, 4, padding="same", groups=2), (5, 4, 6, 6)),  # asymmetric
    ("reflect", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode="reflect"), (5, 4, 5, 5)),
    (
        "circular_depthwise",
        lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3, padding_mode="circular"),
        (5, 3, 5, 5),
    ),
    ("valid", lambda: nn.Conv2d(4, 4, 3, padding="valid", groups=4), (5, 4, 6, 6)),
    ("conv1d_grouped", lambda: nn.Conv1d(4, 6, 3, padding=1, groups=2), (5, 4, 9)),
    (
        "conv1d_same_reflect",
        lambda: nn.Conv1d(3, 3, 4, padding="same", groups=3, padding_mode="reflect"),
        (5, 3, 9),
    ),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("variant", ["paper", "code"])
@pytest.mark.parametrize("build,shape", [g[1:] for g in GROUPED], ids=[g[0] for g in GROUPED])
def test_grouped_and_depthwise_scores_equal_the_equation(build, shape, variant: str) -> None:
    torch.manual_seed(7)
    conv = build()
    x = torch.randn(*shape)
    stats = collect(conv, [(x[:3], None), (x[3:], None)], {"": conv})  # two batches: accumulation too
    weights, bias = relief_importance(conv, stats[""], variant)  # type: ignore[arg-type]
    assert weights.shape == conv.weight.shape[:2]  # one numerator per kernel of the group
    torch.testing.assert_close(weights, _brute_force_grouped(conv, x, variant), rtol=1e-5, atol=1e-6)
    positions = conv(x).shape[2:].numel()
    torch.testing.assert_close(bias, conv.bias.detach().double().abs() * positions**0.5)


def test_grouped_conv_equals_its_groups_as_separate_convs() -> None:
    # A grouped conv is G independent convs: its numerators are theirs, stacked (a second, structural check).
    torch.manual_seed(8)
    conv = nn.Conv2d(6, 4, 3, padding=1, groups=2)
    x = torch.randn(6, 6, 5, 5)
    got = relief_importance(conv, collect(conv, [(x, None)], {"": conv})[""])[0]
    for g in range(2):
        part = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            part.weight.copy_(conv.weight[2 * g : 2 * g + 2])
        xg = x[:, 3 * g : 3 * g + 3]
        expected = relief_importance(part, collect(part, [(xg, None)], {"": part})[""])[0]
        torch.testing.assert_close(got[2 * g : 2 * g + 2], expected, rtol=1e-6, atol=1e-7)


def test_every_quadratic_plan_gives_the_direct_responses() -> None:
    from prunelab.stats.activations import QuadraticPlan, kernel_pair_products

    torch.manual_seed(9)
    convs = [
        (nn.Conv2d(6, 9, 3, padding=1, stride=2, groups=3), 8),
        (nn.Conv2d(4, 8, 3, padding=1, groups=4), 5),
        (nn.Conv2d(4, 12, 3, padding=1, groups=2), 2),
        (nn.Conv2d(3, 5, 3, padding=1), 6),
        (nn.Conv2d(4, 6, 1, stride=2, groups=2), 5),
    ]
    for conv, size in convs:
        x = torch.randn(3, conv.in_channels, size, size).abs()
        k = conv.weight.detach().abs()
        g = conv.groups
        plans = [QuadraticPlan("patches", kernel_pair_products(k, g), g), QuadraticPlan("direct", k, g),
                 plan_quadratic(k, conv, (size, size))]  # fmt: skip
        expected = conv_norms_grouped(x, k, conv)
        for plan in plans:
            torch.testing.assert_close(conv_norms_gram(x, k, conv, plan), expected, rtol=1e-4, atol=1e-5)
        assert plans[-1].mode == {(9, 8): "direct", (8, 5): "direct", (12, 2): "pixels", (5, 6): "patches",
                                  (6, 5): "pointwise"}[(conv.out_channels, size)]  # fmt: skip


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_linear_over_positions_is_scored_as_the_1x1_conv_it_is(variant: str) -> None:
    torch.manual_seed(10)
    linear = nn.Linear(5, 3)
    conv = nn.Conv2d(5, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        conv.bias.copy_(linear.bias)
    x = torch.randn(6, 5, 4, 3)  # (N, C, H, W); the Linear sees it channels-last
    lin = relief_importance(
        linear, collect(linear, [(x.permute(0, 2, 3, 1), None)], {"": linear})[""], variant
    )  # type: ignore[arg-type]
    ref = relief_importance(conv, collect(conv, [(x, None)], {"": conv})[""], variant)  # type: ignore[arg-type]
    torch.testing.assert_close(lin[0], ref[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lin[1], ref[1])
    # On (N, in) inputs the Linear formula is unchanged: |w_ji| mean_n |x_{n,i}|.
    flat = torch.randn(7, 5)
    weights, _ = relief_importance(linear, collect(linear, [(flat, None)], {"": linear})[""], variant)  # type: ignore[arg-type]
    torch.testing.assert_close(
        weights, linear.weight.detach().double().abs() * flat.double().abs().mean(dim=0)
    )


class _DepthwiseChain(nn.Module):
    """A MobileNet-v1 style chain registered head first: stem, depthwise, grouped pointwise, head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)  # registered first, runs last
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.pw = nn.Conv2d(4, 6, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x).relu()).relu()).relu()
        return self.fc(x.mean(dim=(2, 3)))


def test_chain_with_depthwise_and_grouped_layers_dead_units_and_backward() -> None:
    torch.manual_seed(11)
    model = _DepthwiseChain()
    with torch.no_grad():
        model.stem.weight.abs_()
        model.stem.weight[1] = -model.stem.weight[1]  # unit 1 never fires on positive inputs: dead
    pruner = ReliefPruner(model, ReliefOptions(alpha_conv=1.0, alpha_fc=1.0)).prepare()
    # Links follow the forward, not the registration order (the head is registered first).
    assert [(k.producer, k.consumer) for k in pruner.structure.links] == [
        ("stem", "dw"),
        ("dw", "pw"),
        ("pw", "fc"),
    ]
    x = torch.rand(8, 2, 5, 5)
    counts = pruner.step(pruner.collect([(x, None)]))
    assert counts["dead_units"] >= 1
    assert not bool(masking.get_mask(model.stem, "weight")[1].any())
    # The depthwise filter reading the dead channel has a zero input and no bias: its output is provably
    # zero, so backward/silencing removes it, and pw's kernel reading it (group 0, kernel 1) goes too.
    assert not bool(masking.get_mask(model.dw, "weight")[1].any())
    pw = masking.get_mask(model.pw, "weight")  # (6, 2, 1, 1): filters 0-2 read channels 0-1
    assert not bool(pw[0:3, 1].any()) and bool(pw[3:6].any())
    assert model(x).shape == (8, 3)


def test_outgoing_alive_of_a_grouped_consumer() -> None:
    from prunelab.methods.relief import Link, _outgoing_alive

    conv = nn.Conv2d(6, 4, 1, groups=2)  # filters 0-1 read channels 0-2, filters 2-3 read channels 3-5
    keep = torch.ones(4, 3, 1, 1, dtype=torch.bool)
    keep[0:2, 1] = False  # channel 1: no filter of group 0 reads it any more
    keep[2, 0] = False  # channel 3: filter 3 still reads it
    masking.add_mask(conv, "weight")
    masking.update_mask(conv, "weight", keep)
    assert _outgoing_alive(conv, Link("p", "c", None, 1)).tolist() == [True, False, True, True, True, True]


class _Volumetric(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(1, 2, 3, padding=1)
        self.conv = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3d(x).mean(dim=2)
        return self.fc(self.conv(y).relu().mean(dim=(2, 3)))


def test_exclude_leaves_an_unscorable_layer_out_and_unhooked() -> None:
    model = _Volumetric()
    with pytest.raises(
        UnsupportedModelError, match=r"^relief: conv3d is a Conv3d; .*exclude it \(prune\.exclude: \[conv3d\]"
    ):
        ReliefPruner(model)
    pruner = ReliefPruner(model, exclude=["conv3d"]).prepare()
    assert pruner.structure.targets == ["conv", "fc"] and "conv3d" not in pruner.structure.layers
    stats = pruner.collect([(torch.randn(4, 1, 3, 5, 5), None)])
    assert "conv3d" not in stats and not model.conv3d._forward_hooks
    pruner.step(stats)
    assert not masking.has_mask(model.conv3d, "weight") and masking.has_mask(model.conv, "weight")


class _TwoInputs(nn.Module):
    """Two inputs (the second by keyword), a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.b = nn.Linear(4, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.dw(self.a(image).relu()).mean(dim=(2, 3)) + self.b(extra)
        return self.head(feats), feats


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_collect_relief_and_pruner_on_a_two_input_model(form: str) -> None:
    from prunelab.criteria.relief import collect_relief
    from prunelab.pruning.pruner import Pruner

    torch.manual_seed(12)
    model = _TwoInputs()
    image, extra = torch.randn(8, 3, 6, 6), torch.randn(8, 4)
    x = (image, extra) if form == "tuple" else {"image": image, "extra": extra}
    pruner = Pruner(model, criterion="relief", granularity="kernel", scope="layer", companion="bias",
                    selector="cumulative_mass").prepare()  # fmt: skip
    stats = {"relief": collect_relief(model, [(x, None)], pruner.targets)}
    assert set(stats["relief"]) == {f"{n}.{p}" for n in ("a", "dw", "b", "head") for p in ("weight", "bias")}
    report = pruner.step(0.8, stats=stats)
    assert 0 < report.sparsity < 1
    out = model(image, extra)
    assert out[0].shape == (8, 5) and out[1].shape == (8, 6)
    # Top-k over kernels at a fixed sparsity works the same way.
    other = _TwoInputs()
    topk = Pruner(other, criterion="relief", granularity="kernel", scope="layer").prepare()
    assert topk.step(
        0.5, stats={"relief": collect_relief(other, [(x, None)], topk.targets)}
    ).unit_sparsity == pytest.approx(0.5, abs=0.05)


def test_relief_user_errors_are_one_line() -> None:
    from prunelab.core.targets import find_targets
    from prunelab.criteria.relief import collect_relief

    model = _TwoInputs()
    with pytest.raises(
        ConfigError, match=r"^relief: layer dw did not run on the calibration batches .*exclude=\['dw'\]"
    ):
        relief_statistics_for(model, find_targets(model), lambda: model.a(torch.randn(2, 3, 4, 4)))
    with pytest.raises(ConfigError, match=r"must be an \(x, y\) pair"):
        collect_relief(model, [torch.randn(2, 3, 4, 4)])
    conv = nn.Conv2d(2, 2, 3, groups=2)
    with pytest.raises(
        ConfigError,
        match=r"^relief statistics: layer <root> saw inputs of shape .* feed calibration batches of one input size",
    ):
        collect(conv, [(torch.randn(2, 2, 5, 5), None), (torch.randn(2, 2, 6, 6), None)], {"": conv})
    transposed = nn.ConvTranspose2d(2, 2, 3)
    with (
        pytest.raises(
            UnsupportedModelError,
            match=r"^relief statistics: up is a ConvTranspose2d, whose weight is \(in, out, \.\.\.\)",
        ),
        ReliefStatistics({"up": transposed}),
    ):
        pass


def relief_statistics_for(model: nn.Module, targets: list, run) -> None:  # type: ignore[no-untyped-def]
    from prunelab.criteria.relief import relief_statistics

    layers = {t.module_name: t.module for t in targets}
    with ReliefStatistics(layers) as recorder, torch.no_grad():
        run()
    relief_statistics(targets, recorder.finalize())


@pytest.mark.parametrize("module", ["prunelab.criteria.relief", "prunelab.stats.activations"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert (result.failed, result.attempted > 0) == (0, True)


def test_relief_driver_on_a_depthwise_model(tmp_path: Path) -> None:
    """The recipe path on MobileNet-v1 (depthwise + pointwise convs): it refused every such model before."""
    from prunelab.experiments.runner import run_recipe
    from prunelab.experiments.schema import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "relief_dw",
            "model": {"name": "mobilenet_v1", "kwargs": {"width": 0.25}},
            "data": {"name": "digits", "train_subset": 200, "test_subset": 100},
            "train": FAST,
            "finetune": {**FAST, "epochs": 0},
            "prune": {
                "method": "relief",
                "options": {"rounds": 1, "calibration_samples": 64},
                "exclude": ["fc"],
            },
            "eval": {"latency": False},
        }
    )
    run_recipe(recipe, tmp_path, echo=None, progress=False)
    rows = list(csv.DictReader((tmp_path / "relief_layers.csv").read_text().splitlines()))
    layers = {r["layer"]: (int(r["nonzero"]), int(r["total"])) for r in rows}
    assert "fc" not in layers and any(n.endswith(".dw") for n in layers)
    assert sum(nz for nz, _ in layers.values()) < sum(t for _, t in layers.values())


def _construct_names() -> list[str]:
    from constructs import CONSTRUCTS

    return sorted(CONSTRUCTS)


@pytest.mark.parametrize("name", _construct_names())
def test_relief_prunes_every_construct_model(name: str) -> None:
    """Grouped/depthwise convs, channels-last Linear, several inputs, tuple/dict outputs, heads anywhere."""
    from constructs import CONSTRUCTS, call

    from prunelab.criteria.relief import collect_relief
    from prunelab.pruning.pruner import Pruner

    model, example = CONSTRUCTS[name]()
    with torch.no_grad():
        before = call(model, example)
    pruner = Pruner(model, criterion="relief", granularity="kernel", scope="layer", companion="bias",
                    selector="cumulative_mass").prepare()  # fmt: skip
    stats = {"relief": collect_relief(model, [(example, None), (example, None)], pruner.targets)}
    report = pruner.step(0.9, stats=stats)
    assert 0 < report.sparsity < 1
    with torch.no_grad():
        after = call(model, example)
    assert type(after) is type(before)
    transposed = [n for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    for n in transposed:  # never a target: left dense
        assert not masking.has_mask(model.get_submodule(n), "weight")
    if transposed:
        with pytest.raises(
            UnsupportedModelError, match=rf"^relief: {transposed[0]} is a ConvTranspose2d, whose weight"
        ):
            collect_relief(model, [(example, None)], [Target.of(model, f"{transposed[0]}.weight")])
