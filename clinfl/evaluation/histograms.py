"""Per-class score histograms: what one site's evaluation contributes to the federation's.

For each class ``k`` and bin ``b`` of a :class:`~clinfl.evaluation.grid.BinGrid`, a site counts
its samples labelled positive for ``k`` whose score for ``k`` falls in bin ``b`` (``positives``)
and those labelled negative (``negatives``). It also adds its validation loss: each sample's loss
(mean binary cross-entropy over the classes) clipped to ``[0, LOSS_CLIP]`` and rounded to a
multiple of ``1 / LOSS_UNITS``, summed as an integer, and how many samples it summed over.
Everything is an integer, so histograms add exactly: the federation's histograms are the sum of
the sites', and that sum is all a secure-aggregation round needs to reveal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from clinfl.errors import EvaluationError
from clinfl.evaluation.grid import DEFAULT_GRID, BinGrid

LOSS_UNITS = 1024
"""Fixed-point units per nat of a sample's loss (a resolution of about 0.001)."""
LOSS_CLIP = 4.0
"""A sample's loss is clipped to [0, LOSS_CLIP] nats before it is summed (it bounds the noise)."""
LOSS_CLIP_UNITS = round(LOSS_CLIP * LOSS_UNITS)


def _frozen_counts(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise EvaluationError(
            f"histogram {name} must be integer counts, got dtype {array.dtype}",
            remedy="build histograms with histograms_from_scores",
        )
    if array.size and int(array.min()) < 0:
        raise EvaluationError(
            f"histogram {name} holds a negative count ({int(array.min())})",
            remedy="counts are never negative; decode noisy sums with noisy=True",
        )
    out = array.astype(np.int64, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ScoreHistograms:
    """Integer score histograms ``[classes, bins]`` of positives and negatives, and loss sums.

    ``contributors`` counts the histograms added into this one (1 for one site's).

    Raises:
        EvaluationError: for non-integer or negative counts, shapes that differ from each other
            or from the grid, or a negative loss sum or count.
    """

    grid: BinGrid
    positives: np.ndarray
    negatives: np.ndarray
    loss_sum: int = 0
    loss_count: int = 0
    contributors: int = 1

    def __post_init__(self) -> None:
        positives = _frozen_counts("positives", self.positives)
        negatives = _frozen_counts("negatives", self.negatives)
        if positives.ndim != 2 or positives.shape != negatives.shape:
            raise EvaluationError(
                f"histograms must both be [classes, bins], got {positives.shape} and "
                f"{negatives.shape}",
                remedy="build histograms with histograms_from_scores",
            )
        if positives.shape[1] != self.grid.bins or positives.shape[0] < 1:
            raise EvaluationError(
                f"histograms of shape {positives.shape} do not fit a grid of {self.grid.bins} bins",
                remedy="every site must use the run's score grid",
            )
        if self.loss_sum < 0 or self.loss_count < 0 or self.contributors < 1:
            raise EvaluationError(
                f"loss sum {self.loss_sum}, loss count {self.loss_count} and contributors "
                f"{self.contributors} must be non-negative (contributors at least 1)",
                remedy="build histograms with histograms_from_scores",
            )
        object.__setattr__(self, "positives", positives)
        object.__setattr__(self, "negatives", negatives)
        object.__setattr__(self, "loss_sum", int(self.loss_sum))
        object.__setattr__(self, "loss_count", int(self.loss_count))

    @property
    def num_classes(self) -> int:
        """The number of classes (rows)."""
        return int(self.positives.shape[0])

    @property
    def positive_totals(self) -> np.ndarray:
        """Positives per class ``[classes]``."""
        totals: np.ndarray = self.positives.sum(axis=1)
        return totals

    @property
    def negative_totals(self) -> np.ndarray:
        """Negatives per class ``[classes]``."""
        totals: np.ndarray = self.negatives.sum(axis=1)
        return totals

    @property
    def mean_loss(self) -> float | None:
        """The mean clipped loss per sample in nats, or None when no loss was summed."""
        return self.loss_sum / (LOSS_UNITS * self.loss_count) if self.loss_count else None

    def same_as(self, other: ScoreHistograms) -> bool:
        """Return whether ``other`` holds the same grid, counts, loss sums and contributors."""
        return (
            self.grid == other.grid
            and np.array_equal(self.positives, other.positives)
            and np.array_equal(self.negatives, other.negatives)
            and (self.loss_sum, self.loss_count, self.contributors)
            == (other.loss_sum, other.loss_count, other.contributors)
        )

    def __add__(self, other: ScoreHistograms) -> ScoreHistograms:
        """Return the pooled histograms of ``self`` and ``other`` (see :func:`pool`)."""
        return pool([self, other])


def _quantised_losses(losses: np.ndarray, samples: int) -> int:
    values = np.asarray(losses, dtype=np.float64)
    if values.shape != (samples,) or not np.isfinite(values).all():
        raise EvaluationError(
            f"losses must be {samples} finite numbers (one per sample), got shape {values.shape}",
            remedy="pass each sample's mean binary cross-entropy",
        )
    clipped = np.clip(values, 0.0, LOSS_CLIP)
    return int(np.rint(clipped * LOSS_UNITS).astype(np.int64).sum())


def histograms_from_scores(
    targets: np.ndarray,
    scores: np.ndarray,
    *,
    grid: BinGrid | int = DEFAULT_GRID,
    losses: np.ndarray | None = None,
) -> ScoreHistograms:
    """Count ``[N, C]`` multi-hot ``targets`` by their ``[N, C]`` ``scores``' bins on ``grid``.

    ``grid`` is a :class:`BinGrid` or a number of uniform bins. ``losses`` (``[N]``, optional) are
    the samples' losses; their clipped fixed-point sum and ``N`` fill the loss slots.

    Raises:
        EvaluationError: for mismatched shapes, targets other than 0/1, or scores outside [0, 1].
    """
    bins = grid if isinstance(grid, BinGrid) else BinGrid(bins=grid)
    truth, values = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    if truth.shape != values.shape or truth.ndim != 2 or truth.shape[1] < 1:
        raise EvaluationError(
            f"targets {truth.shape} and scores {values.shape} must both be [samples, classes]",
            remedy="pass one row of labels and one of scores per sample",
        )
    if truth.size and not np.isin(truth, (0, 1)).all():
        raise EvaluationError("targets must be 0 or 1", remedy="pass multi-hot labels")
    samples, classes = truth.shape
    flat = (np.arange(classes, dtype=np.int64) * bins.bins + bins.bin_index(values)).ravel()
    positive = truth.astype(bool).ravel()
    size = classes * bins.bins
    positives = np.bincount(flat[positive], minlength=size).reshape(classes, bins.bins)
    negatives = np.bincount(flat[~positive], minlength=size).reshape(classes, bins.bins)
    loss_sum = 0 if losses is None else _quantised_losses(losses, samples)
    return ScoreHistograms(
        bins, positives, negatives, loss_sum, 0 if losses is None else samples, contributors=1
    )


def pool(histograms: Iterable[ScoreHistograms]) -> ScoreHistograms:
    """Return the sum of ``histograms``: counts, loss sums and contributors add.

    Raises:
        EvaluationError: if there are none, or their grids or class counts differ.
    """
    items = list(histograms)
    if not items:
        raise EvaluationError("no histograms to pool", remedy="pool at least one site's histograms")
    first = items[0]
    for other in items[1:]:
        if other.grid != first.grid or other.positives.shape != first.positives.shape:
            raise EvaluationError(
                f"cannot pool histograms of {other.num_classes} classes on {other.grid} with "
                f"{first.num_classes} classes on {first.grid}",
                remedy="every site must use the run's score grid and label set",
            )
    return ScoreHistograms(
        first.grid,
        np.sum([h.positives for h in items], axis=0),
        np.sum([h.negatives for h in items], axis=0),
        sum(h.loss_sum for h in items),
        sum(h.loss_count for h in items),
        contributors=sum(h.contributors for h in items),
    )
