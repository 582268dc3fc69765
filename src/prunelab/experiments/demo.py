"""The offline demo: train, prune at three sparsities, fine-tune, measure, report.

Everything runs on scikit-learn's bundled digits (1,797 8×8 images), so it works without network or
downloaded data, in about a minute on two CPU cores. It uses the same recipe runner as
``prunelab run``: one dense run, then three one-shot global magnitude runs that start from the dense
run's checkpoint, then ``prunelab report`` over all four.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunelab.experiments.report import markdown_table, write_report
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import recipe_from_dict

#: Sparsities the demo prunes to (fractions of conv/linear weights removed).
DEMO_SPARSITIES = (0.5, 0.8, 0.95)

_BASE: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "small_cnn"},
    "data": {"name": "digits", "val_fraction": 0.1},
    "eval": {"latency_batch_sizes": [1], "latency_repeats": 10},
}


def demo_recipes(dense_dir: Path) -> list[dict[str, Any]]:
    """The demo's recipes as plain data: the dense run, then one pruning run per sparsity."""
    dense = {
        **_BASE,
        "name": "dense",
        "train": {
            "epochs": 30,
            "optimizer": "adam",
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "batch_size": 64,
            "lr_schedule": "cosine",
        },
        "prune": {"method": "dense"},
    }
    pruned = [
        {
            **_BASE,
            "name": f"magnitude-{s:.2f}",
            "model": {"name": "small_cnn", "init": str(dense_dir)},
            "prune": {"method": "magnitude", "sparsity": s},
            "finetune": {
                "epochs": 15,
                "optimizer": "adam",
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "batch_size": 64,
                "lr_schedule": "cosine",
            },
        }
        for s in DEMO_SPARSITIES
    ]
    return [dense, *pruned]


def run_demo(out: Path, quiet: bool = False) -> list[dict[str, Any]]:
    """Run the demo into ``out`` and print its table; returns the four summaries."""
    out.mkdir(parents=True, exist_ok=True)
    dense_dir = out / "dense"
    summaries = []
    for raw in demo_recipes(dense_dir):
        recipe = recipe_from_dict(raw)
        if not quiet:
            print(f"== {recipe.name}")
        summaries.append(run_recipe(recipe, out / recipe.name, progress=False, echo=None if quiet else print))
    columns = (
        ("name", "run", "{}"),
        ("sparsity", "sparsity", "{:.3f}"),
        ("accuracy", "accuracy", "{:.4f}"),
        ("params_nonzero", "non-zero params", "{:,}"),
        ("params_total", "params", "{:,}"),
        ("macs_effective", "eff. MACs", "{:,}"),
        ("macs_dense", "dense MACs", "{:,}"),
    )
    print(markdown_table(summaries, columns))
    report = write_report([out], out / "report.md", title="prunelab demo: small CNN on digits")
    print(f"wrote {report}")
    return summaries
