"""SNIP, GraSP and SynFlow (prunelab.criteria.saliency) on SP and IP: one invariant per test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.core import masking
from prunelab.criteria import CRITERIA
from prunelab.criteria.saliency import SNIP, GraSP, SynFlow
from prunelab.errors import ConfigError
from prunelab.pruning.pruner import Pruner


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4),
    )


pytestmark = pytest.mark.usefixtures("one_thread")


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(2)
    ]


def _fit(criterion: object, reparam: str | None) -> tuple[Pruner, nn.Module]:
    model = _net()
    pruner = Pruner(
        model, criterion=criterion, reparam=reparam, reparam_kwargs={"init": "dct"} if reparam else None
    )
    pruner.prepare()
    views = [pruner._view(t) for t in pruner.targets]
    criterion.fit(views, {"model": model, "batches": _batches()})  # type: ignore[attr-defined]
    return pruner, model


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow"])
def test_saliency_criteria_are_registered_and_need_model_and_batches(name: str) -> None:
    assert CRITERIA.build(name).requires == frozenset({"model", "batches"})


@pytest.mark.parametrize("cls", [SNIP, GraSP, SynFlow], ids=["snip", "grasp", "synflow"])
@pytest.mark.parametrize("reparam", [None, "interspace"], ids=["sp", "ip"])
def test_scores_have_the_target_shape_and_are_non_negative_and_finite(cls: type, reparam: str | None) -> None:
    criterion = cls()
    pruner, _ = _fit(criterion, reparam)
    for t in pruner.targets:
        scores = criterion.score(pruner._view(t), {})
        assert scores.shape == masking.original(t.module, t.param).shape
        assert bool(torch.isfinite(scores).all()) and bool((scores >= 0).all())


def test_snip_score_is_abs_theta_times_gradient() -> None:
    criterion = SNIP(train_mode=False)
    pruner, model = _fit(criterion, None)
    model.eval()
    loss = sum(nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in _batches()) / 32
    loss.backward()
    t = pruner.targets[1]
    w = masking.original(t.module, t.param)
    torch.testing.assert_close(criterion.score(pruner._view(t), {}), (w * w.grad).abs().detach())


def test_snip_on_ip_scores_the_coefficients_with_their_gradient() -> None:
    criterion = SNIP(train_mode=False)
    pruner, model = _fit(criterion, "interspace")
    model.eval()
    loss = sum(nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in _batches()) / 32
    loss.backward()
    conv = model[3]
    lam = masking.original(conv)  # the coefficients, not the weight
    assert lam is not conv.weight
    torch.testing.assert_close(
        criterion.score(pruner._view(pruner.targets[1]), {}), (lam * lam.grad).abs().detach()
    )


def test_scoring_leaves_bn_running_statistics_unchanged() -> None:
    model = _net()
    before = model[1].running_mean.clone()
    pruner = Pruner(model, criterion="snip").prepare()
    pruner.step(0.5, {"model": model, "batches": _batches()})
    torch.testing.assert_close(model[1].running_mean, before)


def test_grasp_keeps_the_highest_theta_hg_the_published_sign_convention() -> None:
    criterion = GraSP()
    pruner, _ = _fit(criterion, None)
    t = pruner.targets[1]
    raw = criterion.raw[t.fqn]
    scores = criterion.score(pruner._view(t), {})
    # Higher θ⊙Hg (lower published S = −θ⊙Hg) → higher keep score: the ranking is the same.
    order = torch.argsort(raw.flatten())
    assert bool((scores.flatten()[order].diff() >= 0).all())
    assert float(scores.min()) >= 0


def test_grasp_hessian_gradient_product_matches_finite_differences() -> None:
    criterion = GraSP(temperature=1.0, train_mode=False)
    pruner, model = _fit(criterion, None)
    model.eval()
    params = [masking.original(t.module, t.param) for t in pruner.targets]

    def grad_at() -> list[torch.Tensor]:
        loss = sum(nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in _batches()) / 32
        return list(torch.autograd.grad(loss, params))

    g = grad_at()
    eps = 1e-3
    with torch.no_grad():
        for p, d in zip(params, g, strict=True):
            p.add_(eps * d)
    g_plus = grad_at()
    with torch.no_grad():
        for p, d in zip(params, g, strict=True):
            p.sub_(eps * d)
    hg_fd = (g_plus[1] - g[1]) / eps
    torch.testing.assert_close(
        criterion.raw[pruner.targets[1].fqn], (params[1] * hg_fd).detach(), atol=2e-3, rtol=5e-2
    )


def test_synflow_restores_the_weights_and_dtype() -> None:
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Pruner(model, criterion="synflow").prepare().step(0.5, {"model": model, "batches": _batches()})
    for name, value in model.state_dict().items():
        if ".parametrizations." not in name and name in before:
            assert value.dtype == before[name].dtype
    w = masking.original(model[3])
    assert w.dtype == torch.float32
    assert bool((w[masking.get_mask(model[3])] == before["3.weight"][masking.get_mask(model[3])]).all())


def test_synflow_is_data_free() -> None:
    a, b = SynFlow(), SynFlow()
    pa, _ = _fit(a, None)
    model = _net()
    pb = Pruner(model, criterion=b).prepare()
    noise = [(torch.randn(16, 1, 6, 6) * 100, torch.zeros(16, dtype=torch.long))]
    b.fit([pb._view(t) for t in pb.targets], {"model": model, "batches": noise})
    for t in pa.targets:
        torch.testing.assert_close(a.score(pa._view(t), {}), b.score(pb._view(t), {}))


@pytest.mark.parametrize("reparam", [None, "interspace"], ids=["sp", "ip"])
def test_iterative_synflow_keeps_every_layer_alive_at_high_sparsity(reparam: str | None) -> None:
    model = _net()
    pruner = Pruner(model, criterion="synflow", reparam=reparam, min_keep=0).prepare()
    stats = {"model": model, "batches": _batches()}
    for k in range(1, 21):
        pruner.step(1 - (1 - 0.98) ** (k / 20), stats)
    for t in pruner.targets:
        assert int(masking.get_mask(t.module, t.param).sum()) > 0, f"{t.fqn} collapsed"


def test_saliency_criteria_without_stats_fail_with_a_hint() -> None:
    model = _net()
    pruner = Pruner(model, criterion="snip").prepare()
    with pytest.raises(ConfigError, match="statistics"):
        pruner.step(0.5)


def test_grasp_rejects_a_non_positive_temperature() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        GraSP(temperature=0)
