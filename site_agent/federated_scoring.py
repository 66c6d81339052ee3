"""What a site adds to the round's federated evaluation: its score histograms, as integers.

The site scores the global model on its own validation and test studies and counts, per class,
positives and negatives by score bin (:func:`~clinfl.evaluation.histograms.histograms_from_scores`,
on :data:`~clinfl.evaluation.grid.DEFAULT_GRID`), with its loss sums. Both splits' integer
vectors (:func:`~clinfl.evaluation.vector.to_integer_vector`), validation first, make the one
vector the site masks in the round's evaluation session; the coordinator unmasks only the sum.

With ``reporting.evaluation_epsilon`` in the site's policy, each split's vector gets discrete
Laplace noise (:func:`~clinfl.evaluation.noise.noisy_integer_vector`, from the operating
system's cryptographic randomness) of the scale that costs that epsilon per release. A study is
in one split only, so the two splits' releases compose in parallel: one evaluation costs the
policy's epsilon, which the site's ledger records as its own line, apart from DP-SGD's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import numpy as np

from clinfl.errors import EvaluationError
from clinfl.evaluation.grid import DEFAULT_GRID, BinGrid
from clinfl.evaluation.histograms import ScoreHistograms, histograms_from_scores
from clinfl.evaluation.noise import evaluation_epsilon, noise_for_epsilon, noisy_integer_vector
from clinfl.evaluation.vector import to_integer_vector, vector_length
from clinfl.typing import StateDict

RandomBytes = Callable[[int], bytes]
SPLITS = ("validation", "test")


class ScoredSets(Protocol):
    """The site's held-out sets and model (:class:`~site_agent.evaluation.HeldOutEvaluator`)."""

    def probabilities(self, global_state: StateDict, split: str) -> np.ndarray:
        """Return the model's sigmoid outputs on ``split``."""
        ...

    def targets(self, split: str) -> np.ndarray:
        """Return the multi-hot labels of ``split``."""
        ...


def evaluation_vector_length(num_classes: int, grid: BinGrid = DEFAULT_GRID) -> int:
    """Return the length of one site's evaluation vector: validation's, then test's."""
    return len(SPLITS) * vector_length(grid, num_classes)


def sample_losses(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Return each sample's binary cross-entropy, averaged over the classes."""
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    y = targets.astype(np.float64)
    losses: np.ndarray = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    return losses


def split_histograms(
    sets: ScoredSets, global_state: StateDict, split: str, grid: BinGrid = DEFAULT_GRID
) -> ScoreHistograms:
    """Return the histograms of the global model's scores on ``split``, with its loss sums.

    Raises:
        EvaluationError: if the scores or labels are malformed.
    """
    targets = sets.targets(split)
    if len(targets) == 0:  # a site without studies in this split adds empty histograms
        empty = np.zeros((targets.shape[1], grid.bins), dtype=np.int64)
        return ScoreHistograms(grid, empty, empty)
    scores = sets.probabilities(global_state, split)
    return histograms_from_scores(targets, scores, grid=grid, losses=sample_losses(targets, scores))


class SiteScorer:
    """Turns the global model into the site's evaluation vector (noisy when the policy says)."""

    def __init__(
        self,
        sets: Callable[[], ScoredSets],
        num_classes: int,
        *,
        epsilon: float | None = None,
        grid: BinGrid = DEFAULT_GRID,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        """Score with ``sets()`` (built on first use) on ``grid``; ``epsilon``: noise per release.

        Raises:
            EvaluationError: for an epsilon that is not positive and finite.
        """
        self._sets = sets
        self._classes = num_classes
        self._grid = grid
        self._random_bytes = random_bytes
        self._scale = None if epsilon is None else noise_for_epsilon(epsilon, num_classes)

    @property
    def vector_length(self) -> int:
        """The length of the vector :meth:`vector` returns."""
        return evaluation_vector_length(self._classes, self._grid)

    @property
    def epsilon(self) -> float | None:
        """The epsilon one evaluation costs (the noise's, after rounding its scale); None: none."""
        return None if self._scale is None else evaluation_epsilon(self._scale, self._classes)

    def vector(self, global_state: StateDict) -> np.ndarray:
        """Return the int64 evaluation vector of ``global_state``: validation's, then test's.

        Raises:
            EvaluationError: if the model's scores or the labels are malformed.
        """
        parts = []
        for split in SPLITS:
            histograms = split_histograms(self._sets(), global_state, split, self._grid)
            if histograms.num_classes != self._classes:
                raise EvaluationError(
                    f"the site's labels have {histograms.num_classes} classes, the run "
                    f"{self._classes}",
                    remedy="check the site's label space",
                )
            if self._scale is None:
                parts.append(to_integer_vector(histograms))
            else:
                parts.append(
                    noisy_integer_vector(histograms, self._scale, random_bytes=self._random_bytes)
                )
        return np.concatenate(parts)
