"""Live progress of training: the per-epoch line, the run-level ETA, the terminal bar and TensorBoard.

Every epoch of :func:`prunelab.training.train` ends in one report, made by a :class:`ProgressReporter`:

- one line, ``<stage> epoch k/n: train_loss …, train_acc …, val_acc …, lr …, <epoch time>s; run epoch
  d/N, ETA h:mm:ss``, sent to the reporter's log (in a pipe this is all the terminal gets: plain lines,
  no bar, no carriage return);
- on a terminal (stderr is a TTY, rank 0, ``progress`` on), a tqdm bar per epoch instead, whose postfix
  shows the running loss, accuracy and learning rate during the epoch and the epoch's validation
  accuracy and the run's ETA at its end; the bar stays on screen, so the line goes to the log file only;
- with TensorBoard on, the same figures as scalars (step: the epoch's number in the whole run), plus
  what the reporter's ``measure`` adds (a run adds the dense-relative sparsity) and, from the runner,
  one point per pruning round (:meth:`ProgressReporter.rounds`).

The ETA is run-level: :class:`RunProgress` knows the epochs planned for the whole run (a recipe: dense
training, every pruning round's fine-tuning, a method's own training stages) and the epochs done, and
assumes the epochs left take as long, wall clock, as the epochs trained so far did, the time spent
between them (pruning, evaluation) included. A lone :func:`~prunelab.training.train` call plans its own
epochs only.

A run makes one reporter and makes it *active* for its stages (:func:`reporting`); ``train`` reports to
the active reporter, so a method's stages need not pass it along (``MethodContext.train`` knows nothing
of it). Only rank 0 gets sinks: on other ranks a reporter counts epochs and writes nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prunelab.errors import ConfigError

__all__ = [
    "TENSORBOARD_DIR",
    "EpochBar",
    "ProgressReporter",
    "RunProgress",
    "active_reporter",
    "epoch_line",
    "format_eta",
    "reporting",
    "require_tensorboard",
]

#: Folder of the TensorBoard event files, inside the run (or ``out_dir``) folder.
TENSORBOARD_DIR = "tensorboard"

# Seconds between two reads of the running loss for the bar's postfix: reading it waits for the
# device, so doing it every step would stall a GPU pipeline.
_POSTFIX_EVERY_S = 0.5


def require_tensorboard(field: str) -> None:
    """Check that TensorBoard logging can work, before anything trains.

    Raises:
        ConfigError: ``<field>: ... pip install 'prunelab[tensorboard]'`` when the package is missing.
    """
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            f"{field}: TensorBoard logging needs the tensorboard package, which is not installed; "
            "pip install 'prunelab[tensorboard]' or turn it off"
        )


def format_eta(seconds: float | None) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class RunProgress:
    """Epochs planned and done across every training stage of a run, and the run's ETA.

    Args:
        planned: epochs the whole run is expected to train. A stage that starts with more epochs left
            than the plan holds raises the plan, so the count never runs past it.
        clock: seconds, monotonic (a parameter so tests can drive time).
    """

    def __init__(self, planned: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.planned = max(0, int(planned))
        self.done = 0
        self.trained = 0
        self._clock = clock
        self._since: float | None = None

    def begin_stage(self, epochs: int, already_done: int = 0) -> None:
        """A stage of ``epochs`` epochs starts, ``already_done`` of them restored from its checkpoint."""
        # Restored epochs are done but took no time in this process, so they stay out of the rate.
        self.done += already_done
        self.planned = max(self.planned, self.done + max(0, epochs - already_done))

    def begin_epoch(self) -> None:
        """An epoch starts (the clock of the rate starts at the first one)."""
        if self._since is None:
            self._since = self._clock()

    def end_epoch(self) -> None:
        """An epoch ended."""
        self.done += 1
        self.trained += 1

    def eta_s(self) -> float | None:
        """Seconds left for the run's remaining planned epochs; ``None`` before an epoch was timed."""
        if self.trained == 0 or self._since is None:
            return None
        per_epoch = (self._clock() - self._since) / self.trained
        return per_epoch * max(0, self.planned - self.done)


def epoch_line(row: Mapping[str, Any], epochs: int, run: RunProgress) -> str:
    """The per-epoch line of a ``metrics.jsonl`` row of a stage of ``epochs`` epochs."""
    val = f", val_acc {row['val_acc']:.4f}" if row.get("val_acc") is not None else ""
    return (
        f"{row['tag']} epoch {row['epoch']}/{epochs}: train_loss {row['train_loss']:.4f}, "
        f"train_acc {row['train_acc']:.4f}{val}, lr {row['lr']:.3g}, {row['time_s']:.1f}s; "
        f"run epoch {run.done}/{run.planned}, ETA {format_eta(run.eta_s())}"
    )


class EpochBar:
    """The terminal bar of one epoch: steps, and loss / accuracy / learning rate as its postfix.

    Args:
        total: steps of the epoch.
        desc: the bar's label (``<stage> k/n``).
        clock: seconds, monotonic.
    """

    def __init__(self, total: int, desc: str, clock: Callable[[], float] = time.perf_counter) -> None:
        from tqdm.auto import tqdm

        # A terminal that reports no size (a bare pty) would get a zero-width, empty bar.
        try:
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except (OSError, ValueError):
            sized = False
        # leave=True: the finished bar stays as the epoch's line on the terminal.
        self._bar = tqdm(
            total=total,
            desc=desc,
            leave=True,
            dynamic_ncols=sized,
            ncols=None if sized else 120,
            file=sys.stderr,
            unit="step",
        )
        self._clock = clock
        self._last = -math.inf

    def step(self, running: Callable[[], tuple[float, float]], lr: float) -> None:
        """One step done; ``running()`` gives the epoch's running (loss, accuracy), read now and then."""
        self._bar.update(1)
        now = self._clock()
        if now - self._last >= _POSTFIX_EVERY_S or self._bar.n == self._bar.total:
            self._last = now
            loss, acc = running()
            # A mapping keeps this order (keyword arguments would be sorted).
            postfix = {"loss": f"{loss:.4f}", "acc": f"{acc:.4f}", "lr": f"{lr:.3g}"}
            self._bar.set_postfix(postfix, refresh=False)

    def finish(self, row: Mapping[str, Any], run: RunProgress) -> None:
        """Show the epoch's figures and the run's ETA, and close the bar (it stays on screen)."""
        postfix = {"loss": f"{row['train_loss']:.4f}", "acc": f"{row['train_acc']:.4f}"}
        if row.get("val_acc") is not None:
            postfix["val_acc"] = f"{row['val_acc']:.4f}"
        postfix["lr"] = f"{row['lr']:.3g}"
        postfix["run"] = f"{run.done}/{run.planned}"
        postfix["ETA"] = format_eta(run.eta_s())
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.close()


class ProgressReporter:
    """Where a run's (or one ``train`` call's) epochs are reported: log lines, the ETA, TensorBoard.

    Args:
        run: the epoch plan and count.
        log: gets each epoch line and the loop's messages (``None``: nowhere).
        file_log: gets the epoch line instead of ``log`` while a bar shows it on the terminal (the run
            log's file-only writer); ``None``: ``log`` always gets it.
        tensorboard_dir: folder for TensorBoard event files (``None``: no TensorBoard); the writer is
            opened at the first scalar.
        measure: ``fn(model) -> {tag: value}``, extra per-epoch TensorBoard scalars (only called when
            TensorBoard is on).
    """

    def __init__(
        self,
        run: RunProgress,
        *,
        log: Callable[[str], None] | None = None,
        file_log: Callable[[str], None] | None = None,
        tensorboard_dir: Path | None = None,
        measure: Callable[[Any], Mapping[str, float]] | None = None,
    ) -> None:
        self.run = run
        self.log = log
        self.file_log = file_log
        self.tensorboard_dir = tensorboard_dir
        self.measure = measure
        self._writer: Any = None

    def say(self, message: str) -> None:
        """Send one message to the log (nothing without one)."""
        if self.log is not None:
            self.log(message)

    def epoch_done(self, row: Mapping[str, Any], epochs: int, model: Any, bar: EpochBar | None) -> str:
        """Count the epoch of ``row``; finish its ``bar``, log its line, write its scalars; return the line."""
        self.run.end_epoch()
        line = epoch_line(row, epochs, self.run)
        if bar is not None:
            bar.finish(row, self.run)
        sink = self.file_log if bar is not None and self.file_log is not None else self.log
        if sink is not None:
            sink(line)
        if self.tensorboard_dir is not None:
            self._epoch_scalars(row, model)
        return line

    def _epoch_scalars(self, row: Mapping[str, Any], model: Any) -> None:
        values: dict[str, Any] = {
            "train/loss": row["train_loss"],
            "train/accuracy": row["train_acc"],
            "train/lr": row["lr"],
            "val/loss": row.get("val_loss"),
            "val/accuracy": row.get("val_acc"),
            "time/epoch_s": row["time_s"],
            "time/eta_s": self.run.eta_s(),
        }
        if self.measure is not None:
            values.update(self.measure(model))
        self._scalars(values, self.run.done)

    def rounds(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """TensorBoard scalars ``rounds/<column>`` of each ``rounds.csv`` row, at step = its round."""
        if self.tensorboard_dir is None:
            return
        for row in rows:
            self._scalars({f"rounds/{k}": v for k, v in row.items() if k != "round"}, int(row["round"]))

    def _scalars(self, values: Mapping[str, Any], step: int) -> None:
        # Unvalidated epochs (None) and undefined figures (relief's NaN target) have no point to plot.
        numbers = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if not numbers:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            assert self.tensorboard_dir is not None
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        for tag, value in numbers.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if one was opened."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_ACTIVE: contextvars.ContextVar[ProgressReporter | None] = contextvars.ContextVar(
    "prunelab_progress_reporter", default=None
)


@contextlib.contextmanager
def reporting(reporter: ProgressReporter) -> Iterator[ProgressReporter]:
    """Make ``reporter`` the one :func:`~prunelab.training.train` reports to inside the block; close it after."""
    token = _ACTIVE.set(reporter)
    try:
        yield reporter
    finally:
        _ACTIVE.reset(token)
        reporter.close()


def active_reporter() -> ProgressReporter | None:
    """The reporter of the enclosing :func:`reporting` block, if any."""
    return _ACTIVE.get()
