"""MobileNetV1 with a width multiplier, in an ImageNet form and a CIFAR form.

Architecture from A. G. Howard et al., *MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications*, arXiv:1704.04861, 2017 (Table 1): a full 3×3 convolution with 32 filters, 13
depthwise-separable blocks (depthwise 3×3 conv-BN-act, pointwise 1×1 conv-BN-act) with widths
64, 128, 128, 256, 256, 512 ×6, 1024, 1024, global average pooling and a linear classifier; the width
multiplier α scales every layer.

``stem="imagenet"`` reproduces the Keras/TensorFlow model exactly, so the converted Keras
``MobileNet(alpha=0.75)`` ImageNet weights load and give the published accuracy: stride-2 first conv and
stride-2 depthwise convs in blocks 1, 3, 5 and 11, BatchNorm ``eps=1e-3``, ReLU6, and TensorFlow
``'SAME'`` padding (asymmetric, computed from the actual input size) on the stride-2 convolutions.
Inputs are expected in [-1, 1] (``x / 127.5 - 1``).

``stem="cifar"`` is the usual PyTorch adaptation to 32×32 images: stride-1 first conv, stride-2 only in
blocks 1, 3 and 5 (32→16→8→4), symmetric padding, BatchNorm ``eps=1e-5`` and ReLU.

Module names: ``conv1``, ``bn1``, ``blocks.{i}.dw``, ``blocks.{i}.dw_bn``, ``blocks.{i}.pw``,
``blocks.{i}.pw_bn``, ``fc``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.models.base import (
    MODELS,
    check_choice,
    check_input_shape,
    check_num_classes,
    check_width,
    init_weights,
    scale_channels,
)

__all__ = ["DepthwiseSeparable", "MobileNetV1", "TFSamePad2d", "mobilenet_v1"]

# (output channels, depthwise stride) of the 13 blocks at width 1 for the ImageNet model.
_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class TFSamePad2d(nn.Module):
    """Zero padding that makes the next convolution behave like TensorFlow's ``padding='SAME'``.

    TensorFlow pads ``max((ceil(n / s) - 1)·s + k - n, 0)`` pixels in total and puts the odd pixel at
    the bottom/right; for a 224 input and a stride-2 3×3 conv that is ``(0, 1)``, not PyTorch's
    symmetric ``(1, 1)``. The amount is computed from the actual input in ``forward`` so every input
    resolution is handled.

    Args:
        kernel_size: kernel size of the following convolution.
        stride: stride of the following convolution.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def _amount(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        """Pad the last two dimensions of ``x``."""
        top, bottom = self._amount(int(x.shape[-2]))
        left, right = self._amount(int(x.shape[-1]))
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        """Show the kernel size and stride in ``print(model)``."""
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _act(imagenet: bool) -> nn.Module:
    return nn.ReLU6() if imagenet else nn.ReLU()


def _conv3x3_pad(stride: int, imagenet: bool) -> tuple[nn.Module, int]:
    """The padding module before a 3×3 conv and the conv's own ``padding``.

    For a stride-1 3×3 conv TF 'SAME' is always symmetric 1, so only stride-2 convs need the module.
    """
    if imagenet and stride > 1:
        return TFSamePad2d(3, stride), 0
    return nn.Identity(), 1


class DepthwiseSeparable(nn.Module):
    """Depthwise 3×3 conv-BN-act, then pointwise 1×1 conv-BN-act.

    Args:
        in_channels: input channels (= depthwise channels).
        out_channels: output channels of the pointwise conv.
        stride: stride of the depthwise conv.
        imagenet: use the TensorFlow conventions (SAME padding, ReLU6, BN ``eps=1e-3``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, imagenet: bool) -> None:
        super().__init__()
        eps = 1e-3 if imagenet else 1e-5
        self.pad, padding = _conv3x3_pad(stride, imagenet)
        self.dw = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size=3,
            stride=stride,
            padding=padding,
            groups=in_channels,
            bias=False,
        )
        self.dw_bn = nn.BatchNorm2d(in_channels, eps=eps)
        self.dw_act = _act(imagenet)
        self.pw = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.pw_act = _act(imagenet)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x``."""
        x = self.dw_act(self.dw_bn(self.dw(self.pad(x))))
        return self.pw_act(self.pw_bn(self.pw(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1 (see the module docstring for the two stems).

    Args:
        num_classes: size of the output.
        in_channels: image channels.
        width: the width multiplier α.
        stem: ``"imagenet"`` or ``"cifar"``.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: float = 1.0, stem: str = "cifar"
    ) -> None:
        super().__init__()
        imagenet = stem == "imagenet"
        stem_stride = 2 if imagenet else 1
        channels = scale_channels(32, width)
        self.pad, padding = _conv3x3_pad(stem_stride, imagenet)
        self.conv1 = nn.Conv2d(
            in_channels, channels, kernel_size=3, stride=stem_stride, padding=padding, bias=False
        )
        self.bn1 = nn.BatchNorm2d(channels, eps=1e-3 if imagenet else 1e-5)
        self.act = _act(imagenet)
        blocks = []
        for i, (out, stride) in enumerate(_BLOCKS):
            # 32×32 inputs cannot take the fifth downsampling: block 11 keeps stride 1 (final map 4×4).
            if not imagenet and i == 11:
                stride = 1
            out = scale_channels(out, width)
            blocks.append(DepthwiseSeparable(channels, out, stride, imagenet))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch ``x`` of shape ``(N, C, H, W)``."""
        x = self.act(self.bn1(self.conv1(self.pad(x))))
        return self.fc(self.flatten(self.pool(self.blocks(x))))


@MODELS.register("mobilenet_v1")
def mobilenet_v1(
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    width: float = 1.0,
    stem: str = "cifar",
) -> nn.Module:
    """MobileNetV1 with width multiplier; ``stem="imagenet"`` matches the Keras/TF ImageNet model.

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``; any size works (global pooling, dynamic SAME padding).
        width: the width multiplier α (0.75 loads the shared ImageNet weights).
        stem: ``"cifar"`` (stride-1 stem, three downsamplings, ReLU) or ``"imagenet"`` (TF conventions,
            five downsamplings, ReLU6, BN eps 1e-3).
    """
    shape = check_input_shape(input_shape)
    stem = check_choice("stem", stem, ("cifar", "imagenet"))
    model = MobileNetV1(check_num_classes(num_classes), shape[0], check_width(width), stem)
    return init_weights(model)
