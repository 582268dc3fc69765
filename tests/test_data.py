"""Tests of prunelab.data: readers on small files in the official formats, splits, normalisation, loader.

Every reader is exercised on files this module writes in the dataset's official layout (IDX .gz, CIFAR
binary records, SVHN .mat, JPEG folders) and on the offline ``.npz`` layout, so shapes, labels and pixel
values are checked against known contents without the real datasets or a network.
"""

from __future__ import annotations

import gzip
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab._io import file_digest
from prunelab.data import (
    DATASETS,
    LAYOUTS,
    Augment,
    DataSplits,
    Resource,
    TensorImageDataset,
    augment_batch,
    check_dataset_present,
    load_dataset,
    make_loader,
    resolve_data_dir,
    stratified_split,
)
from prunelab.data import cifar as cifar_module
from prunelab.data import loader as loader_module
from prunelab.data.loader import padded_source
from prunelab.errors import ConfigError, DataNotFoundError

# ----------------------------------------------------------------------------------------------------
# writers of the official formats


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 IDX file: 0, 0, type 0x08, ndim, big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def write_cifar_bin(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write CIFAR binary records: label byte(s), then R, G, B planes (NHWC input)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([labels.reshape(len(images), -1).astype(np.uint8), planes], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.astype(np.uint8).tofile(path)


def write_jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int], grey: bool = False) -> None:
    """A solid-colour JPEG (solid colours survive JPEG and resizing almost exactly)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size[1], size[0]), color)
    (img.convert("L") if grey else img).save(path, quality=95)


def random_images(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def indexed_npz(path: Path, labels_train: np.ndarray, labels_test: np.ndarray, channels: int = 1) -> None:
    """An offline-layout file whose image ``i`` stores ``i`` in its pixels, so splits can be decoded."""

    def encode(n: int, offset: int) -> np.ndarray:
        idx = np.arange(n) + offset
        img = np.zeros((n, 2, 2, channels), dtype=np.uint8)
        img[:, 0, 0, 0] = idx % 256
        img[:, 0, 1, 0] = idx // 256
        return img

    np.savez(
        path,
        x_train=encode(len(labels_train), 0),
        y_train=labels_train.astype(np.uint8),
        x_test=encode(len(labels_test), 0),
        y_test=labels_test.astype(np.uint8),
    )


def decode_indices(ds: TensorImageDataset) -> np.ndarray:
    img = ds.images.numpy().astype(np.int64)
    return img[:, 0, 0, 0] + 256 * img[:, 0, 0, 1]


# ----------------------------------------------------------------------------------------------------
# data folder and registry


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == (tmp_path / "arg").resolve()
    assert resolve_data_dir() == (tmp_path / "env").resolve()
    monkeypatch.delenv("PRUNELAB_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "prunelab"


def test_registry_has_every_dataset() -> None:
    expected = {
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "caltech101",
        "tiny_imagenet",
    }
    assert expected | {"image_folder"} == set(DATASETS.names())
    assert all(help_line for _, help_line in DATASETS.describe())


# ----------------------------------------------------------------------------------------------------
# digits (offline default)


def test_digits_loads_offline_with_fixed_test_split(tmp_path: Path) -> None:
    a = load_dataset("digits", data_dir=tmp_path, seed=0)
    b = load_dataset("digits", data_dir=tmp_path, seed=1)
    assert isinstance(a, DataSplits)
    assert (a.num_classes, a.input_shape, a.classes) == (10, (1, 8, 8), [str(i) for i in range(10)])
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert len(a.test) == 359 and len(a.val) == round(0.1 * (1797 - 359))
    # The test split does not depend on the run seed; the validation split does.
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.val.images, b.val.images)
    # 0..16 grey values rescaled to the full uint8 range.
    assert int(a.train.images.max()) == 255 and int(a.train.images.min()) == 0
    assert set(np.unique(a.train.images.numpy())) <= {round(v * 255 / 16) for v in range(17)}
    # Stratified: every digit is in the test split in proportion (about 36 each).
    counts = torch.bincount(a.test.labels, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    x, y = a.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and isinstance(y, int)


# ----------------------------------------------------------------------------------------------------
# readers on official formats


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_readers_round_trip(tmp_path: Path, name: str, compress: bool) -> None:
    rng = np.random.default_rng(0)
    x_train, x_test = random_images(rng, 12, 28, 28, 1)[..., 0], random_images(rng, 5, 28, 28, 1)[..., 0]
    y_train, y_test = rng.integers(0, 10, 12).astype(np.uint8), rng.integers(0, 10, 5).astype(np.uint8)
    suffix = ".gz" if compress else ""
    folder = tmp_path / name
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", x_train, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", y_train, compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", x_test, compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", y_test, compress)

    raw = DATASETS.get(name)(tmp_path)
    assert raw.x_train.shape == (12, 28, 28, 1) and raw.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(raw.x_train[..., 0], x_train)
    np.testing.assert_array_equal(raw.x_test[..., 0], x_test)
    np.testing.assert_array_equal(raw.y_train, y_train)
    assert raw.y_train.dtype == np.int64 and len(raw.classes) == 10

    data = load_dataset(name, data_dir=tmp_path, val_fraction=0, normalize="none")
    assert data.val is None and data.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(data.train.images[:, 0].numpy(), x_train)
    np.testing.assert_array_equal(data.test.labels.numpy(), y_test)
    if name == "fashion_mnist":
        assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"


def test_idx_reader_rejects_truncated_file(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    for f in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        write_idx(folder / f, np.zeros(3, np.uint8))
    broken = folder / "t10k-images-idx3-ubyte"
    write_idx(broken, np.zeros((3, 28, 28), np.uint8), compress=False)
    broken.write_bytes(broken.read_bytes()[:-10])
    with pytest.raises(DataNotFoundError, match="truncated"):
        DATASETS.get("mnist")(tmp_path)


def _cifar10_files(
    folder: Path, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in range(1, 6):
        x, y = random_images(rng, 2, 32, 32, 3), rng.integers(0, 10, 2)
        write_cifar_bin(folder / f"data_batch_{i}.bin", x, y)
        xs.append(x)
        ys.append(y)
    x_test, y_test = random_images(rng, 3, 32, 32, 3), rng.integers(0, 10, 3)
    write_cifar_bin(folder / "test_batch.bin", x_test, y_test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test


def _tar(archive: Path, source: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)


def test_cifar10_archive_is_extracted_once_and_parsed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train, y_train, x_test, y_test = _cifar10_files(tmp_path / "build" / "cifar-10-batches-bin", rng)
    root = tmp_path / "root"
    archive = root / "cifar10" / "cifar-10-binary.tar.gz"
    _tar(archive, tmp_path / "build" / "cifar-10-batches-bin")

    raw = DATASETS.get("cifar10")(root)
    assert (root / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_train, y_train)
    np.testing.assert_array_equal(raw.x_test, x_test)
    np.testing.assert_array_equal(raw.y_test, y_test)
    assert raw.classes[0] == "airplane" and len(raw.classes) == 10
    # No temporary extraction folders are left behind, and the extracted copy is used from now on.
    assert sorted(p.name for p in (root / "cifar10").iterdir()) == [
        "cifar-10-batches-bin",
        "cifar-10-binary.tar.gz",
    ]
    archive.unlink()
    data = load_dataset("cifar10", data_dir=root, val_fraction=0, normalize="none", augment=False)
    assert data.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(data.train.images.permute(0, 2, 3, 1).numpy(), x_train)


@pytest.mark.parametrize("label_type", ["fine", "coarse"])
def test_cifar100_binary_labels(tmp_path: Path, label_type: str) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar100" / "cifar-100-binary"
    x_train, x_test = random_images(rng, 6, 32, 32, 3), random_images(rng, 4, 32, 32, 3)
    coarse_tr, fine_tr = rng.integers(0, 20, 6), rng.integers(0, 100, 6)
    coarse_te, fine_te = rng.integers(0, 20, 4), rng.integers(0, 100, 4)
    write_cifar_bin(folder / "train.bin", x_train, np.stack([coarse_tr, fine_tr], 1))
    write_cifar_bin(folder / "test.bin", x_test, np.stack([coarse_te, fine_te], 1))
    (folder / "coarse_label_names.txt").write_text("\n".join(f"super{i}" for i in range(20)))
    (folder / "fine_label_names.txt").write_text("\n".join(f"class{i}" for i in range(100)))

    data = load_dataset(
        "cifar100", data_dir=tmp_path, val_fraction=0, normalize="none", label_type=label_type
    )
    expected_train, expected_test = (fine_tr, fine_te) if label_type == "fine" else (coarse_tr, coarse_te)
    np.testing.assert_array_equal(data.train.labels.numpy(), expected_train)
    np.testing.assert_array_equal(data.test.labels.numpy(), expected_test)
    np.testing.assert_array_equal(data.test.images.permute(0, 2, 3, 1).numpy(), x_test)
    assert data.num_classes == (100 if label_type == "fine" else 20)
    assert data.classes[3] == ("class3" if label_type == "fine" else "super3")


def test_svhn_mat_round_trip(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    folder = tmp_path / "svhn"
    folder.mkdir()
    expected = {}
    for split, n in (("train", 7), ("test", 4)):
        x = random_images(rng, n, 32, 32, 3)
        y = rng.integers(1, 11, n)  # SVHN labels 1..10, 10 meaning the digit 0
        y[0] = 10
        savemat(
            folder / f"{split}_32x32.mat",
            {"X": x.transpose(1, 2, 3, 0), "y": y.reshape(-1, 1).astype(np.uint8)},
        )
        expected[split] = (x, y % 10)
    raw = DATASETS.get("svhn")(tmp_path)
    np.testing.assert_array_equal(raw.x_train, expected["train"][0])
    np.testing.assert_array_equal(raw.y_train, expected["train"][1])
    np.testing.assert_array_equal(raw.x_test, expected["test"][0])
    assert raw.y_train[0] == 0 and raw.y_train.max() <= 9
    assert raw.augment == "crop"  # digits are not flipped


def _colour(i: int) -> tuple[int, int, int]:
    # Distinct, well-separated solid colours encode which file an image came from.
    return (40 * (i % 6) + 20, 40 * ((i // 6) % 6) + 20, 40 * (i // 36) + 20)


def _match(images: np.ndarray, colours: dict[tuple[int, int, int], int], tol: int = 4) -> list[int]:
    """For each decoded image, the label of the solid colour it shows (checks the image is uniform)."""
    found = []
    for img in images:
        mean = img.reshape(-1, img.shape[-1]).mean(0)
        assert np.abs(img.astype(float) - mean).max() <= tol
        best = min(colours, key=lambda c: np.abs(np.asarray(c) - mean).max())
        assert np.abs(np.asarray(best) - mean).max() <= tol
        found.append(colours[best])
    return found


def test_caltech101_folder(tmp_path: Path) -> None:
    folder = tmp_path / "caltech101" / "101_ObjectCategories"
    colours: dict[tuple[int, int, int], int] = {}
    k = 0
    for label, cls in enumerate(["Faces", "accordion", "airplanes"]):
        for j in range(5):
            colours[_colour(k)] = label
            # Different stored sizes: the reader resizes everything to image_size.
            write_jpeg(folder / cls / f"image_{j + 1:04d}.jpg", _colour(k), (20 + 3 * j, 30))
            k += 1
    write_jpeg(folder / "BACKGROUND_Google" / "image_0001.jpg", (0, 0, 0), (16, 16))

    raw = DATASETS.get("caltech101")(tmp_path, image_size=12)
    assert raw.classes == ["Faces", "accordion", "airplanes"]
    assert raw.x_train.shape == (12, 12, 12, 3) and raw.x_test.shape == (3, 12, 12, 3)
    assert sorted(np.bincount(raw.y_test).tolist()) == [1, 1, 1]
    assert _match(raw.x_train, colours) == raw.y_train.tolist()
    assert _match(raw.x_test, colours) == raw.y_test.tolist()
    again = DATASETS.get("caltech101")(tmp_path, image_size=12)
    np.testing.assert_array_equal(raw.x_test, again.x_test)  # fixed split

    data = load_dataset("caltech101", data_dir=tmp_path, image_size=(10, 14), val_fraction=0)
    assert data.input_shape == (3, 10, 14) and data.num_classes == 3


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    folder = tmp_path / "tiny_imagenet" / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # wnids.txt order, not sorted order, defines the labels
    (folder).mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours: dict[tuple[int, int, int], int] = {}
    k = 0
    for label, wnid in enumerate(wnids):
        for j in range(3):
            colours[_colour(k)] = label
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", _colour(k), (64, 64))
            k += 1
    lines = []
    for j in range(4):
        label = j % 2
        colours[_colour(k)] = label
        write_jpeg(folder / "val" / "images" / f"val_{j}.JPEG", _colour(k), (64, 64))
        lines.append(f"val_{j}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
        k += 1
    grey = 128
    colours[(grey, grey, grey)] = 0
    write_jpeg(folder / "val" / "images" / "val_4.JPEG", (grey, grey, grey), (64, 64), grey=True)
    lines.append(f"val_4.JPEG\t{wnids[0]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    raw = DATASETS.get("tiny_imagenet")(tmp_path)
    assert raw.classes == wnids
    assert raw.x_train.shape == (6, 64, 64, 3) and raw.x_test.shape == (5, 64, 64, 3)
    assert raw.y_train.tolist() == [0, 0, 0, 1, 1, 1] and raw.y_test.tolist() == [0, 1, 0, 1, 0]
    assert _match(raw.x_train, colours) == raw.y_train.tolist()
    assert _match(raw.x_test, colours) == raw.y_test.tolist()


def test_image_folder_with_val_and_sizes(tmp_path: Path) -> None:
    ds = tmp_path / "mydata"
    colours: dict[tuple[int, int, int], int] = {}
    k = 0
    for split, n in (("train", 4), ("val", 2)):
        for label, cls in enumerate(["cat", "dog"]):
            for j in range(n):
                colours[_colour(k)] = label
                write_jpeg(ds / split / cls / f"{j}.jpg", _colour(k), (16, 16))
                k += 1
    raw = DATASETS.get("image_folder")(tmp_path, path=str(ds))
    assert (
        raw.classes == ["cat", "dog"]
        and raw.x_train.shape == (8, 16, 16, 3)
        and raw.x_test.shape == (4, 16, 16, 3)
    )
    assert _match(raw.x_train, colours) == raw.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    grey = DATASETS.get("image_folder")(tmp_path, path=str(ds), mode="L")
    assert grey.x_train.shape == (8, 16, 16, 1)

    # A differently sized image needs image_size, which then resizes everything.
    write_jpeg(ds / "train" / "dog" / "big.jpg", _colour(k), (24, 20))
    with pytest.raises(ConfigError, match="image_size"):
        DATASETS.get("image_folder")(tmp_path, path=str(ds))
    data = load_dataset("image_folder", data_dir=tmp_path, path=str(ds), image_size=8, val_fraction=0)
    assert data.input_shape == (3, 8, 8) and len(data.train) == 9 and len(data.test) == 4


def test_npz_is_preferred_over_official_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    # Official files that would give other contents ...
    _cifar10_files(tmp_path / "cifar10" / "cifar-10-batches-bin", rng)
    # ... and an offline-layout file, which wins.
    x_train, x_test = random_images(rng, 20, 32, 32, 3), random_images(rng, 6, 32, 32, 3)
    y_train, y_test = np.arange(20) % 10, np.arange(6) % 10
    names = np.array([f"c{i}" for i in range(10)])
    np.savez_compressed(
        tmp_path / "cifar10.npz", x_train=x_train, y_train=y_train.astype(np.uint8), x_test=x_test,
        y_test=y_test.astype(np.uint8), label_names=names,
    )  # fmt: skip
    raw = DATASETS.get("cifar10")(tmp_path)
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_test, y_test)
    assert raw.classes == names.tolist() and raw.source.endswith("cifar10.npz")


# ----------------------------------------------------------------------------------------------------
# missing data and downloads


def test_missing_dataset_message_names_paths_and_fixes(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "'cifar10'" in msg
    for path in (tmp_path / "cifar10.npz", tmp_path / "cifar10" / "cifar-10-batches-bin",
                 tmp_path / "cifar10" / "cifar-10-binary.tar.gz"):  # fmt: skip
        assert str(path) in msg
    assert "--download" in msg and "PRUNELAB_DATA" in msg and "--data-dir" in msg
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "svhn" / "train_32x32.mat")):
        load_dataset("svhn", data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match="mnist.npz"):
        load_dataset("mnist", data_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was created without download=True


def test_download_verifies_checksum_then_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x_train, y_train, _, _ = _cifar10_files(tmp_path / "server" / "cifar-10-batches-bin", rng)
    archive = tmp_path / "server" / "cifar-10-binary.tar.gz"
    _tar(archive, tmp_path / "server" / "cifar-10-batches-bin")
    good_md5 = file_digest(archive, "md5")
    url = archive.as_uri()

    # Wrong checksum: an error, and nothing left in the data folder.
    root = tmp_path / "root"
    monkeypatch.setattr(cifar_module, "CIFAR10_ARCHIVE", Resource(archive.name, (url,), "0" * 32))
    with pytest.raises(DataNotFoundError, match="checksum"):
        load_dataset("cifar10", data_dir=root, download=True)
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))

    # Right checksum (after an unreachable first mirror): downloaded, extracted, loaded.
    missing = (tmp_path / "nowhere.tar.gz").as_uri()
    monkeypatch.setattr(cifar_module, "CIFAR10_ARCHIVE", Resource(archive.name, (missing, url), good_md5))
    data = load_dataset("cifar10", data_dir=root, download=True, val_fraction=0, normalize="none")
    assert file_digest(root / "cifar10" / archive.name, "md5") == good_md5
    assert (root / "cifar10" / "cifar-10-batches-bin").is_dir()
    np.testing.assert_array_equal(data.train.images.permute(0, 2, 3, 1).numpy(), x_train)
    np.testing.assert_array_equal(data.train.labels.numpy(), y_train)


# ----------------------------------------------------------------------------------------------------
# options, splits, subsets, normalisation, resizing


def test_bad_options_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean"):
        load_dataset("cifar11", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="colour"):
        load_dataset("digits", data_dir=tmp_path, colour=True)
    with pytest.raises(ConfigError, match="normalize"):
        load_dataset("digits", data_dir=tmp_path, normalize="zscore")
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", data_dir=tmp_path, val_fraction=1.0)
    with pytest.raises(ConfigError, match="augment"):
        load_dataset("digits", data_dir=tmp_path, augment="rotate")
    with pytest.raises(ConfigError, match="train_subset"):
        load_dataset("digits", data_dir=tmp_path, train_subset=0)
    with pytest.raises(ConfigError, match="train_subset"):
        load_dataset("digits", data_dir=tmp_path, train_subset=5000)
    with pytest.raises(ConfigError, match="label_type"):
        load_dataset("cifar100", data_dir=tmp_path, label_type="medium")


def _imbalanced_labels(n_per_class: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])


def test_val_split_is_stratified_disjoint_and_seeded(tmp_path: Path) -> None:
    y_train = _imbalanced_labels((60, 30, 10))
    indexed_npz(tmp_path / "mnist.npz", y_train, np.arange(20) % 3)
    a = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.2, seed=7)
    train, val = decode_indices(a.train), decode_indices(a.val)
    assert len(val) == 20 and len(train) == 80
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    # Labels travel with their images, and each class is split in proportion.
    np.testing.assert_array_equal(a.val.labels.numpy(), y_train[val])
    assert torch.bincount(a.val.labels, minlength=3).tolist() == [12, 6, 2]
    again = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.2, seed=7)
    other = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.2, seed=8)
    np.testing.assert_array_equal(decode_indices(again.val), val)
    assert not np.array_equal(decode_indices(other.val), val)


def test_subsets_exact_and_stratified(tmp_path: Path) -> None:
    y_train = _imbalanced_labels((100, 50, 50))
    y_test = _imbalanced_labels((40, 20, 20))
    indexed_npz(tmp_path / "mnist.npz", y_train, y_test)
    data = load_dataset("mnist", data_dir=tmp_path, train_subset=40, test_subset=20, val_fraction=0.2, seed=3)
    assert len(data.train) == 40 and len(data.val) == 10 and len(data.test) == 20
    assert torch.bincount(data.train.labels).tolist() == [20, 10, 10]
    assert torch.bincount(data.test.labels).tolist() == [10, 5, 5]
    assert set(decode_indices(data.train)).isdisjoint(decode_indices(data.val))
    np.testing.assert_array_equal(data.test.labels.numpy(), y_test[decode_indices(data.test)])


def test_stratified_split_rounding_is_exact() -> None:
    labels = _imbalanced_labels((7, 5, 3))
    for n in range(16):
        chosen, rest = stratified_split(labels, n, np.random.default_rng(0))
        assert len(chosen) == n and len(np.intersect1d(chosen, rest)) == 0 and len(chosen) + len(rest) == 15
        counts = np.bincount(labels[chosen], minlength=3)
        assert np.all(np.abs(counts - n * np.array([7, 5, 3]) / 15) < 1)


def test_normalisations(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x = random_images(rng, 10, 4, 4, 3)
    y = np.arange(10) % 10
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    raw = torch.from_numpy(x[:5]).permute(0, 3, 1, 2).float() / 255

    def batch(mode: str) -> torch.Tensor:
        test = load_dataset("cifar10", data_dir=tmp_path, normalize=mode, val_fraction=0).test
        return make_loader(test, 5, train=False).__iter__().__next__()[0]

    torch.testing.assert_close(batch("none"), raw)
    torch.testing.assert_close(
        batch("inception"), torch.from_numpy(x[:5]).permute(0, 3, 1, 2).float() / 127.5 - 1
    )
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1),
    )
    torch.testing.assert_close(batch("imagenet"), (raw - mean) / std)
    cmean = torch.tensor([125.30691805, 122.95039414, 113.86538318]).view(3, 1, 1) / 255
    cstd = torch.tensor([62.99321928, 62.08870764, 66.70489964]).view(3, 1, 1) / 255
    torch.testing.assert_close(batch("dataset"), (raw - cmean) / cstd)
    # __getitem__ gives the same values as the batch path.
    test = load_dataset("cifar10", data_dir=tmp_path, normalize="imagenet", val_fraction=0).test
    torch.testing.assert_close(test[2][0], ((raw - mean) / std)[2])


def test_dataset_normalisation_computed_for_image_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = random_images(rng, 30, 4, 4, 3)
    np.savez(
        tmp_path / "image_folder.npz",
        x_train=x,
        y_train=np.arange(30) % 2,
        x_test=x,
        y_test=np.arange(30) % 2,
    )
    data = load_dataset("image_folder", data_dir=tmp_path, val_fraction=0)
    xb, _ = make_loader(data.train, 30, train=False).__iter__().__next__()
    torch.testing.assert_close(xb.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(xb.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_image_size_resizes_once(tmp_path: Path) -> None:
    x = np.zeros((4, 8, 8, 3), np.uint8)
    x[:] = np.array([10, 100, 200], np.uint8)  # solid colour: resizing must keep it exactly
    np.savez(tmp_path / "svhn.npz", x_train=x, y_train=np.arange(4), x_test=x[:2], y_test=np.arange(2))
    data = load_dataset("svhn", data_dir=tmp_path, image_size=5, val_fraction=0, normalize="none")
    assert data.input_shape == (3, 5, 5) and data.train.images.shape == (4, 3, 5, 5)
    assert data.train.images.dtype == torch.uint8
    assert data.test.images[:, :, 2, 2].tolist() == [[10, 100, 200]] * 2
    # Upsampling to 64 and 32x16 also works (per-chunk interpolation).
    assert load_dataset("svhn", data_dir=tmp_path, image_size=(32, 16)).input_shape == (3, 32, 16)


# ----------------------------------------------------------------------------------------------------
# loader: order, augmentation, sharding


def _toy(n: int = 11, size: int = 8, augment: Augment | None = None) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # lets tests identify samples
    return TensorImageDataset(
        images, torch.arange(n) % 3, mean=(0.0,) * 3, std=(1.0,) * 3, classes=["a", "b", "c"], augment=augment
    )


def _ids(x: torch.Tensor) -> torch.Tensor:
    """Sample ids from a batch of ``_toy`` images normalised with mean 0, std 1 (values v / 255)."""
    return (x[:, 0, 0, 0] * 255).round().long()


def test_default_augmentation_policies(tmp_path: Path) -> None:
    x = np.zeros((4, 32, 32, 3), np.uint8)
    for name in ("cifar10", "svhn"):
        np.savez(tmp_path / f"{name}.npz", x_train=x, y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    assert load_dataset("cifar10", data_dir=tmp_path).train.augment == Augment(crop_padding=4, flip=True)
    assert load_dataset("svhn", data_dir=tmp_path).train.augment == Augment(crop_padding=4, flip=False)
    assert load_dataset("digits", data_dir=tmp_path).train.augment == Augment()
    assert load_dataset("cifar10", data_dir=tmp_path, augment=False).train.augment == Augment()
    assert load_dataset("cifar10", data_dir=tmp_path, augment="flip").train.augment == Augment(0, True)


def test_train_order_is_seeded_permutation_and_eval_is_in_order() -> None:
    ds = _toy(n=11)
    loader = make_loader(ds, 4, train=True, seed=1, epoch=0)
    assert len(loader) == 3
    ys = torch.cat([y for _, y in loader])
    ids = torch.cat([_ids(x) for x, _ in loader])
    assert sorted(ids.tolist()) == list(range(11)) and ids.tolist() != list(range(11))
    torch.testing.assert_close(ys, ds.labels[ids])  # labels stay with their images
    again = torch.cat([_ids(x) for x, _ in make_loader(ds, 4, train=True, seed=1, epoch=0)])
    next_epoch = torch.cat([_ids(x) for x, _ in make_loader(ds, 4, train=True, seed=1, epoch=1)])
    assert torch.equal(ids, again) and not torch.equal(ids, next_epoch)
    evaluation = list(make_loader(ds, 4, train=False))
    assert [len(y) for _, y in evaluation] == [4, 4, 3]
    torch.testing.assert_close(torch.cat([x for x, _ in evaluation]), ds.images.float() / 255)
    dropped = make_loader(ds, 4, train=True, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]


def _is_crop_flip(out: torch.Tensor, src: torch.Tensor, pad: int, flip_allowed: bool) -> bool:
    padded = torch.nn.functional.pad(src, (pad, pad, pad, pad))
    h, w = src.shape[1:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(out, window) or (flip_allowed and torch.equal(out, window.flip(2))):
                return True
    return False


def test_augment_batch_is_a_padded_crop_and_flip() -> None:
    images = torch.randint(
        1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    policy = Augment(crop_padding=2, flip=True)
    out = augment_batch(images, policy, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert all(_is_crop_flip(out[i], images[i], 2, True) for i in range(64))
    assert not torch.equal(out, images)
    flipped = sum(not _is_crop_flip(out[i], images[i], 2, False) for i in range(64))
    assert 10 < flipped < 54  # flips happen about half the time
    assert torch.equal(augment_batch(images, policy, torch.Generator().manual_seed(0)), out)
    only_flip = augment_batch(images, Augment(0, True), torch.Generator().manual_seed(0))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(2)) for o, i in zip(only_flip, images))


def _crop_and_flip_of(out: torch.Tensor, src: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (row offset, column offset, flipped) that turns ``src`` into ``out`` (one image)."""
    padded = torch.nn.functional.pad(src, (pad, pad, pad, pad))
    h, w = src.shape[1:]
    return [
        (dy, dx, flipped)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        for flipped in (False, True)
        if torch.equal(
            out,
            padded[:, dy : dy + h, dx : dx + w].flip(2) if flipped else padded[:, dy : dy + h, dx : dx + w],
        )
    ]


@pytest.mark.parametrize(
    ("shape", "dtype", "policy"),
    [
        ((16, 3, 8, 8), torch.uint8, Augment(crop_padding=2, flip=True)),
        ((5, 2, 6, 9), torch.float32, Augment(crop_padding=3, flip=True)),  # odd width, float words
        ((7, 1, 5, 5), torch.uint8, Augment(crop_padding=1, flip=False)),
        ((9, 3, 4, 7), torch.uint8, Augment(crop_padding=0, flip=True)),
        ((1, 3, 8, 8), torch.uint8, Augment(crop_padding=4, flip=True)),
    ],
)
def test_augment_batch_applies_the_drawn_crop_and_flip_of_each_sample(shape, dtype, policy) -> None:
    # The random semantics: offsets ~ U{0..2p} for rows then columns, then flip with probability 1/2,
    # drawn in that order from the generator (the same draws as the earlier two-gather implementation).
    # Distinct pixel values make each sample's crop and flip identifiable.
    b = shape[0]
    images = (torch.randperm(math.prod(shape)) % 251 + 1).to(dtype).view(shape)
    out = augment_batch(images, policy, torch.Generator().manual_seed(7))
    assert out.shape == images.shape and out.dtype == dtype
    draws = torch.Generator().manual_seed(7)
    p = policy.crop_padding
    offsets = torch.randint(0, 2 * p + 1, (2, b), generator=draws) if p else torch.full((2, b), 0)
    flips = (torch.rand(b, generator=draws) < 0.5) if policy.flip else torch.zeros(b, dtype=torch.bool)
    for i in range(b):
        expected = (int(offsets[0, i]), int(offsets[1, i]), bool(flips[i]))
        assert expected in _crop_and_flip_of(out[i], images[i], p), (i, expected)
    again = augment_batch(images, policy, torch.Generator().manual_seed(7))
    assert torch.equal(out, again)


def _reference_crop_flip(images: torch.Tensor, policy: Augment, generator: torch.Generator) -> torch.Tensor:
    """The definition, sample by sample: zero-pad, crop at the drawn offsets, flip on the drawn bit."""
    b, _, h, w = images.shape
    p = policy.crop_padding
    offsets = (
        torch.randint(0, 2 * p + 1, (2, b), generator=generator)
        if p
        else torch.zeros(2, b, dtype=torch.int64)
    )
    flips = torch.rand(b, generator=generator) < 0.5 if policy.flip else torch.zeros(b, dtype=torch.bool)
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    out = []
    for i in range(b):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out.append(crop.flip(2) if flips[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("shape", "dtype", "policy"),
    [
        ((32, 3, 32, 32), torch.uint8, Augment(crop_padding=4, flip=True)),  # CIFAR
        ((6, 2, 3, 5), torch.uint8, Augment(crop_padding=7, flip=True)),  # padding wider than the image
        ((6, 2, 5, 4), torch.int64, Augment(crop_padding=2, flip=False)),
        ((4, 3, 6, 6), torch.float32, Augment(crop_padding=3, flip=True)),  # inf/NaN must not leak as NaN
        ((5, 1, 4, 7), torch.uint8, Augment(crop_padding=0, flip=True)),
    ],
)
def test_augment_batch_equals_the_padded_crop_and_flip_bit_for_bit(shape, dtype, policy) -> None:
    # The masked crop over the unpadded batch reads neighbouring rows, margins and clamped rows where the
    # padding lies: all of it must be cleared exactly, for every draw, with the draws in the same order.
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    if dtype.is_floating_point:
        images[0, 0, 0, 0], images[-1, -1, -1, -1], images[1, 0, 2, 0] = (
            float("inf"),
            float("nan"),
            -float("inf"),
        )
    for seed in range(4):
        out = augment_batch(images, policy, torch.Generator().manual_seed(seed))
        expected = _reference_crop_flip(images, policy, torch.Generator().manual_seed(seed))
        assert out.dtype == dtype and torch.equal(out.isnan(), expected.isnan())
        assert torch.equal(out.nan_to_num(0), expected.nan_to_num(0)), seed
        # The loader's form: the batch gathered from a larger set straight into the working buffer.
        pool = torch.cat([images.flip(0), images])
        index = torch.arange(shape[0], 2 * shape[0])
        gathered = augment_batch(pool, policy, torch.Generator().manual_seed(seed), index=index)
        assert torch.equal(gathered.nan_to_num(0), out.nan_to_num(0)) and torch.equal(
            gathered.isnan(), out.isnan()
        )
        # The loader's one-gather path: the same batch straight from the pool's padded source.
        source = padded_source(pool, pool, policy)
        assert source is not None
        direct = augment_batch(pool, policy, torch.Generator().manual_seed(seed), index=index, source=source)
        assert torch.equal(direct.nan_to_num(0), out.nan_to_num(0)) and torch.equal(
            direct.isnan(), out.isnan()
        )


def test_augment_batch_offsets_and_flips_are_uniform() -> None:
    # Random non-zero pixels: two windows of one sample coincide with negligible probability.
    images = torch.randint(
        1, 256, (2000, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    out = augment_batch(images, Augment(crop_padding=1, flip=True), torch.Generator().manual_seed(0))
    found = [_crop_and_flip_of(out[i], images[i], 1)[0] for i in range(0, 2000, 5)]
    counts = torch.zeros(3, 3, 2)
    for dy, dx, flipped in found:
        counts[dy, dx, int(flipped)] += 1
    # 400 samples over 18 equally likely cells: about 22 each; a skewed draw would empty some cells.
    assert counts.min() > 5 and counts.max() < 45


def test_loader_gathers_from_the_padded_source_unless_it_is_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = _toy(n=16, augment=Augment(crop_padding=2, flip=True))
    with_source = [x for x, _ in make_loader(ds, 8, train=True, seed=3)]
    source = padded_source(ds, ds.images, ds.augment)
    assert source is not None and source.numel() == 2 * 16 * 3 * 12 * 12  # (8 + 2*2)^2 per plane, mirrored
    assert padded_source(ds, ds.images, ds.augment) is source  # built once per dataset
    monkeypatch.setattr(loader_module, "SOURCE_MAX_BYTES", source.numel() - 1)
    assert padded_source(_toy(n=16, augment=ds.augment), ds.images, ds.augment) is None
    without = [x for x, _ in make_loader(_toy(n=16, augment=ds.augment), 8, train=True, seed=3)]
    assert len(with_source) == len(without) == 2
    assert all(torch.equal(a, b) for a, b in zip(with_source, without, strict=True))


def test_loader_augments_only_in_training() -> None:
    ds = _toy(n=16, augment=Augment(crop_padding=2, flip=True))
    train_batches = [x for x, _ in make_loader(ds, 8, train=True, seed=3)]
    again = [x for x, _ in make_loader(ds, 8, train=True, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(train_batches, again))
    assert all(x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 for x in train_batches)
    order = make_loader(ds, 8, train=True, seed=3).indices()
    unaugmented = ds.get_batch(order[:8])[0]
    assert not torch.equal(train_batches[0], unaugmented)
    evaluation = torch.cat([x for x, _ in make_loader(ds, 8, train=False)])
    torch.testing.assert_close(evaluation, ds.images.float() / 255)


@pytest.mark.parametrize("n", [10, 11])
def test_distributed_shards_are_disjoint_and_cover_the_epoch(n: int) -> None:
    ds = _toy(n=n)
    full = make_loader(ds, 3, train=True, seed=5, epoch=2).indices()
    shards = [
        make_loader(ds, 3, train=True, seed=5, epoch=2, distributed=True, rank=r, world_size=2)
        for r in (0, 1)
    ]
    idx = [s.indices() for s in shards]
    per_rank = math.ceil(n / 2)
    assert len(idx[0]) == len(idx[1]) == per_rank
    assert len(shards[0]) == len(shards[1]) == math.ceil(per_rank / 3)
    # The same permutation on both ranks, interleaved; padding repeats the start of it.
    padded = torch.cat([full, full[: 2 * len(idx[0]) - n]])
    assert torch.equal(idx[0], padded[0::2]) and torch.equal(idx[1], padded[1::2])
    covered = set(idx[0].tolist()) | set(idx[1].tolist())
    assert covered == set(range(n))
    if n % 2 == 0:
        assert set(idx[0].tolist()).isdisjoint(idx[1].tolist())
    seen = torch.cat([_ids(x) for s in shards for x, _ in s])
    assert sorted(set(seen.tolist())) == list(range(n))
    # Without an initialised process group, distributed=True degrades to a single shard.
    assert len(make_loader(ds, 3, train=True, distributed=True).indices()) == n
    with pytest.raises(ConfigError):
        make_loader(ds, 3, train=True, distributed=True, rank=2, world_size=2)


def test_foreign_dataset_falls_back_to_stacking() -> None:
    items = [(torch.full((1, 2, 2), float(i)), i % 2) for i in range(5)]
    batches = list(make_loader(items, 2, train=False))  # a list is a valid map-style dataset
    assert [tuple(x.shape) for x, _ in batches] == [(2, 1, 2, 2), (2, 1, 2, 2), (1, 1, 2, 2)]
    assert batches[2][1].tolist() == [0] and batches[2][1].dtype == torch.int64


# ----------------------------------------------------------------------------------------------------
# real offline data


@pytest.mark.data
def test_shared_mnist_split_sizes(shared_data_dir: Path) -> None:
    if not (shared_data_dir / "mnist.npz").is_file():
        pytest.skip("mnist.npz is not in the shared data folder")
    data = load_dataset("mnist", data_dir=shared_data_dir, val_fraction=0.1)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    x, _ = next(iter(make_loader(data.train, 256, train=True)))
    assert x.shape == (256, 1, 28, 28) and abs(float(x.mean())) < 0.2  # dataset constants centre the data


@pytest.mark.data
def test_shared_cifar10_loads_a_subset(shared_data_dir: Path) -> None:
    # How fast it loads is a benchmark's question; here only the result is checked.
    if not (shared_data_dir / "cifar10.npz").is_file():
        pytest.skip("cifar10.npz is not in the shared data folder")
    data = load_dataset("cifar10", data_dir=shared_data_dir, train_subset=2000, test_subset=500)
    assert (len(data.train), len(data.test), data.input_shape) == (2000, 500, (3, 32, 32))
    assert Path(data.source).resolve() == (shared_data_dir / "cifar10.npz").resolve()


def test_caltech101_official_zip_with_nested_archive(tmp_path: Path) -> None:
    import zipfile

    build = tmp_path / "build"
    for label, cls in enumerate(["ant", "bee"]):
        for j in range(3):
            write_jpeg(
                build / "101_ObjectCategories" / cls / f"image_{j + 1:04d}.jpg",
                _colour(3 * label + j),
                (9, 7),
            )
    inner = build / "caltech-101" / "101_ObjectCategories.tar.gz"
    _tar(inner, build / "101_ObjectCategories")
    root = tmp_path / "root"
    (root / "caltech101").mkdir(parents=True)
    with zipfile.ZipFile(root / "caltech101" / "caltech-101.zip", "w") as zf:
        zf.write(inner, "caltech-101/101_ObjectCategories.tar.gz")
    data = load_dataset("caltech101", data_dir=root, image_size=6, val_fraction=0)
    assert (root / "caltech101" / "101_ObjectCategories" / "bee").is_dir()
    assert data.classes == ["ant", "bee"] and len(data.train) + len(data.test) == 6
    assert data.input_shape == (3, 6, 6)


def test_image_folder_missing_message(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="path=") as info:
        load_dataset("image_folder", data_dir=tmp_path, path=str(tmp_path / "nope"))
    assert str(tmp_path / "nope" / "train") in str(info.value)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_name_every_path_their_reader_looks_at(tmp_path: Path, name: str) -> None:
    """A Layout restates where its reader looks; on an empty data root both refuse, naming the same paths."""
    options = {"path": str(tmp_path / "mine")} if LAYOUTS[name].options else {}
    try:
        load_dataset(name, data_dir=tmp_path, **options)
    except DataNotFoundError as exc:
        looked = str(exc).split("looked at: ", 1)[1].split(")", 1)[0].split(", ")
    else:
        looked = []  # bundled data (digits): the check must pass as well
    if not looked:
        check_dataset_present(name, tmp_path, False, options=options)
        return
    with pytest.raises(DataNotFoundError) as info:
        check_dataset_present(name, tmp_path, False, options=options)
    assert all(path in str(info.value) for path in looked), (looked, str(info.value))
    assert not any(tmp_path.iterdir())
