"""The one training loop: hooks, validation, checkpoints, resume, DDP; and :func:`evaluate`.

Every training stage of prunelab (dense training, fine-tuning between pruning rounds, gradual pruning,
sparsity-regularised training) goes through :func:`train`, a short sequence of named stages: setup and
resume (``_setup``, ``_restore``), one pass over the training set (``_train_epoch``, where the order of a
step is spelled out), the epoch's validation and row (``_epoch_row``), its record and checkpoint
(``_record_epoch``, ``_save_checkpoint``) and the final weight selection (``_finish``); see
:mod:`prunelab.training.hooks` for where each hook runs. Each epoch is reported (its line with the
run's ETA, the terminal bar, TensorBoard) through :mod:`prunelab.training.progress`.
Optimizers and LR schedules live in :mod:`prunelab.training.optim`, seeding and the run files in
:mod:`prunelab.training.state`; both are re-exported here.

Reproducibility: :func:`train` seeds Python, NumPy and torch from ``seed``; the data loader draws its
shuffle and augmentation from generators seeded by ``(seed, epoch)``; the only global-RNG consumers left
(dropout, random criteria inside hooks) are captured in the checkpoint. On the CPU, the same seed gives
bit-identical weights, and an interrupted run resumed from its checkpoint ends with the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
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
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from prunelab import distributed as dist
from prunelab._io import atomic_torch_save
from prunelab.core.masking import load_masks, load_plain_state_dict, masks_state_dict, plain_state_dict
from prunelab.core.modules import eval_mode
from prunelab.errors import ConfigError
from prunelab.training.config import FastConfig, TrainConfig
from prunelab.training.hooks import HOOK_METHODS
from prunelab.training.optim import build_optimizer, build_scheduler
from prunelab.training.progress import (
    TENSORBOARD_DIR,
    EpochBar,
    ProgressReporter,
    RunProgress,
    active_reporter,
    require_tensorboard,
)
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
    with eval_mode(net):
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


# --------------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Session:
    """What one call of :func:`train` set up, and the loop state it carries from epoch to epoch.

    Attributes:
        model: the model being trained (hooks, masks and checkpoints see this one).
        net: ``model`` or its ``DistributedDataParallel`` wrapper (what the forward pass goes through).
        cfg: the optimisation settings.
        hooks: the training hooks, in call order.
        calls: hook method name (see ``HOOK_METHODS``) → the hooks' bound methods of that name.
        tag: name of the training stage.
        seed: seed of the RNGs and the data order.
        device: where the batches go.
        train_set: the training dataset.
        val_set: the validation dataset, if it has samples (else ``None``).
        batch_size: samples per step on this rank.
        steps_per_epoch: optimizer steps (batches) per epoch on this rank.
        total_steps: optimizer steps of the whole run.
        optimizer: the optimizer.
        scheduler: the step-level LR schedule.
        out: the output folder, if any.
        ckpt: the resumable checkpoint's path, if there is an output folder.
        writes: whether this process writes files (rank 0 with an output folder).
        say: the logger of the loop's messages (a no-op off rank 0).
        reporter: where each epoch is reported (the active run's, else one of this call's own).
        own_reporter: whether ``reporter`` belongs to this call (closed when it ends).
        bar: whether to show a progress bar.
        trainable: the parameters gradient clipping applies to.
        fast: the hardware settings in effect (``cfg.fast`` less what this device cannot do).
        start_epoch: epochs done before this call (after a resume).
        step: optimizer steps done so far.
        history: the ``metrics.jsonl`` rows so far.
        best: best validation accuracy, its epoch and (under ``best_val``) that epoch's weights and masks.
    """

    model: nn.Module
    net: nn.Module
    cfg: TrainConfig
    hooks: Sequence[object]
    calls: dict[str, list[Callable[..., Any]]]
    tag: str
    seed: int
    device: torch.device
    train_set: Any
    val_set: Any
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    optimizer: Optimizer
    scheduler: LRScheduler
    out: Path | None
    ckpt: Path | None
    writes: bool
    say: Callable[[str], None]
    reporter: ProgressReporter
    own_reporter: bool
    bar: bool
    trainable: list[nn.Parameter]
    fast: FastConfig
    start_epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"val_acc": None, "epoch": None, "model": None, "masks": None}
    )


def _check_arguments(
    data: Any,
    cfg: TrainConfig | Mapping[str, Any],
    *,
    tag: str,
    resume: bool,
    out_dir: str | os.PathLike[str] | None,
) -> TrainConfig:
    """The :class:`TrainConfig` to use (built from a mapping if needed), after checking the arguments.

    Raises:
        ConfigError: an invalid tag, ``resume`` without ``out_dir``, ``best_val`` without validation
            samples, an empty training set, or ``tensorboard`` without ``out_dir`` (outside a run) or
            without the tensorboard package.
    """
    if isinstance(cfg, Mapping):
        cfg = TrainConfig.from_dict(cfg)
    if not _TAG_PATTERN.fullmatch(tag):
        raise ConfigError(f"train: tag {tag!r} must be letters, digits, '_', '.' or '-' (it names a file)")
    if resume and out_dir is None:
        raise ConfigError("train: resume=True needs out_dir, the folder holding the checkpoint")
    if cfg.select == "best_val" and _validation_set(data) is None:
        raise ConfigError(
            "TrainConfig.select: 'best_val' needs a validation split; set val_fraction > 0 or select 'last'"
        )
    if cfg.epochs > 0 and len(data.train) == 0:
        raise ConfigError("train: the training set is empty; check train_subset and the dataset files")
    if cfg.tensorboard:
        if out_dir is None and active_reporter() is None:
            raise ConfigError(
                "TrainConfig.tensorboard: needs out_dir, the folder the event files go to (<out_dir>/tensorboard)"
            )
        require_tensorboard("TrainConfig.tensorboard")
    return cfg


def _validation_set(data: Any) -> Any:
    """``data.val`` if it exists and has samples, else ``None``."""
    val_set = getattr(data, "val", None)
    return val_set if val_set is not None and len(val_set) > 0 else None


def _effective_fast(fast: FastConfig, device: torch.device, say: Callable[[str], None]) -> FastConfig:
    """``fast`` less what ``device`` cannot do, each dropped setting reported in one line.

    bf16 autocast and ``torch.compile`` are CUDA-only here: on the CPU, bf16 autocast is slower than
    float32 and compiling costs minutes that a CPU-sized run never wins back, so a GPU recipe run on the
    CPU trains in float32, eagerly. ``compile`` also needs Triton, the GPU compiler of inductor.
    ``device_data`` and ``channels_last`` are valid everywhere (``device_data`` is a no-op on the CPU).
    """
    changes: dict[str, Any] = {}
    if device.type != "cuda":
        if fast.amp != "none":
            changes["amp"] = "none"
            say(f"train.fast.amp: {fast.amp} autocast is used on CUDA only; training in float32 on {device}")
        if fast.compile:
            changes["compile"] = False
            say(f"train.fast.compile: used on CUDA only; training eagerly on {device}")
    elif fast.compile and importlib.util.find_spec("triton") is None:
        changes["compile"] = False
        say("train.fast.compile: Triton is not installed (torch.compile's GPU compiler); training eagerly")
    return dataclasses.replace(fast, **changes) if changes else fast


def _device_train_set(train_set: Any, fast: FastConfig, device: torch.device) -> Any:
    """The training set, copied to ``device`` once if ``fast.device_data`` asks and it is in memory."""
    from prunelab.data import TensorImageDataset

    if fast.device_data and isinstance(train_set, TensorImageDataset):
        return train_set.to(device)
    return train_set


def _autocast(s: _Session) -> contextlib.AbstractContextManager[Any]:
    if s.fast.amp == "bf16":
        return torch.autocast(s.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _setup(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    *,
    hooks: Sequence[object],
    out_dir: str | os.PathLike[str] | None,
    seed: int,
    resume: bool,
    tag: str,
    device: str | torch.device | None,
    log: Callable[[str], None] | None,
) -> _Session:
    """Seed, place the model, build the optimizer and schedule, and restore a checkpoint if resuming."""
    from prunelab.data import make_loader

    dev = _resolve_device(model, device)
    model.to(dev)
    main = dist.is_main_process()
    out = Path(out_dir) if out_dir is not None else None
    ckpt = checkpoint_path(out, tag) if out is not None else None

    set_seed(seed)
    state = load_resume_state(ckpt, tag, cfg) if resume and ckpt is not None and ckpt.is_file() else None
    reporter, own_reporter = _reporter(cfg, out, main, log)
    say = log if (log is not None and main) else reporter.say
    if state is not None:
        # Masks first: attaching one replaces the parameter by its parametrization's original, and the
        # optimizer built below must hold the final parameter objects.
        load_masks(model, state["masks"])
        load_plain_state_dict(model, state["model"])
        say(f"{tag}: resuming from {ckpt} after epoch {state['epoch']}")
    fast = _effective_fast(cfg.fast, dev, say)
    if fast.channels_last:
        # Before the optimizer: Module.to swaps each parameter's data in place, so the Parameter objects
        # (and the masks' originals) stay those the optimizer will hold.
        model.to(memory_format=torch.channels_last)

    batch_size = max(1, cfg.batch_size // dist.world_size())
    loader = make_loader(data.train, batch_size, train=True, seed=seed, distributed=dist.is_distributed())
    optimizer = build_optimizer(model, cfg)
    session = _Session(
        model=model,
        net=model,
        cfg=cfg,
        hooks=hooks,
        calls={name: _bound_methods(hooks, name) for name in HOOK_METHODS},
        tag=tag,
        seed=seed,
        device=dev,
        train_set=_device_train_set(data.train, fast, dev),
        val_set=_validation_set(data),
        batch_size=batch_size,
        steps_per_epoch=len(loader),
        total_steps=cfg.epochs * len(loader),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg, len(loader)),
        out=out,
        ckpt=ckpt,
        writes=main and out is not None,
        say=say,
        reporter=reporter,
        own_reporter=own_reporter,
        bar=cfg.progress and main and sys.stderr.isatty(),
        trainable=[p for p in model.parameters() if p.requires_grad],
        fast=fast,
    )
    if state is not None:
        _restore(session, state)
    reporter.run.begin_stage(cfg.epochs, session.start_epoch)
    if session.writes:
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        rewrite_metrics(out / "metrics.jsonl", tag, session.start_epoch)
    if dist.is_distributed() and cfg.epochs > session.start_epoch:
        session.net = DistributedDataParallel(
            model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=False,
            **_buffer_sync_kwargs(),
        )
    if fast.compile and cfg.epochs > session.start_epoch:
        # Only the training forward is compiled; hooks, evaluation and checkpoints use the eager model.
        session.net = torch.compile(session.net, mode=fast.compile_mode)
    return session


def _reporter(
    cfg: TrainConfig, out: Path | None, main: bool, log: Callable[[str], None] | None
) -> tuple[ProgressReporter, bool]:
    """The active run's reporter, else a new one for this call alone (its ETA covers this call's epochs).

    Returns:
        ``(reporter, owned)``: ``owned`` when the reporter was made here (the caller closes it).
    """
    reporter = active_reporter()
    if reporter is not None:
        if cfg.tensorboard and main and reporter.tensorboard_dir is None and out is not None:
            # A stage that asks for TensorBoard in a run that did not: its epochs go into the run's folder.
            reporter.tensorboard_dir = out / TENSORBOARD_DIR
        return reporter, False
    tensorboard = out / TENSORBOARD_DIR if cfg.tensorboard and main and out is not None else None
    return ProgressReporter(RunProgress(0), log=log if main else None, tensorboard_dir=tensorboard), True


def _restore(session: _Session, state: Mapping[str, Any]) -> None:
    """Continue from a checkpoint: optimizer, schedule, counters, history, best record, RNGs, hook states."""
    session.optimizer.load_state_dict(state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])
    session.start_epoch, session.step = int(state["epoch"]), int(state["step"])
    session.history = [dict(row) for row in state["history"]]
    session.best = dict(state["best"])
    restore_rng_state(state["rng"])
    for hook, hook_state in zip(session.hooks, state.get("hooks", []), strict=False):
        if hook_state is not None and callable(getattr(hook, "load_state_dict", None)):
            hook.load_state_dict(hook_state)  # type: ignore[attr-defined]


def _train_epoch(s: _Session, epoch: int, bar: EpochBar | None) -> tuple[Tensor, float]:
    """One pass over the training set (see :func:`train` for the order of a step), advancing ``bar``.

    Returns:
        ``(sums, lr)``: the loss sum, correct predictions and samples of this rank, and the learning
        rate of the last step.
    """
    from prunelab.data import make_loader

    s.net.train()
    distributed = dist.is_distributed()
    loader = make_loader(
        s.train_set, s.batch_size, train=True, seed=s.seed, epoch=epoch, distributed=distributed
    )
    sums = torch.zeros(3, dtype=torch.float64, device=s.device)  # loss sum, correct, samples
    lr = s.optimizer.param_groups[0]["lr"]
    model, cfg, calls = s.model, s.cfg, s.calls
    layout = torch.channels_last if s.fast.channels_last else torch.preserve_format

    def running() -> tuple[float, float]:
        # This rank's share so far (the line and the row report the all-reduced figures).
        seen = float(sums[2].clamp_min(1))
        return float(sums[0]) / seen, float(sums[1]) / seen

    for x, y in loader:
        x = x.to(s.device, non_blocking=True, memory_format=layout if x.dim() == 4 else torch.preserve_format)
        y = y.to(s.device, non_blocking=True)
        s.optimizer.zero_grad(set_to_none=True)
        with _autocast(s):
            logits = s.net(x)
            data_loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss = data_loss
        for penalty in calls["penalty"]:
            extra = penalty(model)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        for fn in calls["after_backward"]:
            fn(model)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(s.trainable, cfg.grad_clip)
        lr = float(s.optimizer.param_groups[0]["lr"])
        s.optimizer.step()
        for fn in calls["after_step"]:
            fn(model, lr)
        s.step += 1
        for fn in calls["on_step_end"]:
            fn(s.step, s.total_steps)
        s.scheduler.step()
        with torch.no_grad():
            sums[0] += data_loss.detach().double() * len(y)
            sums[1] += (logits.argmax(dim=1) == y).sum()
            sums[2] += len(y)
        if bar is not None:
            bar.step(running, lr)
    if distributed:
        _sync_buffers(model)
    dist.all_reduce_(sums)
    return sums, lr


def _epoch_row(s: _Session, epoch: int, sums: Tensor, lr: float, started: float) -> dict[str, Any]:
    """Validate if this epoch is due (every ``eval_every`` epochs and the last), update the best record,
    and return the epoch's ``metrics.jsonl`` row."""
    due = (epoch + 1) % s.cfg.eval_every == 0 or epoch + 1 == s.cfg.epochs
    val = evaluate(s.model, s.val_set, device=s.device) if s.val_set is not None and due else None
    row: dict[str, Any] = {
        "tag": s.tag,
        "epoch": epoch + 1,
        "step": s.step,
        "lr": lr,
        "train_loss": float(sums[0] / sums[2].clamp_min(1)),
        "train_acc": float(sums[1] / sums[2].clamp_min(1)),
        "val_acc": val["accuracy"] if val else None,
        "val_loss": val["loss"] if val else None,
        "time_s": round(time.perf_counter() - started, 4),
    }
    if val is not None:
        _update_best(s.best, s.model, row, keep_weights=s.cfg.select == "best_val")
    return row


def _record_epoch(s: _Session, row: dict[str, Any], bar: EpochBar | None) -> None:
    """Append ``row`` to the history and ``metrics.jsonl``, call ``on_epoch_end``, write the checkpoint,
    and report the epoch (closing its ``bar``)."""
    s.history.append(row)
    if s.writes:
        assert s.out is not None
        append_row(s.out / "metrics.jsonl", row)
    for fn in s.calls["on_epoch_end"]:
        fn(row["epoch"], dict(row))  # a copy: a hook must not rewrite the history
    if s.writes:
        _save_checkpoint(s, row["epoch"])
    s.reporter.epoch_done(row, s.cfg.epochs, s.model, bar)


def _save_checkpoint(s: _Session, epochs_done: int) -> None:
    """Write the resumable checkpoint after ``epochs_done`` epochs (everything :func:`_restore` reads)."""
    assert s.ckpt is not None
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "tag": s.tag,
            "config": s.cfg.to_dict(),
            "seed": s.seed,
            "epoch": epochs_done,
            "step": s.step,
            "model": plain_state_dict(s.model),
            "masks": masks_state_dict(s.model),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "rng": rng_state(),
            "best": s.best,
            "history": s.history,
            "hooks": [
                h.state_dict() if callable(getattr(h, "state_dict", None)) else None  # type: ignore[attr-defined]
                for h in s.hooks
            ],
        },
        s.ckpt,
    )


def _finish(s: _Session, *, was_training: bool, keep_checkpoint: bool) -> TrainResult:
    """Apply the weight selection, drop the checkpoint if asked, and build the :class:`TrainResult`."""
    cfg, history, best = s.cfg, s.history, s.best
    best_epoch = None
    final_val = history[-1]["val_acc"] if history else None
    if cfg.select == "best_val" and best["model"] is not None:
        if _masks_equal(best["masks"], masks_state_dict(s.model)):
            load_plain_state_dict(s.model, best["model"])
            best_epoch, final_val = int(best["epoch"]), float(best["val_acc"])
            s.say(f"{s.tag}: restored the weights of epoch {best_epoch} (best val_acc {final_val:.4f})")
        else:
            s.say(f"{s.tag}: masks changed after the best epoch; keeping the last weights")
    elif cfg.epochs == 0 and s.val_set is not None:
        final_val = evaluate(s.model, s.val_set, device=s.device)["accuracy"]
    ckpt = s.ckpt
    if s.writes and not keep_checkpoint and ckpt is not None:
        ckpt.unlink(missing_ok=True)
    dist.barrier()
    if s.fast.channels_last:
        s.model.to(memory_format=torch.contiguous_format)  # hand the model back in the standard layout
    s.model.train(was_training)
    return TrainResult(
        history=history,
        best_val_accuracy=best["val_acc"],
        final_val_accuracy=final_val,
        epochs_run=cfg.epochs,
        best_epoch=best_epoch,
        checkpoint=ckpt if (ckpt is not None and ckpt.is_file() and cfg.epochs > 0) else None,
    )


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
    cfg = _check_arguments(data, cfg, tag=tag, resume=resume, out_dir=out_dir)
    was_training = model.training
    session = _setup(
        model,
        data,
        cfg,
        hooks=hooks,
        out_dir=out_dir,
        seed=seed,
        resume=resume,
        tag=tag,
        device=device,
        log=log,
    )
    try:
        for epoch in range(session.start_epoch, cfg.epochs):
            started = time.perf_counter()
            session.reporter.run.begin_epoch()
            bar = _epoch_bar(session, epoch)
            sums, lr = _train_epoch(session, epoch, bar)
            _record_epoch(session, _epoch_row(session, epoch, sums, lr, started), bar)
        return _finish(session, was_training=was_training, keep_checkpoint=keep_checkpoint)
    finally:
        if session.own_reporter:
            session.reporter.close()


def _epoch_bar(s: _Session, epoch: int) -> EpochBar | None:
    """The terminal bar of ``epoch`` (``None`` when no bar is shown: off rank 0, in a pipe, or not wanted)."""
    if not s.bar:
        return None
    return EpochBar(s.steps_per_epoch, f"{s.tag} {epoch + 1}/{s.cfg.epochs}")


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
