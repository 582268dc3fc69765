"""Sparse execution (`prunelab.metrics.sparse_exec.to_sparse`): same outputs, measured per-layer choice.

Every model here is a zoo model pruned by prunelab's own ``prune`` (global magnitude), so the masks are
real parametrizations that the converter must bake. Outputs are compared with the masked model at
``rtol=1e-4, atol=1e-5`` (float32 sums in another order).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import prunelab
from prunelab.errors import ConfigError, PrunelabError, UnsupportedModelError
from prunelab.metrics.sparse_exec import SparseConv2d, SparseLinear, to_sparse
from prunelab.models import build_model

TOL = {"rtol": 1e-4, "atol": 1e-5}
FAST = {"warmup": 1, "repeats": 3}


def _pruned(name: str, sparsity: float, input_shape: tuple[int, ...], **kwargs: object) -> nn.Module:
    model = build_model(name, num_classes=10, input_shape=input_shape, **kwargs)
    prunelab.prune(model, sparsity)
    return model.eval()


def _all_sparse(model: nn.Module) -> dict[str, str]:
    return {n: "sparse" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


@pytest.fixture
def lenet300() -> nn.Module:
    return _pruned("lenet300_100", 0.98, (1, 28, 28))


def test_sparse_linear_outputs_match_the_masked_model(lenet300: nn.Module) -> None:
    converted, report = to_sparse(lenet300, (1, 28, 28), 16, force=_all_sparse(lenet300), **FAST)
    assert report.sparse_layers == ["fc1", "fc2", "fc3"]
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), lenet300(x), **TOL)
        # Batch 1 and a batch other than the measured one use the same layers.
        torch.testing.assert_close(converted(x[:1]), lenet300(x[:1]), **TOL)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [("lenet5", (1, 28, 28), {}), ("resnet20", (3, 32, 32), {}), ("vgg11", (3, 32, 32), {"width": 0.25})],
)
def test_sparse_conv_outputs_match_the_masked_model(name: str, shape: tuple[int, ...], kwargs: dict) -> None:
    # Padding, stride-2 shortcuts and BatchNorm after a sparse convolution (resnet20, vgg11).
    model = _pruned(name, 0.9, shape, **kwargs)
    converted, report = to_sparse(model, shape, 4, force=_all_sparse(model), **FAST)
    assert any(isinstance(m, SparseConv2d) for m in converted.modules())
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), **TOL)
    assert report.max_abs_diff <= 1e-3


def test_the_original_model_is_left_masked_and_working(lenet300: nn.Module) -> None:
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        before = lenet300(x)
    to_sparse(lenet300, (1, 28, 28), 4, force=_all_sparse(lenet300), **FAST)
    assert parametrize.is_parametrized(lenet300.fc1, "weight")
    with torch.no_grad():
        torch.testing.assert_close(lenet300(x), before, rtol=0, atol=0)


def test_the_per_layer_choice_is_honoured(lenet300: nn.Module) -> None:
    converted, report = to_sparse(lenet300, (1, 28, 28), 8, force={"fc2": "dense"}, margin=1.0, **FAST)
    by_name = {c.name: c for c in report.layers}
    assert by_name["fc2"].form == "dense" and by_name["fc2"].reason == "forced"
    for choice in report.layers:
        module = converted.get_submodule(choice.name)
        assert isinstance(module, SparseLinear) == (choice.form == "sparse")
        assert isinstance(module, nn.Linear) == (choice.form == "dense")
        if choice.reason == "measured":
            # The rule: sparse exactly where the measured median was faster by the margin.
            assert (choice.form == "sparse") == (choice.dense_ms >= report.margin * choice.sparse_ms)


def test_an_unreachable_margin_leaves_every_layer_dense(lenet300: nn.Module) -> None:
    converted, report = to_sparse(lenet300, (1, 28, 28), 8, margin=1e9, **FAST)
    assert report.sparse_layers == []
    assert all(type(converted.get_submodule(c.name)) is nn.Linear for c in report.layers)


def test_dense_layers_are_not_timed() -> None:
    model = _pruned("lenet300_100", 0.5, (1, 28, 28))  # global magnitude: every layer > 20 % dense
    _, report = to_sparse(model, (1, 28, 28), 4, max_density=0.2, **FAST)
    assert all(c.form == "dense" and c.dense_ms is None for c in report.layers)
    assert {c.reason for c in report.layers} == {"density above max_density"}


def test_measured_choice_picks_sparse_for_the_98_percent_fc1(lenet300: nn.Module) -> None:
    # fc1 holds 0.8 % of its weights: the CSR product is 4-6x faster at batch 64 on one thread, far
    # beyond the 1.1 margin and the noise of a shared machine.
    torch.set_num_threads(1)
    _, report = to_sparse(lenet300, (1, 28, 28), 64, warmup=3, repeats=15)
    assert "fc1" in report.sparse_layers
    assert report.threads == 1


def test_sparse_layers_are_inference_only(lenet300: nn.Module) -> None:
    converted, _ = to_sparse(lenet300, (1, 28, 28), 4, force=_all_sparse(lenet300), **FAST)
    assert not converted.training
    assert not any(p.requires_grad for p in converted.fc1.parameters())  # CSR weights are buffers
    converted.train()
    with pytest.raises(PrunelabError, match="inference-only"):
        converted(torch.randn(2, 1, 28, 28))


def test_forcing_an_unknown_layer_is_a_one_line_error(lenet300: nn.Module) -> None:
    with pytest.raises(ConfigError, match="fc9") as err:
        to_sparse(lenet300, (1, 28, 28), 4, force={"fc9": "sparse"})
    assert "\n" not in str(err.value) and "fc1" in str(err.value)


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"margin": 0.0}, {"max_density": 1.5}, {"force": {"fc1": "csr"}}]
)
def test_bad_arguments_are_one_line_errors(lenet300: nn.Module, kwargs: dict) -> None:
    with pytest.raises(ConfigError) as err:
        to_sparse(lenet300, (1, 28, 28), **kwargs)
    assert "\n" not in str(err.value)


def test_grouped_convolutions_stay_dense_and_cannot_be_forced() -> None:
    model = _pruned("mobilenet_v1", 0.9, (3, 32, 32), width=0.25)
    depthwise = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    _, report = to_sparse(model, (3, 32, 32), 2, max_density=0.0, **FAST)
    assert next(c for c in report.layers if c.name == depthwise).reason.startswith("grouped convolution")
    with pytest.raises(UnsupportedModelError, match="grouped") as err:
        to_sparse(model, (3, 32, 32), 2, force={depthwise: "sparse"}, **FAST)
    assert "\n" not in str(err.value)


def test_a_wrong_conversion_is_refused(lenet300: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    # The converter checks its own result: a sparse form that computed something else never gets out.
    forward = SparseLinear.forward
    monkeypatch.setattr(SparseLinear, "forward", lambda self, x: forward(self, x) + 1.0)
    with pytest.raises(PrunelabError, match="differ"):
        to_sparse(lenet300, (1, 28, 28), 4, force={"fc3": "sparse"}, **FAST)
