"""The pre-trained vs from-scratch pruning study (Hubens et al., APPIS 2020, arXiv:2112.08227).

N. Hubens, M. Mancas, B. Gosselin, M. Preda, T. Zaharia, *An Experimental Study of the Impact of
Pre-training on the Pruning of a Convolutional Neural Network*, APPIS 2020. The paper compares networks
fine-tuned from ImageNet weights with the same networks trained from scratch, pruned to a range of
sparsities, and reports that the pre-trained ones can be pruned "up to 80 %" further.

The study is a sweep, not a new algorithm: this module registers the preset of the probable pruning
protocol [unconfirmed: the paper text was not available] — magnitude criterion, per-layer (local)
sparsity, unstructured weights, cubic AGP schedule during fine-tuning, as in the author's fasterai1
``SparsifyCallback`` of the time — and the analysis the study states: the largest sparsity each
initialisation reaches within a tolerance of its own dense accuracy. See ``docs/methods/pretraining.md``
and ``recipes/pretraining/``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prunelab.methods.base import register_method

__all__ = ["SparsityReach", "largest_sparsity_within", "reach_table"]

register_method(
    "pretraining_agp",
    "Hubens et al. 2020 study protocol [unconfirmed]: magnitude, per-layer sparsity, cubic AGP "
    "during fine-tuning.",
    "agp",
    sparsity=0.9,
    criterion="magnitude",
    granularity="element",
    scope="layer",
)


@dataclass(frozen=True)
class SparsityReach:
    """How far one group (e.g. one initialisation) prunes within tolerance of its own dense accuracy.

    Attributes:
        group: the group's value (e.g. ``"pretrained"``).
        dense_accuracy: mean dense accuracy over seeds (a fraction).
        dense_std: its standard deviation over seeds (0 for one seed).
        seeds: number of dense runs averaged.
        largest_sparsity: the largest target sparsity whose mean accuracy is at least
            ``dense_accuracy - tolerance``; ``None`` when no pruned point qualifies.
        accuracy_at_largest: mean accuracy at ``largest_sparsity``.
        points: target sparsity → (mean accuracy, std, number of runs), sorted by sparsity.
    """

    group: Any
    dense_accuracy: float
    dense_std: float
    seeds: int
    largest_sparsity: float | None
    accuracy_at_largest: float | None
    points: dict[float, tuple[float, float, int]]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    # Sample standard deviation over seeds; a single seed has no spread to report.
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def largest_sparsity_within(
    records: Sequence[dict[str, Any]],
    *,
    group: str | Sequence[str] = "init",
    tolerance: float = 0.01,
    x: str = "target_sparsity",
) -> dict[Any, SparsityReach]:
    """For each value of ``group``, the largest sparsity within ``tolerance`` of its own dense accuracy.

    Args:
        records: one mapping per run with ``group``, ``x`` (0 for dense runs), ``accuracy`` and, for
            pruned runs, ``accuracy_dense`` (used as the reference only when a group has no dense run).
        group: the key that separates the compared settings, or several keys (the groups are then
            tuples of their values, e.g. ``("layer", "pretrained", 0)`` for variant, init and seed).
        tolerance: allowed drop below the dense accuracy, as a fraction (0.01 = 1 percentage point).
        x: the key holding each run's target sparsity.

    Returns:
        ``group value → SparsityReach``. The dense reference is the mean accuracy of the group's runs at
        ``x == 0``; seeds are averaged before the comparison, so one lucky seed does not decide.
    """
    by_group: dict[Any, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    fallback: dict[Any, list[float]] = defaultdict(list)
    keys = (group,) if isinstance(group, str) else tuple(group)
    for record in records:
        value = record.get(group) if isinstance(group, str) else tuple(record.get(k) for k in keys)
        sparsity = float(record.get(x) or 0.0)
        by_group[value][sparsity].append(float(record["accuracy"]))
        if sparsity > 0 and record.get("accuracy_dense") is not None:
            fallback[value].append(float(record["accuracy_dense"]))
    out: dict[Any, SparsityReach] = {}
    for value, points in by_group.items():
        dense_values = points.get(0.0) or fallback.get(value) or []
        if not dense_values:
            continue
        dense_mean, dense_std = _mean_std(dense_values)
        stats = {s: (*_mean_std(a), len(a)) for s, a in sorted(points.items()) if s > 0}
        qualifying = [s for s, (mean, _, _) in stats.items() if mean >= dense_mean - tolerance - 1e-12]
        largest = max(qualifying) if qualifying else None
        out[value] = SparsityReach(
            group=value,
            dense_accuracy=dense_mean,
            dense_std=dense_std,
            seeds=len(dense_values),
            largest_sparsity=largest,
            accuracy_at_largest=stats[largest][0] if largest is not None else None,
            points=stats,
        )
    return out


def reach_table(reach: dict[Any, SparsityReach], tolerance: float = 0.01) -> str:
    """A markdown table of :func:`largest_sparsity_within`'s result (accuracies in %)."""
    lines = [
        f"| group | dense accuracy (%) | largest sparsity within {100 * tolerance:g} pp | accuracy there (%) |",
        "|---|---|---|---|",
    ]
    for value, r in sorted(reach.items(), key=lambda kv: str(kv[0])):
        if not r.points:
            largest = "not pruned"
        elif r.largest_sparsity is None:
            largest = f"none (lowest tried: {100 * min(r.points):g} %)"
        else:
            largest = f"{100 * r.largest_sparsity:g} %"
        at = f"{100 * r.accuracy_at_largest:.1f}" if r.accuracy_at_largest is not None else "–"
        name = " / ".join(str(v) for v in value) if isinstance(value, tuple) else value
        lines.append(
            f"| {name} | {100 * r.dense_accuracy:.1f} ± {100 * r.dense_std:.1f} (n={r.seeds}) | {largest} | {at} |"
        )
    return "\n".join(lines)
