"""PLS+VIP filter pruning: PLS/VIP vs scikit-learn, threshold rule, features, layer rules, driver end to end."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunelab.checkpoint import build_from_checkpoint, load_checkpoint
from prunelab.core.criterion import score_groups
from prunelab.criteria import build_criterion
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import recipe_from_dict
from prunelab.methods.pls_vip import prunable_groups, select_filters
from prunelab.models import build_model
from prunelab.stats.features import FilterFeatures, collect_features, feature_batches
from prunelab.stats.pls import find_closer_th, fit_pls, one_hot, pls_vip, vip_scores
from prunelab.surgery import ChannelGraph, compact
from prunelab.training import evaluate

# ----------------------------------------------------------------------------------------------------
# PLS and VIP


def _toy(n: int = 300, p: int = 40, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, p)) + 0.7 * np.eye(c)[y] @ rng.normal(size=(c, p))
    x[:, 3] *= 50.0  # very different column scales: scale=True must standardise them
    return x, y


def _sklearn_vip(x: np.ndarray, y: np.ndarray, n_components: int) -> tuple[np.ndarray, object]:
    from sklearn.cross_decomposition import PLSRegression

    # A tight power-method tolerance: scikit-learn's default (1e-6 on the squared change) stops early.
    pls = PLSRegression(n_components=n_components, scale=True, tol=1e-24, max_iter=100_000)
    pls.fit(x, np.eye(int(y.max()) + 1)[y])
    t, w, q = pls.x_scores_, pls.x_weights_, pls.y_loadings_
    ss = np.diag(t.T @ t @ q.T @ q)  # the official code's expression
    vip = np.sqrt(w.shape[0] * (((w / np.linalg.norm(w, axis=0)) ** 2) @ ss) / ss.sum())
    return vip, pls


@pytest.mark.parametrize("n_components", [1, 2, 3])
def test_vip_matches_scikit_learn(n_components: int) -> None:
    pytest.importorskip("sklearn")
    x, y = _toy()
    expected, pls = _sklearn_vip(x, y, n_components)
    fit = fit_pls(torch.tensor(x), torch.tensor(y), n_components)
    got = vip_scores(fit.x_scores, fit.x_weights, fit.y_loadings)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-8, atol=1e-8)
    # The fitted model itself, up to the sign of each component.
    for ours, theirs in ((fit.x_weights, pls.x_weights_), (fit.x_scores, pls.x_scores_),
                         (fit.y_loadings, pls.y_loadings_), (fit.x_loadings, pls.x_loadings_)):  # fmt: skip
        signs = torch.sign((ours * torch.tensor(theirs)).sum(dim=0))
        torch.testing.assert_close(ours * signs, torch.tensor(theirs), rtol=1e-7, atol=1e-8)
    assert float((got**2).sum()) == pytest.approx(x.shape[1])  # Σ VIP² = P


def test_vip_float32_and_one_hot_input_agree_with_float64() -> None:
    x, y = _toy(seed=1)
    ref = pls_vip(torch.tensor(x), torch.tensor(y), 2)
    same = pls_vip(torch.tensor(x), one_hot(torch.tensor(y)), 2)
    torch.testing.assert_close(same, ref)
    low = pls_vip(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 2, dtype=torch.float32)
    torch.testing.assert_close(low, ref, rtol=1e-3, atol=1e-3)


def test_vip_ranks_informative_features_first() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (400,), generator=gen)
    noise = torch.randn(400, 20, generator=gen)
    noise[:, :3] += 3.0 * one_hot(y, 3, dtype=torch.float32)  # features 0-2 carry the label
    vip = pls_vip(noise, y, 2)
    assert set(torch.argsort(vip, descending=True)[:3].tolist()) == {0, 1, 2}


def test_pls_rejects_bad_input() -> None:
    x = torch.randn(10, 4)
    with pytest.raises(ConfigError, match="n_components"):
        fit_pls(x, torch.zeros(10, dtype=torch.long), 5)
    with pytest.raises(ConfigError, match="n_components"):
        fit_pls(x, torch.zeros(10, dtype=torch.long), 0)
    with pytest.raises(ConfigError, match="targets"):
        fit_pls(x, torch.zeros(9, dtype=torch.long), 2)


# ----------------------------------------------------------------------------------------------------
# Threshold rule and selection


def _official_find_closer_th(scores: np.ndarray, percentage: float) -> float:
    # The official VIPPruning.find_closer_th, loop for loop.
    total = scores.shape[0]
    closest = np.zeros(total)
    for i in range(total):
        closest[i] = abs(percentage - len(np.where(scores <= scores[i])[0]) / total)
    return float(scores[np.argmin(closest)])


@pytest.mark.parametrize("seed", range(5))
def test_find_closer_th_equals_the_official_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(57), 1 if seed % 2 else 6)  # with and without ties
    for p in (0.05, 0.1, 0.25, 0.5, 0.9):
        assert find_closer_th(torch.tensor(scores), p) == _official_find_closer_th(scores, p)


def test_find_closer_th_ties_and_bad_fraction() -> None:
    # 10 distinct scores, p = 0.25: shares 0.2 and 0.3 are equally close; the first candidate wins.
    scores = torch.tensor([0.3, 0.2, 0.9, 0.1, 0.5, 0.4, 0.6, 0.7, 0.8, 1.0])
    assert find_closer_th(scores, 0.25) == pytest.approx(0.3)
    assert find_closer_th(scores, 0.1) == pytest.approx(0.1)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
            find_closer_th(scores, bad)


def test_select_filters_removes_p_globally_and_keeps_one_per_layer() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(40, generator=gen) + 1.0, "b": torch.rand(60, generator=gen) + 1.0,
              "tiny": torch.tensor([0.01, 0.02, 0.03])}  # fmt: skip
    keep, th = select_filters(scores, 0.1)
    removed = {k: int((~m).sum()) for k, m in keep.items()}
    # 10 % of 103 ≈ 10: all of "tiny" would go, but it keeps its best filter.
    assert keep["tiny"].tolist() == [False, False, True]
    assert sum(removed.values()) == 9 and th is not None
    for name, mask in keep.items():
        assert bool((scores[name][~mask] <= th).all())
        if name != "tiny":
            assert bool((scores[name][mask] > th).all())
    keep3, _ = select_filters(scores, 0.1, min_keep=3)
    assert int(keep3["tiny"].sum()) == 3
    # Per layer: the same rule in each layer (1 of 3 is the share closest to 10 %).
    per_layer, none = select_filters(scores, 0.1, scope="layer")
    assert none is None and [int((~m).sum()) for m in per_layer.values()] == [4, 6, 1]


def test_random_channel_criterion_is_seeded() -> None:
    model = build_model("small_cnn", input_shape=(1, 8, 8))
    graph = ChannelGraph(model, (1, 8, 8))

    def draw(seed: int) -> dict[str, torch.Tensor]:
        return score_groups(build_criterion("random", "group", seed=seed), graph.groups, model)

    a, b, c = draw(1), draw(1), draw(2)
    assert set(a) == {g.name for g in graph.groups}
    assert all(torch.equal(a[k], b[k]) and not torch.equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------------------------------
# Features


def test_features_accumulate_every_batch_and_remove_hooks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3))
    batches = [torch.randn(5, 2, 6, 6), torch.randn(3, 2, 6, 6)]
    for pooling, reduce in (("max", lambda t: t.amax(dim=(2, 3))), ("avg", lambda t: t.mean(dim=(2, 3)))):
        with FilterFeatures({"0": model[0], "2": model[2]}, pooling) as rec, torch.no_grad():
            for x in batches:
                model(x)
        x_all = torch.cat(batches)
        with torch.no_grad():
            first = model[0](x_all)
            second = model[2](model[1](first))
        expected = torch.cat([reduce(first), reduce(second)], dim=1)
        torch.testing.assert_close(rec.finalize(), expected)
        assert rec.columns == [("0", f) for f in range(3)] + [("2", f) for f in range(4)]
    assert not model[0]._forward_hooks and not model[2]._forward_hooks
    with pytest.raises(RuntimeError), FilterFeatures({"0": model[0]}):
        model(torch.randn(1, 5, 6, 6))  # wrong channels: the hooks still go away
    assert not model[0]._forward_hooks
    with pytest.raises(ConfigError, match="pooling"):
        FilterFeatures({"0": model[0]}, "median")


def test_feature_batches_subsample_and_shards() -> None:
    data = load_dataset("digits", val_fraction=0.0, train_subset=100).train
    full = torch.cat([y for _, y in feature_batches(data, None, 32)])
    assert full.numel() == 100
    sub = [torch.cat([y for _, y in feature_batches(data, 30, 8, seed=3)]) for _ in range(2)]
    assert sub[0].numel() == 30 and torch.equal(sub[0], sub[1])
    shards = [torch.cat([y for _, y in feature_batches(data, 30, 8, seed=3, rank=r, world_size=2)])
              for r in range(2)]  # fmt: skip
    assert sorted(torch.cat(shards).tolist()) == sorted(sub[0].tolist())
    model = build_model("small_cnn", input_shape=(1, 8, 8))
    x, y, columns = collect_features(model, data, {"features.0": model.features[0]}, num_samples=50)
    assert x.shape == (50, 16) and y.shape == (50,) and len(columns) == 16 and model.training


# ----------------------------------------------------------------------------------------------------
# Layer rules, coupled groups and surgery


def test_layer_rules_resnet_first_block_convs_and_vgg_last_conv() -> None:
    model = build_model("resnet20", width=0.25)
    graph = ChannelGraph(model, (3, 32, 32))
    groups, skipped = prunable_groups(model, graph)
    assert [g.name for g in groups] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert all("residual" in graph.by_name[n].coupling for n in skipped)
    wide, _ = prunable_groups(model, graph, include_residual=True)
    assert len(wide) == len(graph.groups)
    cnn = build_model("small_cnn", input_shape=(1, 8, 8))
    cgraph = ChannelGraph(cnn, (1, 8, 8))
    chain, why = prunable_groups(cnn, cgraph)
    assert [g.name for g in chain] == ["features.0", "features.3"] and "last conv" in why["features.7"]
    assert len(prunable_groups(cnn, cgraph, exclude_last_conv=False)[0]) == 3


def test_residual_groups_pruned_together_and_compact_matches() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", width=0.25).eval()
    graph = ChannelGraph(model, (3, 32, 32))
    groups, _ = prunable_groups(model, graph, include_residual=True)
    scores = {g.name: torch.rand(g.size) for g in groups}
    keep, _ = select_filters(scores, 0.3)
    small, report = compact(model, keep, (3, 32, 32), graph=graph)
    assert report.max_abs_diff <= 1e-4 and report.channels_removed == sum(
        int((~k).sum()) for k in keep.values()
    )
    for stage in (1, 2, 3):
        widths = {small.get_submodule(f"layer{stage}.{b}.conv2").out_channels for b in range(3)}
        widths |= {small.get_submodule(f"layer{stage}.{b}.bn2").num_features for b in range(3)}
        assert len(widths) == 1  # every member of the residual stream shrank together
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ----------------------------------------------------------------------------------------------------
# Driver end to end (offline digits data)

FAST = {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}


def _recipe(method: str, options: dict, model: str = "small_cnn", kwargs: dict | None = None) -> object:
    return recipe_from_dict(
        {
            "name": f"t_{method}",
            "device": "cpu",
            "model": {"name": model, "kwargs": kwargs or {}},
            "data": {"name": "digits", "train_subset": 500, "test_subset": 200},
            "train": {**FAST, "epochs": 3},
            "prune": {"method": method, "options": options},
            "finetune": FAST,
            "eval": {"latency": False},
        }
    )


def test_pls_vip_driver_end_to_end(tmp_path: Path) -> None:
    options = {"rounds": 2, "fraction": 0.2, "calibration_samples": 300}
    summary = run_recipe(_recipe("pls_vip", options), tmp_path, echo=None, progress=False)
    rows = list(csv.DictReader((tmp_path / "rounds.csv").read_text().splitlines()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    for column in ("accuracy_before_finetune", "accuracy_after_finetune", "filters_removed_percent",
                   "params_removed_percent", "macs_removed_percent", "threshold", "criterion"):  # fmt: skip
        assert column in rows[0]
    prunable = [float(r["prunable_removed_percent"]) for r in rows]
    # p = 0.2 of the *remaining* 48 prunable filters each round: ≈ 20 % then ≈ 36 % in total.
    assert prunable[0] == pytest.approx(20.0, abs=2.5) and prunable[1] == pytest.approx(36.0, abs=4.0)
    macs = [float(r["macs_removed_percent"]) for r in rows]
    assert 0 < macs[0] < macs[1] < 100
    s = summary["pls_vip"]
    assert s["criterion"] == "pls_vip" and s["macs_after"] < s["macs_before"]
    assert s["skipped_groups"] == {"features.7": "last conv layer (set exclude_last_conv: false to prune it)"}
    assert summary["surgery"]["max_abs_diff"] <= 1e-4
    assert summary["accuracy_before_finetune"] == float(rows[-1]["accuracy_before_finetune"])
    payload = load_checkpoint(tmp_path)
    assert payload["arch"]["surgery"]["format"] == "prunelab.arch"
    rebuilt = build_from_checkpoint(tmp_path)
    assert rebuilt.features[7].out_channels == 64  # last conv kept whole
    data = load_dataset("digits", train_subset=500, test_subset=200)
    assert evaluate(rebuilt, data.test)["accuracy"] == pytest.approx(summary["accuracy"], abs=1e-9)


@pytest.mark.parametrize("method", ["l1_filter_iterative", "random_filter_iterative"])
def test_baselines_run_the_same_loop(tmp_path: Path, method: str) -> None:
    options = {"rounds": 1, "fraction": 0.25, "finetune_epochs": 0}
    summary = run_recipe(_recipe(method, options, "resnet20", {"width": 0.25}), tmp_path, echo=None,
                         progress=False)  # fmt: skip
    s = summary["pls_vip"]
    assert s["criterion"] == method.split("_iterative")[0].replace("random_filter", "random")
    assert s["layers"] == [f"layer{st}.{b}.conv1" for st in (1, 2, 3) for b in range(3)]
    assert s["prunable_removed_share"] == pytest.approx(0.25, abs=0.05)
    assert summary["accuracy"] == s["accuracy_after_pruning"]  # no fine-tuning


def test_options_fail_at_validation_time() -> None:
    bad = [
        ({"fraction": 0.0}, "prune.options.fraction"),
        ({"fraction": 1.2}, "prune.options.fraction"),
        ({"n_components": 0}, "prune.options.n_components"),
        ({"pooling": "median"}, "prune.options.pooling"),
        ({"criterion": "l2_magic"}, "prune.options.criterion"),
        (
            {"criterion": "magnitude"},
            "prune.options.criterion: criterion 'magnitude' scores tensor entries",
        ),
        ({"rounds": 0}, "prune.options.rounds"),
        ({"fracton": 0.1}, "did you mean 'fraction'"),
    ]
    for options, message in bad:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            _recipe("pls_vip", options)
    assert _recipe("pls_vip", {"criterion": "l1_filter"}).prune.options.criterion == "l1_filter"


# ----------------------------------------------------------------------------------------------------
# DDP: every rank gets the all-gathered feature matrix

_WORKER = """
import sys, torch
from torch import nn
from prunelab import distributed
from prunelab.stats.features import collect_features
distributed.init_distributed("gloo")
rank = distributed.rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3))
data = [(torch.randn(1, 6, 6), i % 3) for i in range(11)]
x, y, cols = collect_features(model, data, {"0": model[0], "2": model[2]}, batch_size=4)
torch.save({"x": x, "y": y}, sys.argv[1] + f"/rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_features_all_gathered_across_two_ranks(tmp_path: Path) -> None:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path)], env=env))
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3))
    data = [(torch.randn(1, 6, 6), i % 3) for i in range(11)]
    x, y, _ = collect_features(model, data, {"0": model[0], "2": model[2]}, batch_size=4)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Rank 0 holds samples 0, 2, 4, ... and rank 1 samples 1, 3, ...: rows come back in rank order.
    order = list(range(0, 11, 2)) + list(range(1, 11, 2))
    for g in got:
        assert g["x"].shape == (11, 5)
        torch.testing.assert_close(g["x"], x[order])
        assert torch.equal(g["y"], y[order])
    assert json.dumps(got[0]["y"].tolist()) == json.dumps(got[1]["y"].tolist())


def test_constant_feature_gets_zero_vip() -> None:
    # A dead filter (BN γ = 0) has a constant pooled output: exactly no information, VIP exactly 0.
    x, y = _toy(seed=2)
    x[:, 5] = 0.37
    vip = pls_vip(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 2)
    assert (
        float(vip[5]) == 0.0
        and float(vip.min()) == 0.0
        and float((vip**2).sum()) == pytest.approx(x.shape[1])
    )


def test_features_at_bn_prunes_a_dead_channel_first() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", input_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        model.features[1].weight[3] = 0.0  # γ = 0: channel 3 of the first layer carries only its β
    data = load_dataset("digits", val_fraction=0.0, train_subset=200)
    stats = {"data": data.train, "num_classes": data.num_classes, "seed": 0}
    graph = ChannelGraph(model, (1, 8, 8))
    groups, _ = prunable_groups(model, graph)
    scores = score_groups(build_criterion("pls_vip", "group", features_at="bn"), groups, model, stats)
    assert float(scores["features.0"][3]) == 0.0
    keep, _ = select_filters(scores, 0.02)
    assert not bool(keep["features.0"][3])
    conv_scores = score_groups(build_criterion("pls_vip", "group"), groups, model, stats)
    assert float(conv_scores["features.0"][3]) > 0.0  # the conv output before BN still varies


def test_equivalence_check_runs_without_tf32_and_restores_the_flags() -> None:
    # On Ampere+ GPUs cuDNN convolutions default to TF32 (~1e-3 rounding), which failed the 1e-4 surgery
    # check on an H100; the check now compares in full float32 and leaves the global flags as it found them.
    from prunelab.surgery import check_equivalence

    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        seen = []
        model = nn.Conv2d(1, 1, 1)
        model.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
        assert check_equivalence(model, model, torch.randn(1, 1, 2, 2)) == 0.0
        assert seen == [False, False]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
