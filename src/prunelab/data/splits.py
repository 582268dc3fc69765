"""``load_dataset``: from a registered reader's raw arrays to train/val/test datasets.

The validation split is carved from the training set (stratified, seeded), so model selection never
looks at the test set. Optional subsets shrink train and test to exact, stratified sizes for CPU-sized
runs. Resizing happens once here, in bounded-memory chunks, and normalisation constants are fixed per
dataset so that a model trained on one run's data can be evaluated on another's.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prunelab.data.base import AUGMENTATIONS, DATASETS, RawData, resolve_data_dir
from prunelab.data.checks import check_dataset_options
from prunelab.data.dataset import IMAGENET_MEAN, IMAGENET_STD, Augment, TensorImageDataset
from prunelab.errors import ConfigError

__all__ = ["NORMALIZATIONS", "DataSplits", "load_dataset", "resize_images", "stratified_split"]

#: Accepted values of ``load_dataset(normalize=...)``.
NORMALIZATIONS = ("dataset", "imagenet", "inception", "none")

# Salts that give the validation split, the train subset and the test subset independent random streams
# under one run seed.
_VAL_SALT, _TRAIN_SALT, _TEST_SALT = 1, 2, 3

# Bytes of float32 working memory one resize chunk may use.
_RESIZE_CHUNK_BYTES = 64 << 20


@dataclass
class DataSplits:
    """The three splits of a dataset, ready for :func:`prunelab.data.make_loader`.

    Attributes:
        name: registry name of the dataset.
        train: training images (augmented by the loader when ``train=True``).
        val: validation images carved from the official training set, or ``None`` when there are none
            (``val_fraction=0``).
        test: the official test split (or its stratified subset).
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of one image after resizing.
        classes: class names, index = label.
        source: the file or folder the data was read from.
    """

    name: str
    train: TensorImageDataset
    val: TensorImageDataset | None
    test: TensorImageDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: list[str]
    source: str = ""


def stratified_split(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw exactly ``n`` indices with the class proportions of ``labels``.

    Each class gets ``floor(n * count / total)`` samples and the remaining ones go to the classes with the
    largest fractional parts (ties to the lower label), so the size is exact and the proportions are as
    close as integers allow. Which samples of a class are taken is random under ``rng``.

    Args:
        labels: integer labels, shape ``(N,)``.
        n: how many to draw, ``0 <= n <= N``.
        rng: the random source.

    Returns:
        ``(chosen, rest)``: sorted index arrays that partition ``range(N)``.
    """
    total = labels.shape[0]
    if not 0 <= n <= total:
        raise ValueError(f"cannot draw {n} of {total} samples")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (n / total) if total else counts.astype(np.float64)
    take = np.floor(quota).astype(np.int64)
    short = n - int(take.sum())
    if short > 0:
        take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    # A random permutation stably sorted by class puts each class's samples in random order; the first
    # take[c] of class c are chosen. Vectorised, so it stays fast for 100k-image training sets.
    perm = rng.permutation(total)
    by_class = perm[np.argsort(inverse[perm], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cls_sorted = inverse[by_class]
    rank_in_class = np.arange(total) - starts[cls_sorted]
    mask = rank_in_class < take[cls_sorted]
    return np.sort(by_class[mask]), np.sort(by_class[~mask])


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 ``(N, C, H, W)`` tensor to ``size`` (bilinear, antialiased), chunk by chunk.

    Chunks bound the float32 working memory (about 64 MiB), so resizing a large training set to 224×224
    does not need several copies of it in float.
    """
    n, c, h, w = images.shape
    if (h, w) == tuple(size):
        return images
    out = torch.empty((n, c, *size), dtype=torch.uint8)
    per_image = 4 * c * max(h * w, size[0] * size[1]) * 2
    chunk = max(1, _RESIZE_CHUNK_BYTES // per_image)
    for start in range(0, n, chunk):
        part = images[start : start + chunk].to(torch.float32)
        resized = F.interpolate(part, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # Mean/std over all training pixels, per channel, in float64 chunks: exact and memory-bounded.
    c = x.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, x.shape[0], 4096):
        part = x[start : start + 4096].reshape(-1, c).astype(np.float64)
        total += part.sum(0)
        total_sq += np.square(part).sum(0)
        count += part.shape[0]
    if count == 0:
        return (0.5,) * c, (0.5,) * c
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 0, std, 255.0)  # a constant channel: avoid dividing by zero
    return tuple(float(m) for m in mean / 255.0), tuple(float(s) for s in std / 255.0)


def _normalization(mode: str, raw: RawData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    c = raw.x_train.shape[-1]
    if mode == "none":
        return (0.0,) * c, (1.0,) * c
    if mode == "inception":
        # x / 127.5 - 1 == (x / 255 - 0.5) / 0.5
        return (0.5,) * c, (0.5,) * c
    if mode == "imagenet":
        if c == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        # Grey images fed to ImageNet-style models: use the channel-averaged statistics.
        return (float(np.mean(IMAGENET_MEAN)),) * c, (float(np.mean(IMAGENET_STD)),) * c
    if raw.mean is not None and raw.std is not None and len(raw.mean) == c:
        return tuple(raw.mean), tuple(raw.std)
    return _channel_stats(raw.x_train)


def _parse_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2 and not isinstance(image_size, str):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ConfigError(f"image_size: expected an int or [height, width], got {image_size!r}")
    if min(size) < 1:
        raise ConfigError(f"image_size: must be positive, got {image_size!r}")
    return size


def _parse_augment(augment: str | bool | None, default: str) -> str:
    if augment is None or augment is True:
        return default
    if augment is False:
        return "none"
    if augment not in AUGMENTATIONS:
        raise ConfigError(
            f"augment: unknown policy {augment!r}; use one of {', '.join(AUGMENTATIONS)} or null"
        )
    return str(augment)


def _check_count(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer or null, got {value!r}")
    return int(value)


def _reader_options(name: str, reader: Any, options: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    # The validator's check (prunelab validate), so a recipe it passes loads; image_size is load_dataset's.
    check_dataset_options(name, options, prefix="")
    params = inspect.signature(reader).parameters
    accepted = {k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in ("download",)}
    return options, accepted


def _to_tensor(x: np.ndarray, idx: np.ndarray | None) -> torch.Tensor:
    part = np.ascontiguousarray(x if idx is None else x[idx])
    if not part.flags.writeable:  # e.g. np.frombuffer views; torch warns about sharing read-only memory
        part = part.copy()
    return torch.from_numpy(part).permute(0, 3, 1, 2).contiguous()


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    augment: str | bool | None = None,
    normalize: str = "dataset",
    image_size: int | Sequence[int] | None = None,
    download: bool = False,
    **reader_kwargs: Any,
) -> DataSplits:
    """Load a registered dataset and split it into train, validation and test sets.

    Args:
        name: a key of :data:`prunelab.data.DATASETS` (``digits``, ``mnist``, ``cifar10``, ...).
        data_dir: data root; default ``$PRUNELAB_DATA`` or ``~/.cache/prunelab``.
        val_fraction: fraction of the training pool held out (stratified) for validation, in ``[0, 1)``.
            With ``train_subset`` the pool is sized so that train gets exactly ``train_subset`` images and
            validation ``round(train_subset * val_fraction / (1 - val_fraction))``.
        train_subset: exact number of training images (stratified, seeded), or ``None`` for all.
        test_subset: exact number of test images (stratified, seeded), or ``None`` for all.
        seed: seed of the validation split and the subsets.
        augment: training augmentation: ``None``/``True`` = the dataset's standard policy, ``False`` or
            ``"none"`` = off, or one of ``"flip"``, ``"crop"``, ``"crop_flip"``.
        normalize: ``"dataset"`` (per-dataset channel statistics), ``"imagenet"``, ``"inception"``
            (``x / 127.5 - 1``) or ``"none"`` (values in [0, 1]).
        image_size: resize every image once at load time to ``int`` (square) or ``(H, W)``; readers of
            variable-size images (caltech101, image_folder) decode straight to this size.
        download: fetch the official files (checksum-verified) when they are not on disk.
        **reader_kwargs: dataset-specific options (e.g. ``label_type="coarse"`` for cifar100).

    Returns:
        The :class:`DataSplits`.

    Raises:
        ConfigError: an unknown dataset, option or value.
        DataNotFoundError: the data is not on disk and ``download`` is false, or cannot be fetched.
    """
    reader = DATASETS.get(name)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize: unknown value {normalize!r}; use one of {', '.join(NORMALIZATIONS)}")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 <= val_fraction < 1
    ):
        raise ConfigError(f"val_fraction: must be a number in [0, 1), got {val_fraction!r}")
    train_subset = _check_count("train_subset", train_subset)
    test_subset = _check_count("test_subset", test_subset)
    size = _parse_size(image_size)
    options, accepted = _reader_options(name, reader, dict(reader_kwargs))
    if size is not None and "image_size" in accepted:
        options["image_size"] = size

    raw: RawData = reader(resolve_data_dir(data_dir), download=bool(download), **options)
    raw.validate(name)
    mean, std = _normalization(normalize, raw)
    policy_name = _parse_augment(augment, raw.augment)

    n_train = raw.y_train.shape[0]
    if train_subset is None:
        n_val = round(val_fraction * n_train)
    else:
        n_val = round(train_subset * val_fraction / (1 - val_fraction))
        if train_subset + n_val > n_train:
            raise ConfigError(
                f"train_subset: {train_subset} training + {n_val} validation images exceed the {n_train} "
                f"training images of {name}; lower train_subset or val_fraction"
            )
    if n_val >= n_train > 0:
        raise ConfigError(f"val_fraction: {val_fraction} leaves no training images of {name}; lower it")
    val_idx, pool = stratified_split(raw.y_train, n_val, np.random.default_rng([seed, _VAL_SALT]))
    train_idx = pool
    if train_subset is not None:
        chosen, _ = stratified_split(
            raw.y_train[pool], train_subset, np.random.default_rng([seed, _TRAIN_SALT])
        )
        train_idx = pool[chosen]
    test_idx = None
    if test_subset is not None:
        if test_subset > raw.y_test.shape[0]:
            raise ConfigError(
                f"test_subset: {test_subset} exceeds the {raw.y_test.shape[0]} test images of {name}; lower it"
            )
        test_idx, _ = stratified_split(raw.y_test, test_subset, np.random.default_rng([seed, _TEST_SALT]))

    def build(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None) -> TensorImageDataset:
        images = _to_tensor(x, idx)
        if size is not None:
            images = resize_images(images, size)
        labels = torch.from_numpy(np.asarray(y if idx is None else y[idx], dtype=np.int64))
        policy = Augment.from_name(policy_name, images.shape[2])
        return TensorImageDataset(images, labels, mean=mean, std=std, classes=raw.classes, augment=policy)

    train = build(raw.x_train, raw.y_train, train_idx if train_idx.shape[0] != n_train else None)
    val = build(raw.x_train, raw.y_train, val_idx) if n_val > 0 else None
    test = build(raw.x_test, raw.y_test, test_idx)
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=len(raw.classes),
        input_shape=train.input_shape,
        classes=list(raw.classes),
        source=raw.source,
    )
