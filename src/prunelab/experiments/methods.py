"""Method presets: named choices of criterion, granularity, selector scope and schedule.

A method is not code, it is a preset (design: "a method is a preset that picks one of each axis").
``prune: {method: lottery_ticket, sparsity: 0.95}`` in a recipe fills in every other ``prune`` field
from the preset below; any field written in the recipe overrides the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prunelab.registry import Registry


@dataclass(frozen=True)
class MethodPreset:
    """Default ``prune`` section values for one method, with a one-line description."""

    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


METHODS: Registry[MethodPreset] = Registry("method")


def register_preset(name: str, description: str, **defaults: Any) -> MethodPreset:
    """Register a method preset: ``defaults`` are ``prune`` section fields (``schedule``, ``options``, ...)."""
    preset = MethodPreset(description, defaults)
    METHODS.register(name, help=description)(preset)
    return preset


register_preset("dense", "No pruning: train (or load) and measure the dense network.", schedule="none")
register_preset(
    "magnitude",
    "One-shot global magnitude pruning of all conv/linear weights, then fine-tuning (Han et al. 2015).",
    criterion="magnitude",
    granularity="element",
    scope="global",
    schedule="one_shot",
)
register_preset(
    "magnitude_layerwise",
    "One-shot magnitude pruning with the same sparsity in every layer, then fine-tuning.",
    criterion="magnitude",
    granularity="element",
    scope="layer",
    schedule="one_shot",
)
register_preset(
    "magnitude_iterative",
    "Iterative global magnitude pruning: prune -> fine-tune rounds to the target (Han et al. 2015).",
    criterion="magnitude",
    granularity="element",
    scope="global",
    schedule="iterative",
    rounds=5,
)
register_preset(
    "lottery_ticket",
    "Iterative magnitude pruning with rewinding of surviving weights to init (Frankle & Carbin 2019).",
    criterion="magnitude",
    granularity="element",
    scope="global",
    schedule="iterative",
    rounds=5,
    rewind=True,
)
register_preset(
    "agp",
    "Gradual magnitude pruning during fine-tuning on the cubic AGP schedule (Zhu & Gupta 2017).",
    criterion="magnitude",
    granularity="element",
    scope="global",
    schedule="agp",
)
register_preset(
    "random",
    "One-shot random pruning at the same sparsity: the baseline every criterion must beat.",
    criterion="random",
    granularity="element",
    scope="global",
    schedule="one_shot",
)
register_preset(
    "l1_filter_masked",
    "One-shot per-layer L1-norm filter pruning as masks (Li et al. 2017); no physical removal.",
    criterion="magnitude",
    criterion_kwargs={"p": 1},
    granularity="filter",
    scope="layer",
    schedule="one_shot",
)
