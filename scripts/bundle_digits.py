"""Write ``src/prunelab/data/digits.npz``: the 8×8 optical digits that prunelab ships (run once).

The array is the copy scikit-learn bundles (``sklearn.datasets.load_digits``: the 1,797 images of the
UCI *Optical Recognition of Handwritten Digits* test set, E. Alpaydin and C. Kaynak, 1998, CC BY 4.0;
see ``src/prunelab/data/digits_LICENSE.txt``). It is stored as it is there: ``images`` uint8 (1797, 8, 8)
with values 0–16 and ``target`` uint8 (1797,), so prunelab reads digits without scikit-learn and
``tests/test_lean_deps.py`` checks, where scikit-learn is installed, that the two are identical.

Usage (needs scikit-learn, which prunelab itself no longer does)::

    python scripts/bundle_digits.py
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "prunelab" / "data" / "digits.npz"


def main() -> None:
    """Read scikit-learn's digits, check they are whole numbers 0–16, and write the compressed archive."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)
    target = bunch.target.astype(np.uint8)
    # The cast is exact only for whole numbers in 0..16; a different copy of the data must not slip through.
    assert np.array_equal(images.astype(bunch.images.dtype), bunch.images) and images.max() == 16
    assert np.array_equal(target.astype(bunch.target.dtype), bunch.target)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, target=target)
    tmp = OUT.with_suffix(".npz.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(OUT)  # atomic: a half-written archive never replaces a good one
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes): images {images.shape}, target {target.shape}")


if __name__ == "__main__":
    main()
