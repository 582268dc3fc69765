"""The UCI optical handwritten digits bundled with scikit-learn: the offline default dataset.

1,797 grey 8×8 images of the digits 0–9 with values 0–16 (E. Alpaydin and C. Kaynak, *Optical
Recognition of Handwritten Digits*, UCI Machine Learning Repository, 1998). scikit-learn ships the data
inside the package, so this dataset needs neither files nor a network and makes every example and test
runnable anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data.base import DATASETS, LAYOUTS, Layout, RawData, Requirement, read_npz
from prunelab.data.splits import stratified_split

__all__ = ["DIGITS_SPLIT_SEED", "read_digits"]

#: Seed of the fixed 80/20 train/test split. It is a constant, not the run seed: the test set of a
#: dataset must not change between runs, or results of different seeds would not be comparable.
DIGITS_SPLIT_SEED = 20_231_797

_TEST_FRACTION = 0.2


def _digits_layout(root: Path, _options: Mapping[str, Any]) -> list[list[Requirement]]:
    # <root>/digits.npz when present, else scikit-learn's bundled copy (always there: an empty requirement).
    return [[[root / "digits.npz"]], []]


LAYOUTS["digits"] = Layout(_digits_layout)


@DATASETS.register("digits")
def read_digits(root: Path, *, download: bool = False) -> RawData:
    """scikit-learn's 8×8 handwritten digits (offline); fixed stratified 80/20 train/test split.

    Pixel values 0–16 are rescaled to 0–255 (``round(v * 255 / 16)``) so every dataset shares the uint8
    convention. ``<root>/digits.npz`` is used instead when present.

    Args:
        root: data root.
        download: unused (the data is bundled); accepted for a uniform reader signature.

    Returns:
        1,438 training and 359 test images of shape 8×8×1.
    """
    npz = root / "digits.npz"
    if npz.is_file():
        raw = read_npz(npz, "digits", classes=[str(i) for i in range(10)])
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = bunch.target.astype(np.int64)
        n_test = round(_TEST_FRACTION * labels.shape[0])
        test, train = stratified_split(labels, n_test, np.random.default_rng(DIGITS_SPLIT_SEED))
        raw = RawData(
            x_train=images[train],
            y_train=labels[train],
            x_test=images[test],
            y_test=labels[test],
            classes=[str(i) for i in range(10)],
            source="sklearn.datasets.load_digits",
        )
    # Constants computed from this fixed training split (mean/std of the rescaled pixels).
    raw.mean, raw.std = _DIGITS_MEAN, _DIGITS_STD
    raw.augment = "none"
    return raw


_DIGITS_MEAN: tuple[float, ...] = (0.30565,)
_DIGITS_STD: tuple[float, ...] = (0.37584,)
