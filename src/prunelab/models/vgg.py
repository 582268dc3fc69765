"""VGG-11/13/16/19 with BatchNorm for CIFAR-sized inputs, and the NN-relief "vgg-like" network.

Architecture from K. Simonyan and A. Zisserman, *Very Deep Convolutional Networks for Large-Scale Image
Recognition*, ICLR 2015, with BatchNorm (S. Ioffe and C. Szegedy, ICML 2015) after every convolution.

- ``vgg11/13/16/19`` follow the CIFAR form of Z. Liu et al., *Learning Efficient Convolutional Networks
  through Network Slimming*, ICCV 2017: bias-free 3×3 conv-BN-ReLU stacks with four 2×2 max-pools (the
  fifth is dropped), global average pooling and one linear classifier (VGG-19: 20.04M parameters).
- ``vgg_like`` follows A. Dekhovich et al., *Neural network relief: a pruning algorithm based on neural
  activity* (arXiv:2109.10795): the VGG-16 configuration with all five max-pools, convolutions with bias,
  BN and ReLU, then Dropout-FC512-ReLU-FC(classes).

A ``width`` multiplier scales every convolution (and the vgg-like hidden FC) for fast small-scale runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from prunelab.errors import ConfigError
from prunelab.models.base import (
    MODELS,
    check_input_shape,
    check_min_size,
    check_num_classes,
    check_width,
    init_weights,
    scale_channels,
)

__all__ = ["VGG", "VGG_CONFIGS", "vgg_like"]

# "M" = 2×2 max-pool. Network-slimming configurations: no fifth pool, global pooling follows.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4],
    # NN-relief's vgg-like keeps the fifth pool of the original VGG-16.
    "vgg_like": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def make_features(
    config: Sequence[int | str], in_channels: int, width: float, conv_bias: bool
) -> nn.Sequential:
    """The conv-BN-ReLU / max-pool stack described by ``config`` (channel counts scaled by ``width``)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = scale_channels(int(item), width)
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(out),
            nn.ReLU(),
        ]
        channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A VGG feature stack, global average pooling and a classifier.

    Args:
        features: the convolutional stack (see :func:`make_features`).
        classifier: the head applied to the pooled, flattened features.
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        # Global pooling makes the head independent of the input size (identity on a 1×1 map).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch ``x`` of shape ``(N, C, H, W)``."""
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _last_width(features: nn.Sequential) -> int:
    return [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels


def _vgg(name: str, num_classes: int, input_shape: Sequence[int], width: float) -> nn.Module:
    shape = check_input_shape(input_shape)
    check_min_size(name, shape, 16)  # four 2×2 max-pools
    features = make_features(VGG_CONFIGS[name], shape[0], check_width(width), conv_bias=False)
    return init_weights(VGG(features, nn.Linear(_last_width(features), check_num_classes(num_classes))))


def _register_vgg(name: str, summary: str) -> None:
    def builder(
        num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), width: float = 1.0
    ) -> nn.Module:
        return _vgg(name, num_classes, input_shape, width)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""{summary}

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``, at least 16×16.
        width: multiplier on every convolution's channel count.
    """
    MODELS.register(name)(builder)


for _name, _summary in (
    ("vgg11", "VGG-11 with BatchNorm for CIFAR (8 conv layers, global pooling, linear head)."),
    ("vgg13", "VGG-13 with BatchNorm for CIFAR (10 conv layers, global pooling, linear head)."),
    ("vgg16", "VGG-16 with BatchNorm for CIFAR (13 conv layers, global pooling, linear head)."),
    ("vgg19", "VGG-19 with BatchNorm for CIFAR, as in network slimming (16 conv layers, 20.04M parameters)."),
):
    _register_vgg(_name, _summary)


@MODELS.register("vgg_like")
def vgg_like(
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    width: float = 1.0,
    dropout: float = 0.5,
) -> nn.Module:
    """NN-relief's vgg-like: VGG-16 convs with bias and BN, then Dropout-FC512-ReLU-FC.

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``, at least 32×32 (five 2×2 max-pools).
        width: multiplier on every convolution's channel count and on the hidden FC width (512).
        dropout: drop probability before the hidden FC (``nn.Dropout()``'s 0.5 in NN-relief).
    """
    shape = check_input_shape(input_shape)
    check_min_size("vgg_like", shape, 32)
    width = check_width(width)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    features = make_features(VGG_CONFIGS["vgg_like"], shape[0], width, conv_bias=True)
    hidden = scale_channels(512, width)
    classifier = nn.Sequential(
        nn.Dropout(float(dropout)),
        nn.Linear(_last_width(features), hidden),
        nn.ReLU(),
        nn.Linear(hidden, check_num_classes(num_classes)),
    )
    return init_weights(VGG(features, classifier))
