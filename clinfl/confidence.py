"""Bootstrap confidence intervals of per-class ROC-AUC (percentile method, seeded)."""

from __future__ import annotations

import numpy as np

from clinfl.metrics import binary_auc

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


def bootstrap_auc_intervals(
    targets: np.ndarray,
    probabilities: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[tuple[float, float] | None, ...]:
    """Return each class's ``(low, high)`` percentile-bootstrap interval of ROC-AUC.

    Samples (images) are drawn with replacement ``resamples`` times from one seeded generator;
    a resample in which a class lacks positives or negatives is skipped for that class. A class
    with no positive or no negative at all, or with fewer than 10 usable resamples, gets None.

    Raises:
        ValueError: if the arrays are not both ``[N, C]``, or ``level`` is not in (0, 1).
    """
    if targets.shape != probabilities.shape or targets.ndim != 2:
        raise ValueError(f"shape mismatch: targets {targets.shape}, scores {probabilities.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    truth = targets.astype(bool)
    count, classes = truth.shape
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, count, size=(resamples, count)) if count else None
    tail = (1 - level) / 2 * 100
    out: list[tuple[float, float] | None] = []
    for k in range(classes):
        if draws is None or binary_auc(truth[:, k], probabilities[:, k]) is None:
            out.append(None)
            continue
        values = [
            auc
            for rows in draws
            if (auc := binary_auc(truth[rows, k], probabilities[rows, k])) is not None
        ]
        if len(values) < 10:
            out.append(None)
            continue
        low, high = np.percentile(values, [tail, 100 - tail])
        out.append((float(low), float(high)))
    return tuple(out)
