r"""Per-filter features over a calibration set: the ``N × P`` matrix PLS+VIP pruning is fitted on.

A. Jordao, R. Kloss, F. Yamada and W. R. Schwartz, *Pruning Deep Neural Networks using Partial Least
Squares*, BMVC 2019 Workshops (arXiv:1810.07610), represent filter ``f`` of layer ``l`` on sample ``x``
by its globally pooled output map

.. math::
    X_{n,(l,f)} = \max_{h,w} A_{l,f}(x_n)_{h,w} \quad\text{(default)} \qquad\text{or}\qquad
    \frac{1}{HW}\sum_{h,w} A_{l,f}(x_n)_{h,w},

one scalar per filter and sample, concatenated over the scored layers into ``X ∈ R^{N×P}`` (``P`` =
total filters). ``A`` is the convolution's own output (before BatchNorm), as ``Conv2D.output`` is in the
official Keras code. With ``scale=True`` PLS standardises every column, so a per-channel affine map with
positive scale (an eval-mode BatchNorm with γ > 0) would not change the result anyway.

The same representation serves every layer that produces channels: a feature is the layer's output
pooled over *every dimension but the channel dimension* — dim 1 for convolutions (ordinary, grouped,
transposed, 1-D) and BatchNorm, the **last** dim for ``nn.Linear``, whose features are always the last
dimension. A Linear over channels-last ``(N, H, W, C)`` (ConvNeXt) or tokens ``(N, T, C)`` is pooled over
its positions; a Linear on ``(N, C)`` is its own feature.

:class:`FilterFeatures` is a context manager that hooks the layers, *accumulates* the pooled rows of every
batch pushed through the model (never only the last batch) and always removes its hooks on exit.
:meth:`FilterFeatures.finalize` all-gathers the rows of every DDP rank (each rank feeds its own shard),
so every rank ends with the same full matrix; single-process it is the local matrix unchanged.
:func:`collect_features` draws the calibration samples (the whole training split by default, as the
official code, or a seeded subsample of ``num_samples``), shards them across ranks, and returns
``(X, labels)``; :func:`batch_features` does the same over given calibration ``(x, y)`` batches, whose
``x`` may be a tensor, a tuple/list of positional inputs or a dict of keyword inputs (models with several
inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunelab.core.inputs import call_model
from prunelab.core.modules import eval_mode
from prunelab.errors import ConfigError
from prunelab.stats.activations import calibration_inputs, model_device
from prunelab.stats.hooks import ForwardHooks

__all__ = [
    "POOLINGS",
    "FilterFeatures",
    "all_gather_rows",
    "batch_features",
    "channel_dim",
    "collect_features",
    "feature_batches",
]

#: Supported filter representations (global max or average pooling of the output map).
POOLINGS: tuple[str, ...] = ("max", "avg")


def channel_dim(module: nn.Module) -> int:
    """The dimension of ``module``'s output that holds its channels: ``-1`` for a Linear, else 1.

    A Linear's features are always its last dimension; convolutions (ordinary, grouped, transposed) and
    BatchNorm put the channels at dim 1.
    """
    return -1 if isinstance(module, nn.Linear) else 1


def _pool(output: Tensor, pooling: str, dim: int = 1) -> Tensor:
    """``(N, channels)``: ``output`` pooled over every dimension but the batch and ``dim``."""
    out = output.detach()
    if out.dim() == 2:  # (N, C): one value per unit already
        return out
    if dim != 1:
        out = out.movedim(dim, 1)
    flat = out.flatten(2)
    return flat.amax(dim=2) if pooling == "max" else flat.mean(dim=2)


def all_gather_rows(local: Tensor) -> Tensor:
    """Concatenate every rank's rows (rank order); the identity single-process.

    Built on the sum all-reduce of :mod:`prunelab.distributed`: each rank writes its rows at its
    offset of a zero matrix and the sum is the concatenation, exactly (adding zeros is exact), on gloo
    and NCCL alike and with uneven shards.
    """
    from prunelab import distributed as dist

    if not dist.is_distributed():
        return local
    world, me = dist.world_size(), dist.rank()
    counts = torch.zeros(world, dtype=torch.int64, device=local.device)
    counts[me] = local.shape[0]
    dist.all_reduce_(counts)
    offsets = [0, *torch.cumsum(counts, 0).tolist()]
    full = torch.zeros(int(offsets[-1]), *local.shape[1:], dtype=local.dtype, device=local.device)
    full[int(offsets[me]) : int(offsets[me + 1])] = local
    return dist.all_reduce_(full)


@dataclass
class FilterFeatures(ForwardHooks):
    """Context manager accumulating globally pooled filter outputs, batch by batch, into an ``N × P`` matrix.

    Args:
        layers: ``{name: module}`` whose outputs are the features (columns in this order, then filter
            order within a layer).
        pooling: ``"max"`` (official default) or ``"avg"``.
        channel_dims: ``{name: dim}`` of the output dimension holding a layer's channels, for layers
            :func:`channel_dim` does not know (default: the last for a Linear, else 1).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> conv = nn.Conv2d(1, 2, 1, bias=False)
        >>> _ = conv.weight.data.fill_(1.0)
        >>> with FilterFeatures({"c": conv}) as rec:
        ...     _ = conv(torch.tensor([[[[1.0, 3.0]]]]))
        >>> rec.finalize().tolist()
        [[3.0, 3.0]]
    """

    layers: dict[str, nn.Module]
    pooling: str = "max"
    channel_dims: dict[str, int] = field(default_factory=dict)
    columns: list[tuple[str, int]] = field(default_factory=list, init=False)
    _chunks: dict[str, list[Tensor]] = field(default_factory=dict, init=False, repr=False)
    _handles: list[Any] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")

    def __enter__(self) -> FilterFeatures:  # noqa: PYI034 - py3.10 has no typing.Self
        """Register the hooks (previous features are discarded)."""
        self._chunks = {name: [] for name in self.layers}
        self.columns = []
        try:
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def _hook(self, name: str) -> Any:
        dim = self.channel_dims.get(name, channel_dim(self.layers[name]))

        def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not isinstance(output, Tensor):
                raise ConfigError(
                    f"features: layer {name!r} returned a {type(output).__name__}, not a tensor; pool the "
                    "features of layers with one output tensor"
                )
            # Pooled right away: only N·P numbers are kept, never the feature maps.
            self._chunks[name].append(_pool(output, self.pooling, dim).float())

        return hook

    def local(self) -> Tensor:
        """This process's ``(n, P)`` rows (every layer must have seen the same batches)."""
        blocks = []
        rows = None
        self.columns = []
        for name in self.layers:
            chunks = self._chunks.get(name) or []
            if not chunks:
                raise ConfigError(
                    f"features: layer {name!r} produced no output; run batches inside the context"
                )
            block = torch.cat(chunks, dim=0)
            if rows is not None and block.shape[0] != rows:
                raise ConfigError(
                    f"features: layer {name!r} saw {block.shape[0]} samples, others {rows} (a layer that runs "
                    "more than once per forward, or not on every batch); leave it out of the scored groups"
                )
            rows = block.shape[0]
            blocks.append(block)
            self.columns.extend((name, f) for f in range(block.shape[1]))
        return torch.cat(blocks, dim=1)

    def finalize(self) -> Tensor:
        """The ``(N, P)`` matrix over every rank's samples (all-gathered under DDP)."""
        return all_gather_rows(self.local())


def feature_batches(
    dataset: Any,
    num_samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield this rank's share of the calibration samples as ``(x, y)`` batches, lazily, without augmentation.

    Args:
        dataset: a prunelab tensor dataset (``get_batch``) or a map-style dataset of ``(x, y)``.
        num_samples: a seeded random subsample of this size (``None``: every sample, in order).
        batch_size: samples per batch.
        seed: seeds the subsample.
        rank: this process's rank; it takes every ``world_size``-th sample starting at ``rank``.
        world_size: number of processes sharing the samples.

    Raises:
        ConfigError: for a non-positive size or an empty dataset.
    """
    if (num_samples is not None and num_samples < 1) or batch_size < 1:
        raise ConfigError("calibration: num_samples and batch_size must be >= 1")
    n = len(dataset)
    if n == 0:
        raise ConfigError("calibration: the dataset is empty; check the data split and subsets")
    if num_samples is None or num_samples >= n:
        indices = torch.arange(n)
    else:
        # Subsample for large datasets: a fixed seeded subset, the same on every rank before sharding.
        indices = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:num_samples]
    for chunk in indices[rank::world_size].split(batch_size):
        if hasattr(dataset, "get_batch"):
            yield dataset.get_batch(chunk)
        else:
            items = [dataset[int(i)] for i in chunk]
            yield torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


@torch.no_grad()
def collect_features(
    model: nn.Module,
    dataset: Any,
    layers: Mapping[str, nn.Module],
    *,
    pooling: Literal["max", "avg"] = "max",
    num_samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[Tensor, Tensor, list[tuple[str, int]]]:
    """Run the calibration samples through ``model`` (eval mode) and return ``(X, labels, columns)``.

    ``X`` is ``(N, P)`` float32 on the model's device, ``labels`` ``(N,)`` int64, ``columns[j]`` the
    ``(layer, filter)`` of column ``j``. Under DDP each rank runs its shard and all ranks return the
    same all-gathered matrices. The model's train/eval mode is restored afterwards.
    """
    from prunelab import distributed as dist

    batches = feature_batches(
        dataset, num_samples, batch_size, seed, rank=dist.rank(), world_size=dist.world_size()
    )
    return batch_features(model, batches, layers, pooling=pooling)


def _labels(y: Any, device: torch.device) -> Tensor:
    """A batch's targets as a tensor: class indices ``(n,)`` (int64) or score rows ``(n, C)`` (float)."""
    if y is None:
        raise ConfigError(
            "features: a calibration batch has no labels (y is None); PLS+VIP needs (x, labels) batches"
        )
    t = torch.as_tensor(y).to(device)
    if t.dim() == 2 and t.is_floating_point():
        return t.float()
    if t.dim() != 1 or t.is_floating_point() and not bool((t == t.round()).all()):
        raise ConfigError(
            f"features: labels must be class indices (n,) or one-hot/score rows (n, C), got shape {tuple(t.shape)}"
        )
    return t.long()


@torch.no_grad()
def batch_features(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    layers: Mapping[str, nn.Module],
    *,
    pooling: Literal["max", "avg"] = "max",
) -> tuple[Tensor, Tensor, list[tuple[str, int]]]:
    """Run calibration ``(x, y)`` batches through ``model`` (eval mode) and return ``(X, labels, columns)``.

    As :func:`collect_features`, over the given batches: ``x`` is a tensor, a tuple/list of positional
    inputs or a dict of keyword inputs; ``y`` holds class indices ``(n,)`` (or one-hot / score rows
    ``(n, C)``, returned as float). Under DDP each rank feeds its own batches and all ranks return the
    all-gathered matrices.

    Raises:
        ConfigError: no batch, a batch that is not an ``(x, y)`` pair, labels that are not class indices,
            or a layer that did not produce one output per sample.
    """
    device = model_device(model)
    labels = []
    with eval_mode(model), FilterFeatures(dict(layers), pooling) as recorder:
        for batch in batches:
            call_model(model, calibration_inputs(batch, "features", "(x, labels)"))
            labels.append(_labels(batch[1], device))
        if not labels:
            raise ConfigError("features: no calibration batches; give at least one (x, labels) pair")
        x_all = recorder.finalize()
        columns = list(recorder.columns)
    kinds = {t.dim() for t in labels}
    if len(kinds) > 1:
        raise ConfigError("features: mix of class-index and one-hot labels across batches; use one form")
    y_all = all_gather_rows(torch.cat(labels))
    if x_all.shape[0] != y_all.shape[0]:
        raise ConfigError(
            f"features: {x_all.shape[0]} feature rows but {y_all.shape[0]} labels; give one label per sample"
        )
    return x_all, y_all, columns
