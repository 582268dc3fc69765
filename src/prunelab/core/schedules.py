"""Pruning schedules: when to prune and how much.

Every schedule is an immutable value object validated at construction; none holds a position, so the
same schedule can be shared, pickled and asked about any step. Sparsities are cumulative fractions in
[0, 1] (what the pruner's ``step`` expects), never increments.

- ``one_shot(s)``: a single round to ``s``.
- ``iterative(s, rounds, spacing)``: ``n`` prune → fine-tune rounds (Han et al. 2015). After round
  ``k = 1..n`` the cumulative target is

  - geometric (default): ``s_k = 1 - (1 - s)^(k/n)``, i.e. every round removes the same fraction of
    the weights that are still there (the lottery-ticket convention, Frankle & Carbin 2019);
  - linear: ``s_k = s · k / n``.

- ``agp(s_f, s_i, start, end, frequency)``: automated gradual pruning (Zhu & Gupta 2017, "To prune, or
  not to prune: exploring the efficacy of pruning for model compression"), pruning during training
  along the cubic

  ``s_t = s_f + (s_i - s_f) · (1 - (t - t0) / (t_end - t0))^3``  for ``t0 ≤ t ≤ t_end``,

  with ``s_t = s_i`` before ``t0`` and ``s_t = s_f`` after ``t_end``. ``start``/``end`` are fractions of
  the total number of training steps (``t0 = round(start · T)``, ``t_end = round(end · T)``); the masks
  are updated every ``frequency`` steps from ``t0`` on and once more exactly at ``t_end``, so the final
  sparsity is reached exactly at ``end``. The cubic prunes fast while the network is still redundant
  and slowly near the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.core.selectors import check_sparsity
from prunelab.errors import ConfigError
from prunelab.registry import Registry

SCHEDULES: Registry[type] = Registry("schedule")


def _check_int(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_fraction(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{what} must be a fraction in [0, 1], got {value!r}")
    return float(value)


@SCHEDULES.register("one_shot", help="One target: the whole sparsity in a single step, [s].")
@dataclass(frozen=True)
class OneShot:
    """Prune once, straight to the target sparsity.

    Args:
        sparsity: the target, in [0, 1].

    Example:
        >>> OneShot(0.9).targets()
        [0.9]
    """

    sparsity: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))

    def targets(self) -> list[float]:
        """The cumulative sparsity after each round: ``[sparsity]``."""
        return [self.sparsity]


@SCHEDULES.register(
    "iterative",
    help="One cumulative target per round k = 1..n: 1 - (1 - s)^(k/n) (geometric, default) or s·k/n (linear).",
)
@dataclass(frozen=True)
class Iterative:
    """Reach the target in ``rounds`` prune → fine-tune rounds.

    Args:
        sparsity: the final target, in [0, 1].
        rounds: number of rounds (>= 1).
        spacing: ``"geometric"`` (``1 - (1 - s)^(k/n)``: the same fraction of the survivors each round)
            or ``"linear"`` (``s · k / n``).

    Example:
        >>> [round(s, 4) for s in Iterative(0.75, rounds=2).targets()]
        [0.5, 0.75]
    """

    sparsity: float
    rounds: int = 1
    spacing: str = "geometric"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        _check_int(self.rounds, "iterative schedule: rounds", 1)
        if self.spacing not in ("geometric", "linear"):
            raise ConfigError(
                f"iterative schedule: spacing must be 'geometric' or 'linear', got {self.spacing!r}"
            )

    def targets(self) -> list[float]:
        """The cumulative sparsity after each round, ending exactly at ``sparsity``."""
        s, n = self.sparsity, self.rounds
        if self.spacing == "geometric":
            values = [1.0 - (1.0 - s) ** (k / n) for k in range(1, n + 1)]
        else:
            values = [s * k / n for k in range(1, n + 1)]
        values[-1] = s  # no floating-point drift on the value that matters most
        return values


@SCHEDULES.register(
    "agp",
    help="Sparsity per optimizer step on the cubic s_f + (s_i - s_f)(1 - p)^3, p = progress from start to end "
    "(Zhu & Gupta 2017).",
)
@dataclass(frozen=True)
class AGP:
    """Automated gradual pruning along the cubic of Zhu & Gupta (2017).

    Step convention: ``step`` is the number of optimizer steps completed so far (``1..total_steps``
    during training), ``total_steps`` the number the run will take.

    Args:
        sparsity: final sparsity ``s_f``, in [0, 1].
        initial_sparsity: ``s_i`` at ``start`` (``0 <= s_i <= s_f``).
        start: fraction of training at which pruning starts, ``t0 = round(start · T)``.
        end: fraction of training at which ``s_f`` is reached, ``t_end = round(end · T)``
            (``start < end <= 1``).
        frequency: steps between two mask updates (>= 1); an update also happens at ``t_end``.

    Example:
        >>> agp = AGP(0.9, start=0.0, end=0.5, frequency=10)
        >>> agp.sparsity_at(0, 100), round(agp.sparsity_at(25, 100), 4), agp.sparsity_at(50, 100)
        (0.0, 0.7875, 0.9)
        >>> agp.update_steps(100)
        [0, 10, 20, 30, 40, 50]
    """

    sparsity: float
    initial_sparsity: float = 0.0
    start: float = 0.0
    end: float = 0.8
    frequency: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity, "agp schedule: sparsity"))
        initial = check_sparsity(self.initial_sparsity, "agp schedule: initial_sparsity")
        object.__setattr__(self, "initial_sparsity", initial)
        if initial > self.sparsity:
            raise ConfigError(
                f"agp schedule: initial_sparsity {initial:g} is above the final sparsity {self.sparsity:g}; "
                "masks only shrink, so lower initial_sparsity"
            )
        object.__setattr__(self, "start", _check_fraction(self.start, "agp schedule: start"))
        object.__setattr__(self, "end", _check_fraction(self.end, "agp schedule: end"))
        if not self.start < self.end:
            raise ConfigError(f"agp schedule: need start < end, got start={self.start:g}, end={self.end:g}")
        _check_int(self.frequency, "agp schedule: frequency", 1)

    def window(self, total_steps: int) -> tuple[int, int]:
        """``(t0, t_end)``: the steps at which pruning starts and reaches the final sparsity."""
        _check_int(total_steps, "total_steps", 1)
        return round(self.start * total_steps), round(self.end * total_steps)

    def sparsity_at(self, step: int, total_steps: int) -> float:
        """The cumulative target sparsity ``s_t`` at ``step`` (monotone non-decreasing in ``step``)."""
        t0, t_end = self.window(total_steps)
        if step <= t0:
            # A window rounded to zero length (tiny runs) jumps to the target at t0.
            return self.sparsity if t_end <= t0 and step == t0 else self.initial_sparsity
        if step >= t_end:
            return self.sparsity
        progress = (step - t0) / (t_end - t0)
        return self.sparsity + (self.initial_sparsity - self.sparsity) * (1.0 - progress) ** 3

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the masks are updated at ``step``: every ``frequency`` steps from ``t0``, and at ``t_end``."""
        t0, t_end = self.window(total_steps)
        if step < t0 or step > max(t0, t_end):
            return False
        return (step - t0) % self.frequency == 0 or step == t_end

    def update_steps(self, total_steps: int) -> list[int]:
        """Every step in ``[0, total_steps]`` at which :meth:`due` is true."""
        t0, t_end = self.window(total_steps)
        return [t for t in range(t0, min(max(t0, t_end), total_steps) + 1) if self.due(t, total_steps)]
