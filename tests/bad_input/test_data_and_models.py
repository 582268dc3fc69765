"""Bad datasets, weights, checkpoints and models cost one line, never a traceback or a silent change (issue 14).

Every case feeds one real bad input to the Python API (and, where a command reads it, to the CLI) and
checks the error class, a one-line message naming the problem and the fix, and that the bad file is left
as it was. Dataset files are small ``.npz`` files written here in the offline layout; checkpoints are
one compacted ``small_cnn`` saved once per module and edited per case.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import prunelab
from prunelab.data import (
    TensorImageDataset,
    check_dataset_options,
    check_dataset_present,
    load_dataset,
)
from prunelab.errors import CheckpointError, ConfigError, DataNotFoundError, UnsupportedModelError
from prunelab.models import build_model, load_weights
from prunelab.models.pretrained import check_pretrained_present
from prunelab.surgery import ChannelGraph, compact
from tests.bad_input.conftest import assert_one_line_error, assert_one_line_message, cli, tree

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------------------------------
# dataset files

#: Datasets whose reader takes ``<root>/<name>.npz`` first, with the image shape of that dataset.
NPZ_DATASETS = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "svhn": (32, 32, 3),
    "digits": (8, 8, 1),
    "tiny_imagenet": (64, 64, 3),
    "caltech101": (16, 16, 3),
}


def _arrays(shape: tuple[int, int, int] = (8, 8, 1), n_train: int = 40, n_test: int = 20) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def _write_npz(path: Path, compressed: bool = False, **arrays: Any) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _flip(data: bytes, start: int, stop: int) -> bytes:
    return data[:start] + bytes(b ^ 0xFF for b in data[start:stop]) + data[stop:]


def _central_directory(data: bytes) -> int:
    return data.rindex(b"PK\x01\x02")  # the last central-directory entry's header


#: Ways an offline file breaks at the zip level: name → bytes of a good file → bad bytes.
CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated_half": lambda b: b[: len(b) // 2],
    "truncated_tail": lambda b: b[:-12],
    "central_directory_flipped": lambda b: _flip(b, _central_directory(b), _central_directory(b) + 30),
    "member_data_flipped": lambda b: _flip(b, 200, 260),
    "garbage": lambda b: os.urandom(len(b)),
    "empty": lambda b: b"",
    "text": lambda b: b"x_train,y_train\n1,2\n" * 20,
    "pickle": lambda b: pickle.dumps({"x_train": [1, 2, 3]}),
}


def _load_error(name: str, root: Path, **kwargs: Any) -> DataNotFoundError:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, data_dir=root, **kwargs)
    return info.value


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_npz_is_one_line_naming_file_and_fix(tmp_path: Path, kind: str) -> None:
    good = _write_npz(tmp_path / "good.npz", compressed=kind == "member_data_flipped", **_arrays((28, 28, 1)))
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(CORRUPTIONS[kind](good.read_bytes()))
    good.unlink()
    before = tree(tmp_path)
    err = _load_error("mnist", tmp_path)
    assert_one_line_message(err, str(bad), "delete it", "re-create", "--download")
    assert "allow_pickle" not in str(err) and "unsafely" not in str(err)  # numpy's advice is not ours
    assert tree(tmp_path) == before  # the bad file is neither changed nor deleted


@pytest.mark.parametrize("name", sorted(NPZ_DATASETS))
def test_every_npz_loader_refuses_a_truncated_file(tmp_path: Path, name: str) -> None:
    good = _write_npz(tmp_path / "good.npz", **_arrays(NPZ_DATASETS[name]))
    bad = tmp_path / f"{name}.npz"
    bad.write_bytes(good.read_bytes()[:-40])
    good.unlink()
    before = tree(tmp_path)
    assert_one_line_message(_load_error(name, tmp_path), str(bad), "delete it", "re-create")
    assert tree(tmp_path) == before


def test_image_folder_npz_path_refuses_a_corrupted_file(tmp_path: Path) -> None:
    bad = tmp_path / "mine.npz"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(64))
    before = tree(tmp_path)
    err = _load_error("image_folder", tmp_path, path=str(bad))
    assert_one_line_message(err, str(bad), "re-create")
    assert tree(tmp_path) == before


def _idx(dims: tuple[int, ...]) -> bytes:
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + bytes(int(np.prod(dims)))


#: Broken official files: name → (files to write under the data root, needles of the message).
OFFICIAL_FILES: dict[str, tuple[dict[str, bytes], tuple[str, ...]]] = {
    "idx_header_claims_200_dims": (
        {
            "mnist/train-images-idx3-ubyte": bytes([0, 0, 8, 200]) + b"\0" * 8,
            "mnist/train-labels-idx1-ubyte": _idx((4,)),
            "mnist/t10k-images-idx3-ubyte": _idx((2, 28, 28)),
            "mnist/t10k-labels-idx1-ubyte": _idx((2,)),
        },
        ("train-images-idx3-ubyte", "truncated", "download again"),
    ),
    "idx_gzip_garbage": (
        {
            "mnist/train-images-idx3-ubyte.gz": b"\x1f\x8b" + b"\xff" * 40,
            "mnist/train-labels-idx1-ubyte": _idx((4,)),
            "mnist/t10k-images-idx3-ubyte": _idx((2, 28, 28)),
            "mnist/t10k-labels-idx1-ubyte": _idx((2,)),
        },
        ("train-images-idx3-ubyte.gz", "cannot read", "download again"),
    ),
    "cifar_batch_of_odd_size": (
        {f"cifar10/cifar-10-batches-bin/{f}": b"\0" * 100 for f in
         [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]},
        ("data_batch_1.bin", "not a CIFAR binary file", "download again"),
    ),
    "cifar_archive_garbage": (
        {"cifar10/cifar-10-binary.tar.gz": b"\x1f\x8b\x08" + b"\0" * 64},
        ("cifar-10-binary.tar.gz", "cannot extract", "delete it"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(OFFICIAL_FILES))
def test_broken_official_files_are_one_line(tmp_path: Path, kind: str) -> None:
    files, needles = OFFICIAL_FILES[kind]
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    before = tree(tmp_path)
    name = kind.split("_")[0].replace("idx", "mnist").replace("cifar", "cifar10")
    assert_one_line_message(_load_error(name, tmp_path), *needles)
    assert tree(tmp_path) == before  # a failed extraction leaves no half-extracted folder either


@pytest.mark.parametrize("which", ["first", "later"])
def test_undecodable_image_in_a_folder(tmp_path: Path, which: str) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "ds" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "ds" / split / cls / f"{i}.png")
    bad = tmp_path / "ds" / "train" / "a" / ("0.png" if which == "first" else "1.png")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    before = tree(tmp_path)
    err = _load_error("image_folder", tmp_path, path=str(tmp_path / "ds"))
    assert_one_line_message(err, str(bad), "cannot decode", "remove or replace")
    assert tree(tmp_path) == before


def _bad_layout(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    arrays = _arrays()
    change(arrays)
    return _write_npz(tmp_path / "digits.npz", **arrays)


#: Valid zip archives whose arrays are not the offline layout: name → (edit of the arrays, needles).
LAYOUT_ERRORS: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "missing_arrays": (lambda a: (a.pop("y_test"), a.pop("x_test")), ("lacks", "x_test", "y_test")),
    "float_images": (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), ("float32", "uint8")),
    "flat_images": (lambda a: a.update(x_train=a["x_train"].reshape(40, -1)), ("x_train", "(N, H, W, C)")),
    "one_label_short": (lambda a: a.update(y_train=a["y_train"][:-1]), ("y_train", "one label per image")),
    "sizes_differ": (lambda a: a.update(x_test=np.zeros((20, 6, 6, 1), np.uint8)), ("differ in size",)),
    "object_array": (lambda a: a.update(label_names=np.array([{"a": 1}] * 10, dtype=object)), ("objects",)),
}


@pytest.mark.parametrize("kind", sorted(LAYOUT_ERRORS))
def test_npz_with_wrong_arrays_is_one_line(tmp_path: Path, kind: str) -> None:
    change, needles = LAYOUT_ERRORS[kind]
    bad = _bad_layout(tmp_path, change)
    before = tree(tmp_path)
    err = _load_error("digits", tmp_path)
    assert_one_line_message(err, str(bad), "re-create", *needles)
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------------------------------
# labels


#: Labels that a cast to int64 would change or that index no class: name → (labels, needles).
BAD_LABELS: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {
    "fractional_float": (np.where(np.arange(40) == 7, 1.7, np.arange(40) % 10).astype(np.float64), ("1.7", "whole")),
    "nan": (np.where(np.arange(40) == 3, np.nan, 1.0), ("nan", "whole")),
    "negative": (np.where(np.arange(40) == 5, -1, np.arange(40) % 10).astype(np.int64), ("-1", "outside")),
    "too_large": (np.where(np.arange(40) == 5, 10, np.arange(40) % 10).astype(np.int64), ("10", "[0, 10)")),
    "strings": (np.array([str(i % 10) for i in range(40)]), ("<U1", "integers")),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_bad_labels_in_a_file_are_refused_not_truncated(tmp_path: Path, kind: str) -> None:
    labels, needles = BAD_LABELS[kind]
    bad = _bad_layout(tmp_path, lambda a: a.update(y_train=labels))
    before = tree(tmp_path)
    assert_one_line_message(_load_error("digits", tmp_path), str(bad), "y_train", *needles)
    assert tree(tmp_path) == before


def test_whole_number_float_labels_are_accepted(tmp_path: Path) -> None:
    _bad_layout(tmp_path, lambda a: a.update(y_train=(np.arange(40) % 10).astype(np.float32)))
    data = load_dataset("digits", data_dir=tmp_path, val_fraction=0)
    assert data.train.labels.dtype == torch.int64 and data.train.labels.tolist() == [
        i % 10 for i in range(40)
    ]


def test_label_names_shorter_than_labels(tmp_path: Path) -> None:
    bad = _bad_layout(tmp_path, lambda a: a.update(label_names=np.array(["a", "b", "c"])))
    assert_one_line_message(_load_error("digits", tmp_path), str(bad), "[0, 3)")


def test_cifar100_coarse_float_labels(tmp_path: Path) -> None:
    arrays = _arrays((32, 32, 3))
    arrays.update(y_train_coarse=np.full(40, 2.5), y_test_coarse=np.zeros(20, np.uint8))
    bad = _write_npz(tmp_path / "cifar100.npz", **arrays)
    err = _load_error("cifar100", tmp_path, label_type="coarse")
    assert_one_line_message(err, str(bad), "y_train_coarse", "2.5")


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (torch.tensor([0.0, 1.5, 2.0]), "1.5"),
        (torch.tensor([0, 1, 3]), "3"),
        (torch.tensor([0, -2, 1]), "-2"),
    ],
    ids=["fractional", "too_large", "negative"],
)
def test_user_dataset_labels(labels: torch.Tensor, needle: str) -> None:
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ConfigError) as info:
        TensorImageDataset(images, labels, mean=(0.5,), std=(0.5,), classes=["a", "b", "c"])
    assert_one_line_message(info.value, "TensorImageDataset labels", needle)


# ----------------------------------------------------------------------------------------------------
# dataset options and presence (the validator's checks: nothing is read)


@pytest.mark.parametrize(
    ("name", "kwargs", "needles"),
    [
        (
            "cifar100",
            {"labl_type": "fine"},
            ("data.kwargs.labl_type", "did you mean label_type", "known: label_type"),
        ),
        ("cifar100", {"label_type": "medium"}, ("data.kwargs.label_type", "'fine' or 'coarse'", "'medium'")),
        (
            "digits",
            {"colour": True},
            ("data.kwargs.colour", "unknown option of dataset digits", "known: none"),
        ),
        ("caltech101", {"test_fraction": "a fifth"}, ("data.kwargs.test_fraction", "a number")),
        ("caltech101", {"image_size": 32}, ("data.kwargs.image_size", "data.image_size")),
        ("image_folder", {"mode": "RGBA"}, ("data.kwargs.mode", "'RGB' or 'L'")),
        ("image_folder", {"path": 3}, ("data.kwargs.path", "a path")),
    ],
    ids=["typo", "choice", "no_options", "type", "misplaced", "mode", "path_type"],
)
def test_check_dataset_options(
    tmp_path: Path, name: str, kwargs: dict[str, Any], needles: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as info:
        check_dataset_options(name, kwargs)
    assert_one_line_message(info.value, *needles)
    assert not any(tmp_path.iterdir())


def test_check_dataset_options_unknown_dataset() -> None:
    with pytest.raises(ConfigError) as info:
        check_dataset_options("cifar11", {})
    assert_one_line_message(info.value, "cifar11", "did you mean")


def test_check_dataset_present_absent_lists_paths_and_fixes(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        check_dataset_present("cifar10", tmp_path, False)
    assert_one_line_message(
        info.value,
        str(tmp_path / "cifar10.npz"),
        str(tmp_path / "cifar10" / "cifar-10-binary.tar.gz"),
        "--download",
    )
    check_dataset_present("cifar10", tmp_path, True)  # downloadable: the run fetches it
    assert not any(tmp_path.iterdir())


def test_check_dataset_present_incomplete_official_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "data_batch_1.bin").write_bytes(b"\0" * 3073)
    with pytest.raises(DataNotFoundError) as info:
        check_dataset_present("cifar10", tmp_path, False)
    assert_one_line_message(info.value, str(folder / "test_batch.bin"))


@pytest.mark.parametrize("content", [b"", b"not a zip at all"], ids=["empty", "not_zip"])
def test_check_dataset_present_broken_npz(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(content)
    before = tree(tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        check_dataset_present("mnist", tmp_path, True)
    assert_one_line_message(info.value, str(bad), "delete it")
    assert tree(tmp_path) == before


def test_check_dataset_present_image_folder_path(tmp_path: Path) -> None:
    missing = tmp_path / "photos"
    with pytest.raises(DataNotFoundError) as info:
        check_dataset_present("image_folder", tmp_path, True, options={"path": str(missing)})
    assert_one_line_message(info.value, str(missing / "train"), "path=")
    assert "--download" not in str(info.value)  # nothing to download: not offered as a fix


def test_check_pretrained_present(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        check_pretrained_present("mobilenet_v1_075_imagenet", tmp_path, True)  # no URL: download cannot help
    assert_one_line_message(info.value, str(tmp_path / "weights"), "no official download")
    empty = tmp_path / "weights" / "resnet20-12fca82f.th"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        check_pretrained_present("resnet20_cifar10", tmp_path, False)
    assert_one_line_message(info.value, str(empty), "empty", "delete it")
    with pytest.raises(ConfigError) as info:
        check_pretrained_present("resnet21_cifar10", tmp_path, False)
    assert_one_line_message(info.value, "did you mean")


# ----------------------------------------------------------------------------------------------------
# checkpoints and weights files


@pytest.fixture(scope="module")
def compacted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compacted small_cnn saved with save_pruned (its spec narrows every conv)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))
    small, _ = prunelab.prune_channels(model, (1, 8, 8), 0.3, scope="layer")
    return prunelab.save_pruned(
        small, tmp_path_factory.mktemp("ckpt") / "small.pt", builder="small_cnn", example_inputs=(1, 8, 8)
    )


def _edited(compacted: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    payload = torch.load(compacted, weights_only=True)
    edit(payload)
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


def _other_model_state() -> dict[str, torch.Tensor]:
    return build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5).state_dict()


def _spec_conv(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["arch"]["surgery"]["layers"]["features.3"]


#: Edits that make a checkpoint's spec and weights disagree: name → (edit, needles of the message).
CHECKPOINT_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "spec_edited": (
        lambda p: _spec_conv(p)["tensors"].update(weight=[3, *_spec_conv(p)["tensors"]["weight"][1:]]),
        ("features.3.weight", "shape"),
    ),
    "weights_of_another_model": (lambda p: p.update(state_dict=_other_model_state()), ("features.0.weight",)),
    "tensor_missing": (lambda p: p["state_dict"].pop("features.4.running_var"), ("features.4.running_var", "missing")),
    "tensor_extra": (lambda p: p["state_dict"].update(extra=torch.zeros(2)), ("'extra'", "unexpected")),
    "tensor_wrong_shape": (
        lambda p: p["state_dict"].update({"classifier.bias": torch.zeros(7)}),
        ("classifier.bias", "(7,)"),
    ),
    "spec_entry_malformed": (
        lambda p: _spec_conv(p)["tensors"].update(weight="wide"),
        ("features.3", "malformed"),
    ),
    "arch_missing": (lambda p: p.pop("arch"), ("arch", "lacks")),
    "nan_weight": (lambda p: p["state_dict"]["features.3.weight"].view(-1)[0].fill_(float("nan")), ("features.3.weight", "nan")),
    "inf_running_var": (lambda p: p["state_dict"]["features.1.running_var"].fill_(float("inf")), ("features.1.running_var", "infinite")),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_EDITS))
def test_checkpoint_not_matching_its_spec_is_one_line(compacted: Path, tmp_path: Path, kind: str) -> None:
    edit, needles = CHECKPOINT_EDITS[kind]
    path = _edited(compacted, tmp_path, edit)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as info:
        prunelab.load_pruned(path)
    assert_one_line_message(info.value, *needles)
    assert tree(tmp_path) == before


def test_checkpoint_mask_with_non_binary_values(tmp_path: Path) -> None:
    model = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))
    prunelab.prune(model, 0.5)
    path = prunelab.save_pruned(model, tmp_path / "masked.pt", builder="small_cnn", example_inputs=(1, 8, 8))
    payload = torch.load(path, weights_only=True)
    payload["masks"]["features.0.weight"] = payload["masks"]["features.0.weight"].float() * 2
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        prunelab.load_pruned(path)
    assert_one_line_message(info.value, "features.0.weight", "0 and 1")


@pytest.mark.parametrize("value", [float("nan"), float("-inf")], ids=["nan", "inf"])
def test_weights_file_with_non_finite_tensor(tmp_path: Path, value: float) -> None:
    model = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))
    state = model.state_dict()
    state["classifier.weight"][0, 0] = value
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    before = tree(tmp_path)
    fresh = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))
    kept = fresh.classifier.weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        load_weights(fresh, path)
    assert_one_line_message(info.value, str(path), "classifier.weight", "re-create")
    assert torch.equal(fresh.classifier.weight, kept)  # nothing was loaded
    assert tree(tmp_path) == before


class _Evil:
    """Unpickling it would create a marker file: a stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("loader", ["load_pruned", "load_weights"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, loader: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "prunelab.checkpoint", "state_dict": {"x": _Evil(marker)}}, path)
    with pytest.raises(CheckpointError) as info:
        if loader == "load_pruned":
            prunelab.load_pruned(path)
        else:
            load_weights(build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8)), path)
    assert_one_line_message(info.value, str(path), "cannot be loaded safely")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------
# models without weights, and selections that empty a layer


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _meta_net() -> nn.Module:
    with torch.device("meta"):
        return _net()


META_CALLS: dict[str, Callable[[nn.Module], Any]] = {
    "Pruner": lambda m: prunelab.Pruner(m),
    "prune": lambda m: prunelab.prune(m, 0.5),
    "prune_channels": lambda m: prunelab.prune_channels(m, (3, 8, 8), 0.5),
    "ChannelGraph": lambda m: ChannelGraph(m, (3, 8, 8)),
    "compact": lambda m: compact(m, {"0": torch.tensor([True] * 4 + [False] * 4)}, (3, 8, 8)),
}


@pytest.mark.parametrize("call", sorted(META_CALLS))
def test_meta_model_is_refused(call: str) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        META_CALLS[call](_meta_net())
    assert_one_line_message(info.value, "meta device", "no real weights", "to_empty", "'0.weight'")


def test_pruner_step_after_training_diverged() -> None:
    model = _net()
    pruner = prunelab.Pruner(model).prepare()
    with torch.no_grad():
        model[5].parametrizations.weight.original[0, 0] = float("nan")  # what a diverged step leaves
    with pytest.raises(UnsupportedModelError) as info:
        pruner.step(0.5)
    assert_one_line_message(info.value, "Pruner.step", "5.parametrizations.weight.original", "NaN or inf")
    assert pruner.sparsity() == 0.0  # nothing was pruned


@pytest.mark.parametrize("call", ["prune_channels", "compact"])
def test_structured_pruning_of_a_model_with_inf_weights(call: str) -> None:
    model = _net()
    with torch.no_grad():
        model[1].running_var[3] = float("inf")
    with pytest.raises(UnsupportedModelError) as info:
        META_CALLS[call](model)
    assert_one_line_message(info.value, "'1.running_var'", "NaN or inf")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_min_keep_zero_cannot_empty_a_layer(scope: str) -> None:
    model = _net()
    with pytest.raises(ConfigError) as info:
        prunelab.prune_channels(model, torch.randn(2, 3, 8, 8), 0.95, scope=scope, min_keep=0)
    assert_one_line_message(info.value, "removes all 8 channels", "'0'", "min_keep >= 1", "lower amount")
    assert model[0].out_channels == 8  # the model is left as it was


def test_compact_mask_keeping_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        compact(_net(), {"0": torch.zeros(8, dtype=torch.bool)}, (3, 8, 8), min_keep=0)
    assert_one_line_message(info.value, "layer '0'", "min_keep >= 1")


# ----------------------------------------------------------------------------------------------------
# the same inputs through the CLI


def test_cli_run_with_corrupted_dataset_file(
    tiny_recipe: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = workdir / "data"
    data.mkdir()
    bad = data / "digits.npz"
    bad.write_bytes(_write_npz(workdir / "good.npz", **_arrays()).read_bytes()[:-30])
    before = tree(data)
    code, _, err = cli(["run", tiny_recipe, "--data-dir", data, "--quiet"], capsys)
    assert_one_line_error(code, err, str(bad), "delete it", "re-create")
    assert tree(data) == before


def test_cli_run_with_fractional_labels(
    tiny_recipe: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = workdir / "data"
    data.mkdir()
    arrays = _arrays()
    arrays["y_test"] = arrays["y_test"].astype(np.float32) + 0.25
    _write_npz(data / "digits.npz", **arrays)
    code, _, err = cli(["run", tiny_recipe, "--data-dir", data, "--quiet"], capsys)
    assert_one_line_error(code, err, "y_test", "0.25", "whole number")


def test_cli_init_from_nan_weights(
    tiny_recipe: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8)).state_dict()
    state["features.0.weight"][0] = float("nan")
    weights = workdir / "nan.pt"
    torch.save(state, weights)
    before = tree(workdir)
    code, _, err = cli(["run", tiny_recipe, "--set", f"model.init={weights}", "--quiet"], capsys)
    assert_one_line_error(code, err, "features.0.weight", "nan")
    assert {k: v for k, v in tree(workdir).items() if not k.startswith("runs")} == before


@pytest.mark.parametrize("kind", ["spec_edited", "nan_weight"])
def test_cli_export_of_a_bad_checkpoint(
    compacted: Path, workdir: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = _edited(compacted, workdir, CHECKPOINT_EDITS[kind][0])
    before = tree(workdir)
    code, _, err = cli(["export", path, "--no-latency"], capsys)
    assert_one_line_error(code, err, *CHECKPOINT_EDITS[kind][1])
    assert tree(workdir) == before  # nothing exported, the checkpoint untouched


def test_zip_archive_of_other_files(tmp_path: Path) -> None:
    """A valid zip holding no arrays at all: refused naming the missing arrays and what it holds."""
    bad = tmp_path / "digits.npz"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "not arrays")
    err = _load_error("digits", tmp_path)
    assert_one_line_message(err, str(bad), "lacks x_train", "readme.txt")
