"""Per-class operating thresholds, chosen on validation data only.

A multi-label model under class imbalance rarely puts a positive above 0.5, so F1 at a fixed
0.5 says little. Here each class gets its own threshold, chosen on the *validation* set by a
rule (:class:`ThresholdRule`): the F1-maximising cut (the default), Youden's J (sensitivity +
specificity - 1), or the highest cut that reaches a target sensitivity. A class with no positive
in validation keeps 0.5 and is flagged. The test set is only ever scored at the thresholds
chosen here (:func:`operating_point`); it never chooses them.

A sample is predicted positive for class k when ``p_k >= t_k``. A chosen cut lies halfway
between the validation score it keeps positive and the next lower distinct score, so it
separates the validation set exactly as the chosen cut does and does not sit on a sample.

>>> rule = parse_rule("sensitivity:0.9")
>>> rule.kind, rule.target, rule.text
('sensitivity', 0.9, 'sensitivity:0.9')
>>> choose_thresholds(np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.8], [0.75], [0.25]]),
...                   parse_rule("f1")).thresholds
(0.5,)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from clinfl.errors import ConfigError, InternalError
from clinfl.metrics import f1_at_thresholds

RuleKind = Literal["f1", "youden", "sensitivity"]
DEFAULT_RULE = "f1"
DEFAULT_THRESHOLD = 0.5
RULE_HELP = "f1 (maximise F1), youden (maximise sensitivity + specificity - 1) or sensitivity:S"


@dataclass(frozen=True)
class ThresholdRule:
    """How a class's threshold is chosen on validation; ``target`` only for ``sensitivity``."""

    kind: RuleKind
    target: float | None = None

    @property
    def text(self) -> str:
        """The rule as written in a config or on the command line (``sensitivity:0.9``)."""
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def parse_rule(text: str) -> ThresholdRule:
    """Parse ``f1``, ``youden`` or ``sensitivity:S`` (0 < S <= 1).

    Raises:
        ConfigError: for any other text, naming the accepted forms.
    """
    name, _, value = text.strip().partition(":")
    if name in ("f1", "youden") and not value:
        return ThresholdRule(name)  # type: ignore[arg-type]
    if name == "sensitivity" and value:
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if 0 < target <= 1:
            return ThresholdRule("sensitivity", target)
    raise ConfigError(
        f"unknown threshold rule {text!r}",
        remedy=f"use {RULE_HELP}, e.g. sensitivity:0.9",
    )


@dataclass(frozen=True)
class ChosenThresholds:
    """One threshold per class; ``flagged[k]`` when class k had no validation positive."""

    thresholds: tuple[float, ...]
    flagged: tuple[bool, ...]


def _cut(truth: np.ndarray, scores: np.ndarray, rule: ThresholdRule) -> float:
    """Return the threshold of one class (``truth`` has at least one positive)."""
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], truth[order].astype(np.float64)
    last = np.flatnonzero(np.r_[np.diff(ranked) != 0, True])  # end of each tie block
    tp = np.cumsum(hits)[last]
    fp = (last + 1) - tp
    positives, negatives = float(truth.sum()), float(truth.size - truth.sum())
    if rule.kind == "f1":
        score = 2 * tp / (tp + positives + fp)  # 2TP / (2TP + FP + FN)
        pick = int(np.argmax(score))
    elif rule.kind == "youden":
        specificity_loss = fp / negatives if negatives else np.zeros_like(fp)
        pick = int(np.argmax(tp / positives - specificity_loss))
    else:
        if rule.target is None:
            raise InternalError("the sensitivity rule has no target")
        pick = int(np.flatnonzero(tp / positives >= rule.target - 1e-12)[0])
    kept = float(ranked[last[pick]])
    below = ranked[last[pick] + 1 :]
    return kept if below.size == 0 else (kept + float(below[0])) / 2.0


def choose_thresholds(
    targets: np.ndarray, probabilities: np.ndarray, rule: ThresholdRule
) -> ChosenThresholds:
    """Choose one threshold per class from *validation* ``targets`` and ``probabilities``.

    Raises:
        ValueError: if the two arrays are not both ``[N, C]`` (a programming error).
    """
    if targets.shape != probabilities.shape or targets.ndim != 2:
        raise ValueError(f"shape mismatch: targets {targets.shape}, scores {probabilities.shape}")
    truth = targets.astype(bool)
    thresholds: list[float] = []
    flagged: list[bool] = []
    for k in range(truth.shape[1]):
        if not truth[:, k].any():
            thresholds.append(DEFAULT_THRESHOLD)
            flagged.append(True)
            continue
        thresholds.append(_cut(truth[:, k], probabilities[:, k].astype(np.float64), rule))
        flagged.append(False)
    return ChosenThresholds(tuple(thresholds), tuple(flagged))


@dataclass(frozen=True)
class OperatingPoint:
    """Thresholds chosen on validation, and the test F1 at them (a round's evaluation).

    ``macro_f1`` and ``micro_f1`` are test-set F1 at ``thresholds`` (same conventions as
    :func:`~clinfl.metrics.multilabel_metrics` at 0.5); ``flagged`` marks classes with no
    validation positive, which keep 0.5.
    """

    rule: str
    thresholds: tuple[float, ...]
    flagged: tuple[bool, ...]
    macro_f1: float
    micro_f1: float

    def to_json_dict(self) -> dict[str, Any]:
        """Return the operating point as plain JSON types."""
        data = asdict(self)
        data["thresholds"], data["flagged"] = list(self.thresholds), list(self.flagged)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        """Rebuild an operating point written by :meth:`to_json_dict`.

        Raises:
            KeyError, TypeError, ValueError: for a malformed document.
        """
        return cls(
            rule=str(data["rule"]),
            thresholds=tuple(float(t) for t in data["thresholds"]),
            flagged=tuple(bool(f) for f in data["flagged"]),
            macro_f1=float(data["macro_f1"]),
            micro_f1=float(data["micro_f1"]),
        )


def operating_point(
    val_targets: np.ndarray,
    val_probabilities: np.ndarray,
    test_targets: np.ndarray,
    test_probabilities: np.ndarray,
    rule: ThresholdRule,
) -> OperatingPoint:
    """Choose thresholds on validation and score the test set at them.

    Raises:
        ValueError: on mismatched shapes (a programming error).
    """
    chosen = choose_thresholds(val_targets, val_probabilities, rule)
    macro, micro = f1_at_thresholds(test_targets, test_probabilities, np.array(chosen.thresholds))
    return OperatingPoint(rule.text, chosen.thresholds, chosen.flagged, macro, micro)


def sensitivity_specificity(
    targets: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray
) -> tuple[tuple[float | None, ...], tuple[float | None, ...]]:
    """Return per-class sensitivity and specificity at ``thresholds`` (None where undefined).

    Raises:
        ValueError: on mismatched shapes (a programming error).
    """
    if targets.shape != probabilities.shape or targets.ndim != 2:
        raise ValueError(f"shape mismatch: targets {targets.shape}, scores {probabilities.shape}")
    truth = targets.astype(bool)
    predicted = probabilities >= thresholds.reshape(1, -1)
    positives, negatives = truth.sum(axis=0), (~truth).sum(axis=0)
    tp = (predicted & truth).sum(axis=0)
    tn = (~predicted & ~truth).sum(axis=0)
    sensitivity = tuple(float(t / p) if p else None for t, p in zip(tp, positives, strict=True))
    specificity = tuple(float(t / n) if n else None for t, n in zip(tn, negatives, strict=True))
    return sensitivity, specificity
