"""Paired differences over seeds: the gain of a method over a baseline, with its 95% interval.

A seed fixes the data split, the partition and the initialisation, so a method and its baseline
run on the same seed form a pair. The gain is the mean per-seed difference; its interval is the
Student-t interval of that mean (n - 1 degrees of freedom). The smallest gain the seeds could
detect is the one a two-sided paired t-test at 5% finds with 80% power, given the observed
spread of the differences.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
POWER = 0.80


@dataclass(frozen=True)
class PairedGain:
    """A method's gain over a baseline on paired seeds (in the metric's own units)."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    detectable: float

    @property
    def n(self) -> int:
        """How many seeds had both runs."""
        return len(self.differences)

    @property
    def verdict(self) -> str:
        """Whether the interval excludes zero, in words."""
        if self.n < 2:
            return "one seed: no interval"
        if self.ci_low > 0:
            return "gain (interval above 0)"
        if self.ci_high < 0:
            return "loss (interval below 0)"
        return "no difference shown (interval contains 0)"


def paired_gain(method: Mapping[int, float], baseline: Mapping[int, float]) -> PairedGain | None:
    """Return ``method - baseline`` over the seeds both have, or None when they share none.

    With one shared seed the interval and the detectable gain are NaN.
    """
    seeds = tuple(sorted(set(method) & set(baseline)))
    if not seeds:
        return None
    diffs = tuple(method[s] - baseline[s] for s in seeds)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        nan = float("nan")
        return PairedGain(seeds, diffs, mean, nan, nan, nan, nan)
    sd = statistics.stdev(diffs)
    dof = len(diffs) - 1
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof)) * sd / math.sqrt(len(diffs))
    detectable = (
        (float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof)) + float(stats.t.ppf(POWER, dof)))
        * sd
        / math.sqrt(len(diffs))
    )
    return PairedGain(seeds, diffs, mean, sd, mean - half, mean + half, detectable)


def mean_and_range(values: Iterable[float]) -> str:
    """Seeds' values as ``mean (min to max)`` to one decimal; one value alone, ``-`` for none."""
    listed = list(values)
    if not listed:
        return "-"
    if len(listed) == 1:
        return f"{listed[0]:.1f}"
    return f"{statistics.fmean(listed):.1f} ({min(listed):.1f} to {max(listed):.1f})"


def gain_text(gain: PairedGain | None, *, digits: int = 1, count_seeds: bool = False) -> str:
    """A paired gain as ``+mean [low, high]`` to ``digits`` decimals (``-`` for none).

    One seed has no interval (``(one seed)``); ``count_seeds`` adds ``(n seeds)`` after one.
    """
    if gain is None:
        return "-"
    if gain.n < 2:
        return f"{gain.mean:+.{digits}f} (one seed)"
    text = f"{gain.mean:+.{digits}f} [{gain.ci_low:+.{digits}f}, {gain.ci_high:+.{digits}f}]"
    return f"{text} ({gain.n} seeds)" if count_seeds else text
