"""Datasets: readers for the official formats and offline ``.npz`` copies, splits, and a fast loader.

Importing this package registers every reader in :data:`DATASETS` (and those of installed plugins,
entry-point group ``prunelab.datasets``).

Example:
    >>> from prunelab.data import load_dataset, make_loader
    >>> data = load_dataset("digits", seed=0)
    >>> x, y = next(iter(make_loader(data.train, 64, train=True)))
    >>> tuple(x.shape), data.input_shape
    ((64, 1, 8, 8), (1, 8, 8))
"""

# Importing the reader modules registers them in DATASETS.
from prunelab.data import caltech101 as _caltech101  # noqa: F401
from prunelab.data import cifar as _cifar  # noqa: F401
from prunelab.data import digits as _digits  # noqa: F401
from prunelab.data import image_folder as _image_folder  # noqa: F401
from prunelab.data import mnist as _mnist  # noqa: F401
from prunelab.data import svhn as _svhn  # noqa: F401
from prunelab.data import tiny_imagenet as _tiny_imagenet  # noqa: F401
from prunelab.data.base import (
    DATASETS,
    LAYOUTS,
    Layout,
    RawData,
    Resource,
    as_labels,
    read_npz,
    resolve_data_dir,
)
from prunelab.data.checks import check_dataset_options, check_dataset_present, dataset_options
from prunelab.data.dataset import IMAGENET_MEAN, IMAGENET_STD, Augment, TensorImageDataset
from prunelab.data.loader import BatchLoader, augment_batch, make_loader
from prunelab.data.splits import NORMALIZATIONS, DataSplits, load_dataset, resize_images, stratified_split
from prunelab.registry import load_plugins

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "NORMALIZATIONS",
    "Augment",
    "BatchLoader",
    "DataSplits",
    "Layout",
    "RawData",
    "Resource",
    "TensorImageDataset",
    "as_labels",
    "augment_batch",
    "check_dataset_options",
    "check_dataset_present",
    "dataset_options",
    "load_dataset",
    "make_loader",
    "read_npz",
    "resize_images",
    "resolve_data_dir",
    "stratified_split",
]

# Third-party models/datasets register themselves through this entry-point group (see prunelab.registry).
load_plugins("prunelab.datasets")
