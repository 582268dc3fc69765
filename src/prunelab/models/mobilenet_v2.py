"""MobileNetV2 for CIFAR-sized inputs, with a width multiplier.

Architecture from M. Sandler, A. Howard, M. Zhu, A. Zhmoginov and L.-C. Chen, *MobileNetV2: Inverted
Residuals and Linear Bottlenecks*, CVPR 2018 (Table 2): a 3×3 conv with 32 filters, 17 inverted-residual
blocks (1×1 expansion by t, depthwise 3×3, linear 1×1 projection; identity shortcut when the stride is 1
and the width is unchanged), a 1×1 conv to 1280 channels, global average pooling and a linear classifier.

CIFAR adaptation (as commonly used for 32×32 images): the first conv and the first stride-2 stage
(24 channels) use stride 1, so the feature map goes 32→16→8→4 instead of 224→7.
The width multiplier scales every layer; the last 1×1 conv keeps 1280 channels for ``width <= 1`` as in
the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from prunelab.models.base import (
    MODELS,
    check_input_shape,
    check_num_classes,
    check_width,
    init_weights,
    scale_channels,
)

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion t, output channels c, repeats n, stride of the first repeat s), CIFAR strides.
_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1×1, ReLU6) → depthwise 3×3 (ReLU6) → project (1×1, linear), plus identity when shapes allow.

    With expansion 1 the expansion conv is left out (the paper's first bottleneck).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depthwise conv.
        expansion: the expansion factor t.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        if expansion != 1:
            self.expand: nn.Module = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
            self.expand_bn: nn.Module = nn.BatchNorm2d(hidden)
            self.expand_act: nn.Module = nn.ReLU6()
        else:
            self.expand, self.expand_bn, self.expand_act = nn.Identity(), nn.Identity(), nn.Identity()
        self.dw = nn.Conv2d(
            hidden, hidden, kernel_size=3, stride=stride, padding=1, groups=hidden, bias=False
        )
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_act = nn.ReLU6()
        self.project = nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x``."""
        out = self.expand_act(self.expand_bn(self.expand(x)))
        out = self.dw_act(self.dw_bn(self.dw(out)))
        out = self.project_bn(self.project(out))
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR (see the module docstring).

    Args:
        num_classes: size of the output.
        in_channels: image channels.
        width: the width multiplier.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        channels = scale_channels(32, width)
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU6()
        blocks = []
        for expansion, out, repeats, first_stride in _STAGES:
            out = scale_channels(out, width)
            for i in range(repeats):
                blocks.append(InvertedResidual(channels, out, first_stride if i == 0 else 1, expansion))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        last = scale_channels(1280, max(1.0, width))
        self.conv2 = nn.Conv2d(channels, last, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.act2 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch ``x`` of shape ``(N, C, H, W)``."""
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(self.blocks(x))))
        return self.fc(self.flatten(self.pool(x)))


@MODELS.register("mobilenet_v2")
def mobilenet_v2(
    num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), width: float = 1.0
) -> nn.Module:
    """MobileNetV2 adapted to 32×32 inputs (stride-1 stem and first stage), with width multiplier.

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``; any size works (global pooling).
        width: multiplier on every layer's width (the last 1×1 conv keeps 1280 for ``width <= 1``).
    """
    shape = check_input_shape(input_shape)
    return init_weights(MobileNetV2(check_num_classes(num_classes), shape[0], check_width(width)))
