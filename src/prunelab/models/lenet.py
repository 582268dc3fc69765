"""LeNet-300-100 and LeNet-5 (Caffe variant) for MNIST-sized inputs.

Architectures from Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, *Gradient-based learning applied to
document recognition*, Proc. IEEE 86(11), 1998, in the forms used by the pruning literature (S. Han et
al., *Learning both Weights and Connections for Efficient Neural Networks*, NeurIPS 2015) and by
A. Dekhovich et al., *Neural network relief: a pruning algorithm based on neural activity*
(arXiv:2109.10795): LeNet-300-100 = 784-300-100-10 fully connected with ReLU (266,610 parameters on
MNIST); LeNet-5 (Caffe) = conv(1→20, 5×5)-ReLU-maxpool2 → conv(20→50, 5×5)-ReLU-maxpool2 →
FC 800→500-ReLU → FC 500→10 (431,080 parameters on MNIST).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from prunelab.models.base import MODELS, check_input_shape, check_min_size, check_num_classes, init_weights

__all__ = ["LeNet5", "LeNet300100", "lenet5", "lenet300_100"]


class LeNet300100(nn.Module):
    """Fully connected ``in-300-100-classes`` network with ReLU, fed the flattened image.

    Args:
        in_features: ``C·H·W`` of the input image (784 for MNIST).
        num_classes: size of the output.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch ``x`` of shape ``(N, C, H, W)``."""
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5: two 5×5 valid convolutions with 2×2 max-pooling, then FC-500 and the classifier.

    Args:
        in_channels: image channels (1 for MNIST).
        flat_features: ``50·h·w`` after the second pooling (800 for a 28×28 input).
        num_classes: size of the output.
    """

    def __init__(self, in_channels: int, flat_features: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(flat_features, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch ``x`` of shape ``(N, C, H, W)``."""
        return self.classifier(self.flatten(self.features(x)))


@MODELS.register("lenet300_100")
def lenet300_100(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """LeNet-300-100: a 784-300-100-10 ReLU MLP (266,610 parameters on MNIST).

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``; the first layer takes ``C·H·W`` inputs (pass ``(1, 28, 28)`` for
            MNIST; the default is the zoo-wide CIFAR shape).
    """
    c, h, w = check_input_shape(input_shape)
    return init_weights(LeNet300100(c * h * w, check_num_classes(num_classes)))


@MODELS.register("lenet5")
def lenet5(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """LeNet-5 (Caffe): conv20-pool-conv50-pool-FC500-FC (431,080 parameters on MNIST).

    Args:
        num_classes: size of the output.
        input_shape: ``(C, H, W)``, at least 16×16; the flatten width is computed from it (pass
            ``(1, 28, 28)`` for MNIST; the default is the zoo-wide CIFAR shape).
    """
    shape = check_input_shape(input_shape)
    # Two (valid 5×5 conv, 2×2 pool) stages: 16 is the smallest side that leaves a 1×1 map.
    check_min_size("lenet5", shape, 16)
    c, h, w = shape
    h2, w2 = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return init_weights(LeNet5(c, 50 * h2 * w2, check_num_classes(num_classes)))
