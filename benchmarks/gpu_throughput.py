"""Training throughput of the plain loop and of the fast path (``train.fast``) on CIFAR-10.

For each of ``resnet20``, ``resnet56``, ``vgg16`` and ``mobilenet_v1`` the script trains the same model
(same initial weights, same seed) with :func:`prunelab.training.train` for ``--epochs`` epochs of the
CIFAR-10 training set (batch 128, SGD, cosine schedule, the standard crop + flip augmentation), once with
the plain settings and once with the fast ones, alternating plain and fast for ``--repeats`` rounds in
one process. It prints and records the training time of each epoch (validation excluded) and images/s;
the first epoch of a run includes warm-up (cuDNN autotuning, compilation), so the figures quoted are the
median over the later epochs (the only epoch when ``--epochs 1``).

Fast settings: ``device_data`` (the uint8 training set lives on the device; shuffling, crops, flips and
normalisation run there), ``channels_last``, ``amp: bf16`` and, with ``--compile``, ``torch.compile``
(``--compile-mode reduce-overhead`` for CUDA graphs). The protocol is identical in both variants. On a
machine without CUDA the loop falls back (float32, eager; see ``FastConfig``), so CPU figures compare the
plain path with channels-last only; they are labelled ``cpu`` in the output and the record.

Data: ``$PRUNELAB_DATA/cifar10.npz`` (or ``--data-dir``); ``--synthetic`` uses random images of the same
shape and size instead (throughput does not depend on the pixels), as does a machine without the file.

Usage::

    .venv/bin/python benchmarks/gpu_throughput.py                         # CUDA: full CIFAR-10
    .venv/bin/python benchmarks/gpu_throughput.py --compile --epochs 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_throughput.py --train-subset 256 --epochs 2 \\
        --threads 1 --out benchmarks/results/gpu_throughput_cpu.json      # CPU smoke figures
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from prunelab._io import atomic_write_json
from prunelab.data import Augment, TensorImageDataset, load_dataset
from prunelab.errors import DataNotFoundError
from prunelab.metrics.latency import cpu_name
from prunelab.models import build_model
from prunelab.training import TrainConfig, set_seed, train

MODELS = ("resnet20", "resnet56", "vgg16", "mobilenet_v1")
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_throughput.json"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu: " + cpu_name()


def _synthetic(n: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    train_set = TensorImageDataset(
        images,
        labels,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        classes=[str(i) for i in range(10)],
        augment=Augment(crop_padding=4, flip=True),
    )
    return SimpleNamespace(train=train_set, val=None)


def _data(args: argparse.Namespace) -> tuple[SimpleNamespace, str]:
    """The training set (no validation split: epoch times are training only) and where it came from."""
    if not args.synthetic:
        try:
            splits = load_dataset(
                "cifar10", data_dir=args.data_dir, val_fraction=0.0, train_subset=args.train_subset, seed=0
            )
            return SimpleNamespace(train=splits.train, val=None), "cifar10"
        except DataNotFoundError as exc:
            print(f"cifar10 not found ({exc}); using synthetic CIFAR-shaped data")
    return _synthetic(args.train_subset or 50_000), "synthetic"


def _run(
    name: str, data: Any, fast: dict[str, Any], args: argparse.Namespace, device: torch.device
) -> list[float]:
    """Epoch times (s) of one training run of model ``name``."""
    set_seed(0)
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32))
    cfg = TrainConfig(
        epochs=args.epochs, lr=0.1, batch_size=128, lr_schedule="cosine", progress=False, fast=fast
    )
    notes: list[str] = []
    result = train(model, data, cfg, seed=0, device=device, log=notes.append)
    for line in notes:
        if line.startswith("train.fast"):
            print("   ", line)
    return [float(row["time_s"]) for row in result.history]


def main(argv: list[str] | None = None) -> int:
    """Measure, print and record the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="alternating plain/fast rounds")
    parser.add_argument("--train-subset", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the fast settings")
    parser.add_argument(
        "--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune")
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both variants: cuDNN picks its fastest kernels
    data, source = _data(args)
    n = len(data.train)
    fast = {"device_data": True, "channels_last": True, "amp": "bf16", "compile": args.compile}
    if args.compile:
        fast["compile_mode"] = args.compile_mode
    variants = {"plain": {}, "fast": fast}
    label = device.type
    print(f"{source}, {n} training images, batch 128, {args.epochs} epochs, device {_device_name(device)}")
    rows: list[dict[str, Any]] = []
    for name in args.models:
        times: dict[str, list[list[float]]] = {v: [] for v in variants}
        for r in range(args.repeats):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for variant in order:
                times[variant].append(_run(name, data, variants[variant], args, device))
        row: dict[str, Any] = {"model": name, "device": label}
        for variant, runs in times.items():
            steady = [t for run in runs for t in (run[1:] if len(run) > 1 else run)]
            epoch_s = statistics.median(steady)
            row[variant] = {
                "epoch_times_s": runs,
                "epoch_s": round(epoch_s, 4),
                "images_per_s": round(n / epoch_s, 1),
                "first_epoch_s": round(statistics.median(run[0] for run in runs), 4),
            }
        row["speedup"] = round(row["plain"]["epoch_s"] / row["fast"]["epoch_s"], 3)
        rows.append(row)
        print(
            f"[{label}] {name:<13} plain {row['plain']['epoch_s']:8.2f} s/epoch {row['plain']['images_per_s']:9.1f} img/s"
            f" | fast {row['fast']['epoch_s']:8.2f} s/epoch {row['fast']['images_per_s']:9.1f} img/s"
            f" | fast/plain speed-up {row['speedup']:.2f}x (first epoch fast {row['fast']['first_epoch_s']:.2f} s)"
        )
    record = {
        "benchmark": "gpu_throughput",
        "command": " ".join(["benchmarks/gpu_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "data": source,
        "train_images": n,
        "batch_size": 128,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "fast_settings": fast,
        "environment": {
            "device": _device_name(device),
            "device_type": label,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "rows": rows,
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
