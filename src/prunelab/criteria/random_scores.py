"""Random criterion (both levels): ``S ~ U[0, 1)`` i.i.d. per entry or per channel, from a seeded generator.

The control every other criterion must beat (Liu et al. 2019, "Rethinking the Value of Network
Pruning", use it to separate what the criterion adds from what the sparsity pattern's density adds).
Scores are drawn on the CPU from one ``torch.Generator`` seeded with ``seed`` (entry level: then moved to
the tensor's device), so every process (every DDP rank, CPU or GPU) draws the same scores for the same
seed and the same sequence of calls. At the group level one draw of ``group.size`` scores is made per
group, in the order the groups are scored (:func:`~prunelab.core.criterion.score_groups` keeps the
order it is given: a channel graph's groups in module order).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.core.criterion import ChannelGroupLike, Stats, TargetView
from prunelab.criteria.registry import CRITERIA
from prunelab.errors import CheckpointError, ConfigError


@CRITERIA.register(
    "random", help="U[0, 1) per entry or per channel from a seeded CPU generator (the control)."
)
class RandomScore:
    """Uniform random scores U[0, 1) from a seeded CPU generator, per entry or per channel; data-free.

    Args:
        seed: generator seed; the same seed and call sequence give the same scores everywhere.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunelab.core.targets import find_targets
        >>> layer = nn.Linear(4, 3)
        >>> view = TargetView(find_targets(layer)[0], layer.weight.detach(), torch.ones(3, 4, dtype=torch.bool))
        >>> torch.equal(RandomScore(seed=1).score(view, {}), RandomScore(seed=1).score(view, {}))
        True
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"random criterion: seed must be an integer, got {seed!r}")
        self.seed = seed
        self._generator = torch.Generator(device="cpu").manual_seed(seed)

    def score(self, view: TargetView, stats: Stats) -> Tensor:
        """Draw ``U[0, 1)`` scores of ``view.value``'s shape (advances the generator)."""
        scores = torch.rand(view.value.shape, generator=self._generator, dtype=torch.float32)
        return scores.to(view.value.device)

    def score_group(self, group: ChannelGroupLike, model: nn.Module, stats: Stats) -> Tensor:
        """Draw ``U[0, 1)`` scores for the ``group.size`` channels of ``group`` (advances the generator)."""
        return torch.rand(group.size, generator=self._generator, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """The seed and the generator's position, so a resumed run draws what it would have drawn."""
        return {"seed": self.seed, "generator": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator position saved by :meth:`state_dict`.

        Raises:
            CheckpointError: if the state lacks the generator or was saved with another seed.
        """
        if "generator" not in state:
            raise CheckpointError("random criterion state has no generator; re-create the checkpoint")
        if state.get("seed", self.seed) != self.seed:
            raise CheckpointError(
                f"random criterion state was saved with seed {state['seed']}, this criterion uses "
                f"{self.seed}; build the pruner with criterion_kwargs={{'seed': {state['seed']}}}"
            )
        self._generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"RandomScore(seed={self.seed})"
