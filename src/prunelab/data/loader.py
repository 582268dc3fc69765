"""A light batch loader for in-memory datasets: seeded shuffling, vectorised augmentation, DDP sharding.

``torch.utils.data.DataLoader`` collates sample by sample in Python, which dominates the step time of a
small CNN on a 2-core CPU. Here a batch is one ``index_select`` on the uint8 image tensor and one fused
multiply-add for the normalisation. In training with augmentation, the random crops and flips of the
whole batch are one more ``index_select`` over a window view of the dataset's padded source (the images
zero-padded, beside their mirror image, built once per dataset: :func:`padded_source`); a dataset too
large for that source is gathered into a buffer beside its mirror batch by batch and masked instead.
Either way it runs on whatever device the images live. Shuffling and augmentation draw from generators
seeded from ``(seed, epoch)``, so a run is reproducible and independent of the global RNG state.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from prunelab.data.dataset import Augment, TensorImageDataset
from prunelab.errors import ConfigError

__all__ = ["BatchLoader", "augment_batch", "make_loader", "padded_source"]

# Distinct streams for the shuffle order and for the augmentation draws, so that changing the
# augmentation policy does not change which samples land in which batch.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1


def _derive_seed(*values: int) -> int:
    # SeedSequence mixes the tuple properly: (seed=0, epoch=1) and (seed=1, epoch=0) must not collide,
    # which a naive "seed + epoch" would make them do.
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def _generator(*values: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derive_seed(*values))
    return g


@functools.lru_cache(maxsize=8)
def _crop_tables(
    b: int, c: int, h: int, w: int, p: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Lookup tables of :func:`augment_batch` for a ``(b, c, h, w)`` batch and padding ``p``.

    A sample's draw is coded as ``(row offset * (2p + 1) + column offset) * 2 + flip``, one of
    ``K = 2 (2p + 1)²`` codes. Returns

    - ``planes`` ``(b, c, 1)``: the flat start of every (sample, channel) plane of the batch;
    - ``sign`` ``(K, 1, 1)``: ``+1`` for a plain code, ``-1`` for a flipped one (a flipped row's window
      counts back from the end of the mirror, where planes lie in reverse order);
    - ``rows`` ``(K, 1, h)``: where each output row's window starts, relative to ``sign * plane``;
    - ``keep`` ``(K, 1, h, w)``: which output entries come from the image rather than the zero padding;
    - ``weights`` ``(2, 1, 1, 1)`` and ``margin`` ``(p,)``: the code's weights for the two offsets, and the
      zero margin of the buffer (in the batch's dtype).

    Cached: the loader asks for the same shape every batch, and on a loaded CPU each small op of a
    per-batch computation costs tens of microseconds.
    """
    n = 2 * p + 1
    m = b * c * h * w
    dy = torch.arange(n, device=device).view(n, 1, 1, 1)
    dx = torch.arange(n, device=device).view(1, n, 1, 1)
    flip = torch.arange(2, device=device).view(1, 1, 2, 1).bool()
    source_rows = torch.arange(h, device=device).view(1, 1, 1, h) + dy - p  # (n, 1, 1, h)
    # The flat position of the window's first entry, relative to its plane; a row wholly in the padding
    # reads a clamped (real) row instead, and the mask clears it.
    plain = source_rows.clamp(0, h - 1) * w + (dx - p)  # (n, n, 1, h)
    # A flipped row is the plain window read backwards, i.e. the mirror window that ends where the plain
    # one starts (mirror position 2m - 1 - q holds batch position q). "+ p": the buffer's front margin.
    rows = torch.where(flip, (2 * m - w) - plain, plain) + p
    cols = torch.arange(w, device=device).view(1, 1, 1, 1, w)
    source_cols = torch.where(flip.unsqueeze(-1), (w - 1) - cols, cols) + (dx - p).unsqueeze(-1)
    keep = ((source_rows >= 0) & (source_rows < h)).unsqueeze(-1) & ((source_cols >= 0) & (source_cols < w))
    k = 2 * n * n
    sign = torch.tensor([1, -1], device=device).repeat(n * n).view(k, 1, 1)
    return (
        torch.arange(b * c, device=device).view(b, c, 1) * (h * w),
        sign,
        rows.reshape(k, 1, h),
        keep.reshape(k, 1, h, w),
        torch.tensor([2 * n, 2], device=device).view(2, 1, 1, 1),
        torch.zeros(p, dtype=dtype, device=device),
    )


#: The most memory (bytes) the loader spends on one dataset's padded source (:func:`padded_source`); a
#: dataset whose source would be larger is augmented batch by batch instead. CIFAR-10's 50,000 training
#: images with a 4-pixel padding and flips take 480 MB (3.1x the images).
SOURCE_MAX_BYTES = 2 << 30

# One padded source per owner (a dataset), with the (padding, flip, device, storage, shape) it was built
# for: built once, replaced when those change, dropped with the owner.
_SOURCES: weakref.WeakKeyDictionary[object, tuple[tuple[object, ...], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def padded_source(owner: object, images: torch.Tensor, policy: Augment) -> torch.Tensor | None:
    """The flat ``[images zero-padded by P on every side | its flat mirror image]`` of ``owner``'s images.

    With it, :func:`augment_batch` crops and flips a batch in one ``index_select`` straight from the
    dataset: every window of ``W`` entries of a padded row is a cropped row (zeros where the padding is),
    and the same window read backwards, i.e. read forwards in the mirror, is the flipped one — no copy
    of the batch, no flip and no masking per batch. Built once per owner (a dataset) and policy, on the
    images' device, in ``2 (1 + 2P/H)(1 + 2P/W)`` times the images' memory (without flips, half); ``None``
    when that exceeds :data:`SOURCE_MAX_BYTES` or the policy does nothing.
    """
    if not policy.active:
        return None
    n, c, h, w = images.shape
    p, halves = policy.crop_padding, 2 if policy.flip else 1
    if halves * n * c * (h + 2 * p) * (w + 2 * p) * images.element_size() > SOURCE_MAX_BYTES:
        return None
    key = (p, policy.flip, images.device, images.data_ptr(), tuple(images.shape))
    cached = _SOURCES.get(owner)
    if cached is not None and cached[0] == key:
        return cached[1]
    source = images.new_zeros(halves, n, c, h + 2 * p, w + 2 * p)
    source[0, :, :, p : p + h, p : p + w] = images
    flat = source.view(-1)
    if policy.flip:
        half = flat.numel() // 2
        flat[half:] = flat[:half].flip(0)
    _SOURCES[owner] = (key, flat)
    return flat


@functools.lru_cache(maxsize=8)
def _source_tables(
    n: int, c: int, h: int, w: int, p: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lookup tables of the one-gather path of :func:`augment_batch` for a padded source of ``n`` images.

    Codes as in :func:`_crop_tables`. Returns ``sign`` ``(K, 1, 1)`` (``-1`` for a flipped code), ``rows``
    ``(K, c, h)``: each output row's window start relative to ``sign * image start``, and the code
    weights ``(2, 1, 1, 1)``. The flipped codes' rows read the mirror half; a policy without flips never
    draws them, so one set of tables serves both.
    """
    hp, wp = h + 2 * p, w + 2 * p
    k_offsets = 2 * p + 1
    dy = torch.arange(k_offsets, device=device).view(k_offsets, 1, 1, 1, 1)
    dx = torch.arange(k_offsets, device=device).view(1, k_offsets, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, 1, 1, c, 1) * (hp * wp)
    row = torch.arange(h, device=device).view(1, 1, 1, 1, h)
    plain = channel + (row + dy) * wp + dx  # (2P+1, 2P+1, 1, c, h): the crop's row, read forwards
    # Flipped: the same entries read backwards, i.e. the mirror window that ends where the plain one
    # starts (mirror position 2M - 1 - q holds source position q, M the size of one half).
    half = n * c * hp * wp
    flipped = torch.arange(2, device=device).view(1, 1, 2, 1, 1).bool()
    rows = torch.where(flipped, (2 * half - w) - plain, plain)
    codes = 2 * k_offsets * k_offsets
    sign = torch.tensor([1, -1], device=device).repeat(k_offsets * k_offsets).view(codes, 1, 1)
    return sign, rows.reshape(codes, c, h), torch.tensor([2 * k_offsets, 2], device=device).view(2, 1, 1, 1)


def _draw_codes(
    b: int, policy: Augment, generator: torch.Generator, weights: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Each sample's draw as a code (see :func:`_crop_tables`): row offset, column offset, then flip,
    drawn in that order from the CPU ``generator`` (the same draws on every device)."""
    p = policy.crop_padding
    code = torch.zeros(b, 1, 1, dtype=torch.int64, device=device)
    if p > 0:
        offsets = torch.randint(0, 2 * p + 1, (2, b, 1, 1), generator=generator)
        code = (offsets.to(device) * weights).sum(0)
    if policy.flip:
        code = code + (torch.rand(b, 1, 1, generator=generator) < 0.5).to(device)
    return code.view(-1)


def augment_batch(
    images: torch.Tensor,
    policy: Augment,
    generator: torch.Generator,
    *,
    index: torch.Tensor | None = None,
    source: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply a random crop (after zero padding) and/or horizontal flip to every image of a batch.

    Every output row is ``W`` consecutive entries of a zero-padded image row, read forwards (plain) or
    backwards (flipped). With ``source`` (the images' :func:`padded_source`) and ``index``, that is all it
    does: ``as_strided`` views the source as "the ``W`` entries starting at every position" and one
    ``index_select`` picks one start per output row, the flipped ones in the mirror half (reading the
    mirror forwards reads the images backwards, which is the flip).

    Without a source, nothing padded is materialised: the batch is copied once into a flat buffer
    followed by its flat mirror image (with ``index``, gathered from the dataset straight into it), the
    same kind of window ``index_select`` picks the rows, and one multiplication by the keep-mask of each
    sample's drawn crop clears the padding: a window reaching past either end of its image row reads the
    neighbouring row (or a ``P``-entry zero margin at either end of the buffer), exactly the entries the
    mask clears; a row wholly in the padding reads a real row, cleared whole. The starts (and masks) of
    every possible draw are cached tables (:func:`_crop_tables`, :func:`_source_tables`), so a batch
    costs a handful of ops either way.

    Each sample draws a row offset, a column offset and a flip bit, in that order, from the CPU
    ``generator``; the result is bit for bit the crop of the zero-padded image at those offsets, flipped
    when the bit is set — the same batch with or without a source (and as the earlier padded-buffer and
    two-gather implementations gave, for the same draws). It runs on the device of ``images``, so the
    same seed gives the same batch on every device.

    Args:
        images: ``(B, C, H, W)`` tensor of any dtype (uint8 in the loader), on any device; with ``index``,
            the ``(N, C, H, W)`` images the batch is taken from.
        policy: what to apply.
        generator: a CPU source of randomness (crop offsets first, then flip bits).
        index: the batch is ``images[index]`` (on the device of ``images``), gathered straight into the
            working buffer: the loader's way, one copy of the batch fewer than gathering it first.
        source: ``padded_source(owner, images, policy)`` for these ``images`` and this ``policy``, used
            with ``index``: the batch is then one gather from it.

    Returns:
        A new tensor with the shape, dtype and device of the batch.
    """
    if index is not None and (not policy.active or index.numel() == 0):
        return images.index_select(0, index)
    if not policy.active or images.shape[0] == 0:
        return images
    b = images.shape[0] if index is None else index.numel()
    n, c, h, w = images.shape
    p = policy.crop_padding
    dev = images.device
    if source is not None and index is not None:
        sign, rows, weights = _source_tables(n, c, h, w, p, dev)
        code = _draw_codes(b, policy, generator, weights, dev)
        first = index.to(dev).view(b, 1, 1) * (c * (h + 2 * p) * (w + 2 * p))  # each image's start
        starts = first * sign.index_select(0, code) + rows.index_select(0, code)
        windows = source.as_strided((source.numel() - w + 1, w), (1, 1))
        return windows.index_select(0, starts.view(-1)).view(b, c, h, w)
    m = b * c * h * w
    planes, sign, rows, keep, weights, margin = _crop_tables(b, c, h, w, p, images.dtype, dev)
    # [margin p | batch | mirror | margin p]: a window starts at most p entries before the batch and ends
    # at most p after the mirror; zero margins keep what it reads there finite (the mask clears it).
    halves = 2 if policy.flip else 1
    buffer = images.new_empty(halves * m + 2 * p)
    buffer[:p] = margin
    buffer[p + halves * m :] = margin
    batch = buffer[p : p + m]
    if index is None:
        batch.view(b, c, h, w).copy_(images)
    else:
        torch.index_select(images, 0, index, out=batch.view(b, c, h, w))
    if policy.flip:
        buffer[p + m : p + 2 * m] = batch.flip(0)
    code = _draw_codes(b, policy, generator, weights, dev)
    starts = planes * sign.index_select(0, code) + rows.index_select(0, code)
    windows = buffer.as_strided((buffer.numel() - w + 1, w), (1, 1))
    out = windows.index_select(0, starts.view(-1)).view(b, c, h, w)
    if p == 0:
        return out
    cleared = keep.index_select(0, code)
    if out.is_floating_point():
        # inf * 0 is NaN: a float batch is cleared by selection (slower; the loader's batches are uint8).
        return torch.where(cleared, out, out.new_zeros(()))
    return out.mul_(cleared)  # exact for integers, one pass


def _dist_info(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    if rank is None or world_size is None:
        import torch.distributed as dist

        initialised = dist.is_available() and dist.is_initialized()
        rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"distributed: rank {rank} is not in [0, world_size={world_size}); check the launcher"
        )
    return rank, world_size


class BatchLoader:
    """Iterable of ``(x, y)`` batches over one epoch; build it with :func:`make_loader`.

    Iterating twice yields the same batches; call :meth:`set_epoch` (or build a new loader) to move to the
    next epoch's order and augmentation draws.

    Attributes:
        dataset: the dataset batches come from.
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        train: shuffle and augment when true.
        seed: base seed of the shuffle and augmentation generators.
        epoch: current epoch, mixed into the seeds.
        rank: this process's shard index (0 without DDP).
        world_size: number of shards (1 without DDP).
        drop_last: drop the final incomplete batch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size: must be a positive integer, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = bool(drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation draws the next iteration uses."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (DistributedSampler semantics: padded to equal shards)."""
        return math.ceil(len(self.dataset) / self.world_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in iteration order.

        Training order is a permutation drawn from a generator seeded by ``(seed, epoch)`` only, so every
        rank computes the same permutation; the list is padded by wrapping around to a multiple of
        ``world_size`` and rank ``r`` takes positions ``r, r + world_size, ...`` — disjoint, equal shards
        that together cover the epoch, as ``torch.utils.data.DistributedSampler`` does.
        """
        n = len(self.dataset)
        if self.train:
            order = torch.randperm(n, generator=_generator(self.seed, self.epoch, _SHUFFLE_STREAM))
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n > 0:
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank : total : self.world_size]

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        ds = self.dataset
        fast = isinstance(ds, TensorImageDataset)
        if fast:
            # A dataset resident on an accelerator (TensorImageDataset.to) is indexed there: one copy of
            # the epoch's order instead of one per batch. The draws stay on the CPU generator.
            order = order.to(ds.images.device)
        policy = ds.augment if fast and self.train else Augment()
        # Each rank augments its own samples, so the augmentation stream includes the rank.
        gen = _generator(self.seed, self.epoch, _AUGMENT_STREAM, self.rank) if policy.active else None
        source = padded_source(ds, ds.images, policy) if gen is not None else None
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if fast:
                if gen is not None:
                    images = augment_batch(ds.images, policy, gen, index=idx, source=source)
                    yield ds.normalize(images), ds.labels.index_select(0, idx)
                else:
                    yield ds.get_batch(idx)
            else:
                # Foreign datasets: fall back to per-sample access and stacking (no augmentation here).
                items = [ds[int(i)] for i in idx]
                yield torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])

    def __repr__(self) -> str:
        return (
            f"BatchLoader(n={len(self.dataset)}, batch_size={self.batch_size}, train={self.train}, "
            f"epoch={self.epoch}, rank={self.rank}/{self.world_size}, batches={len(self)})"
        )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> BatchLoader:
    """Build the batch iterable for one epoch of ``dataset``.

    Args:
        dataset: a :class:`~prunelab.data.dataset.TensorImageDataset` (fast path with augmentation) or any
            map-style dataset of ``(tensor, int)`` items (stacked per batch, never augmented).
        batch_size: samples per batch, per rank.
        train: shuffle with a ``(seed, epoch)``-seeded generator and apply the dataset's augmentation
            policy; evaluation (``False``) keeps the stored order and never augments.
        seed: run seed.
        epoch: epoch number, mixed into the shuffle and augmentation seeds.
        distributed: shard the epoch across ``torch.distributed`` ranks (DistributedSampler semantics,
            including padding by wrap-around so every rank gets the same number of samples).
        drop_last: drop the final incomplete batch.
        rank: override of this process's rank (for tests or custom launchers); implies sharding when
            ``distributed`` is true.
        world_size: override of the number of ranks.

    Returns:
        A :class:`BatchLoader`; ``len()`` is the number of batches per epoch and iteration yields
        ``(x float32 (B, C, H, W), y int64 (B,))``.

    Raises:
        ConfigError: a non-positive batch size or an impossible rank.
    """
    r, ws = _dist_info(distributed, rank, world_size)
    return BatchLoader(
        dataset, batch_size, train=train, seed=seed, epoch=epoch, rank=r, world_size=ws, drop_last=drop_last
    )
