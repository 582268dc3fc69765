"""Cost of training-time augmentation (random crop + flip) in the batch loader, CIFAR-10 shapes.

Loaders iterate over the same 50,000 uint8 images of shape 3×32×32 (random pixels: the cost does
not depend on the content), batch 128, in one process on one thread:

- ``plain``: the loader without augmentation (index_select + normalisation), the reference;
- ``augmented``: the same loader with the CIFAR policy (4-pixel zero-padded random crop + horizontal flip),
  as it is now: one ``index_select`` of windows straight from the dataset's padded source
  (:func:`prunelab.data.loader.padded_source`, built once per dataset, outside the timings: 480 MB here);
- ``masked_batch``: the same loader augmenting batch by batch without that source (the gathered batch
  and its mirror in a buffer, one ``index_select`` over a window view, a masking multiplication), which
  is what the loader still does for a dataset whose source would exceed ``SOURCE_MAX_BYTES``, and was
  the ``augmented`` variant before the padded source;
- ``padded_mirror``: the implementation before that (the zero-padded batch and its mirror written into
  a buffer, then one ``index_select`` over a window view);
- ``two_gathers``: the implementation before that (per-sample row and column index vectors, two int64
  ``gather`` calls).

All augmented variants give the same batches bit for bit (same draws, same order).

Each repetition takes ``--batches`` batches of every loader in turn, batch by batch, in rotating
order so that drift in the machine's load hits all of them alike, and times each batch on its own. The
medians over the repetitions and the median of the paired ratios are printed and written, with the
environment, to ``benchmarks/results/augment_speed.json``, each for the wall clock and (``cpu``) for the
calling thread's CPU time, which leaves out the waits of a shared machine.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/augment_speed.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/augment_speed.py --repeats 21 --batches 40
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _machine import cpu_name  # benchmarks/_machine.py, beside this script

from prunelab._io import atomic_write_json
from prunelab.data import Augment, TensorImageDataset, make_loader
from prunelab.data import loader as loader_module

RESULTS = Path(__file__).resolve().parent / "results" / "augment_speed.json"
VARIANTS = ("plain", "augmented", "masked_batch", "padded_mirror", "two_gathers")


def padded_mirror(images: torch.Tensor, policy: Augment, generator: torch.Generator) -> torch.Tensor:
    """The previous augmentation: zero-padded batch + mirror in one buffer, one ``index_select`` of windows."""
    b, c, h, w = images.shape
    p = policy.crop_padding
    n = b * c * (h + 2 * p) * (w + 2 * p)
    halves = 2 if policy.flip else 1
    buffer = images.new_zeros(halves * n)
    padded = buffer.view(halves, b, c, h + 2 * p, w + 2 * p)
    padded[0, :, :, p : p + h, p : p + w] = images
    if policy.flip:
        padded[1, :, :, p : p + h, p : p + w] = images.reshape(-1).flip(0).view(b, c, h, w)
    plane = torch.arange(b * c).view(b, c, 1)
    starts = (plane * (h + 2 * p) + torch.arange(h)) * (w + 2 * p)
    if p > 0:
        offsets = torch.randint(0, 2 * p + 1, (2, b, 1, 1), generator=generator)
        starts = starts + offsets[0] * (w + 2 * p) + offsets[1]
    if policy.flip:
        flip = torch.rand(b, 1, 1, generator=generator) < 0.5
        starts = torch.where(flip, (2 * n - w) - starts, starts)
    windows = buffer.as_strided((buffer.numel() - w + 1, w), (1, 1))
    return windows.index_select(0, starts.view(-1)).view(b, c, h, w)


def two_gathers(images: torch.Tensor, policy: Augment, generator: torch.Generator) -> torch.Tensor:
    """The augmentation before this change: per-sample row/column indices, then two gathers."""
    b, c, h, w = images.shape
    p = policy.crop_padding
    rows = torch.arange(h).expand(b, h)
    cols = torch.arange(w).expand(b, w)
    if p > 0:
        images = F.pad(images, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (2, b, 1), generator=generator)
        rows, cols = rows + offsets[0], cols + offsets[1]
    if policy.flip:
        flip = torch.rand(b, 1, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    out = images.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, images.shape[3]))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _gathering(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` as the loader called it before: the batch gathered first (``get_raw_batch``), then augmented."""

    def augment(
        images: torch.Tensor, policy: Augment, generator: torch.Generator, *, index=None, source=None
    ) -> torch.Tensor:
        return fn(images if index is None else images.index_select(0, index), policy, generator)

    return augment


def _batch_by_batch(
    images: torch.Tensor, policy: Augment, generator: torch.Generator, *, index=None, source=None
) -> torch.Tensor:
    """The loader's augmentation without the dataset's padded source: the masked crop of each batch
    (what a dataset whose source exceeds ``SOURCE_MAX_BYTES`` gets)."""
    return CURRENT(images, policy, generator, index=index)


CURRENT = loader_module.augment_batch
#: The other implementations, swapped into the loader for their variant.
IMPLEMENTATIONS = {
    "masked_batch": _batch_by_batch,
    "padded_mirror": _gathering(padded_mirror),
    "two_gathers": _gathering(two_gathers),
}


def check_identical() -> None:
    """Refuse to time implementations that disagree: every variant must give the same batch."""
    images = torch.randint(
        0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    policy = Augment(crop_padding=4, flip=True)
    expected = loader_module.augment_batch(images, policy, torch.Generator().manual_seed(2))
    index = torch.arange(128)
    source = loader_module.padded_source(images, images, policy)
    direct = loader_module.augment_batch(
        images, policy, torch.Generator().manual_seed(2), index=index, source=source
    )
    if not torch.equal(direct, expected):
        raise SystemExit("augment_speed: the padded-source path gives other batches than augment_batch")
    for name, fn in IMPLEMENTATIONS.items():
        if not torch.equal(fn(images, policy, torch.Generator().manual_seed(2), index=index), expected):
            raise SystemExit(f"augment_speed: {name} gives other batches than augment_batch")


def measure(*, repeats: int, batches: int, warmup: int) -> dict[str, Any]:
    """Per-batch times of each variant, interleaved batch by batch, and the paired ratios to ``plain``.

    Every repetition opens one epoch of every variant's loader and then takes ``batches`` batches from
    each in turn, the order rotating from batch to batch, so that a change in the machine's load hits all
    variants alike; each batch is timed on its own (wall clock and the calling thread's CPU time: the
    loader works in this thread). A repetition's time of a variant is the mean over its batches.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (50_000,), generator=generator)
    common = {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26), "classes": [str(i) for i in range(10)]}
    plain = TensorImageDataset(images, labels, **common)
    augmented = TensorImageDataset(images, labels, augment=Augment(crop_padding=4, flip=True), **common)
    loader_module.padded_source(augmented, augmented.images, augmented.augment)  # built once, untimed

    def repetition(epoch: int) -> dict[str, tuple[float, float]]:
        batches_of = {
            kind: iter(
                make_loader(plain if kind == "plain" else augmented, 128, train=True, seed=0, epoch=epoch)
            )
            for kind in VARIANTS
        }
        spent = {kind: [0.0, 0.0] for kind in VARIANTS}
        for kind, it in batches_of.items():  # the first batch also draws the epoch's order: untimed
            loader_module.augment_batch = IMPLEMENTATIONS.get(kind, CURRENT)  # type: ignore[assignment]
            next(it)
        try:
            for i in range(batches):
                shift = i % len(VARIANTS)
                for kind in VARIANTS[shift:] + VARIANTS[:shift]:
                    loader_module.augment_batch = IMPLEMENTATIONS.get(kind, CURRENT)  # type: ignore[assignment]
                    wall, cpu = time.perf_counter(), time.thread_time()
                    next(batches_of[kind])
                    spent[kind][0] += time.perf_counter() - wall
                    spent[kind][1] += time.thread_time() - cpu
        finally:
            loader_module.augment_batch = CURRENT  # type: ignore[assignment]
        return {kind: (w / batches, c / batches) for kind, (w, c) in spent.items()}

    for w in range(warmup):
        repetition(w)
    times: dict[str, list[float]] = {kind: [] for kind in VARIANTS}
    cpu: dict[str, list[float]] = {kind: [] for kind in VARIANTS}
    for r in range(repeats):
        for kind, (wall, thread) in repetition(warmup + r).items():
            times[kind].append(wall)
            cpu[kind].append(thread)
    return {**_summary(times), "times": times, "cpu": {**_summary(cpu), "times": cpu}}


def _summary(times: dict[str, list[float]]) -> dict[str, Any]:
    """Median seconds per batch of each variant and the median of its paired ratios to ``plain``."""
    medians = {kind: statistics.median(v) for kind, v in times.items()}
    paired = {
        kind: statistics.median(a / b for a, b in zip(times[kind], times["plain"], strict=True))
        for kind in VARIANTS[1:]
    }
    return {"seconds_per_batch": medians, "ratio_to_plain": paired}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table and write the JSON record."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, default=30, help="batches timed per repetition")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    check_identical()
    result = measure(repeats=args.repeats, batches=args.batches, warmup=args.warmup)
    med, ratio = result["seconds_per_batch"], result["ratio_to_plain"]
    cmed, cratio = result["cpu"]["seconds_per_batch"], result["cpu"]["ratio_to_plain"]
    print("variant       wall ms/batch  ratio to plain (paired median)  CPU ms/batch  CPU ratio")
    for kind in VARIANTS:
        print(
            f"{kind:<12} {med[kind] * 1e3:14.3f}  {ratio.get(kind, 1.0):30.2f}"
            f"  {cmed[kind] * 1e3:12.3f}  {cratio.get(kind, 1.0):9.2f}"
        )
    record = {
        "benchmark": "augment_speed",
        "command": " ".join(["benchmarks/augment_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "shape": [3, 32, 32],
        "dataset_size": 50_000,
        "batch_size": 128,
        "policy": {"crop_padding": 4, "flip": True},
        "repeats": args.repeats,
        "batches_per_repeat": args.batches,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
        },
        **result,
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
