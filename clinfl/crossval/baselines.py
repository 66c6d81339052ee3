"""Baselines scored out of fold like a model: no skill, and patient age alone.

* **No skill**: one constant score for every image, so every AUC is exactly 50.
* **Age only**: for each fold k, a one-feature logistic regression on age (per class, and one for
  "any finding") is fitted on the images *not* in fold k; fold k's images are scored by age times
  the sign of the fitted slope (0 when flat). The direction of age's effect is thus learnt from
  training folds only, never from the images scored. The score is age itself, not the fitted
  probability: a probability would carry each fold's fitted intercept, which follows the
  training folds' prevalence, and pooling folds whose test prevalence runs opposite to it drags
  pooled AUC below 50 for a weak predictor. Unknown ages take the training part's mean age.
"""

from __future__ import annotations

import numpy as np

NEWTON_STEPS = 50
RIDGE = 1e-3  # keeps a fit finite when age separates a class perfectly


def no_skill_scores(count: int, num_classes: int) -> np.ndarray:
    """Return ``[count, num_classes]`` constant scores (every AUC 0.5)."""
    return np.full((count, num_classes), 0.5)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return ``(intercept, slope)`` of a ridge-penalised logistic regression of ``y`` on ``x``.

    Newton's method on standardised ``x`` is exact enough for one feature; with no positive or
    no negative the slope is 0 and the intercept the clipped log-odds of the rate.
    """
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if y.size else 0.5
    if y.size == 0 or y.all() or not y.any():
        return float(np.log(rate / (1 - rate))), 0.0
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.array([np.log(rate / (1 - rate)), 0.0])
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-(design @ beta)))
        gradient = design.T @ (p - y) + RIDGE * np.array([0.0, beta[1]])
        hessian = (design * (p * (1 - p))[:, None]).T @ design + RIDGE * np.diag([1e-9, 1.0])
        step = np.linalg.solve(hessian, gradient)
        beta = beta - step
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def age_scores(
    ages: np.ndarray, targets: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return out-of-fold age-only scores: ``([N, C] per class, [N] any finding)``.

    Each fold's scores are its ages signed by fits on the other folds' images only.
    """
    truth = targets.astype(bool)
    columns = [*(truth[:, k] for k in range(truth.shape[1])), np.asarray(truth.any(axis=1))]
    out = np.zeros((truth.shape[0], len(columns)))
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        known = train & ~np.isnan(ages)
        mean = float(ages[known].mean()) if known.any() else 0.0
        scale = float(ages[known].std()) if known.sum() > 1 else 1.0
        filled = np.where(np.isnan(ages), mean, ages)
        z = (filled - mean) / (scale if scale > 0 else 1.0)
        for column, y in enumerate(columns):
            _, slope = fit_logistic(z[train], y[train].astype(np.float64))
            out[test, column] = np.sign(slope) * filled[test]
    return out[:, :-1], out[:, -1]
