"""Tests for the model zoo: every architecture builds, runs, back-propagates, and has the published size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.core.targets import find_head
from prunelab.errors import ConfigError
from prunelab.models import MODELS, build_model, model_options
from prunelab.models.mobilenet_v1 import TFSamePad2d
from prunelab.models.resnet import PadShortcut

# Narrow versions keep the parametrised forward/backward test fast on 2 CPU cores; the architecture
# (layer count, strides, shortcuts) is the same as at full width.
FAST_KWARGS: dict[str, dict[str, object]] = {
    "vgg11": {"width": 0.125},
    "vgg13": {"width": 0.125},
    "vgg16": {"width": 0.125},
    "vgg19": {"width": 0.125},
    "vgg_like": {"width": 0.125},
    "mobilenet_v1": {"width": 0.25},
    "mobilenet_v2": {"width": 0.25},
    "resnet110": {"width": 0.5},
}

EXPECTED_MODELS = {
    "lenet300_100",
    "lenet5",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg_like",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "mobilenet_v1",
    "mobilenet_v2",
    "densenet40",
    "small_cnn",
}


def _input_shape(name: str) -> tuple[int, int, int]:
    if name == "small_cnn":
        return (1, 8, 8)
    return (1, 28, 28) if name.startswith("lenet") else (3, 32, 32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_whole_zoo() -> None:
    assert set(MODELS.names()) == EXPECTED_MODELS
    for name, help_line in MODELS.describe():
        assert help_line, f"{name} has no docstring"


@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name: str) -> None:
    shape = _input_shape(name)
    model = build_model(name, num_classes=7, input_shape=shape, **FAST_KWARGS.get(name, {}))
    x = torch.randn(2, *shape)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 6])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    # The loss depends on the first layer: a graph that silently skipped it would leave zeros there.
    first = next(p for p in model.parameters() if p.dim() > 1)
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MODELS.names())
def test_classifier_name_is_the_layer_producing_the_logits(name: str) -> None:
    shape = _input_shape(name)
    model = build_model(name, num_classes=5, input_shape=shape, **FAST_KWARGS.get(name, {})).eval()
    head = dict(model.named_modules())[find_head(model, shape)]
    seen: list[torch.Tensor] = []
    head.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        logits = model(torch.randn(1, *shape))
    assert isinstance(head, nn.Linear) and head.out_features == 5
    assert torch.equal(seen[0], logits)


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "expected"),
    [
        ("lenet300_100", {}, (1, 28, 28), 266_610),  # NN-relief / Han et al.
        ("lenet5", {}, (1, 28, 28), 431_080),  # Caffe LeNet-5
        ("resnet20", {}, (3, 32, 32), 269_722),  # akamaster: "0.27M", incl. BN
        ("resnet56", {}, (3, 32, 32), 853_018),  # akamaster: "0.85M"
        ("vgg19", {}, (3, 32, 32), 20_035_018),  # network slimming: "20.04M"
        # network slimming reports 1.07M: its channel_selection layers add 9,360 all-ones parameters.
        ("densenet40", {}, (3, 32, 32), 1_068_658 - 9_360),
        # the converted Keras MobileNet-0.75 has 2,585,560 trainable parameters
        ("mobilenet_v1", {"width": 0.75, "stem": "imagenet"}, (3, 224, 224), 2_585_560),
    ],
)
def test_parameter_counts(
    name: str, kwargs: dict[str, object], shape: tuple[int, int, int], expected: int
) -> None:
    num_classes = 1000 if kwargs.get("stem") == "imagenet" else 10
    # Meta tensors: the count needs shapes only, so even VGG-19 builds instantly.
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, input_shape=shape, **kwargs)
    assert n_params(model) == expected


def test_lenets_size_their_classifier_from_the_input_shape() -> None:
    assert build_model("lenet300_100", input_shape=(3, 32, 32)).fc1.in_features == 3 * 32 * 32
    model = build_model("lenet5", input_shape=(3, 32, 32))
    assert model.classifier[0].in_features == 50 * 5 * 5
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_width_multiplier_scales_every_conv() -> None:
    full = [m.out_channels for m in build_model("vgg11").modules() if isinstance(m, nn.Conv2d)]
    half = [m.out_channels for m in build_model("vgg11", width=0.5).modules() if isinstance(m, nn.Conv2d)]
    assert half == [c // 2 for c in full]
    tiny = [m.out_channels for m in build_model("vgg11", width=0.001).modules() if isinstance(m, nn.Conv2d)]
    assert min(tiny) == 1  # never rounds to zero channels
    assert build_model("resnet20", width=0.5).linear.in_features == 32


def test_resnet_state_dict_layout_matches_akamaster() -> None:
    keys = [k for k in build_model("resnet20").state_dict() if not k.endswith("num_batches_tracked")]
    assert len(keys) == 97  # the number of tensors in resnet20-12fca82f.th
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert keys[-2:] == ["linear.weight", "linear.bias"]
    assert "layer3.2.conv2.weight" in keys and "layer2.0.bn1.running_var" in keys
    assert (
        len([k for k in build_model("resnet56").state_dict() if not k.endswith("num_batches_tracked")]) == 277
    )


def test_option_a_shortcut_matches_reference_formula() -> None:
    x = torch.randn(2, 16, 8, 8)
    for planes in (32, 64):
        xin = x if planes == 32 else torch.randn(2, 32, 8, 8)
        expected = F.pad(xin[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
        assert torch.equal(PadShortcut(xin.shape[1], planes, 2)(xin), expected)
    assert not list(PadShortcut(16, 32, 2).parameters())
    block = build_model("resnet20").layer2[0]
    assert isinstance(block.shortcut, PadShortcut)


def test_option_a_shortcut_channel_surgery() -> None:
    # Removing channels must give exactly what the unpruned shortcut gives when those channels are zero
    # (inputs) or dropped (outputs): that is what residual-stream surgery relies on.
    shortcut = PadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    zeroed = x.clone()
    zeroed[:, [0, 5]] = 0
    reference = shortcut(zeroed)
    kept_inputs = [c for c in range(16) if c not in (0, 5)]
    shortcut.prune_inputs([0, 5])
    assert shortcut.in_planes == 14
    assert torch.equal(shortcut(x[:, kept_inputs]), reference)
    shortcut.prune_outputs([3, 8, 20])
    kept_outputs = [c for c in range(32) if c not in (3, 8, 20)]
    assert shortcut.planes == 29
    assert torch.equal(shortcut(x[:, kept_inputs]), reference[:, kept_outputs])
    # The index map is not part of the state_dict (the akamaster layout has no shortcut tensors).
    assert "layer2.0.shortcut.source" not in build_model("resnet20").state_dict()


def test_option_a_shortcut_export_form_is_the_same_map_as_a_1x1_convolution() -> None:
    # The export form must compute exactly what the selection does, also after surgery made the map irregular.
    x = torch.randn(2, 16, 8, 8)
    for stride in (1, 2):
        shortcut = PadShortcut(16, 32, stride)
        conv = shortcut.export_form()
        assert isinstance(conv, nn.Conv2d) and conv.stride == (stride, stride) and conv.bias is None
        assert not conv.weight.requires_grad and conv.weight.shape == (32, 16, 1, 1)
        assert torch.equal(conv(x), shortcut(x))
    shortcut = PadShortcut(16, 32, 2)
    shortcut.prune_inputs([0, 5, 9])
    shortcut.prune_outputs([3, 8, 20])
    shortcut.zero_inputs([2])
    shortcut.zero_outputs([11])
    xs = torch.randn(2, 13, 8, 8)
    conv = shortcut.export_form()
    assert conv.weight.shape == (29, 13, 1, 1) and int(conv.weight.sum()) == int((shortcut.source >= 0).sum())
    assert torch.equal(conv(xs), shortcut(xs))


def test_mobilenet_v1_state_dict_layout() -> None:
    model = build_model("mobilenet_v1", num_classes=1000, width=0.75, stem="imagenet")
    state = model.state_dict()
    assert len(state) == 164  # the converted ImageNet file has 164 keys
    widths = [state[f"blocks.{i}.pw.weight"].shape[0] for i in range(13)]
    assert widths == [48, 96, 96, 192, 192, 384, 384, 384, 384, 384, 384, 768, 768]
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    strides = [model.blocks[i].dw.stride[0] for i in range(13)]
    assert [i for i, s in enumerate(strides) if s == 2] == [1, 3, 5, 11]


@pytest.mark.parametrize(
    ("size", "stride", "expected"), [(224, 2, (0, 1)), (225, 2, (1, 1)), (7, 1, (1, 1)), (2, 2, (0, 1))]
)
def test_tf_same_padding_amounts(size: int, stride: int, expected: tuple[int, int]) -> None:
    pad = TFSamePad2d(3, stride)
    out = pad(torch.zeros(1, 1, size, size))
    assert out.shape[-1] == size + sum(expected)
    # TF 'SAME' output size is ceil(size / stride).
    conv_out = F.conv2d(out, torch.ones(1, 1, 3, 3), stride=stride)
    assert conv_out.shape[-1] == math.ceil(size / stride)
    # The extra pixel goes to the bottom/right, as in TensorFlow.
    marked = pad(torch.ones(1, 1, size, size))
    assert marked[0, 0, :, 0].sum() == (0 if expected[0] else size)
    assert marked[0, 0, :, -1].sum() == (0 if expected[1] else size)
    assert marked[0, 0, 0, :].sum() == (0 if expected[0] else size)


@pytest.mark.parametrize(
    ("stem", "size", "final"), [("imagenet", 224, 7), ("imagenet", 67, 3), ("cifar", 32, 4)]
)
def test_mobilenet_v1_downsampling(stem: str, size: int, final: int) -> None:
    model = build_model("mobilenet_v1", width=0.25, stem=stem, input_shape=(3, size, size)).eval()
    maps: list[torch.Tensor] = []
    model.blocks.register_forward_hook(lambda _m, _i, out: maps.append(out))
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
    assert maps[0].shape[-2:] == (final, final)


def test_activations_are_not_inplace() -> None:
    # Forward hooks that record a layer's output (activation statistics, NN-relief) would see it
    # overwritten by an in-place ReLU.
    for name in MODELS.names():
        model = build_model(name, input_shape=_input_shape(name), **FAST_KWARGS.get(name, {}))
        assert not any(getattr(m, "inplace", False) for m in model.modules()), name


def test_kaiming_normal_init() -> None:
    model = build_model("resnet56")
    w = model.layer3[1].conv1.weight  # 64×64×3×3: fan_in 576
    assert w.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    assert abs(w.mean().item()) < 0.01
    lenet = build_model("lenet300_100", input_shape=(1, 28, 28))
    assert lenet.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.05)
    assert torch.count_nonzero(lenet.fc1.bias) == 0


def test_model_options() -> None:
    assert model_options("mobilenet_v1") == ["width", "stem"]
    assert model_options("lenet5") == []


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet21'.*resnet20"):
        build_model("resnet21")


def test_unknown_option_names_the_option_and_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"no option 'widht'; valid options: width, stem"):
        build_model("mobilenet_v1", widht=0.5)
    with pytest.raises(ConfigError, match=r"lenet5.*no option 'width'; valid options: none"):
        build_model("lenet5", width=0.5)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet20", {"width": 0}, "width"),
        ("resnet20", {"width": -1.0}, "width"),
        ("vgg11", {"width": "wide"}, "width"),
        ("mobilenet_v1", {"stem": "tiny"}, "stem must be one of"),
        ("resnet20", {"num_classes": 0}, "num_classes"),
        ("resnet20", {"input_shape": (3, 32)}, "input_shape"),
        ("lenet5", {"input_shape": (1, 12, 12)}, "at least 16x16"),
        ("vgg_like", {"input_shape": (3, 16, 16)}, "at least 32x32"),
        ("vgg_like", {"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_values_raise_config_error(name: str, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, **kwargs)
