"""Chapters 4, 5 and 8: when a run over several seeds supports the claim "A is lower than B".

Two recipes trained with the same seeds are compared seed by seed. The book states an ordering only when

1. it holds in **every** seed (every paired difference has the same sign),
2. the mean difference is **larger than the spread between seeds** (the larger of the two recipes' ranges,
   highest minus lowest over the seeds), so that it is not within the noise of changing the seed, and
3. it rests on at least three seeds (with fewer, the spread is not measured), and an effect under 2 % of B's mean
   on **at least five**.

Otherwise the verdict is "no measurable difference at this scale". :func:`compare` reports the mean paired
difference with its spread (standard deviation and range of the differences), not just their signs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

NO_DIFFERENCE = "no measurable difference at this scale"
MIN_SEEDS, SMALL_EFFECT, SEEDS_FOR_SMALL_EFFECTS = 3, 0.02, 5


@dataclass(frozen=True)
class Comparison:
    """A against B over paired seeds (lower is better): the figures and the verdict of the evidence rule."""

    a: str
    b: str
    values_a: tuple[float, ...]
    values_b: tuple[float, ...]
    mean_difference: float  # mean over the seeds of A - B
    sd_difference: float  # their sample standard deviation (0 for one seed)
    range_difference: tuple[float, float]  # lowest and highest A - B
    spread: float  # the spread between seeds: the larger of A's and B's ranges
    relative: float  # mean difference / mean of B
    every_seed: bool  # every A - B has the same sign (and none is 0)
    exceeds_spread: bool
    enough_seeds: bool

    @property
    def seeds(self) -> int:
        return len(self.values_a)

    @property
    def holds(self) -> bool:
        """True when the ordering the means show may be stated."""
        return self.every_seed and self.exceeds_spread and self.enough_seeds

    @property
    def lower(self) -> str | None:
        """The name of the lower recipe when the ordering holds, else None."""
        if not self.holds:
            return None
        return self.a if self.mean_difference < 0 else self.b

    @property
    def verdict(self) -> str:
        if not self.holds:
            return NO_DIFFERENCE
        higher = self.b if self.lower == self.a else self.a
        return f"{self.lower} lower than {higher}"

    def why(self) -> str:
        """Which condition of the rule failed, or that all three hold."""
        failed = [text for ok, text in ((self.every_seed, "not every seed agrees"),
                                        (self.exceeds_spread, "within the spread between seeds"),
                                        (self.enough_seeds, self._seeds_needed())) if not ok]
        return "; ".join(failed) if failed else "every seed, beyond the spread"

    def _seeds_needed(self) -> str:
        if self.seeds < MIN_SEEDS:
            return f"fewer than {MIN_SEEDS} seeds"
        return f"under {SMALL_EFFECT:.0%} with fewer than {SEEDS_FOR_SMALL_EFFECTS} seeds"

    def __str__(self) -> str:
        low, high = self.range_difference
        return (f"{self.a} - {self.b}: {self.mean_difference:+.4g} +- {self.sd_difference:.3g} "
                f"({self.relative:+.1%}; {self.seeds} seeds, from {low:+.4g} to {high:+.4g}; spread between seeds "
                f"{self.spread:.4g}): {self.verdict} ({self.why()})")


def compare(values_a: Sequence[float], values_b: Sequence[float], a: str = "A", b: str = "B") -> Comparison:
    """Compare A's and B's results (one per seed, the same seeds in the same order; lower is better)."""
    values_a, values_b = tuple(map(float, values_a)), tuple(map(float, values_b))
    if len(values_a) != len(values_b) or not values_a:
        raise ValueError(f"need one result per seed for both, the same seeds; got {len(values_a)} and "
                         f"{len(values_b)}")
    if not all(math.isfinite(v) for v in values_a + values_b):
        raise ValueError("every result must be a finite number")
    differences = [x - y for x, y in zip(values_a, values_b)]
    mean = statistics.fmean(differences)
    spread = max(max(values_a) - min(values_a), max(values_b) - min(values_b))
    relative = mean / statistics.fmean(values_b)
    return Comparison(
        a=a, b=b, values_a=values_a, values_b=values_b, mean_difference=mean,
        sd_difference=statistics.stdev(differences) if len(differences) > 1 else 0.0,
        range_difference=(min(differences), max(differences)), spread=spread, relative=relative,
        every_seed=all(d < 0 for d in differences) or all(d > 0 for d in differences),
        exceeds_spread=abs(mean) > spread,
        enough_seeds=len(differences) >= MIN_SEEDS
        and (abs(relative) >= SMALL_EFFECT or len(differences) >= SEEDS_FOR_SMALL_EFFECTS),
    )
