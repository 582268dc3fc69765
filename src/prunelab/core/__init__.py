"""The pruning core (the ground floor of the pruning axes): masks, targets, granularities, selectors,
schedules and the criterion protocol.

- :mod:`~prunelab.core.masking`: the ``W = W₀ ⊙ M`` mask parametrization and its state helpers;
- :mod:`~prunelab.core.targets`: which tensors are pruned (:func:`~prunelab.core.targets.find_targets`);
- :mod:`~prunelab.core.granularity`: the unit of a decision (element, kernel, filter, channel);
- :mod:`~prunelab.core.selectors`: which units survive (exact global / per-layer top-k) and the one
  ``min_keep`` guard;
- :mod:`~prunelab.core.cumulative`: the cumulative-mass selector (NN-relief);
- :mod:`~prunelab.core.schedules`: when and how much (one-shot, iterative, AGP);
- :mod:`~prunelab.core.modules`: a faithful fast deep copy of a model, and train/eval mode restored exactly;
- :mod:`~prunelab.core.criterion`: the criterion protocol at two levels (entries of a tensor, channels
  of a coupled group); the one criterion registry is :data:`prunelab.criteria.CRITERIA`.

``core`` imports only torch and the ground modules (:mod:`prunelab.errors`, :mod:`prunelab.registry`);
the :class:`~prunelab.pruning.Pruner` that composes it with criteria and reparametrizations lives in
:mod:`prunelab.pruning`. Nothing is imported eagerly here, so ``import prunelab.core.masking`` stays cheap.
"""
