"""The NN-relief run report: accuracy and compression per round and per-layer remaining weights.

Written by the ``relief`` driver (:mod:`prunelab.methods.relief`) into the run directory as
``relief_report.png`` and ``relief_report.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunelab._io import atomic_write_text

__all__ = ["write_report"]


def write_report(out: Path, rounds: Sequence[Mapping[str, Any]], layers: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``relief_report.png`` (accuracy and compression per round, per-layer remaining weights) and
    ``relief_report.md`` into ``out``; returns the markdown path.

    Args:
        out: the run directory.
        rounds: the ``rounds.csv`` rows of the run.
        layers: ``relief_layers.csv`` rows (``round``, ``layer``, ``nonzero``, ``total``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out.mkdir(parents=True, exist_ok=True)
    idx = [int(r["round"]) for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(
        idx, [100 * float(r["accuracy_before_finetune"]) for r in rounds], "o--", label="after pruning"
    )
    axes[0].plot(
        idx, [100 * float(r["accuracy_after_finetune"]) for r in rounds], "o-", label="after retraining"
    )
    axes[0].set(xlabel="round", ylabel="test accuracy (%)", title="accuracy")
    axes[0].legend()
    axes[1].plot(idx, [float(r["relief_compression"]) for r in rounds], "o-", label="conv/FC weights+biases")
    axes[1].plot(idx, [float(r["compression"]) for r in rounds], "s--", label="all parameters")
    axes[1].set(xlabel="round", ylabel="compression (x)", title="compression", yscale="log")
    axes[1].legend()
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    names = list(dict.fromkeys(str(row["layer"]) for row in layers))
    drawn = sorted({int(row["round"]) for row in layers})
    if len(drawn) > 6:  # a legend of 20 rounds hides the curves: draw six, first and last included
        drawn = sorted({drawn[round(i * (len(drawn) - 1) / 5)] for i in range(6)})
    for r in drawn:
        fractions = {
            str(row["layer"]): 100 * int(row["nonzero"]) / max(int(row["total"]), 1)
            for row in layers
            if int(row["round"]) == r
        }
        axes[2].plot(range(len(names)), [fractions[n] for n in names], "o-", label=f"round {r}")
    axes[2].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axes[2].set(ylabel="remaining weights (%)", title="per-layer remaining", yscale="log")
    axes[2].legend(fontsize=6)
    # Fixed margins: tight_layout's text measurement took seconds for the rotated layer names.
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.3, top=0.92, wspace=0.25)
    fig.savefig(out / "relief_report.png", dpi=90)
    plt.close(fig)
    lines = [
        "# NN-relief run report",
        "",
        (
            "Remaining % = conv/FC weights + biases (the paper's convention, BN excluded); "
            "all-parameter figures include BN and are what `summary.json` reports."
        ),
        "",
        (
            "| round | acc. after pruning | acc. after retraining | remaining % (conv/FC w+b) | "
            "compression | remaining % (all params) | effective MACs |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['round']} | {100 * float(r['accuracy_before_finetune']):.2f} | "
            f"{100 * float(r['accuracy_after_finetune']):.2f} | {float(r['relief_remaining_percent']):.3f} | "
            f"{float(r['relief_compression']):.1f}x | {float(r['remaining_percent']):.3f} | {r['macs_effective']} |"
        )
    last = max((int(row["round"]) for row in layers), default=0)
    lines += [
        "",
        f"Per-layer remaining weights after round {last}:",
        "",
        "| layer | non-zero | total | % |",
        "|---|---|---|---|",
    ]
    for row in layers:
        if int(row["round"]) == last:
            pct = 100 * int(row["nonzero"]) / max(int(row["total"]), 1)
            lines.append(f"| {row['layer']} | {row['nonzero']} | {row['total']} | {pct:.2f} |")
    lines += ["", "![relief report](relief_report.png)", ""]
    path = out / "relief_report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
