"""The UCI optical handwritten digits, shipped inside prunelab: the offline default dataset.

1,797 grey 8×8 images of the digits 0–9 with values 0–16 (E. Alpaydin and C. Kaynak, *Optical
Recognition of Handwritten Digits*, UCI Machine Learning Repository, 1998, CC BY 4.0). The package holds
them as ``digits.npz`` (45 KB; the copy scikit-learn bundles, written by ``scripts/bundle_digits.py``;
provenance and licence in ``digits_LICENSE.txt`` next to it), so this dataset needs neither files, nor a
network, nor scikit-learn, and makes every example and test runnable anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data.base import DATASETS, LAYOUTS, Layout, RawData, Requirement, read_npz, read_npz_arrays
from prunelab.data.splits import stratified_split

__all__ = ["BUNDLED_DIGITS", "DIGITS_SPLIT_SEED", "read_bundled_digits", "read_digits"]

#: The archive shipped in the package: ``images`` uint8 (1797, 8, 8) in 0..16 and ``target`` uint8 (1797,).
BUNDLED_DIGITS = Path(__file__).with_name("digits.npz")

#: Seed of the fixed 80/20 train/test split. It is a constant, not the run seed: the test set of a
#: dataset must not change between runs, or results of different seeds would not be comparable.
DIGITS_SPLIT_SEED = 20_231_797

_TEST_FRACTION = 0.2


def _digits_layout(root: Path, _options: Mapping[str, Any]) -> list[list[Requirement]]:
    # <root>/digits.npz when present, else the copy shipped in the package (always there: an empty requirement).
    return [[[root / "digits.npz"]], []]


LAYOUTS["digits"] = Layout(_digits_layout)


@DATASETS.register("digits")
def read_digits(root: Path, *, download: bool = False) -> RawData:
    """UCI 8×8 handwritten digits, shipped in the package (offline); fixed stratified 80/20 split.

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
        stored, target = read_bundled_digits()
        # Float arithmetic as before the data was bundled, so the pixels are bit-identical to then.
        images = np.rint(stored.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = target.astype(np.int64)
        n_test = round(_TEST_FRACTION * labels.shape[0])
        test, train = stratified_split(labels, n_test, np.random.default_rng(DIGITS_SPLIT_SEED))
        raw = RawData(
            x_train=images[train],
            y_train=labels[train],
            x_test=images[test],
            y_test=labels[test],
            classes=[str(i) for i in range(10)],
            source=str(BUNDLED_DIGITS),
        )
    # Constants computed from this fixed training split (mean/std of the rescaled pixels).
    raw.mean, raw.std = _DIGITS_MEAN, _DIGITS_STD
    raw.augment = "none"
    return raw


def read_bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The shipped archive as stored: ``(images uint8 (1797, 8, 8) in 0..16, target uint8 (1797,))``.

    Raises:
        DataNotFoundError: the package's copy is missing or damaged (reinstall prunelab).
    """
    arrays = read_npz_arrays(BUNDLED_DIGITS, ("images", "target"))
    return arrays["images"], arrays["target"]


_DIGITS_MEAN: tuple[float, ...] = (0.30565,)
_DIGITS_STD: tuple[float, ...] = (0.37584,)
