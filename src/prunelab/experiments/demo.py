"""The offline demo: the published methods on a small CNN, end to end, in about a minute and a half.

Everything runs on the UCI 8×8 digits that ship inside prunelab (1,797 images), so it needs neither
network nor downloaded data. Every part is a real recipe run by the same runner as ``prunelab run``
(:func:`prunelab.experiments.runner.run_recipe`), with budgets cut down to seconds:

1. ``dense``: a small CNN (3 conv + BatchNorm layers) trained on digits; every later run starts from it.
2. (a) ``slimming``: network slimming (Liu et al. 2017): L1 sparsity training of the BatchNorm scales,
   a global |γ| threshold, channel surgery that physically removes the channels and is verified (masked
   vs compacted outputs), fine-tuning, and the dense vs compacted latency measured side by side.
3. (b) ``relief``: NN-relief (Dekhovich et al. 2024): rounds of per-neuron activity-mass pruning and
   retraining; it chooses its own sparsity.
4. (c) ``interspace`` vs ``standard``: interspace pruning (Wimmer et al. 2022) against standard
   pruning, both one-shot global magnitude at the same high sparsity, each from a dense network trained
   in its own parametrization (a second dense run, ``dense-interspace``, in filter-basis form).
5. (d) ``magnitude``: one-shot global magnitude pruning at the sparsity relief reached: the baseline
   relief must beat.

Then one report (``report.md``/``report.html`` with plots) over all runs.

Run time is dominated by the number of CPU threads each tiny run is given: on a shared 2-core machine
PyTorch's default (one thread per core, per process) oversubscribes and the time swings by an order of
magnitude, so the demo uses one thread unless told otherwise (``--threads N``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DEMO_SECONDS", "DEMO_SPARSITY", "SLIMMING_CHANNELS", "demo_recipe", "run_demo"]

#: Sparsity of the interspace vs standard comparison (fraction of conv/linear weights removed).
DEMO_SPARSITY = 0.95

#: Share of the BatchNorm channels network slimming removes.
SLIMMING_CHANNELS = 0.5

#: What the demo announces: its wall time measured on the 2-core development machine at load average
#: 12 (86 s; 28 s of CPU time), one thread. README's demo section gives the record.
DEMO_SECONDS = 90

_DATA = {"name": "digits", "val_fraction": 0.1}
# Batches of 128: the model is so small that a step costs about the same at 64 or 128 images.
_ADAM = {"optimizer": "adam", "weight_decay": 1e-4, "batch_size": 128, "lr_schedule": "cosine"}
_FINETUNE = {**_ADAM, "epochs": 3, "lr": 1e-3}
_NO_LATENCY = {"latency": False}
# Latency at a batch where an 8×8 model's forward pass is not all overhead, so removed channels show.
_LATENCY = {"latency_batch_sizes": [256], "latency_repeats": 15}

#: The parts in run order: (run name, what it shows). The order matters: later runs start from
#: earlier ones, and the magnitude baseline takes relief's sparsity.
PARTS: tuple[tuple[str, str], ...] = (
    ("dense", "dense small CNN on digits (every other run starts from it)"),
    ("slimming", "(a) network slimming -> verified channel surgery -> measured speed-up"),
    ("relief", "(b) NN-relief: activity-mass pruning rounds, sparsity chosen by the method"),
    ("dense-interspace", "(c) the same dense training in interspace (filter-basis) form"),
    ("interspace", f"(c) interspace pruning, one-shot magnitude at {DEMO_SPARSITY:.0%}"),
    ("standard", f"(c) standard pruning, one-shot magnitude at {DEMO_SPARSITY:.0%}"),
    ("magnitude", "(d) magnitude baseline at relief's sparsity"),
)


def _reparam(name: str) -> dict[str, Any]:
    return {"name": name, "init": "identity", "basis": "shared", "rewind_basis": True}


def demo_recipe(name: str, out: Path, relief_sparsity: float | None = None) -> dict[str, Any]:
    """The recipe (plain data) of the demo part ``name``; runs read their init from siblings in ``out``.

    Args:
        name: a name of :data:`PARTS`.
        out: the demo's output folder (the runs' directories are ``out/<name>``).
        relief_sparsity: the sparsity the relief run reached (the ``magnitude`` part prunes to it).
    """

    def base(init: str | None, prune: dict[str, Any], **extra: Any) -> dict[str, Any]:
        model: dict[str, Any] = {"name": "small_cnn"}
        if init is not None:
            model["init"] = str(out / init)
        return {"name": name, "seed": 0, "model": model, "data": _DATA, "prune": prune, **extra}

    if name in ("dense", "dense-interspace"):
        reparam = _reparam("interspace" if name == "dense-interspace" else "none")
        train = {**_ADAM, "epochs": 7, "lr": 5e-3}
        return base(None, {"method": "dense", "reparam": reparam}, train=train, eval=_NO_LATENCY)
    if name == "slimming":
        prune = {
            "method": "network_slimming",
            "sparsity": SLIMMING_CHANNELS,
            "min_keep": 1,
            "options": {
                "lam": 1e-3,
                "gamma_init": 0.5,
                # Per layer, not the paper's global |γ| threshold: on this 3-conv net the global one
                # empties the two small early layers (measured at 50 %: 1 of 16 and 1 of 32 kept).
                "scope": "layer",
                # SGD as in the paper: Adam's per-parameter scaling cancels the L1 subgradient's pull on γ.
                "sparsity_train": {
                    "epochs": 4,
                    "optimizer": "sgd",
                    "lr": 0.05,
                    "momentum": 0.9,
                    "weight_decay": 1e-4,
                    "batch_size": 128,
                    "lr_schedule": "cosine",
                },
                "speed_batch_sizes": [1, 256],
                "speed_repeats": 15,
                "onnx": False,  # the demo measures PyTorch itself; ONNX Runtime is an optional extra
            },
        }
        return base("dense", prune, finetune=_FINETUNE, eval=_LATENCY)
    if name == "relief":
        prune = {
            "method": "relief",
            "options": {"alpha_conv": 0.9, "alpha_fc": 0.95, "rounds": 2, "calibration_samples": 500},
        }
        return base("dense", prune, finetune={**_FINETUNE, "epochs": 1}, eval=_NO_LATENCY)
    if name in ("interspace", "standard"):
        ip = name == "interspace"
        prune = {
            "method": "magnitude",
            "sparsity": DEMO_SPARSITY,
            "reparam": _reparam("interspace" if ip else "none"),
        }
        return base("dense-interspace" if ip else "dense", prune, finetune=_FINETUNE, eval=_NO_LATENCY)
    if name == "magnitude":
        if relief_sparsity is None:
            raise ValueError("the magnitude part prunes to relief's sparsity: pass relief_sparsity")
        prune = {"method": "magnitude", "sparsity": round(relief_sparsity, 4)}
        return base("dense", prune, finetune=_FINETUNE, eval=_NO_LATENCY)
    raise ValueError(f"unknown demo part {name!r}; known: {', '.join(n for n, _ in PARTS)}")


#: The demo's table: (summary key, header, format).
_COLUMNS = (
    ("name", "run", "{}"),
    ("method", "method", "{}"),
    ("sparsity", "sparsity", "{:.3f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("params_nonzero", "non-zero params", "{:,}"),
    ("params_total", "params", "{:,}"),
    ("macs_effective", "eff. MACs", "{:,}"),
    ("speedup_1", "speed-up b1", "{:.2f}x"),
    ("speedup_256", "speed-up b256", "{:.2f}x"),
)


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    """A table row: the summary plus the dense vs compacted speed-ups a structured method measured.

    They come from the method's own side-by-side, interleaved timing (``speedup.eager_cpu``); runs that
    removed nothing physically have none (an unstructured mask does not make a dense kernel faster).
    """
    row = dict(summary)
    timed = (summary.get("speedup") or {}).get("eager_cpu") or {}
    for batch, result in timed.items():
        row[f"speedup_{batch}"] = result["speedup"]
    return row


def run_demo(
    out: Path,
    quiet: bool = False,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every demo part into ``out``, print its table and write the report; returns the summaries.

    Args:
        out: output folder (created); each run goes to ``out/<part name>``, the report to ``out/report.md``.
        quiet: print only the final table and the report's path.
        threads: PyTorch CPU threads for the runs (default 1: tiny models gain nothing from more, and
            on a shared machine more threads oversubscribe the cores). Restored afterwards.
        echo: where progress lines go.
    """
    import torch  # here, not at the top: the command line reads DEMO_SECONDS without importing torch

    from prunelab.experiments.report import markdown_table, write_report
    from prunelab.experiments.runner import run_recipe
    from prunelab.experiments.schema import recipe_from_dict

    threads = 1 if threads is None else threads
    if threads < 1:
        from prunelab.errors import ConfigError

        raise ConfigError(f"--threads: must be >= 1 (got {threads})")
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda _line: None) if quiet else echo
    say(
        f"prunelab demo: {len(PARTS)} runs on the bundled digits, {threads} CPU thread(s); about "
        f"{DEMO_SECONDS} s on a busy 2-core machine (less on a quiet one). Output: {out}"
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    summaries: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        for i, (name, what) in enumerate(PARTS, 1):
            relief = summaries.get("relief", {}).get("targeted_sparsity")
            recipe = recipe_from_dict(demo_recipe(name, out, relief_sparsity=relief), check_paths=True)
            say(f"[{i}/{len(PARTS)}] {name}: {what}")
            t0 = time.perf_counter()
            summaries[name] = run_recipe(recipe, out / name, progress=False, echo=None, overwrite=True)
            say(f"      done in {time.perf_counter() - t0:.1f} s: accuracy {summaries[name]['accuracy']:.4f}")
    finally:
        torch.set_num_threads(previous)
    echo(markdown_table([_row(s) for s in summaries.values()], _COLUMNS))
    report = write_report(
        [out / name for name in summaries], out / "report.md", title="prunelab demo: small CNN on digits"
    )
    echo(f"wrote {report} ({time.perf_counter() - started:.0f} s in all)")
    return list(summaries.values())
