"""A small CNN for tiny inputs (the offline demo on 8×8 digits, fast tests).

Three 3×3 conv–BN–ReLU stages (16, 32, 64 channels × ``width``) with one 2×2 max-pool, global average
pooling and a linear head: about 25 k parameters at width 1, a second per epoch on digits on 2 cores.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from prunelab.models.base import (
    MODELS,
    check_input_shape,
    check_min_size,
    check_num_classes,
    check_width,
    init_weights,
    scale_channels,
)

__all__ = ["SmallCNN", "small_cnn"]


class SmallCNN(nn.Module):
    """conv(16)-conv(32)-pool-conv(64)-GAP-linear, each conv followed by BatchNorm and ReLU.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        width: multiplier on every conv width.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (scale_channels(c, width) for c in (16, 32, 64))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False),
            nn.BatchNorm2d(c3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))


@MODELS.register("small_cnn")
def small_cnn(num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), width: float = 1.0) -> SmallCNN:
    """Small 3-conv CNN for tiny inputs such as 8×8 digits (the offline demo).

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``, at least 2×2 (one 2×2 max-pool).
        width: multiplier on every conv width.
    """
    shape = check_input_shape(input_shape)
    check_min_size("small_cnn", shape, min_hw=2)
    return init_weights(
        SmallCNN(num_classes=check_num_classes(num_classes), in_channels=shape[0], width=check_width(width))
    )
