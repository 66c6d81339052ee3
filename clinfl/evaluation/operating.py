"""Per-class thresholds from pooled *validation* histograms, and test metrics at them.

The rules are :mod:`clinfl.thresholds`' (``f1``, ``youden``, ``sensitivity:S``) applied to bins
instead of scores: the candidate cuts are the occupied bins, highest first, exactly as
:func:`clinfl.thresholds.choose_thresholds` walks the distinct scores (a bin plays the part of a
tie block), with the same tie-breaking (the highest cut among equals). A class with no validation
positive keeps 0.5 and is flagged.

**Where the cut lies.** Predicting positive for bins ``>= j`` (``j`` the lowest kept bin, ``i``
the next lower occupied bin) is done by any edge ``e_k`` with ``i < k <= j``. Mirroring
``thresholds.py``'s "halfway between the kept score and the next lower one", the cut is the edge
nearest the midpoint of the two bins' centres, ``k = floor((i + j + 2) / 2)`` (the upper one on a
tie); with no occupied bin below it is ``e_j``, the kept bin's lower edge.

**Relationship to the exact answer.** When every validation score of a class lies in its own bin
(distinct tie blocks map to distinct bins), the histogram walk sees the same TP/FP sequence as
the exact one and picks the same partition of the validation set. If the scores sit at the
centres of uniform bins and ``j - i`` is odd, the midpoint of the centres *is* ``e_k``, so the
threshold equals ``choose_thresholds``' exactly; otherwise both thresholds lie strictly between
the same two occupied bins and classify every validation sample alike.
"""

from __future__ import annotations

import numpy as np

from clinfl.errors import InternalError
from clinfl.evaluation.auc import counts_at_thresholds, f1_from_counts
from clinfl.evaluation.histograms import ScoreHistograms
from clinfl.thresholds import (
    DEFAULT_THRESHOLD,
    ChosenThresholds,
    OperatingPoint,
    ThresholdRule,
)


def _cut_edge(positives: np.ndarray, negatives: np.ndarray, rule: ThresholdRule) -> int:
    """Return the edge index of one class's cut (``positives`` has at least one count)."""
    occupied = np.flatnonzero((positives + negatives) > 0)[::-1]  # highest bin first
    tp = np.cumsum(positives[occupied]).astype(np.float64)
    fp = np.cumsum(negatives[occupied]).astype(np.float64)
    total_pos, total_neg = float(positives.sum()), float(negatives.sum())
    if rule.kind == "f1":
        pick = int(np.argmax(2 * tp / (tp + total_pos + fp)))
    elif rule.kind == "youden":
        specificity_loss = fp / total_neg if total_neg else np.zeros_like(fp)
        pick = int(np.argmax(tp / total_pos - specificity_loss))
    else:
        if rule.target is None:
            raise InternalError(f"threshold rule {rule.kind!r} carries no target")
        pick = int(np.flatnonzero(tp / total_pos >= rule.target - 1e-12)[0])
    kept = int(occupied[pick])
    if pick + 1 == occupied.size:
        return kept
    below = int(occupied[pick + 1])
    return (below + kept + 2) // 2


def choose_histogram_thresholds(
    validation: ScoreHistograms, rule: ThresholdRule
) -> ChosenThresholds:
    """Choose one threshold per class (a grid edge) from pooled *validation* histograms."""
    thresholds: list[float] = []
    flagged: list[bool] = []
    edges = validation.grid.edges
    for k in range(validation.num_classes):
        positives, negatives = validation.positives[k], validation.negatives[k]
        if not positives.any():
            thresholds.append(DEFAULT_THRESHOLD)
            flagged.append(True)
            continue
        thresholds.append(float(edges[_cut_edge(positives, negatives, rule)]))
        flagged.append(False)
    return ChosenThresholds(tuple(thresholds), tuple(flagged))


def histogram_sensitivity_specificity(
    histograms: ScoreHistograms, thresholds: np.ndarray | float
) -> tuple[tuple[float | None, ...], tuple[float | None, ...]]:
    """Return per-class sensitivity and specificity at ``thresholds`` (None where undefined).

    Raises:
        EvaluationError: if ``thresholds`` is neither one value nor one per class.
    """
    tp, fp, fn, tn = counts_at_thresholds(histograms, thresholds)
    sensitivity = tuple(float(t / (t + f)) if t + f else None for t, f in zip(tp, fn, strict=True))
    specificity = tuple(float(t / (t + f)) if t + f else None for t, f in zip(tn, fp, strict=True))
    return sensitivity, specificity


def histogram_operating_point(
    validation: ScoreHistograms, test: ScoreHistograms, rule: ThresholdRule
) -> OperatingPoint:
    """Choose thresholds on pooled validation and return test F1 at them (pooled test histograms).

    Raises:
        EvaluationError: if validation and test have different numbers of classes.
    """
    chosen = choose_histogram_thresholds(validation, rule)
    tp, fp, fn, _ = counts_at_thresholds(test, np.array(chosen.thresholds))
    macro, micro = f1_from_counts(tp, fp, fn)
    return OperatingPoint(rule.text, chosen.thresholds, chosen.flagged, macro, micro)
