"""Run one recipe end to end and leave a complete run directory behind.

Stages (each a plain function call, in this order):

1. load the data and build the model; initialise it (scratch, registered pretrained weights, a
   weights file, or another run's checkpoint);
2. dense training (``train``, skipped when ``train.epochs`` is 0) and the dense measurements;
3. the method (``prune.method``): its driver gets a :class:`~prunelab.methods.base.MethodContext` of
   services and returns a :class:`~prunelab.methods.base.MethodResult`;
4. final measurements and the run record, written from that result.

The run directory holds ``config.yaml`` (the resolved recipe), ``summary.json``, ``layers.csv``,
``metrics.jsonl``, ``checkpoint.pt`` (plain state_dict + masks, loadable with ``weights_only=True``),
``rounds.csv`` for iterative schedules, ``log.txt`` (with one line per training epoch and the run's
ETA, see :mod:`prunelab.training.progress`) and, with ``train.tensorboard``, ``tensorboard/`` (event
files). Files are written atomically; under DDP only rank 0 writes, and only into the run directory.

A finished run (one with a valid ``summary.json``) is never destroyed: running into its directory again
is refused unless ``overwrite`` is given, and ``resume`` on it returns its summary without retraining or
writing anything. These checks, and the check that the directory can be written, come before the data
is loaded.

Headline numbers are relative to the *dense* network (the one that entered the method, after
initialisation and dense training), so a compacted model that lost parameters to surgery shows them:
``sparsity = 1 − final non-zero / dense total``, ``compression = dense total / final non-zero``,
``macs_ratio = dense MACs / final effective MACs`` and, with ``eval.latency``, ``speedup`` per batch size
= dense latency / final latency, both timed the same way. For unstructured runs the dense and final
totals are equal, so these are the plain within-model figures.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from prunelab._io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    read_json_object,
    remove_stale_temps,
    safe_torch_load,
)
from prunelab._version import __version__
from prunelab.checkpoint import (
    apply_arch,
    check_version,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from prunelab.core import masking
from prunelab.errors import ConfigError, PrunelabError
from prunelab.experiments.schema import Recipe
from prunelab.methods.base import Driver, MethodContext, MethodResult, dense_relative
from prunelab.training.progress import (
    TENSORBOARD_DIR,
    ProgressReporter,
    RunProgress,
    reporting,
    require_tensorboard,
)

#: The files a run writes itself; ``overwrite`` deletes them (stage checkpoints ``*_last.pt`` too).
RUN_FILES: tuple[str, ...] = (
    "summary.json",
    "checkpoint.pt",
    "layers.csv",
    "rounds.csv",
    "metrics.jsonl",
    "log.txt",
)

#: Keys a ``summary.json`` must hold (numbers where :func:`headline` formats them) to count as a result.
SUMMARY_KEYS: tuple[str, ...] = ("name", "method", "accuracy", "accuracy_dense", "sparsity", "compression")
_SUMMARY_NUMBERS: tuple[str, ...] = ("accuracy", "accuracy_dense", "sparsity", "compression")


class RunLog:
    """Appends timestamped lines to ``log.txt`` and echoes them (rank 0 only)."""

    def __init__(self, path: Path | None, echo: Callable[[str], None] | None = print) -> None:
        self.path = path
        self.echo = echo
        self._start = time.perf_counter()

    def __call__(self, message: str) -> None:
        """Record one line and echo it."""
        self._write(message, echo=True)

    def record(self, message: str) -> None:
        """Record one line in ``log.txt`` only (what a terminal bar already shows)."""
        self._write(message, echo=False)

    def _write(self, message: str, *, echo: bool) -> None:
        line = f"[{time.perf_counter() - self._start:8.1f}s] {message}"
        if echo and self.echo is not None:
            self.echo(line)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


# --------------------------------------------------------------------------------------------------
# Stages


def _init_model(
    recipe: Recipe, model: nn.Module, head: str, data_dir: str | None, log: RunLog
) -> dict[str, Any] | None:
    """Initialise ``model`` (classifier ``head``) in place; returns a compacted init checkpoint's spec, if any."""
    from prunelab.models import PRETRAINED, find_pretrained, load_weights

    init = recipe.model.init
    if init == "scratch":
        return None
    if init == "pretrained":
        entry = PRETRAINED.get(recipe.model.pretrained)  # validated already
        path = find_pretrained(recipe.model.pretrained, data_dir=data_dir, download=recipe.data.download)
        layer = model.get_submodule(head)
        classes = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        reset = classes != getattr(entry, "num_classes", None)
        load_weights(model, path, strict=True, reset_head=reset, head=head)
        expected = getattr(entry, "normalize", None)
        if expected and expected != recipe.data.normalize:
            log(
                f"warning: {recipe.model.pretrained} expects data.normalize={expected!r}, "
                f"the recipe uses {recipe.data.normalize!r}"
            )
        log(f"init: pretrained {recipe.model.pretrained} from {path}" + (" (new head)" if reset else ""))
        return None
    path = Path(init)
    # A file is read once: it is either a prunelab checkpoint or a plain weights file.
    payload = load_checkpoint(path) if path.is_dir() else safe_torch_load(path) if path.is_file() else None
    if payload is not None and is_checkpoint(payload):
        check_version(payload, path)
        apply_arch(model, payload["arch"], head)
        new_head = _keep_fresh_head(model, head, payload["state_dict"], payload["masks"])
        masking.load_masks(model, payload["masks"])
        masking.load_plain_state_dict(model, payload["state_dict"])
        log(
            f"init: checkpoint {path} ({len(payload['masks'])} masked tensors)"
            + (" (new head)" if new_head else "")
        )
        return payload["arch"].get("surgery")
    if payload is not None:
        # reset_head only skips a classifier whose shape differs, so a same-size head is still loaded.
        load_weights(model, payload, strict=True, reset_head=True, head=head)
        log(f"init: weights file {path}")
        return None
    raise ConfigError(
        f"model.init: {init!r} is neither scratch, pretrained, a weights file nor a run directory; check the path"
    )


def _keep_fresh_head(model: nn.Module, head: str, state: dict[str, Any], masks: dict[str, Any]) -> bool:
    """Where a checkpoint's classifier ``head`` has another class count, keep the model's fresh one (in place).

    The stored head's tensors are replaced by the model's freshly initialised ones and its mask is
    dropped, so the strict load still checks every other tensor. Returns whether the head was replaced.
    """
    current = masking.plain_state_dict(model)
    replaced = False
    for key in (f"{head}.weight", f"{head}.bias"):
        if key in state and key in current and tuple(state[key].shape) != tuple(current[key].shape):
            state[key] = current[key]
            masks.pop(key, None)
            replaced = True
    return replaced


def planned_epochs(recipe: Recipe) -> int:
    """The training epochs a run of ``recipe`` plans in all (dense, then what the method declares:
    :attr:`~prunelab.methods.base.Driver.epochs`): the denominator of the run's ETA, nothing else.

    A stage that starts past the plan raises it (:class:`~prunelab.training.progress.RunProgress`); a
    driver that stops early (relief's ``stop_at_remaining``) ends the run before the plan does.
    """
    from prunelab.methods import DRIVERS

    driver = DRIVERS.get(recipe.prune.driver)
    return recipe.train.epochs + int(driver.epochs(recipe.prune.options, recipe.finetune.epochs))


def _targeted_sparsity(model: nn.Module) -> float:
    total = kept = 0
    for _, _, _, mask in masking.iter_masks(model):
        total += mask.numel()
        kept += int(mask.sum())
    return 1.0 - kept / total if total else 0.0


def run_device(name: str) -> torch.device:
    """The device a run trains and prunes on.

    ``auto`` is the GPU when CUDA is available (under ``torchrun`` each rank's own GPU) and the CPU
    otherwise; an explicit ``cuda`` on a machine without CUDA is a configuration error rather than a
    silent fall-back, so a paper-size run never crawls along on the CPU unnoticed.
    """
    from prunelab import distributed as dist

    if dist.is_distributed() and name in ("auto", "cuda"):
        device = dist.rank_device()
        if name == "cuda" and device.type != "cuda":
            raise ConfigError(
                "device: cuda needs one GPU per process on each machine; use device: auto (CPU and gloo) "
                "or start fewer processes"
            )
        return device
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if name == "auto":
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {name} was asked for but CUDA is not available here; use device: auto or cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device: {name} was asked for but MPS is not available here; use device: auto or cpu"
        )
    return device


@dataclass
class _Run:
    """What one run's stages hand on to each other (the runner's own state, not a method's)."""

    recipe: Recipe
    out: Path
    log: RunLog
    main: bool
    started: float
    data: Any = None
    model: nn.Module | None = None
    input_shape: tuple[int, ...] = ()
    arch: dict[str, Any] = field(default_factory=dict)
    device: torch.device | None = None
    latency_dense: dict[str, float] | None = None


def read_summary(run_dir: str | Path, fix: str) -> dict[str, Any]:
    """The ``summary.json`` of ``run_dir``, checked to be a run's summary.

    Raises:
        ConfigError: one line naming the file, what is wrong with it (missing, unreadable, binary,
            invalid JSON, not an object, a key of :data:`SUMMARY_KEYS` missing or not a number) and ``fix``.
    """
    path = Path(run_dir) / "summary.json"
    summary = read_json_object(path, fix)
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ConfigError(f"{path}: is not a run summary (no {', '.join(missing)}); {fix}")
    for key in _SUMMARY_NUMBERS:
        value = summary[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: {key} is {value!r}, not a number; {fix}")
    return summary


def headline(summary: dict[str, Any]) -> str:
    """The one-line result of a run: accuracies and the dense-relative sparsity, compression, MACs, speed-up."""
    line = (
        f"accuracy {summary['accuracy']:.4f} (dense {summary['accuracy_dense']:.4f}), "
        f"sparsity {summary['sparsity']:.4f}, compression {summary['compression']:.2f}x"
    )
    if isinstance(summary.get("macs_ratio"), (int, float)):
        line += f", MACs {summary['macs_ratio']:.2f}x fewer"
    speedup = summary.get("latency_speedup")
    if isinstance(speedup, dict) and speedup:
        line += ", speed-up " + " ".join(f"{v:.2f}x@{bs}" for bs, v in speedup.items())
    return line


def _check_run_dir(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """:func:`check_run_dir` on one process (no file of a result is touched)."""
    if resume and overwrite:
        raise ConfigError(
            "--resume and --overwrite exclude each other; --resume continues the run in --out, "
            "--overwrite replaces it"
        )
    has_summary = (out / "summary.json").is_file()
    if has_summary and not overwrite:
        try:
            summary = read_summary(
                out,
                "pass --resume to finish that run again, --overwrite to replace it, or choose another --out",
            )
        except ConfigError:
            if resume:
                return None  # a damaged summary is no result (the sweep re-runs it too): it is rewritten
            raise
        if resume:
            return summary
        raise ConfigError(
            f"run directory {out} holds a finished run (summary.json); pass --overwrite to replace it, "
            "or choose another --out"
        )
    ensure_writable_dir(out, "run directory", "choose another --out")
    return None


def run_or_keep(
    recipe: Recipe, out: str | Path, *, resume: bool = False, overwrite: bool = False, **run_options: Any
) -> tuple[dict[str, Any], bool]:
    """``prunelab run``: :func:`run_recipe` into ``out``, unless ``resume`` finds the run finished there.

    Args:
        recipe: the validated recipe.
        out: the run directory.
        resume, overwrite: as for :func:`run_recipe`.
        run_options: the other keyword arguments of :func:`run_recipe` (``data_dir``, ``progress``, ``echo``).

    Returns:
        ``(summary, finished)``: the run's summary and whether it was already finished (nothing ran).
    """
    # Before any data is loaded: a finished run is kept, an unwritable ``out`` is refused.
    summary = check_run_dir(out, resume=resume, overwrite=overwrite)
    if summary is not None:
        return summary, True
    return run_recipe(recipe, out, resume=resume, overwrite=overwrite, **run_options), False


def result_line(out: str | Path, summary: dict[str, Any], finished: bool) -> str:
    """The line ``prunelab run`` ends with: the :func:`headline`, ``-> out``, and whether it ran now."""
    prefix = f"{out} is already finished, nothing to resume: " if finished else ""
    return f"{prefix}{headline(summary)} -> {out}"


def check_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any] | None:
    """What a run into ``out`` may do, decided before any work; :func:`run_recipe` calls it first.

    Rank 0 decides (creating ``out`` and probing that a file can be written in it) and every rank gets
    the same outcome, so all ranks stop together.

    Returns:
        The existing summary when ``resume`` finds the run finished (nothing is to be done), else ``None``.

    Raises:
        ConfigError: ``resume`` and ``overwrite`` together; ``out`` cannot be written; ``out`` holds a
            finished run (or a damaged ``summary.json``) and neither ``overwrite`` nor ``resume`` is given.
    """
    from prunelab import distributed as dist

    outcome: tuple[str, Any] = ("ok", None)
    if dist.is_main_process():
        try:
            outcome = ("ok", _check_run_dir(Path(out), resume, overwrite))
        except PrunelabError as exc:
            outcome = ("error", exc)
    kind, value = dist.broadcast_object(outcome)
    if kind == "error":
        raise value
    return value


def _open_run_dir(
    recipe: Recipe, out: Path, resume: bool, overwrite: bool, echo: Callable[[str], None] | None
) -> _Run:
    """Clear what an earlier attempt left that this run replaces, write ``config.yaml``, start the log.

    Runs after :func:`_check_run_dir`, on rank 0 only: a fresh start deletes the earlier attempt's log,
    metrics and stage checkpoints (with ``overwrite`` also the finished run's results); every start
    removes the temporary files of atomic writes a kill interrupted.
    """
    from prunelab import distributed as dist

    started = time.perf_counter()
    main = dist.is_main_process()
    stale_temps: list[Path] = []
    if main:
        stale_temps = remove_stale_temps(out)
        if not resume:
            # summary.json goes first: an interrupted overwrite must not leave a "finished" run behind.
            stale = [
                *(RUN_FILES if overwrite else ("log.txt", "metrics.jsonl")),
                *out.glob("*_last.pt"),
                # An earlier attempt's curves would mix with this run's; only event files are ours.
                *(out / TENSORBOARD_DIR).glob("events.out.tfevents.*"),
            ]
            for name in stale:
                (out / name).unlink(missing_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    log = RunLog(out / "log.txt" if main else None, echo if main else None)
    if stale_temps:
        log(
            f"removed {len(stale_temps)} temporary file(s) of interrupted writes: "
            + ", ".join(p.name for p in stale_temps)
        )
    log(
        f"recipe {recipe.name}: model={recipe.model.name} data={recipe.data.name} method={recipe.prune.method}"
    )
    return _Run(recipe, out, log, main, started)


def load_recipe_data(recipe: Recipe, data_dir: str | None = None) -> Any:
    """The dataset splits ``recipe.data`` names (the same splits for the same recipe seed)."""
    from prunelab.data import load_dataset

    d = recipe.data
    return load_dataset(
        d.name,
        data_dir=data_dir,
        val_fraction=d.val_fraction,
        train_subset=d.train_subset,
        test_subset=d.test_subset,
        seed=recipe.seed,
        augment=d.augment,
        normalize=d.normalize,
        image_size=d.image_size,
        download=d.download,
        **d.kwargs,
    )


def _load_data_and_model(run: _Run, data_dir: str | None) -> None:
    """Load the data splits, build and initialise the model, move it to the run's device."""
    from prunelab.core.targets import find_head
    from prunelab.models import build_model
    from prunelab.training import set_seed

    recipe, log = run.recipe, run.log
    set_seed(recipe.seed)
    run.data = data = load_recipe_data(recipe, data_dir)
    log(
        f"data: {len(data.train)} train / {len(data.val) if data.val is not None else 0} val / "
        f"{len(data.test)} test, input {tuple(data.input_shape)}, {data.num_classes} classes"
    )
    run.input_shape = tuple(int(s) for s in data.input_shape)
    run.model = build_model(
        recipe.model.name, num_classes=data.num_classes, input_shape=run.input_shape, **recipe.model.kwargs
    )
    # The head is found once, on the fresh model (one batch-1 pass), unless the recipe names it.
    head = find_head(run.model, run.input_shape, recipe.model.head)
    surgery_spec = _init_model(recipe, run.model, head, data_dir, log)
    run.device = run_device(recipe.device)
    run.model.to(run.device)
    log(f"device: {run.device}")
    run.arch = {
        "model": recipe.model.name,
        "kwargs": dict(recipe.model.kwargs),
        "num_classes": int(data.num_classes),
        "input_shape": list(run.input_shape),
        "head": head,
        **({"surgery": surgery_spec} if surgery_spec is not None else {}),
    }


def _method_context(run: _Run, driver: Driver, resume: bool, progress: bool) -> MethodContext:
    """The services and inputs handed to the method; keeps the initial weights only when it asks."""
    recipe, p = run.recipe, run.recipe.prune
    assert run.model is not None
    initial = masking.plain_state_dict(run.model) if driver.needs_initial_weights(p.options) else None
    return MethodContext(
        model=run.model,
        data=run.data,
        input_shape=run.input_shape,
        out=run.out,
        log=run.log,
        seed=recipe.seed,
        finetune=recipe.finetune,
        sparsity=p.sparsity,
        include=p.include,
        exclude=p.exclude,
        min_keep=p.min_keep,
        head=run.arch["head"],
        reparam=p.reparam,
        dense_epochs=recipe.train.epochs,
        eval_batch_size=recipe.eval.batch_size,
        initial_weights=initial,
        resume=resume,
        progress=progress,
    )


def _attach_reparam(run: _Run) -> None:
    """Attach ``prune.reparam`` before dense training, so IP trains in filter-basis form throughout.

    It runs after the initial weights were kept, so rewinding loads plain initial weights (see
    :class:`~prunelab.reparam.FilterBasis`).
    """
    from prunelab.reparam import attach_from_config

    p = run.recipe.prune
    spec = attach_from_config(run.model, p.reparam, p.include, p.exclude)
    if spec is not None:
        run.arch["reparam"] = spec
        run.log(f"reparam: {spec['name']} on {len(spec['layers'])} layers")


def _train_dense(run: _Run, ctx: MethodContext) -> tuple[float, dict[str, int]]:
    """Dense training (skipped at 0 epochs) and the dense measurements."""
    recipe = run.recipe
    if recipe.train.epochs > 0:
        run.log(
            f"dense training: {recipe.train.epochs} epochs, {recipe.train.optimizer} lr={recipe.train.lr}"
        )
        ctx.train(ctx.model, recipe.train, "dense")
    accuracy = ctx.evaluate(ctx.model)
    dense = ctx.measure(ctx.model)
    run.log(
        f"dense: test accuracy {accuracy:.4f}, {dense['params_total']} params, {dense['macs_dense']} MACs"
    )
    if run.main and recipe.eval.latency:
        # Timed now, the way the final model is timed, so the speed-up compares like with like.
        run.latency_dense = _latency_ms(run, ctx.model)
    return accuracy, dense


def _latency_ms(run: _Run, model: nn.Module) -> dict[str, float]:
    """Median latency (ms) of ``model`` per ``eval.latency_batch_sizes`` entry (keys: batch sizes as text)."""
    from prunelab.metrics import measure_latency

    ev = run.recipe.eval
    return {
        str(bs): measure_latency(model, run.input_shape, batch_size=bs, repeats=ev.latency_repeats)[
            "median_ms"
        ]
        for bs in ev.latency_batch_sizes
    }


def _summarize(
    run: _Run,
    ctx: MethodContext,
    driver: Driver,
    result: MethodResult,
    accuracy_dense: float,
    dense: dict[str, int],
) -> dict[str, Any]:
    """The ``summary.json`` fields measured on the method's final model."""
    from prunelab.reparam import REPARAMS

    recipe, p, model = run.recipe, run.recipe.prune, result.model
    accuracy = ctx.evaluate(model)
    final = ctx.measure(model)
    run.log(
        f"final: test accuracy {accuracy:.4f}, {final['params_nonzero']}/{final['params_total']} non-zero"
    )
    extra = dict(result.summary)
    costs = REPARAMS.get(p.reparam.name).costs
    if run.arch.get("reparam") is not None and costs is not None:
        extra[p.reparam.name] = costs(model, run.input_shape)
    relative = dense_relative(final, dense)
    return {
        "name": recipe.name,
        "model": recipe.model.name,
        "dataset": recipe.data.name,
        "method": p.method,
        "seed": recipe.seed,
        "accuracy": accuracy,
        "accuracy_dense": accuracy_dense,
        "accuracy_before_finetune": result.accuracy_before_finetune,
        "params_total": final["params_total"],
        "params_nonzero": final["params_nonzero"],
        "sparsity": relative["sparsity"],
        # Methods that choose the sparsity themselves have no target.
        "target_sparsity": p.sparsity if driver.uses_sparsity else None,
        "targeted_sparsity": _targeted_sparsity(model),
        "compression": relative["compression"],
        "macs_dense": dense["macs_dense"],
        "macs_effective": final["macs_effective"],
        "macs_ratio": relative["macs_ratio"],
        "params_dense_total": dense["params_total"],
        "params_dense_nonzero": dense["params_nonzero"],
        "parameter_convention": (
            "all learnable parameters incl. BN; masked weights count as zeros; params_total/params_nonzero "
            "are the final model's; sparsity = 1 - params_nonzero/params_dense_total, compression = "
            "params_dense_total/params_nonzero, macs_ratio = macs_dense/macs_effective and latency_speedup "
            "= latency_dense_ms/latency_ms, all against the dense network that entered the method"
        ),
        **extra,
    }


def _write_run_dir(run: _Run, result: MethodResult, summary: dict[str, Any]) -> None:
    """Checkpoint, per-layer and per-round tables, latency, environment and ``summary.json`` (rank 0)."""
    from prunelab import distributed as dist
    from prunelab.metrics import file_size, layer_table
    from prunelab.metrics.latency import machine

    recipe, out, model = run.recipe, run.out, result.model
    save_checkpoint(out / "checkpoint.pt", model, run.arch)
    summary["checkpoint_bytes"] = file_size(out / "checkpoint.pt")
    atomic_write_csv(out / "layers.csv", layer_table(model, run.input_shape))
    atomic_write_csv(out / "rounds.csv", result.rounds)
    if recipe.eval.latency:
        summary["latency_ms"] = final = _latency_ms(run, model)
        if run.latency_dense is not None:
            summary["latency_dense_ms"] = run.latency_dense
            summary["latency_speedup"] = {bs: run.latency_dense[bs] / final[bs] for bs in final}
    summary["environment"] = {
        "prunelab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(run.device),
        "world_size": dist.world_size(),
        **machine(),  # the CPU: another one trains the same recipe and seed to other weights
    }
    summary["wall_time_s"] = round(time.perf_counter() - run.started, 3)
    atomic_write_json(out / "summary.json", summary)
    # The stage checkpoints only protect an unfinished run; checkpoint.pt is the result.
    for stage_checkpoint in out.glob("*_last.pt"):
        stage_checkpoint.unlink()
    run.log(f"wrote {out}")


def _wants_tensorboard(recipe: Recipe) -> bool:
    return bool(recipe.train.tensorboard or recipe.finetune.tensorboard)


def _reporter(run: _Run, ctx: MethodContext) -> ProgressReporter:
    """The run's epoch reporter: lines into the run log, the ETA over :func:`planned_epochs`, and
    (rank 0, when asked) TensorBoard scalars with the dense-relative sparsity of every epoch."""
    from prunelab.metrics import count_parameters

    def measure(model: nn.Module) -> dict[str, float]:
        # The summary's convention: non-zero parameters against the dense network's total.
        counts = count_parameters(model)
        dense_total = ctx.dense["params_total"] if ctx.dense is not None else counts.total
        return {"model/sparsity": 1.0 - counts.nonzero / max(dense_total, 1)}

    tensorboard = run.out / TENSORBOARD_DIR if run.main and _wants_tensorboard(run.recipe) else None
    return ProgressReporter(
        RunProgress(planned_epochs(run.recipe)),
        log=run.log if run.main else None,
        file_log=run.log.record if run.main else None,
        tensorboard_dir=tensorboard,
        measure=measure,
    )


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    data_dir: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Execute ``recipe`` and write its run directory to ``out_dir``.

    Args:
        recipe: a validated recipe (see :func:`prunelab.experiments.schema.load_recipe`).
        out_dir: the run directory (created). One that holds a finished run is refused unless
            ``overwrite`` or ``resume`` is given.
        data_dir: the data root (default ``$PRUNELAB_DATA`` or ``~/.cache/prunelab``).
        progress: show progress bars (only on a terminal).
        echo: where log lines go besides ``log.txt`` (``None`` for silence).
        resume: continue an interrupted run in ``out_dir``: every training stage restarts from its
            ``<stage>_last.pt`` checkpoint (finished stages are not trained again), and pruning steps,
            which are deterministic functions of the restored weights, are recomputed. Stage
            checkpoints are deleted once the run is complete. A finished run is not touched: its
            summary is returned as it is.
        overwrite: replace a finished run in ``out_dir`` (its results are deleted before this run starts).

    Returns:
        The summary written to ``summary.json`` (with ``resume`` on a finished run, the one there).

    Raises:
        ConfigError: before any data is loaded: ``out_dir`` holds a finished run (and neither
            ``overwrite`` nor ``resume`` is given), cannot be created or written, or both flags are given;
            ``train.tensorboard`` is on and the tensorboard package is not installed.
    """
    from prunelab.methods import DRIVERS

    driver = DRIVERS.get(recipe.prune.driver)
    out = Path(out_dir)
    finished = check_run_dir(out, resume=resume, overwrite=overwrite)
    if finished is not None:
        return finished
    if _wants_tensorboard(recipe):
        require_tensorboard("train.tensorboard" if recipe.train.tensorboard else "finetune.tensorboard")
    run = _open_run_dir(recipe, out, resume, overwrite, echo)
    _load_data_and_model(run, data_dir)
    ctx = _method_context(run, driver, resume, progress)
    _attach_reparam(run)
    # Every training stage below (dense, and the method's) reports its epochs to this one reporter.
    with reporting(_reporter(run, ctx)) as reporter:
        accuracy_dense, dense = _train_dense(run, ctx)
        ctx.dense = dense
        result = driver.run(ctx, recipe.prune.options)
        reporter.rounds(result.rounds)
    if result.surgery is not None:
        run.arch["surgery"] = result.surgery
    summary = _summarize(run, ctx, driver, result, accuracy_dense, dense)
    if run.main:
        _write_run_dir(run, result, summary)
    else:
        summary["wall_time_s"] = round(time.perf_counter() - run.started, 3)
    return summary
