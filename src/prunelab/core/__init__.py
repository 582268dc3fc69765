"""The pruning core: masks, targets, granularities, selectors, schedules and the pruner.

- :mod:`~prunelab.core.masking`: the ``W = W₀ ⊙ M`` mask parametrization and its state helpers;
- :mod:`~prunelab.core.targets`: which tensors are pruned (:func:`~prunelab.core.targets.find_targets`);
- :mod:`~prunelab.core.granularity`: the unit of a decision (element, kernel, filter, channel);
- :mod:`~prunelab.core.selectors`: which units survive (exact global / per-layer top-k);
- :mod:`~prunelab.core.schedules`: when and how much (one-shot, iterative, AGP);
- :mod:`~prunelab.core.pruner`: :class:`~prunelab.core.pruner.Pruner`, the gradual-pruning training hook
  and :func:`~prunelab.core.pruner.prune`.

Nothing is imported eagerly here, so ``import prunelab.core.masking`` stays cheap.
"""
