"""Reference: Torch-Pruning's own BN-scale pruner on the same model and data as the slimming recipes.

Network slimming done with Torch-Pruning 1.6 alone (``tp.pruner.BNScalePruner`` with
``tp.importance.BNScaleImportance``): the same sparsity training (its ``regularize`` adds
``reg · sign(γ)`` to the BN gradients, called from a prunelab training hook), the same global channel
share removed (``global_pruning=True``), the same fine-tuning — all settings read from a slimming
recipe so the comparison is like for like. It reports accuracy right after pruning and after
fine-tuning, parameters, MACs and channels, and writes ``benchmarks/results/slimming_tp_<model>.json``.

Usage::

    .venv/bin/python benchmarks/slimming_tp_reference.py recipes/slimming/vgg19_cifar10.yaml \
        --share 0.6 --data-dir /work/shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunelab._io import atomic_write_json
from prunelab.core.targets import find_head
from prunelab.data import load_dataset
from prunelab.dataclass_yaml import build_section
from prunelab.experiments.schema import load_recipe
from prunelab.metrics import count_parameters, dense_macs
from prunelab.models import build_model
from prunelab.training import evaluate, set_seed, train
from prunelab.training.config import TrainSection


class _TPRegularizer:
    """prunelab training hook calling Torch-Pruning's BN-scale regularizer after ``backward``."""

    def __init__(self, pruner: Any) -> None:
        self.pruner = pruner

    def after_backward(self, model: nn.Module) -> None:
        self.pruner.regularize(model)


def _bn_channels(model: nn.Module) -> int:
    return sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def main() -> None:
    """Run the reference and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--share", type=float, required=True, help="share of channels removed (global)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    opts = recipe.prune.options  # the parsed SlimmingOptions of the recipe
    started = time.perf_counter()
    set_seed(recipe.seed)
    d = recipe.data
    data = load_dataset(d.name, data_dir=args.data_dir, val_fraction=d.val_fraction, train_subset=d.train_subset,
                        test_subset=d.test_subset, seed=recipe.seed, augment=d.augment, normalize=d.normalize)  # fmt: skip
    shape = tuple(int(s) for s in data.input_shape)
    model = build_model(
        recipe.model.name, num_classes=data.num_classes, input_shape=shape, **recipe.model.kwargs
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and opts.gamma_init is not None:
                m.weight.fill_(float(opts.gamma_init))
    head = model.get_submodule(find_head(model, shape))
    example = torch.zeros(1, *shape)
    pruner = tp.pruner.BNScalePruner(
        model, example, importance=tp.importance.BNScaleImportance(), reg=float(opts.lam),
        global_pruning=True, pruning_ratio=args.share, ignored_layers=[head],
    )  # fmt: skip
    section = build_section(TrainSection, dict(opts.sparsity_train), "prune.options.sparsity_train")
    train(model, data, section.to_train_config(False), hooks=[_TPRegularizer(pruner)], seed=recipe.seed + 1)
    acc_trained = evaluate(model, data.test)["accuracy"]
    params0, macs0, ch0 = count_parameters(model).total, dense_macs(model, shape), _bn_channels(model)
    pruner.step()
    acc_pruned = evaluate(model, data.test)["accuracy"]
    params1, macs1, ch1 = count_parameters(model).total, dense_macs(model, shape), _bn_channels(model)
    if recipe.finetune.epochs:
        train(model, data, recipe.finetune.to_train_config(False), seed=recipe.seed + 2)
    acc_final = evaluate(model, data.test)["accuracy"]
    result = {
        "recipe": recipe.name,
        "tool": f"torch_pruning {tp.__version__} BNScalePruner + BNScaleImportance, global_pruning",
        "share_requested": args.share,
        "accuracy_after_sparsity_training": acc_trained,
        "accuracy_after_pruning": acc_pruned,
        "accuracy_after_finetune": acc_final,
        "channels_before": ch0,
        "channels_after": ch1,
        "params_before": params0,
        "params_after": params1,
        "macs_before": macs0,
        "macs_after": macs1,
        "macs_ratio": macs0 / macs1,
        "wall_time_s": time.perf_counter() - started,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"slimming_tp_{recipe.model.name}.json")
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
