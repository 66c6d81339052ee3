"""Multi-label metrics: macro/micro ROC-AUC and F1 (threshold 0.5), and per-class AUC.

Implemented with numpy (rank statistics with tie handling) and checked against scikit-learn in
the tests. Macro-AUC averages over the classes that have both positives and negatives in the
evaluated set (METHOD.md section 7).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    average = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie block
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def binary_auc(targets: np.ndarray, scores: np.ndarray) -> float | None:
    """Return ROC-AUC (Mann-Whitney U with ties averaged), or None if one class is absent."""
    positives = int(targets.sum())
    negatives = targets.size - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(scores.astype(np.float64))
    rank_sum = float(ranks[targets.astype(bool)].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    result: np.ndarray = np.divide(
        2 * tp, denominator, out=np.zeros_like(tp, dtype=np.float64), where=denominator > 0
    )
    return result


@dataclass(frozen=True)
class MultiLabelMetrics:
    """Metrics of one evaluation; ``per_class_auc`` is None for classes without both outcomes."""

    macro_auc: float
    micro_auc: float
    macro_f1: float
    micro_f1: float
    per_class_auc: tuple[float | None, ...]

    def to_json_dict(self) -> dict[str, object]:
        """Return the metrics as plain JSON types."""
        data = asdict(self)
        data["per_class_auc"] = list(self.per_class_auc)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> MultiLabelMetrics:
        """Rebuild metrics written by :meth:`to_json_dict`."""
        return cls(
            macro_auc=float(data["macro_auc"]),
            micro_auc=float(data["micro_auc"]),
            macro_f1=float(data["macro_f1"]),
            micro_f1=float(data["micro_f1"]),
            per_class_auc=tuple(None if v is None else float(v) for v in data["per_class_auc"]),
        )


def f1_at_thresholds(
    targets: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray | float
) -> tuple[float, float]:
    """Return ``(macro-F1, micro-F1)`` with class k predicted positive when ``p_k >= t_k``.

    ``thresholds`` is one value for every class or a ``[C]`` array. Classes with no positives
    and no predictions count as 0 (scikit-learn's ``zero_division=0``).

    Raises:
        ValueError: if the shapes differ.
    """
    if targets.shape != probabilities.shape or targets.ndim != 2:
        raise ValueError(f"shape mismatch: targets {targets.shape}, scores {probabilities.shape}")
    truth = targets.astype(bool)
    predicted = probabilities >= np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    tp = (predicted & truth).sum(axis=0).astype(np.float64)
    fp = (predicted & ~truth).sum(axis=0).astype(np.float64)
    fn = (~predicted & truth).sum(axis=0).astype(np.float64)
    macro = float(_f1(tp, fp, fn).mean())
    micro = float(_f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0])
    return macro, micro


def multilabel_metrics(
    targets: np.ndarray, probabilities: np.ndarray, *, threshold: float = 0.5
) -> MultiLabelMetrics:
    """Compute the metrics of ``probabilities`` ``[N, C]`` against multi-hot ``targets`` ``[N, C]``.

    Raises:
        ValueError: if the shapes differ or no class has both positives and negatives.
    """
    if targets.shape != probabilities.shape or targets.ndim != 2:
        raise ValueError(f"shape mismatch: targets {targets.shape}, scores {probabilities.shape}")
    truth = targets.astype(bool)
    per_class = tuple(binary_auc(truth[:, k], probabilities[:, k]) for k in range(truth.shape[1]))
    defined = [auc for auc in per_class if auc is not None]
    if not defined:
        raise ValueError("no class has both positive and negative samples")
    micro_auc = binary_auc(truth.ravel(), probabilities.ravel())
    predicted = probabilities >= threshold
    tp = (predicted & truth).sum(axis=0).astype(np.float64)
    fp = (predicted & ~truth).sum(axis=0).astype(np.float64)
    fn = (~predicted & truth).sum(axis=0).astype(np.float64)
    return MultiLabelMetrics(
        macro_auc=float(np.mean(defined)),
        micro_auc=float(micro_auc if micro_auc is not None else float("nan")),
        macro_f1=float(_f1(tp, fp, fn).mean()),
        micro_f1=float(_f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0]),
        per_class_auc=per_class,
    )
