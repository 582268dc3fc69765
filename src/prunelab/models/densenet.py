"""DenseNet-40 (growth rate 12) for CIFAR, as used by network slimming.

Architecture from G. Huang, Z. Liu, L. van der Maaten and K. Q. Weinberger, *Densely Connected
Convolutional Networks*, CVPR 2017 (the basic DenseNet without bottlenecks or compression), in the form of
Z. Liu et al., *Learning Efficient Convolutional Networks through Network Slimming*, ICCV 2017: a 3×3 conv
to 2k = 24 channels, three dense blocks of 12 BN-ReLU-conv3x3 layers that each add k = 12 channels by
concatenation, transitions BN-ReLU-conv1x1-avgpool2 that keep the channel count, a final BN-ReLU, global
average pooling and a linear classifier (1.06M parameters for CIFAR-10).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prunelab.models.base import MODELS, check_input_shape, check_min_size, check_num_classes, init_weights

__all__ = ["DenseLayer", "DenseNet", "Transition", "densenet40"]


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth`` new channels, concatenated after the input.

    Args:
        in_channels: channels of the running concatenation.
        growth: channels this layer adds (k).
    """

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``cat([x, conv(relu(bn(x)))])`` along the channels."""
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2 between dense blocks.

    Args:
        in_channels: input channels.
        out_channels: output channels (equal to ``in_channels`` without compression).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the transition to ``x``."""
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """Basic DenseNet with three dense blocks for CIFAR.

    Args:
        depth: network depth; each block has ``(depth - 4) // 3`` layers.
        growth: growth rate k.
        num_classes: size of the output.
        in_channels: image channels.
    """

    def __init__(self, depth: int, growth: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers_per_block = (depth - 4) // 3
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False)
        blocks: list[nn.Sequential] = []
        transitions: list[Transition] = []
        for b in range(3):
            layers = []
            for _ in range(layers_per_block):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            blocks.append(nn.Sequential(*layers))
            if b < 2:
                transitions.append(Transition(channels, channels))
        self.block1, self.trans1, self.block2, self.trans2, self.block3 = (
            blocks[0], transitions[0], blocks[1], transitions[1], blocks[2],
        )  # fmt: skip
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch ``x`` of shape ``(N, C, H, W)``."""
        x = self.conv1(x)
        x = self.trans1(self.block1(x))
        x = self.trans2(self.block2(x))
        x = self.relu(self.bn(self.block3(x)))
        return self.fc(self.flatten(self.pool(x)))


@MODELS.register("densenet40")
def densenet40(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """DenseNet-40 (k = 12, no bottleneck/compression) for CIFAR, as in network slimming (~1.06M params).

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``, at least 4×4 (two 2×2 average pools).
    """
    shape = check_input_shape(input_shape)
    check_min_size("densenet40", shape, 4)
    return init_weights(DenseNet(40, 12, check_num_classes(num_classes), shape[0]))
