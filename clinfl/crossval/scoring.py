"""Metrics of pooled out-of-fold predictions, each with a patient-level bootstrap 95% interval.

* **Learnable-class macro-AUC**: the mean ROC-AUC over the classes with at least
  :data:`MIN_POSITIVE_PATIENTS` positive *patients* in the whole data set
  (:func:`learnable_classes`); the other classes have too few patients to be learned or
  measured.
* **Abnormal vs normal AUC**: an image is abnormal when it has any finding; its score is the
  largest of its class scores (:func:`abnormal_scores`).
* **All-class macro-AUC**: the mean over every class with both outcomes (the 14-class macro-AUC
  on ChestX-ray14).
* **Per-class AUC**: every class with both outcomes.

Every interval resamples patients (:mod:`clinfl.crossval.bootstrap`): a macro-AUC in a draw is
the mean over the classes defined in that draw.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clinfl.crossval.bootstrap import DRAWS, Estimate, patient_weights, weighted_aucs

MIN_POSITIVE_PATIENTS = 20
LEARNABLE = "learnable_macro_auc"
ABNORMAL = "abnormal_auc"
ALL_CLASSES = "all_class_macro_auc"
CLASS_PREFIX = "auc:"


def positive_patients(targets: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Return, per class, how many distinct patients have at least one positive image."""
    return np.array(
        [np.unique(patients[targets[:, k] > 0]).size for k in range(targets.shape[1])],
        dtype=np.int64,
    )


def learnable_classes(
    targets: np.ndarray, patients: np.ndarray, *, minimum: int = MIN_POSITIVE_PATIENTS
) -> tuple[int, ...]:
    """Return the classes with at least ``minimum`` positive patients, in class order."""
    counts = positive_patients(targets, patients)
    return tuple(int(k) for k in np.flatnonzero(counts >= minimum))


def abnormal_scores(scores: np.ndarray) -> np.ndarray:
    """Return each image's abnormality score: its largest class score."""
    out: np.ndarray = scores.max(axis=1)
    return out


@dataclass(frozen=True)
class MetricDraws:
    """Each metric's point value (None: undefined) and its value in every bootstrap draw."""

    points: dict[str, float | None]
    draws: dict[str, np.ndarray]

    def estimates(self) -> dict[str, Estimate]:
        """Return each metric with its percentile interval."""
        return {name: Estimate.of(self.points[name], self.draws[name]) for name in self.points}


def _macro(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # a draw where no class is defined is NaN, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        out: np.ndarray = np.nanmean(values, axis=1)
    return out


def metric_draws(
    targets: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray,
    *,
    class_names: Sequence[str],
    learnable: Sequence[int],
    abnormal: np.ndarray | None = None,
) -> MetricDraws:
    """Compute every metric at unit weights (the point) and under each row of ``weights``.

    ``abnormal`` overrides :func:`abnormal_scores` (a baseline may score abnormality itself).
    """
    truth = targets.astype(bool)
    unit = np.ones((1, truth.shape[0]))
    points: dict[str, float | None] = {}
    draws: dict[str, np.ndarray] = {}
    per_class_points, per_class_draws = [], []
    for k, name in enumerate(class_names):
        point = float(weighted_aucs(truth[:, k], scores[:, k], unit)[0])
        per_class_points.append(point)
        per_class_draws.append(weighted_aucs(truth[:, k], scores[:, k], weights))
        points[CLASS_PREFIX + name] = None if np.isnan(point) else point
        draws[CLASS_PREFIX + name] = per_class_draws[-1]
    point_row, draw_matrix = np.array(per_class_points), np.stack(per_class_draws, axis=1)
    for key, members in ((LEARNABLE, list(learnable)), (ALL_CLASSES, list(range(truth.shape[1])))):
        defined = [k for k in members if not np.isnan(point_row[k])]
        points[key] = float(point_row[defined].mean()) if defined else None
        draws[key] = _macro(draw_matrix[:, defined]) if defined else np.full(len(weights), np.nan)
    score = abnormal_scores(scores) if abnormal is None else abnormal
    any_finding = np.asarray(truth.any(axis=1))
    point = float(weighted_aucs(any_finding, score, unit)[0])
    points[ABNORMAL] = None if np.isnan(point) else point
    draws[ABNORMAL] = weighted_aucs(any_finding, score, weights)
    return MetricDraws(points, draws)


def summarize(
    targets: np.ndarray,
    scores: np.ndarray,
    patients: np.ndarray,
    *,
    class_names: Sequence[str],
    learnable: Sequence[int],
    abnormal: np.ndarray | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Return every metric of ``scores`` with a patient-level bootstrap interval."""
    weights = patient_weights(patients, draws=draws, seed=seed)
    result = metric_draws(
        targets, scores, weights, class_names=class_names, learnable=learnable, abnormal=abnormal
    )
    return result.estimates()
