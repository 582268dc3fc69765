"""Export (#13, deliverable 4): BatchNorm folding, the three formats verified against PyTorch, the CLI.

Real models and real runtimes throughout: zoo models (resnet20, mobilenet_v2 at width 0.25) with random
BatchNorm statistics, a structurally compacted network, a masked network, a two-input / two-output
model, a run directory written by the recipe runner, and ONNX Runtime, ``torch.jit.load`` and
``torch.export.load`` reading the written files back.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunelab
from prunelab import export as export_module
from prunelab.cli import build_parser, main
from prunelab.errors import ConfigError, UnsupportedModelError
from prunelab.export import (
    FORMATS,
    ONNX_EXPORTERS,
    SUFFIXES,
    ExportVerificationError,
    accepted_diff,
    default_export_path,
    export_checkpoint,
    export_model,
    fold_batchnorm,
    onnx_bytes,
    onnx_runtime_session,
    report_path_for,
)
from prunelab.metrics import speed
from prunelab.metrics.speed import onnxruntime_available
from prunelab.models import build_model
from prunelab.surgery import ChannelGraph, compact

pytestmark = pytest.mark.usefixtures("one_thread")

needs_onnx = pytest.mark.skipif(not onnxruntime_available(), reason="pip install 'prunelab[onnx]'")
#: Latency is measured in every export test, briefly (the figures are not what these tests check).
QUICK = {"warmup": 1, "repeats": 3}


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine parameters and running statistics (a wrong fold cannot hide)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(build_model("resnet20", input_shape=(3, 32, 32), width=0.25))


# --------------------------------------------------------------------------------------------------
# folding
# --------------------------------------------------------------------------------------------------


def test_fold_batchnorm_folds_every_pair_of_resnet20_and_leaves_the_model_alone(resnet20: nn.Module) -> None:
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    folded, report = fold_batchnorm(resnet20, x)
    assert report.count == _bn_count(resnet20) == 19 and not report.skipped
    assert _bn_count(folded) == 0
    assert report.max_abs_diff <= 1e-5
    assert (folded(x) - resnet20(x)).abs().max() <= 1e-5
    # The caller's model is untouched: same modules, same tensors.
    assert _bn_count(resnet20) == 19
    assert all(torch.equal(before[k], v) for k, v in resnet20.state_dict().items())


class _SharedOutput(nn.Module):
    """conv1's output feeds its BN *and* a residual read; conv2 → in-place ReLU → BN; one BN used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3, self.conv4, self.shared = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.conv5, self.bn5 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)  # the one foldable pair

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv1(x)
        x = self.bn1(a) + a
        x = self.bn2(F.relu(self.conv2(x), inplace=True))
        x = self.shared(self.conv3(x)) + self.shared(self.conv4(x))
        return self.bn5(self.conv5(x)).mean(dim=(2, 3))


def test_only_pairs_whose_conv_output_nothing_else_reads_are_folded() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_SharedOutput())
    x = torch.randn(2, 3, 8, 8)
    folded, report = fold_batchnorm(model, x)
    assert report.folded == [("conv5", "bn5")]
    assert "also read by another operation" in report.skipped["bn1"]
    # The in-place ReLU returns conv2's own tensor, modified: its use is what keeps bn2 unfolded.
    assert "conv2 is also read by another operation" in report.skipped["bn2"]
    assert "applied 2 times" in report.skipped["shared"]
    assert (folded(x) - model(x)).abs().max() <= 1e-5


class _WeightStandardizedConv(nn.Conv2d):
    """A conv that standardizes its weights in forward (timm's StdConv2d does): folding cannot hold."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class _BNAct(nn.BatchNorm2d):
    """A BatchNorm subclass that applies its activation child, as timm's BatchNormAct2d."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.act = nn.Hardswish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class _BNReLU(nn.BatchNorm2d):
    """A BatchNorm subclass whose forward applies a functional ReLU (no child module to stand in)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


class _Kinds(nn.Module):
    """Every producer kind: conv, grouped, depthwise, transposed (grouped), linear + BN1d, BN-act, std conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.grouped, self.bn_g = nn.Conv2d(8, 8, 3, padding=1, groups=4), _BNAct(8)
        self.depthwise, self.bn_d = nn.Conv2d(8, 8, 3, padding=1, groups=8), _BNReLU(8)
        self.up, self.bn_u = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2), nn.BatchNorm2d(6)
        self.std, self.bn_s = _WeightStandardizedConv(6, 6, 1), nn.BatchNorm2d(6)
        self.fc, self.bn_fc = nn.Linear(6, 5), nn.BatchNorm1d(5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.bn_d(self.depthwise(self.bn_g(self.grouped(x))))
        x = self.bn_s(self.std(self.bn_u(self.up(x))))
        return self.bn_fc(self.fc(x.mean(dim=(2, 3))))


def test_every_producer_kind_folds_and_a_weight_transforming_conv_is_refused_by_the_check() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_Kinds())
    x = torch.randn(3, 3, 8, 8)
    folded, report = fold_batchnorm(model, x)
    assert {bn for _, bn in report.folded} == {"bn", "bn_g", "bn_d", "bn_u", "bn_fc"}
    assert "changes the outputs" in report.skipped["bn_s"]
    assert (folded(x) - model(x)).abs().max() <= 1e-5
    # The activation of a BN subclass stays: its child alone replaces it, or, without a child module to
    # stand in, the module is kept with its normalization made the identity.
    assert isinstance(folded.bn_g, nn.Sequential) and isinstance(folded.bn_g[0], nn.Hardswish)
    assert isinstance(folded.bn_d, _BNReLU) and folded.bn_d.eps == 0.0
    assert set(report.subclasses) == {"bn_g", "bn_d"} and "children (Hardswish)" in report.subclasses["bn_g"]
    assert isinstance(folded.bn, nn.Identity) and folded.conv.bias is not None


# --------------------------------------------------------------------------------------------------
# the three formats
# --------------------------------------------------------------------------------------------------


def _formats() -> list:
    return [pytest.param(f, marks=needs_onnx) if f == "onnx" else f for f in FORMATS]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", _formats())
def test_resnet20_exports_verified_in_every_format(resnet20: nn.Module, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"model{SUFFIXES[fmt]}"
    report = export_model(resnet20, torch.randn(1, 3, 32, 32), path, fmt, **QUICK)
    assert report.verified and report.max_abs_diff <= report.tolerance == 1e-4
    assert report.folded_bn == 19 and not report.skipped_bn
    assert report.bytes == path.stat().st_size > 0
    assert report.dynamic_batch and report.batch_sizes_verified == [1, 3]
    assert report.output_spread > 0.1  # the outputs depend on the input: the comparison means something
    lat = report.latency
    assert lat is not None and lat["threads"] == 1 and lat["exported_ms"] > 0 and lat["pytorch_ms"] > 0
    assert list(tmp_path.iterdir()) == [path]  # nothing else written beside it
    data = json.loads(json.dumps(report.to_dict()))
    assert data["format"] == fmt and data["folded"][0] == ["conv1", "bn1"]
    # The file itself, read back independently, computes the model at another batch size.
    x = torch.randn(4, 3, 32, 32)
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        y = torch.from_numpy(y)
        ops = [node.op_type for node in onnx.load(str(path)).graph.node]
        assert ops.count("Conv") == 19 + 2 and "Gather" not in ops  # the shortcuts' export form
    elif fmt == "torchscript":
        y = torch.jit.load(str(path))(x)
    else:
        y = torch.export.load(str(path)).module()(x)
    assert (y - resnet20(x)).abs().max() <= 1e-4


class _TwoInTwoOut(nn.Module):
    """``forward(image, extra) -> (logits, aux)``: two stems added, two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stem_b = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.head, self.aux = nn.Linear(16, 10), nn.Linear(16, 3)

    def forward(self, image: Tensor, extra: Tensor) -> tuple[Tensor, Tensor]:
        f = self.body(self.stem_a(image) + self.stem_b(extra)).mean(dim=(2, 3))
        return self.head(f), self.aux(f)


@pytest.mark.parametrize("fmt", _formats())
def test_two_inputs_and_tuple_outputs_in_every_format(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_TwoInTwoOut())
    inputs = (torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16))
    report = export_model(model, inputs, tmp_path / "two", fmt, batch=1, latency=False)
    assert report.folded_bn == 3 and report.max_abs_diff <= 1e-4 and report.output_spread > 1e-2
    assert report.input_shapes == [[1, 3, 16, 16], [1, 1, 16, 16]] and report.latency is None


@needs_onnx
def test_keyword_inputs_and_dict_outputs_onnx(tmp_path: Path) -> None:
    class KeywordDict(_TwoInTwoOut):
        def forward(self, image: Tensor, extra: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
            logits, aux = super().forward(image, extra)
            return {"logits": logits, "aux": aux}

    torch.manual_seed(0)
    model = _randomize_bn(KeywordDict())
    # Passed in the other order than the signature's: the file is fed by name.
    inputs = {"extra": torch.randn(2, 1, 16, 16), "image": torch.randn(2, 3, 16, 16)}
    report = export_model(model, inputs, tmp_path / "kw.onnx", "onnx", latency=False)
    assert report.folded_bn == 3 and report.max_abs_diff <= 1e-4 and report.batch_sizes_verified == [2, 3]


@needs_onnx
@pytest.mark.parametrize("exporter", ONNX_EXPORTERS)
def test_onnx_bytes_gives_a_dynamic_batch_file_that_computes_the_model(
    resnet20: nn.Module, exporter: str
) -> None:
    model = fold_batchnorm(resnet20, torch.randn(2, 3, 32, 32))[0]
    data = onnx_bytes(model, (torch.randn(2, 3, 32, 32),), exporter=exporter, input_names=["image"])
    session = onnx_runtime_session(data)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_session_options().intra_op_num_threads == 1
    x = torch.randn(5, 3, 32, 32)  # another batch size than the traced one
    (y,) = session.run(None, {"image": x.numpy()})
    assert (torch.from_numpy(y) - resnet20(x)).abs().max() <= 1e-4


@needs_onnx
def test_export_model_and_the_latency_comparison_share_one_onnx_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counting(*args: object, **kwargs: object) -> bytes:
        calls.append(str(kwargs["exporter"]))
        return onnx_bytes(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export_module, "onnx_bytes", counting)
    monkeypatch.setattr(speed, "onnx_bytes", counting)
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()))
    report = export_model(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", "onnx", latency=False)
    assert calls == ["dynamo"] and report.folded_bn == 1  # `prunelab export` keeps the default exporter
    _, info = speed.onnx_session(model, torch.randn(1, 3, 8, 8), str(tmp_path))
    assert calls == ["dynamo", "torchscript"] and info["exporter"] == "torchscript"  # the fast one first


@needs_onnx
def test_onnx_files_carry_the_option_a_shortcut_as_a_convolution(resnet20: nn.Module) -> None:
    # ONNX Runtime keeps a 1x1 convolution in its blocked layout, not the selection's Gather (speedup.md).
    # The torch.export-based exporter's file (export forms on) is checked in the every-format test above.
    import onnx

    graph = ChannelGraph(resnet20, (3, 32, 32))
    keep = {g.name: torch.arange(g.size) % 2 == 0 for g in graph.groups}
    small = compact(resnet20, keep, (3, 32, 32), graph=graph)[0]  # irregular index maps after surgery
    x = torch.randn(3, 3, 32, 32)
    for model, forms in [(resnet20, True), (resnet20, False), (small, True), (small, False)]:
        data = onnx_bytes(model, (x[:1],), exporter="torchscript", input_names=["x"], export_forms=forms)
        ops = [node.op_type for node in onnx.load_from_string(data).graph.node]
        (y,) = onnx_runtime_session(data).run(None, {"x": x.numpy()})
        with torch.no_grad():
            assert (torch.from_numpy(y) - model(x)).abs().max() <= 1e-4
        convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        # With the forms, the two downsampling shortcuts are convolutions and nothing gathers channels.
        assert ("Gather" in ops) != forms and ops.count("Conv") == convs + 2 * forms
        assert type(model.layer2[0].shortcut).__name__ == "PadShortcut"  # the model itself is unchanged
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert speed.with_export_forms(plain) is plain  # nothing to replace: no copy


def test_onnx_bytes_refuses_what_its_exporter_cannot_take() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="not one of dynamo, torchscript"):
        onnx_bytes(model, (torch.randn(1, 3, 8, 8),), exporter="tracer")
    with pytest.raises(ValueError, match="positional inputs only"):
        onnx_bytes(model, (), {"input": torch.randn(1, 3, 8, 8)}, exporter="torchscript")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_masked_model_exports_its_effective_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build_model("resnet20", input_shape=(3, 32, 32), width=0.25))
    prunelab.prune(model, sparsity=0.8)
    report = export_model(model, torch.randn(1, 3, 32, 32), tmp_path / "m.pt", "torchscript", latency=False)
    assert report.folded_bn == 19 and report.max_abs_diff <= 1e-4
    weights = [v for k, v in torch.jit.load(str(tmp_path / "m.pt")).state_dict().items() if v.dim() == 4]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros > 0.6  # the masked entries are zeros in the file (folding scales, never fills them)
    # The masks are still on the caller's model.
    assert any("parametrizations" in k for k in model.state_dict())


def test_compacted_mobilenet_v2_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    shape = (3, 16, 16)
    model = _randomize_bn(build_model("mobilenet_v2", input_shape=shape, width=0.25))
    graph = ChannelGraph(model, shape)
    gen = torch.Generator().manual_seed(1)
    keep = {}
    for g in graph.groups:
        mask = torch.rand(g.size, generator=gen) >= 0.4
        mask[0] = True
        keep[g.name] = mask
    small, surgery = compact(model, keep, shape, graph=graph, batch=torch.randn(2, *shape))
    assert surgery.channels_removed > 0
    report = export_model(small, torch.randn(1, *shape), tmp_path / "mb.pt2", "torch-export", **QUICK)
    assert report.folded_bn == _bn_count(small) > 30 and report.max_abs_diff <= 1e-4
    assert report.output_spread > 0.1
    assert report.latency and report.latency["pytorch_folded_ms"] > 0


def test_a_file_that_differs_is_an_error_and_is_not_written(tmp_path: Path) -> None:
    class DataDependentScale(nn.Module):
        """``x * mean|x|`` with the mean read into Python: a trace freezes the example's value."""

        def forward(self, x: Tensor) -> Tensor:
            return x * float(x.abs().mean())

    path = tmp_path / "bad.pt"
    with pytest.raises(
        ExportVerificationError, match=r"differs from the PyTorch model: max \|diff\|"
    ) as info:
        export_model(DataDependentScale(), torch.randn(2, 8), path, "torchscript", latency=False)
    assert "\n" not in str(info.value) and "nothing was written" in str(info.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []


class _FixedBatch(nn.Module):
    """Reshapes with a constant batch size: the model itself runs at batch 2 only."""

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(2, -1).sum(1)


class _DataDependentBranch(nn.Module):
    """Python control flow on a tensor value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return y * 2 if y.sum() > 0 else y


def test_fixed_batch_models_and_models_the_exporter_cannot_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = export_model(
        _FixedBatch(), torch.randn(2, 3), tmp_path / "fixed.pt", "torchscript", latency=False
    )
    assert not report.dynamic_batch and report.batch_sizes_verified == [2]
    assert "(fixed batch)" in report.summary_line()
    with pytest.raises(UnsupportedModelError, match=r"fails on a seeded random batch of shapes \[\[1, 3\]\]"):
        export_model(_FixedBatch(), torch.randn(2, 3), tmp_path / "f1.pt", "torchscript", batch=1)
    capsys.readouterr()
    with pytest.raises(
        UnsupportedModelError, match="torch-export export of _DataDependentBranch failed"
    ) as info:
        export_model(
            _DataDependentBranch().eval(), torch.randn(2, 3, 8, 8), tmp_path / "b.pt2", "torch-export"
        )
    assert "\n" not in str(info.value) and "try another format" in str(info.value)
    assert capsys.readouterr().err == ""  # the exporter's graph dumps and warnings stay out of the terminal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.pt"]


def test_a_collapsed_network_is_flagged_as_a_weak_check(tmp_path: Path) -> None:
    # Every BN shift far below zero: the ReLU outputs zeros whatever the input, so any file "matches".
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    with torch.no_grad():
        model[1].bias.fill_(-100.0)
    report = export_model(
        model.eval(), torch.randn(2, 3, 8, 8), tmp_path / "c.pt", "torchscript", latency=False
    )
    assert report.output_spread == 0.0 and "barely depend on the input" in report.summary_line()
    healthy = export_model(_FixedBatch(), torch.randn(2, 3), tmp_path / "h.pt", "torchscript", latency=False)
    assert healthy.output_spread > 0.1 and "barely" not in healthy.summary_line()


class _FrozenMeanScale(nn.Module):
    """``net(x) · mean|x| / 0.8`` with the mean read into Python: a trace freezes the example's value,
    which differs from another batch's by about 1 %."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * (float(x.abs().mean()) / 0.8)


def test_accepted_diff_is_absolute_within_unit_outputs_and_relative_above() -> None:
    assert accepted_diff(1e-4, [torch.tensor([0.5, -0.3])]) == 1e-4
    assert accepted_diff(1e-4, [torch.tensor([]), torch.tensor([[2.0, -40.0]])]) == pytest.approx(4e-3)
    # Infinite and NaN outputs say nothing about the rounding scale (the comparison handles them).
    assert accepted_diff(1e-4, [torch.tensor([float("inf"), float("nan"), 3.0])]) == pytest.approx(3e-4)


def test_large_logits_export_within_the_relative_bound_and_wrong_files_still_fail(
    resnet20: nn.Module, tmp_path: Path
) -> None:
    # Logits in the thousands: folding 19 BatchNorms reorders float32 arithmetic whose rounding is ~1e-7 of
    # the value, far above an absolute 1e-4, for a file that computes the same function.
    with torch.no_grad():
        resnet20.linear.weight.mul_(1e2)
    x = torch.randn(2, 3, 32, 32)
    report = export_model(resnet20, x, tmp_path / "big.pt", "torchscript", latency=False)
    assert report.output_scale > 1e3 and report.max_abs_diff > 1e-4
    assert report.accepted_diff == pytest.approx(1e-4 * report.output_scale)
    assert report.max_abs_diff <= report.accepted_diff and report.verified
    # A file that is wrong by about 1 % of the logits is still refused, and nothing is written.
    wrong = _FrozenMeanScale(resnet20)
    with pytest.raises(ExportVerificationError, match=r"tolerance 0\.0001 × output scale"):
        export_model(wrong, x, tmp_path / "wrong.pt", "torchscript", latency=False)
    assert not (tmp_path / "wrong.pt").exists()


def test_bad_arguments_are_one_line_config_errors(tmp_path: Path) -> None:
    model, x = nn.Linear(4, 2), torch.randn(2, 4)
    for kwargs, match in [
        ({"format": "onnnx"}, "did you mean 'onnx'"),
        ({"format": "torchscript", "batch": 0}, "batch: must be a positive integer"),
        ({"format": "torchscript", "tolerance": -1.0}, "tolerance: must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            export_model(model, x, tmp_path / "f", **kwargs)
    with pytest.raises(ConfigError, match="example_inputs: got list"):
        export_model(model, [1, 2], tmp_path / "f", "torchscript")
    with pytest.raises(ConfigError, match="is a directory"):
        export_model(model, x, tmp_path, "torchscript")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# checkpoints, run directories and the command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory: small_cnn trained briefly on digits, channels removed by L1-filter surgery."""
    from prunelab.experiments.runner import run_recipe
    from prunelab.experiments.schema import recipe_from_dict

    fast = {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 128}
    recipe = recipe_from_dict(
        {
            "name": "export",
            "seed": 0,
            "model": {"name": "small_cnn"},
            "data": {"name": "digits"},
            "train": fast,
            "finetune": fast,
            # No dense-vs-compact speed comparison: it is not what these tests are about.
            "prune": {"method": "l1_filter", "sparsity": 0.5, "options": {"speed_batch_sizes": []}},
            "eval": {"latency": False},
        }
    )
    out = tmp_path_factory.mktemp("run")
    run_recipe(recipe, out, echo=None, progress=False)
    return out


@needs_onnx
def test_cli_exports_a_run_directory(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(run_dir.iterdir())
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"onnx: {run_dir / 'model.onnx'}")
    assert "BN folded, verified max |diff|" in out[0] and "latency" in out[0]
    assert set(run_dir.iterdir()) - before == {run_dir / "model.onnx", run_dir / "export_onnx.json"}
    report = json.loads((run_dir / "export_onnx.json").read_text())
    assert report["verified"] and report["max_abs_diff"] <= 1e-4 and report["folded_bn"] == 3
    assert report["input_shapes"] == [[1, 1, 8, 8]] and report["latency"]["threads"] == 1
    # The compacted widths of the run are what was exported.
    import onnx

    widths = [
        int(t.dims[0]) for t in onnx.load(str(run_dir / "model.onnx")).graph.initializer if len(t.dims) == 4
    ]
    assert widths and sum(widths) < 16 + 32 + 64


def test_export_checkpoint_beside_a_checkpoint_file(run_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes((run_dir / "checkpoint.pt").read_bytes())
    report = export_checkpoint(checkpoint, format="torch-export", batch=2, latency=False)
    assert Path(report.path) == default_export_path(checkpoint, "torch-export") == tmp_path / "best.pt2"
    assert report_path_for(report.path, "torch-export") == tmp_path / "best.pt2.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "best.pt2", "best.pt2.json"]
    assert report.batch_sizes_verified == [2, 3] and report.folded_bn == 3


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prunelab: error: ") and "Traceback" not in err
    return err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupted = tmp_path / "checkpoint.pt"
    corrupted.write_bytes(b"not a checkpoint at all")
    assert main(["export", str(corrupted), "--format", "torchscript"]) == 1
    assert "cannot be loaded safely" in _one_line_error(capsys)
    assert main(["export", str(tmp_path / "missing"), "--format", "torchscript"]) == 1
    assert "does not exist" in _one_line_error(capsys)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert main(["export", str(foreign), "--format", "torchscript"]) == 1
    assert "not a prunelab checkpoint" in _one_line_error(capsys)
    assert main(["export", str(foreign), "--format", "tflite"]) == 2
    assert "unknown export format 'tflite'" in _one_line_error(capsys)
    assert main(["export", str(foreign), "--format", "onnx,torchscript", "--out", "x"]) == 2
    assert "give one --format with --out" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "foreign.pt"]


def test_missing_onnxruntime_names_the_extra(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes `import onnxruntime` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    before = set(run_dir.iterdir())
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(run_dir / "x.onnx")]) == 2
    assert "pip install 'prunelab[onnx]'" in _one_line_error(capsys)
    assert set(run_dir.iterdir()) == before


def test_export_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["export", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: prunelab export") and "--no-fold-bn" in text and "--batch" in text


def test_report_survives_json(resnet20: nn.Module, tmp_path: Path) -> None:
    report = export_model(resnet20, torch.randn(1, 3, 32, 32), tmp_path / "r.pt", "torchscript", fold_bn=False,
                          latency=False)  # fmt: skip
    assert report.folded_bn == 0 and report.max_abs_diff <= 1e-4
    buffer = io.StringIO()
    json.dump(report.to_dict(), buffer)
    assert json.loads(buffer.getvalue())["folded"] == []
