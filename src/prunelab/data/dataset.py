"""In-memory image datasets: uint8 storage, float conversion and normalisation per batch.

Keeping the pixels as uint8 NCHW costs a quarter of the memory of float32 and lets augmentation (crops,
flips) run on the small integer tensor; conversion to float and normalisation is one fused
multiply-add per batch. The whole batch is fetched with one ``index_select`` instead of a Python loop
over samples, which matters on a 2-core machine.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from prunelab.data.base import AUGMENTATIONS, as_labels
from prunelab.errors import ConfigError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Augment", "TensorImageDataset"]

#: Channel statistics of ImageNet, which torchvision-style pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """A training augmentation policy, applied to whole uint8 batches by the loader.

    Attributes:
        crop_padding: pixels of zero padding for a random crop back to the original size; 0 = no crop.
        flip: random horizontal flips with probability 1/2.
    """

    crop_padding: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        """Whether the policy changes anything."""
        return self.crop_padding > 0 or self.flip

    @classmethod
    def from_name(cls, name: str, height: int) -> Augment:
        """Build the policy named ``name`` (one of ``none``, ``flip``, ``crop``, ``crop_flip``).

        The crop padding is 4 pixels for 32×32 images (the CIFAR convention of He et al. 2016) and scales
        with the image height (``height // 8``) so larger images get the same relative jitter.

        Raises:
            ConfigError: for an unknown name.
        """
        if name not in AUGMENTATIONS:
            raise ConfigError(f"augment: unknown policy {name!r}; use one of {', '.join(AUGMENTATIONS)}")
        padding = max(1, height // 8) if "crop" in name else 0
        return cls(crop_padding=padding, flip="flip" in name)


class TensorImageDataset(Dataset):
    """Images and labels held in memory, yielding normalised float tensors.

    Items are ``(x, y)`` with ``x`` a float32 ``(C, H, W)`` tensor and ``y`` a Python ``int``, so the class
    works with any PyTorch code; :meth:`get_batch` is the fast path the prunelab loader uses.

    Args:
        images: uint8 tensor ``(N, C, H, W)``.
        labels: integer tensor ``(N,)`` of class indices in ``[0, len(classes))`` (floats only when whole
            numbers; anything else raises :class:`~prunelab.errors.ConfigError`).
        mean: per-channel mean on the [0, 1] scale, subtracted after scaling by 1/255.
        std: per-channel standard deviation on the [0, 1] scale.
        classes: class names, index = label.
        augment: the policy the loader applies when ``train=True``; never applied by this class itself.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str],
        augment: Augment | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)} and {len(std)}")
        self.images = images.contiguous()
        # Whole-number labels in [0, len(classes)) only: a cast would truncate 1.7 to 1 without a word.
        checked = as_labels(
            labels.detach().cpu().numpy(), "TensorImageDataset labels", len(classes), ConfigError
        )
        self.labels = torch.from_numpy(checked).to(labels.device)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.classes = list(classes)
        self.augment = augment if augment is not None else Augment()
        # x_norm = (x / 255 - mean) / std = x * scale + shift, precomputed for one fused addcmul per batch.
        std_t = torch.tensor(self.std, dtype=torch.float32).view(1, channels, 1, 1)
        mean_t = torch.tensor(self.mean, dtype=torch.float32).view(1, channels, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.normalize(self.images[index].unsqueeze(0))[0], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes (length of :attr:`classes`)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def to(self, device: str | torch.device) -> TensorImageDataset:
        """This dataset with its images, labels and normalisation constants on ``device`` (``self`` if
        they already are), so the loader assembles, augments and normalises batches there."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        moved = copy.copy(self)
        moved.images, moved.labels = self.images.to(device), self.labels.to(device)
        moved._scale, moved._shift = self._scale.to(device), self._shift.to(device)
        return moved

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Convert a uint8 batch ``(B, C, H, W)`` to normalised float32."""
        return torch.addcmul(self._shift, images.to(torch.float32), self._scale)

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fetch ``indices`` as a normalised float batch and int64 labels, without augmentation."""
        return self.normalize(self.images.index_select(0, indices)), self.labels.index_select(0, indices)

    def __repr__(self) -> str:
        c, h, w = self.input_shape
        return (
            f"TensorImageDataset(n={len(self)}, shape=({c}, {h}, {w}), classes={self.num_classes}, "
            f"augment={self.augment})"
        )
