"""CIFAR ResNet-20/32/44/56/110 with the parameter-free "option A" shortcut.

Architecture from K. He, X. Zhang, S. Ren and J. Sun, *Deep Residual Learning for Image Recognition*,
CVPR 2016, §4.2: a 3×3 conv with 16 filters, then three stages of ``n`` BasicBlocks with 16, 32 and 64
filters (the first block of stages 2 and 3 has stride 2), global average pooling and a linear classifier;
depth = 6n + 2. When a block changes the width, the shortcut subsamples spatially and zero-pads the new
channels ("option A"), so it has no parameters.

Module names are those of Y. Idelbayev's reference implementation (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.conv1/bn1/conv2/bn2``, ``linear``), so its pretrained CIFAR-10 checkpoints load
strictly once the ``module.`` prefix of DataParallel is stripped (see :mod:`prunelab.models.pretrained`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.models.base import (
    MODELS,
    check_input_shape,
    check_num_classes,
    check_width,
    init_weights,
    scale_channels,
)

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
]


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the channels from ``in_planes`` to ``planes``.

    The new channels are split evenly before and after the existing ones; for the standard widths
    (16→32, 32→64) the result equals ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``
    of the reference code.

    The padding is stored as an index map, ``source[j]`` = the input channel that output channel ``j``
    copies, or -1 for an all-zero channel, so the shortcut behaves like a fixed, parameter-free 1×1
    selection conv whose input and output channels can be removed independently (:meth:`prune_inputs`,
    :meth:`prune_outputs`). That is what channel surgery across the residual stream needs; a contiguous
    ``F.pad`` cannot express "input channel 5 was removed". The map is a non-persistent buffer, so the
    state_dict stays that of the reference implementation.

    Its methods are the channel-mapping protocol of the surgery
    (:class:`prunelab.surgery.layers.ChannelMappingLayer`), implemented by duck typing: the models do
    not depend on the surgery.

    Args:
        in_planes: channels of the block input.
        planes: channels of the block output (``>= in_planes``).
        stride: spatial subsampling factor.
    """

    source: Tensor

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        if planes < in_planes:
            raise ValueError(f"option-A shortcut cannot shrink {in_planes} channels to {planes}")
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        before = (planes - in_planes) // 2
        source = torch.full((planes,), -1, dtype=torch.long)
        source[before : before + in_planes] = torch.arange(in_planes)
        self.register_buffer("source", source, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Subsample ``x`` and place its channels as ``source`` says (zeros elsewhere)."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        present = (self.source >= 0).to(x.dtype).view(1, -1, 1, 1)
        return x.index_select(1, self.source.clamp(min=0)) * present

    @torch.no_grad()
    def prune_outputs(self, idxs: Sequence[int]) -> None:
        """Remove output channels ``idxs`` (the next stage's residual channels were pruned)."""
        keep = torch.ones(self.planes, dtype=torch.bool, device=self.source.device)
        keep[list(idxs)] = False
        self.source = self.source[keep]
        self.planes = int(keep.sum())

    @torch.no_grad()
    def prune_inputs(self, idxs: Sequence[int]) -> None:
        """Remove input channels ``idxs``; the output channels that copied them become all-zero."""
        removed = torch.zeros(self.in_planes, dtype=torch.bool, device=self.source.device)
        removed[list(idxs)] = True
        present = self.source >= 0
        src = self.source.clamp(min=0)
        # Surviving inputs move down by the number of removed inputs before them.
        shifted = src - torch.cumsum(removed.long(), 0)[src]
        self.source = torch.where(present & ~removed[src], shifted, torch.full_like(src, -1))
        self.in_planes -= int(removed.sum())

    @torch.no_grad()
    def zero_outputs(self, idxs: Sequence[int]) -> None:
        """Make output channels ``idxs`` all-zero (shapes unchanged)."""
        self.source[self._index(idxs)] = -1

    @torch.no_grad()
    def zero_inputs(self, idxs: Sequence[int]) -> None:
        """Make the output channels that copy input channels ``idxs`` all-zero (shapes unchanged)."""
        self.source[torch.isin(self.source, self._index(idxs))] = -1

    def _index(self, idxs: Sequence[int]) -> Tensor:
        return torch.tensor(list(idxs), dtype=torch.long, device=self.source.device)

    def channel_counts(self) -> tuple[int, int]:
        """``(in_planes, planes)``: the input and output channels now."""
        return self.in_planes, self.planes

    def arch_entry(self) -> dict[str, Any]:
        """The widths and the index map as plain JSON values (for a compacted model's architecture spec)."""
        return {
            "in_planes": self.in_planes,
            "planes": self.planes,
            "source": [int(s) for s in self.source.tolist()],
        }

    def load_arch_entry(self, entry: Mapping[str, Any]) -> None:
        """Take the widths and index map of ``entry`` (written by :meth:`arch_entry`), in place."""
        self.in_planes, self.planes = int(entry["in_planes"]), int(entry["planes"])
        self.source = torch.tensor(entry["source"], dtype=torch.long, device=self.source.device)

    def extra_repr(self) -> str:
        """Show the widths and stride in ``print(model)``."""
        return f"{self.in_planes}->{self.planes}, stride={self.stride}"

    def export_form(self) -> nn.Conv2d:
        """The same map as a fixed 1×1 convolution of stride ``stride`` (0/1 weights, no bias), for export.

        ONNX Runtime runs convolutions in its blocked (NCHWc) layout, with the residual Add and the ReLU
        fused into the block's last convolution; this layer's index selection exports as Slice, Gather and
        Mul, which that layout does not cover, so from the first downsampling block on the runtime reorders
        the tensors out of the layout and back around every residual add (``benchmarks/speedup.md``). As a
        convolution the shortcut stays in the layout. The outputs are the same for finite inputs (each is
        ``1 · x`` plus zeros); the convolution's few weights (``planes × in_planes``) are constants of
        the map, not trainable parameters. :func:`prunelab.metrics.speed.onnx_bytes` uses this.
        """
        conv = nn.Conv2d(
            self.in_planes, self.planes, 1, stride=self.stride, bias=False, device=self.source.device
        )
        conv.weight.requires_grad_(False)
        with torch.no_grad():
            conv.weight.zero_()
            rows = (self.source >= 0).nonzero().flatten()
            conv.weight[rows, self.source[rows], 0, 0] = 1.0
        return conv.train(self.training)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and subsampling of the shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR with ``blocks_per_stage`` BasicBlocks per stage.

    Args:
        blocks_per_stage: ``n``.
        num_classes: size of the output.
        in_channels: image channels.
        width: multiplier on the stage widths 16/32/64.
    """

    def __init__(
        self, blocks_per_stage: int, num_classes: int, in_channels: int = 3, width: float = 1.0
    ) -> None:
        super().__init__()
        widths = [scale_channels(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        planes_in = widths[0]
        stages = []
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(planes_in, planes, stride))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch ``x`` of shape ``(N, C, H, W)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.pool(x)))


def _resnet(depth: int, num_classes: int, input_shape: Sequence[int], width: float) -> nn.Module:
    shape = check_input_shape(input_shape)
    model = CifarResNet((depth - 2) // 6, check_num_classes(num_classes), shape[0], check_width(width))
    return init_weights(model)


def _register_resnet(depth: int, params: str) -> None:
    def builder(
        num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), width: float = 1.0
    ) -> nn.Module:
        return _resnet(depth, num_classes, input_shape, width)

    blocks = (depth - 2) // 6
    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = f"""CIFAR ResNet-{depth} ({blocks} blocks per stage, option-A shortcuts, {params} parameters).

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``.
        width: multiplier on the stage widths 16/32/64.
    """
    MODELS.register(f"resnet{depth}")(builder)


for _depth, _params in ((20, "0.27M"), (32, "0.46M"), (44, "0.66M"), (56, "0.85M"), (110, "1.7M")):
    _register_resnet(_depth, _params)
