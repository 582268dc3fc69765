"""Network slimming and proximal network slimming: hooks, criteria, drivers end to end with surgery."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab.checkpoint import build_from_checkpoint, load_checkpoint
from prunelab.core.criterion import score_groups
from prunelab.core.selectors import select_channels
from prunelab.criteria import build_criterion
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import recipe_from_dict
from prunelab.models import build_model
from prunelab.regularizers import L1SubgradientHook, ProximalSlimmingHook, soft_threshold
from prunelab.surgery import ChannelGraph
from prunelab.training import evaluate


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", input_shape=(1, 8, 8))


def test_subgradient_adds_lambda_sign_gamma() -> None:
    model = _bn_model()
    bn = model.features[1]
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-1, 1, bn.num_features))
        bn.weight[3] = 0.0
    grad = torch.randn(bn.num_features)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    bn.weight.grad = grad.clone()
    L1SubgradientHook(model, lam=0.01).after_backward(model)
    assert torch.allclose(bn.weight.grad, grad + 0.01 * torch.sign(bn.weight.detach()))
    assert bn.weight.grad[3] == grad[3]  # sign(0) = 0
    assert torch.equal(model.features[0].weight.grad, torch.zeros_like(model.features[0].weight))


def test_proximal_update_equals_closed_form_and_gives_exact_zeros() -> None:
    model = _bn_model()
    lam, beta, lr = 0.3, 2.0, 0.05
    hook = ProximalSlimmingHook(model, lam=lam, beta=beta, seed=1)
    names = hook.names
    gamma_t = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    xi0 = {n: hook.xi[n].clone() for n in names}
    hook.after_step(model, lr)
    alpha = 1.0 / lr
    for n in names:
        gamma = (alpha * gamma_t[n] + beta * xi0[n]) / (alpha + beta)
        z = (alpha * xi0[n] + beta * gamma) / (alpha + beta)
        xi = torch.sign(z) * torch.clamp(z.abs() - lam / (alpha + beta), min=0.0)
        assert torch.allclose(model.get_submodule(n).weight, gamma, atol=1e-7)
        assert torch.allclose(hook.xi[n], xi, atol=1e-7)
    # Repeated steps drive ξ to exact zeros (not merely small values), as the soft-threshold promises.
    for _ in range(300):
        hook.after_step(model, lr)
    assert hook.zero_fraction() == 1.0
    assert all(bool((hook.xi[n] == 0).all()) for n in names)
    assert torch.equal(soft_threshold(torch.tensor([-0.5, 0.1, 0.7]), 0.2), torch.tensor([-0.3, 0.0, 0.5]))
    state = hook.state_dict()
    other = ProximalSlimmingHook(model, lam=lam, beta=beta, seed=7)
    other.load_state_dict(state)
    assert all(torch.equal(other.xi[n], hook.xi[n]) for n in names)


def test_hooks_reject_bad_settings() -> None:
    model = _bn_model()
    with pytest.raises(ConfigError):
        L1SubgradientHook(model, lam=-1.0)
    with pytest.raises(ConfigError):
        ProximalSlimmingHook(model, lam=0.1, beta=0.0)
    with pytest.raises(ConfigError, match="not an affine BatchNorm"):
        L1SubgradientHook(model, lam=0.1, names=["features.0"])


def test_channel_criteria_and_selection() -> None:
    model = build_model("resnet20", width=0.25)
    graph = ChannelGraph(model, (3, 32, 32))
    stream = next(g for g in graph.groups if "residual" in g.coupling)
    with torch.no_grad():
        for m in stream.bns():
            model.get_submodule(m.name).weight.fill_(0.1)
        first = stream.bns()[0]
        model.get_submodule(first.name).weight[first.pairs[0][1]] = -2.0
    scores = score_groups(build_criterion("bn_scale", "group"), graph.groups, model)
    assert scores[stream.name][first.pairs[0][0]] == 2.0  # max |γ| over the coupled BNs
    assert scores[stream.name].min() == pytest.approx(0.1)
    l1 = score_groups(build_criterion("l1_filter", "group"), graph.groups, model)
    conv = model.get_submodule("layer1.0.conv1").weight
    assert torch.allclose(l1["layer1.0.conv1"], conv.abs().sum(dim=(1, 2, 3)))
    keep = select_channels(l1, 0.5, scope="global", min_keep=2)
    total = sum(g.size for g in graph.groups)
    assert sum(int((~k).sum()) for k in keep.values()) == round(0.5 * total)
    assert all(int(k.sum()) >= 2 for k in keep.values())
    per_layer = select_channels(l1, 0.5, scope="layer")
    assert all(
        int(k.sum()) == graph.by_name[n].size - round(0.5 * graph.by_name[n].size)
        for n, k in per_layer.items()
    )


def _recipe(method: str, options: dict, sparsity: float | None, finetune: int = 1) -> object:
    # Proximal slimming decides how much to remove itself: it takes no sparsity.
    share = {} if sparsity is None else {"sparsity": sparsity}
    return recipe_from_dict(
        {
            "name": f"t_{method}",
            "seed": 0,
            "model": {"name": "small_cnn"},
            "data": {"name": "digits"},
            "prune": {"method": method, **share, "options": options},
            "finetune": {
                "epochs": finetune,
                "optimizer": "adam",
                "lr": 3e-3,
                "weight_decay": 0.0,
                "batch_size": 64,
            },
            "eval": {"latency": False},
        }
    )


SPARSE_TRAIN = {"epochs": 3, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}


def _check_run(out: Path, summary: dict) -> None:
    s = summary["structured"]
    assert summary["surgery"]["max_abs_diff"] <= 1e-4
    assert s["params_after"] < s["params_before"] and s["macs_ratio"] > 1.0
    assert summary["params_total"] == s["params_after"]
    payload = load_checkpoint(out)
    assert payload["arch"]["surgery"]["format"] == "prunelab.arch"
    rebuilt = build_from_checkpoint(out)
    acc = evaluate(rebuilt, load_dataset("digits").test)["accuracy"]
    assert acc == pytest.approx(summary["accuracy"], abs=1e-9)


def test_slimming_driver_end_to_end(tmp_path: Path) -> None:
    options = {"lam": 1e-3, "sparsity_train": SPARSE_TRAIN, "speed_batch_sizes": [1, 8], "speed_repeats": 2}
    summary = run_recipe(_recipe("network_slimming", options, 0.5), tmp_path, echo=None, progress=False)
    _check_run(tmp_path, summary)
    s = summary["structured"]
    assert s["channels_removed"] == round(0.5 * s["channels_total"])
    assert summary["accuracy_before_finetune"] == s["accuracy_after_pruning"]
    speed = summary["speedup"]
    assert set(speed["eager_cpu"]) == {"1", "8"} and speed["eager_cpu"]["8"]["compact_ms"] > 0
    assert "skipped" in speed["onnxruntime"] or "1" in speed["onnxruntime"]


def test_proximal_slimming_driver_prunes_xi_zeros(tmp_path: Path) -> None:
    # A large λ makes ξ exactly sparse within three epochs of the 8×8 digits.
    train = {**SPARSE_TRAIN, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "lr_schedule": "constant"}
    options = {"lam": 3.0, "beta": 100.0, "sparsity_train": train, "speed_batch_sizes": []}
    summary = run_recipe(
        _recipe("proximal_slimming", options, None, finetune=0), tmp_path, echo=None, progress=False
    )
    _check_run(tmp_path, summary)
    s = summary["structured"]
    assert s["rule"] == "xi" and s["xi_zero_share"] > 0
    assert s["channels_removed"] > 0
    assert summary["accuracy"] == s["accuracy_after_pruning"]  # no fine-tuning


def test_proximal_slimming_zero_gamma_moves_the_loss_before_the_surgery(tmp_path: Path) -> None:
    # γ ← 0 where ξ = 0: the removed channels then carry only the constant ReLU(β), which the surgery
    # folds, so the compacted accuracy is the masked (γ-zeroed) accuracy.
    train = {**SPARSE_TRAIN, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "lr_schedule": "constant"}
    options = {
        "lam": 3.0,
        "beta": 100.0,
        "sparsity_train": train,
        "speed_batch_sizes": [],
        "zero_gamma": True,
    }
    summary = run_recipe(
        _recipe("proximal_slimming", options, None, finetune=0), tmp_path, echo=None, progress=False
    )
    _check_run(tmp_path, summary)
    s = summary["structured"]
    assert s["zero_gamma"] is True and s["channels_removed"] > 0
    assert s["gamma_zeroed"] >= 0 and 0.0 <= s["accuracy_gamma_zeroed"] <= 1.0
    assert s["accuracy_before_gamma_zeroed"] == pytest.approx(s["accuracy_after_sparsity_training"], abs=1e-9)
    if not summary["surgery"]["folds_inexact"]:
        assert s["accuracy_after_pruning"] == pytest.approx(s["accuracy_gamma_zeroed"], abs=0.01)
    log = (tmp_path / "log.txt").read_text()
    assert "zero_gamma: γ ← 0 on" in log


def test_structured_l1_filter_driver(tmp_path: Path) -> None:
    options = {"scope": "layer", "sparsity_train": SPARSE_TRAIN, "speed_batch_sizes": []}
    summary = run_recipe(_recipe("l1_filter", options, 0.25), tmp_path, echo=None, progress=False)
    _check_run(tmp_path, summary)
    assert summary["structured"]["criterion"] == "l1_filter"


def test_bad_driver_options_fail_before_running() -> None:
    with pytest.raises(ConfigError, match="prune.options"):
        _recipe("network_slimming", {"lamda": 1.0}, 0.5)
    with pytest.raises(ConfigError, match="sparsity_train"):
        _recipe("network_slimming", {"sparsity_train": {"epochz": 1}}, 0.5)
