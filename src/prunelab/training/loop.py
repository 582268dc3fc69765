"""The one training loop: hooks, validation, checkpoints, resume, DDP; and :func:`evaluate`.

Every training stage of prunelab (dense training, fine-tuning between pruning rounds, gradual pruning,
sparsity-regularised training) goes through :func:`train`, written as one explicit loop so the order of
operations is visible in one place (see :mod:`prunelab.training.hooks` for where each hook runs).
Optimizers and LR schedules live in :mod:`prunelab.training.optim`, seeding and the run files in
:mod:`prunelab.training.state`; both are re-exported here.

Reproducibility: :func:`train` seeds Python, NumPy and torch from ``seed``; the data loader draws its
shuffle and augmentation from generators seeded by ``(seed, epoch)``; the only global-RNG consumers left
(dropout, random criteria inside hooks) are captured in the checkpoint. On the CPU, the same seed gives
bit-identical weights, and an interrupted run resumed from its checkpoint ends with the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from prunelab import distributed as dist
from prunelab._io import atomic_torch_save
from prunelab.core.masking import load_masks, load_plain_state_dict, masks_state_dict, plain_state_dict
from prunelab.errors import ConfigError
from prunelab.training.config import TrainConfig
from prunelab.training.hooks import HOOK_METHODS
from prunelab.training.optim import build_optimizer, build_scheduler
from prunelab.training.state import (
    CHECKPOINT_FORMAT,
    append_row,
    checkpoint_path,
    load_resume_state,
    restore_rng_state,
    rewrite_metrics,
    rng_state,
    set_seed,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_path",
    "evaluate",
    "set_seed",
    "train",
]

# Tags name files (<tag>_last.pt), so keep them to portable file-name characters.
_TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: the ``metrics.jsonl`` rows of every epoch of the run, including epochs done before a
            resume.
        best_val_accuracy: the highest validation accuracy seen (under ``select="best_val"``, among the
            epochs that share the latest masks); ``None`` without a validation set.
        final_val_accuracy: validation accuracy of the weights left in the model (the best-val epoch's
            under ``select="best_val"``, otherwise the last epoch's); ``None`` without a validation set.
        epochs_run: epochs completed in total (equals ``cfg.epochs`` after a complete run).
        best_epoch: the epoch (from 1) whose weights ``select="best_val"`` restored, else ``None``.
        checkpoint: path of the resumable checkpoint, if one was written.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_accuracy: float | None = None
    final_val_accuracy: float | None = None
    epochs_run: int = 0
    best_epoch: int | None = None
    checkpoint: Path | None = None


# --------------------------------------------------------------------------------------------------
# Evaluation


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset``, in eval mode.

    Under DDP each rank evaluates a disjoint shard (the loader's wrap-around padding is excluded) and the
    counts are all-reduced, so every rank returns the exact figures of the whole dataset. The model's
    training/eval mode is restored afterwards.

    Args:
        model: the model (a ``DistributedDataParallel`` wrapper is unwrapped).
        dataset: a map-style dataset of ``(image, label)``, e.g. ``DataSplits.val``.
        batch_size: evaluation batch size per rank.
        device: where to run the batches; defaults to the device of the model's parameters.

    Returns:
        ``{"accuracy": fraction in [0, 1], "loss": mean cross-entropy}``.

    Raises:
        ConfigError: if the dataset is empty.
    """
    from prunelab.data import make_loader

    net = _unwrap(model)
    dev = torch.device(device) if device is not None else _model_device(net)
    n = len(dataset)
    if n == 0:
        raise ConfigError("evaluate: the dataset is empty; check the split sizes (val_fraction, test_subset)")
    distributed = dist.is_distributed()
    loader = make_loader(dataset, batch_size, train=False, distributed=distributed)
    # DistributedSampler-style sharding gives rank r positions r, r+N, ...; the padded repeats come last,
    # so the first len(range(r, n, N)) samples of this rank are exactly its share of the real data.
    valid = len(range(dist.rank(), n, dist.world_size())) if distributed else n
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
    was_training = net.training
    net.eval()
    try:
        seen = 0
        for x, y in loader:
            take = min(len(y), valid - seen)
            if take <= 0:
                break
            x, y = x[:take].to(dev, non_blocking=True), y[:take].to(dev, non_blocking=True)
            logits = net(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(dim=1) == y).sum()
            sums[2] += take
            seen += take
    finally:
        net.train(was_training)
    dist.all_reduce_(sums)
    count = max(float(sums[2]), 1.0)
    return {"accuracy": float(sums[1]) / count, "loss": float(sums[0]) / count}


def _masks_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# --------------------------------------------------------------------------------------------------
# DDP helpers


@torch.no_grad()
def _sync_buffers(model: nn.Module) -> None:
    # DDP broadcasts rank 0's buffers at the *start* of each forward, so after the last training forward
    # every rank holds BN statistics updated by its own shard. Broadcasting once more at the end of the
    # epoch makes validation, checkpoints and the returned model identical on every rank.
    import torch.distributed as tdist

    for buf in model.buffers():
        if buf.dtype == torch.bool:
            # Not every backend reduces/broadcasts bool tensors; go through uint8.
            tmp = buf.to(torch.uint8)
            tdist.broadcast(tmp, src=0)
            buf.copy_(tmp.bool())
        else:
            tdist.broadcast(buf, src=0)


def _buffer_sync_kwargs() -> dict[str, bool]:
    # Rank 0's buffers (mask buffers, BN statistics) are broadcast before every forward. Newer torch
    # renamed ``broadcast_buffers`` to ``forward_sync_buffers`` and warns on the old name.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": True} if "forward_sync_buffers" in params else {"broadcast_buffers": True}


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if dist.is_distributed() and dist.uses_gpu():
        return dist.rank_device()
    return _model_device(model)


def _bound_methods(hooks: Sequence[object], name: str) -> list[Callable[..., Any]]:
    # Duck typing: a hook only needs the methods it uses.
    return [getattr(h, name) for h in hooks if callable(getattr(h, name, None))]


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# The loop


def train(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    *,
    hooks: Sequence[object] = (),
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    resume: bool = False,
    tag: str = "train",
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = None,
    keep_checkpoint: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``data.train``, validating on ``data.val``.

    Per step: forward; loss = cross-entropy + Σ ``hook.penalty(model)``; backward;
    ``hook.after_backward(model)``; gradient clipping; ``optimizer.step()``; ``hook.after_step(model, lr)``;
    ``hook.on_step_end(step, total_steps)``; ``scheduler.step()``. Per epoch: validation (every
    ``cfg.eval_every`` epochs and always the last), one ``metrics.jsonl`` row, ``hook.on_epoch_end``, and the
    resumable checkpoint ``<out_dir>/<tag>_last.pt``.

    Masks must be attached (e.g. ``Pruner.prepare()``) *before* calling ``train``: the optimizer is built
    here over the parameters that exist now. Masks may shrink during training (``update_mask`` edits the
    mask buffer in place), which hooks such as gradual pruning do.

    Under ``torchrun`` (after :func:`prunelab.distributed.init_distributed`), the model is wrapped
    in ``DistributedDataParallel`` (``broadcast_buffers=True`` keeps mask buffers and BN statistics
    identical), each rank trains on its shard with ``cfg.batch_size // world_size`` samples per step,
    hooks receive the unwrapped module, and only rank 0 writes files. Pass the same ``out_dir`` on every
    rank when resuming, since every rank reads the checkpoint.

    Args:
        model: the model; moved to ``device``.
        data: an object with ``train`` and ``val`` datasets (``val`` may be ``None``), such as
            :class:`prunelab.data.DataSplits`.
        cfg: the optimisation settings.
        hooks: training hooks (:class:`~prunelab.training.hooks.TrainHook` or any object with some of its
            methods), called in the order given. Hooks with ``state_dict``/``load_state_dict`` are
            checkpointed.
        out_dir: folder for ``metrics.jsonl`` and the checkpoint; ``None`` writes nothing.
        seed: seeds the RNGs and the data order; the same seed gives the same run.
        resume: continue from ``<out_dir>/<tag>_last.pt`` if it exists (otherwise start afresh). The
            model's masks and weights, optimizer, scheduler, RNG states, best-val record and hook states
            are restored, so the result matches an uninterrupted run.
        tag: name of this training stage, used for the checkpoint file and the ``tag`` field of rows.
        device: where to train; default: this rank's GPU under DDP with CUDA, else the model's device.
        log: called with one summary line per epoch (rank 0 only), e.g. a run log's writer.
        keep_checkpoint: keep ``<tag>_last.pt`` after training completes; ``False`` deletes it then
            (it still protects the run against interruptions), which saves disk in multi-stage runs.

    Returns:
        A :class:`TrainResult`. With ``cfg.select == "best_val"`` the model holds the weights of the best
        validation epoch among those whose masks equal the final masks (a hook that prunes mid-training
        makes earlier, denser epochs ineligible).

    Raises:
        ConfigError: bad arguments (no validation set for ``best_val``, ``resume`` without ``out_dir``,
            an invalid tag, an empty training set).
        CheckpointError: the checkpoint to resume from is unusable or belongs to another stage.
    """
    if isinstance(cfg, Mapping):
        cfg = TrainConfig.from_dict(cfg)
    if not _TAG_PATTERN.fullmatch(tag):
        raise ConfigError(f"train: tag {tag!r} must be letters, digits, '_', '.' or '-' (it names a file)")
    if resume and out_dir is None:
        raise ConfigError("train: resume=True needs out_dir, the folder holding the checkpoint")
    train_set = data.train
    val_set = getattr(data, "val", None)
    has_val = val_set is not None and len(val_set) > 0
    if cfg.select == "best_val" and not has_val:
        raise ConfigError(
            "TrainConfig.select: 'best_val' needs a validation split; set val_fraction > 0 or select 'last'"
        )
    if cfg.epochs > 0 and len(train_set) == 0:
        raise ConfigError("train: the training set is empty; check train_subset and the dataset files")

    from prunelab.data import make_loader

    was_training = model.training
    dev = _resolve_device(model, device)
    model.to(dev)
    distributed = dist.is_distributed()
    main = dist.is_main_process()
    out = Path(out_dir) if out_dir is not None else None
    ckpt = checkpoint_path(out, tag) if out is not None else None
    writes = main and out is not None
    say = log if (log is not None and main) else (lambda _msg: None)

    set_seed(seed)
    state = load_resume_state(ckpt, tag, cfg) if resume and ckpt is not None and ckpt.is_file() else None
    if state is not None:
        # Masks first: attaching one replaces the parameter by its parametrization's original, and the
        # optimizer built below must hold the final parameter objects.
        load_masks(model, state["masks"])
        load_plain_state_dict(model, state["model"])
        say(f"{tag}: resuming from {ckpt} after epoch {state['epoch']}")

    batch_size = max(1, cfg.batch_size // dist.world_size())
    steps_per_epoch = len(make_loader(train_set, batch_size, train=True, seed=seed, distributed=distributed))
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)

    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    # best: validation accuracy, epoch, and (for best_val) the weights and masks of that epoch.
    best: dict[str, Any] = {"val_acc": None, "epoch": None, "model": None, "masks": None}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        history = [dict(row) for row in state["history"]]
        best = dict(state["best"])
        restore_rng_state(state["rng"])
        for hook, hook_state in zip(hooks, state.get("hooks", []), strict=False):
            if hook_state is not None and callable(getattr(hook, "load_state_dict", None)):
                hook.load_state_dict(hook_state)  # type: ignore[attr-defined]
    if writes:
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        rewrite_metrics(out / "metrics.jsonl", tag, start_epoch)

    penalties, after_backward, after_step, on_step_end, on_epoch_end = (
        _bound_methods(hooks, name) for name in HOOK_METHODS
    )
    net: nn.Module = model
    if distributed and cfg.epochs > start_epoch:
        net = DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=False,
            **_buffer_sync_kwargs(),
        )
    bar = cfg.progress and main and sys.stderr.isatty()
    trainable = [p for p in model.parameters() if p.requires_grad]

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        net.train()
        loader = make_loader(
            train_set, batch_size, train=True, seed=seed, epoch=epoch, distributed=distributed
        )
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, samples
        lr = optimizer.param_groups[0]["lr"]
        for x, y in _progress(loader, bar, f"{tag} {epoch + 1}/{cfg.epochs}"):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = net(x)
            data_loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            loss = data_loss
            for penalty in penalties:
                extra = penalty(model)
                if extra is not None:
                    loss = loss + extra
            loss.backward()
            for fn in after_backward:
                fn(model)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            lr = float(optimizer.param_groups[0]["lr"])
            optimizer.step()
            for fn in after_step:
                fn(model, lr)
            step += 1
            for fn in on_step_end:
                fn(step, total_steps)
            scheduler.step()
            with torch.no_grad():
                sums[0] += data_loss.detach().double() * len(y)
                sums[1] += (logits.argmax(dim=1) == y).sum()
                sums[2] += len(y)

        if distributed:
            _sync_buffers(model)
        dist.all_reduce_(sums)
        validate = has_val and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs)
        val = evaluate(model, val_set, device=dev) if validate else None
        row: dict[str, Any] = {
            "tag": tag,
            "epoch": epoch + 1,
            "step": step,
            "lr": lr,
            "train_loss": float(sums[0] / sums[2].clamp_min(1)),
            "train_acc": float(sums[1] / sums[2].clamp_min(1)),
            "val_acc": val["accuracy"] if val else None,
            "val_loss": val["loss"] if val else None,
            "time_s": round(time.perf_counter() - started, 4),
        }
        if val is not None:
            _update_best(best, model, row, keep_weights=cfg.select == "best_val")
        history.append(row)
        if writes:
            assert out is not None
            append_row(out / "metrics.jsonl", row)
        for fn in on_epoch_end:
            fn(epoch + 1, dict(row))  # a copy: a hook must not rewrite the history
        if writes:
            assert ckpt is not None
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "tag": tag,
                    "config": cfg.to_dict(),
                    "seed": seed,
                    "epoch": epoch + 1,
                    "step": step,
                    "model": plain_state_dict(model),
                    "masks": masks_state_dict(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "best": best,
                    "history": history,
                    "hooks": [
                        h.state_dict() if callable(getattr(h, "state_dict", None)) else None  # type: ignore[attr-defined]
                        for h in hooks
                    ],
                },
                ckpt,
            )
        say(_summary_line(row, cfg.epochs))

    best_epoch = None
    final_val = history[-1]["val_acc"] if history else None
    if cfg.select == "best_val" and best["model"] is not None:
        if _masks_equal(best["masks"], masks_state_dict(model)):
            load_plain_state_dict(model, best["model"])
            best_epoch, final_val = int(best["epoch"]), float(best["val_acc"])
            say(f"{tag}: restored the weights of epoch {best_epoch} (best val_acc {final_val:.4f})")
        else:
            say(f"{tag}: masks changed after the best epoch; keeping the last weights")
    elif cfg.epochs == 0 and has_val:
        final_val = evaluate(model, val_set, device=dev)["accuracy"]
    if writes and not keep_checkpoint and ckpt is not None:
        ckpt.unlink(missing_ok=True)
    dist.barrier()
    model.train(was_training)
    return TrainResult(
        history=history,
        best_val_accuracy=best["val_acc"],
        final_val_accuracy=final_val,
        epochs_run=cfg.epochs,
        best_epoch=best_epoch,
        checkpoint=ckpt if (ckpt is not None and ckpt.is_file() and cfg.epochs > 0) else None,
    )


def _update_best(
    best: dict[str, Any], model: nn.Module, row: Mapping[str, Any], *, keep_weights: bool
) -> None:
    """Record this epoch as the best if its validation accuracy is higher (ties keep the earlier epoch).

    With ``keep_weights``, epochs validated under different masks are not comparable (masks only shrink,
    so an earlier denser epoch cannot be restored without undoing pruning): a change of masks resets the
    record to the current epoch.
    """
    acc = float(row["val_acc"])
    masks = masks_state_dict(model) if keep_weights else None
    stale = keep_weights and best["masks"] is not None and not _masks_equal(best["masks"], masks)  # type: ignore[arg-type]
    if best["val_acc"] is None or acc > best["val_acc"] or stale:
        best["val_acc"], best["epoch"] = acc, int(row["epoch"])
        if keep_weights:
            # plain_state_dict shares storage with live buffers; copy so training cannot overwrite it.
            best["model"] = {k: v.detach().to("cpu", copy=True) for k, v in plain_state_dict(model).items()}
            best["masks"] = masks


def _summary_line(row: Mapping[str, Any], epochs: int) -> str:
    val = f", val_acc {row['val_acc']:.4f}" if row["val_acc"] is not None else ""
    return (
        f"{row['tag']} epoch {row['epoch']}/{epochs}: train_loss {row['train_loss']:.4f}, "
        f"train_acc {row['train_acc']:.4f}{val}, lr {row['lr']:.3g}, {row['time_s']:.1f}s"
    )
