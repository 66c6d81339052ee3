"""ROC-AUC and F1 from pooled score histograms, with the same conventions as :mod:`clinfl.metrics`.

**AUC from a histogram.** The exact AUC of ``P`` positives and ``N`` negatives is the Mann-Whitney
statistic ``(1 / PN) sum_{i in pos, j in neg} ([s_i > s_j] + [s_i = s_j] / 2)``. The histogram
AUC is the same sum with each score replaced by its bin: a pair in bins ``b_i > b_j`` counts 1, a
pair in one bin counts 1/2::

    AUC_hist = (1 / PN) sum_b P_b (sum_{c < b} N_c + N_b / 2)

**The bound.** The bin is a non-decreasing function of the score, so a positive in a higher bin
than a negative has a strictly higher score: every pair in different bins counts the same in
both sums. A pair in one bin counts 1/2 in the histogram sum and 0, 1/2 or 1 in the exact one,
an error of at most 1/2. Only ``sum_b P_b N_b`` pairs share a bin, so::

    |AUC_hist - AUC_exact| <= (1/2) sum_b P_b N_b / (P N)

half the probability that a random positive/negative pair falls in one bin
(:func:`auc_error_bound`). It is attained only when every same-bin pair is ordered the same way;
for smooth score densities a bin's pairs split nearly evenly and the error is far smaller.

Micro-AUC pools every (sample, class) pair, as :func:`clinfl.metrics.multilabel_metrics` does:
the class rows of the histograms are summed. A class without both positives and negatives has
no AUC (None) and is left out of the macro mean; a micro-AUC that is undefined is NaN.
"""

from __future__ import annotations

import numpy as np

from clinfl.errors import EvaluationError
from clinfl.evaluation.histograms import ScoreHistograms
from clinfl.metrics import MultiLabelMetrics


def binned_auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """Return the AUC of one class's bin counts (ties within a bin count 1/2), None if undefined.

    The sum is kept in exact integers; only the final division is in floating point.
    """
    pos, neg = np.asarray(positives, dtype=np.int64), np.asarray(negatives, dtype=np.int64)
    total_pos, total_neg = int(pos.sum()), int(neg.sum())
    if total_pos == 0 or total_neg == 0:
        return None
    below = np.cumsum(neg) - neg  # negatives in strictly lower bins
    twice_u = int(np.dot(pos, 2 * below + neg))
    return twice_u / (2 * total_pos * total_neg)


def auc_error_bound(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """Return ``(1/2) sum_b P_b N_b / (P N)``: the bound on ``|AUC_hist - AUC_exact|``."""
    pos, neg = np.asarray(positives, dtype=np.int64), np.asarray(negatives, dtype=np.int64)
    total_pos, total_neg = int(pos.sum()), int(neg.sum())
    if total_pos == 0 or total_neg == 0:
        return None
    return int(np.dot(pos, neg)) / (2 * total_pos * total_neg)


def per_class_auc(histograms: ScoreHistograms) -> tuple[float | None, ...]:
    """Return each class's histogram AUC (None for a class without both outcomes)."""
    return tuple(
        binned_auc(histograms.positives[k], histograms.negatives[k])
        for k in range(histograms.num_classes)
    )


def micro_auc(histograms: ScoreHistograms) -> float | None:
    """Return the AUC of all (sample, class) pairs pooled: the class rows summed."""
    return binned_auc(histograms.positives.sum(axis=0), histograms.negatives.sum(axis=0))


def counts_at_thresholds(
    histograms: ScoreHistograms, thresholds: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return per-class ``(tp, fp, fn, tn)`` when class k is predicted positive for ``p >= t_k``.

    Exact for thresholds at grid edges (0.5 is one on any even uniform or logit grid); another
    threshold rounds up to the next edge (:meth:`~clinfl.evaluation.grid.BinGrid.cut_index`).

    Raises:
        EvaluationError: if ``thresholds`` is neither one value nor one per class.
    """
    classes = histograms.num_classes
    given = np.asarray(thresholds, dtype=np.float64)
    if given.shape not in ((), (classes,)):
        raise EvaluationError(
            f"need one threshold or {classes}, got {np.shape(thresholds)}",
            remedy="pass one threshold per class",
        )
    values = np.broadcast_to(given, (classes,))
    tp, fp = np.zeros(classes, dtype=np.int64), np.zeros(classes, dtype=np.int64)
    for k, threshold in enumerate(values):
        cut = histograms.grid.cut_index(float(threshold))
        tp[k] = histograms.positives[k, cut:].sum()
        fp[k] = histograms.negatives[k, cut:].sum()
    fn = histograms.positive_totals - tp
    tn = histograms.negative_totals - fp
    return tp, fp, fn, tn


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = (2 * tp + fp + fn).astype(np.float64)
    result: np.ndarray = np.divide(
        2.0 * tp, denominator, out=np.zeros(tp.shape, dtype=np.float64), where=denominator > 0
    )
    return result


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, float]:
    """Return ``(macro-F1, micro-F1)`` of per-class counts (a class with no TP, FP, FN counts 0)."""
    macro = float(_f1(tp, fp, fn).mean())
    micro = float(_f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0])
    return macro, micro


def histogram_metrics(histograms: ScoreHistograms, *, threshold: float = 0.5) -> MultiLabelMetrics:
    """Return :class:`~clinfl.metrics.MultiLabelMetrics` of pooled histograms.

    Same definitions as :func:`clinfl.metrics.multilabel_metrics`: macro-AUC over the classes
    with both outcomes, micro-AUC over pooled pairs (NaN if undefined), F1 at ``threshold``.

    Raises:
        EvaluationError: if no class has both positives and negatives.
    """
    per_class = per_class_auc(histograms)
    defined = [auc for auc in per_class if auc is not None]
    if not defined:
        raise EvaluationError(
            "no class has both positive and negative samples in the pooled evaluation",
            remedy="evaluate on more studies, or with more sites in the evaluation",
        )
    micro = micro_auc(histograms)
    tp, fp, fn, _ = counts_at_thresholds(histograms, threshold)
    macro_f1, micro_f1 = f1_from_counts(tp, fp, fn)
    return MultiLabelMetrics(
        macro_auc=float(np.mean(defined)),
        micro_auc=float("nan") if micro is None else micro,
        macro_f1=macro_f1,
        micro_f1=micro_f1,
        per_class_auc=per_class,
    )
