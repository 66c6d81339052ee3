"""Patient-level bootstrap: resampled patient weights, and ROC-AUC under many weightings at once.

A draw resamples the patients with replacement; each image then counts as many times as its
patient was drawn (its weight). An AUC under weights is the weighted Mann-Whitney statistic
(ties count one half), computed for every draw from one sort, so 1,000 draws cost about as much
as a few unweighted AUCs. With unit weights it equals :func:`clinfl.metrics.binary_auc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DRAWS = 1000
LEVEL = 0.95
MIN_DRAWS = 10  # fewer usable draws than this: no interval


def patient_weights(patients: np.ndarray, *, draws: int, seed: int) -> np.ndarray:
    """Return ``[draws, N]`` image weights: each row one resample of the patients in ``patients``.

    ``patients`` labels each of the N images with its patient (any hashable numpy values).
    """
    unique, inverse = np.unique(patients, return_inverse=True)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, unique.size, size=(draws, unique.size))
    flat = (picks + unique.size * np.arange(draws)[:, None]).ravel()
    counts = np.bincount(flat, minlength=draws * unique.size).reshape(draws, unique.size)
    weights: np.ndarray = counts[:, inverse].astype(np.float64)
    return weights


def weighted_aucs(truth: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the AUC of ``scores`` against boolean ``truth`` (``[N]``) under each row of weights.

    ``weights`` is ``[B, N]``; the result is ``[B]``, NaN where a row weighs no positive or no
    negative image. Images with NaN scores must be removed by the caller.
    """
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    positive = truth[order].astype(np.float64)
    w = weights[:, order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered)) + 1])
    pos = np.add.reduceat(w * positive, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - positive), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    out: np.ndarray = np.divide(
        numerator,
        denominator,
        out=np.full(denominator.shape, np.nan),
        where=denominator > 0,
    )
    return out


@dataclass(frozen=True)
class Estimate:
    """A metric's point value and its bootstrap interval (None: undefined or too few draws)."""

    value: float | None
    low: float | None
    high: float | None
    draws: int

    @classmethod
    def of(cls, value: float | None, draws: np.ndarray, *, level: float = LEVEL) -> Estimate:
        """Build from the point value and the metric's value in each draw (NaN: undefined)."""
        usable = draws[~np.isnan(draws)]
        if value is None or np.isnan(value) or usable.size < MIN_DRAWS:
            point = None if value is None or np.isnan(value) else float(value)
            return cls(point, None, None, int(usable.size))
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(usable, [tail, 100 - tail])
        return cls(float(value), float(low), float(high), int(usable.size))

    def to_json_dict(self) -> dict[str, float | int | None]:
        """Return the estimate as plain JSON types."""
        return {"value": self.value, "low": self.low, "high": self.high, "draws": self.draws}

    def percent(self) -> str:
        """Render as ``61.2 [57.0, 65.1]`` (percent), or ``n/a``."""
        if self.value is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{100 * self.value:.1f}"
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"
