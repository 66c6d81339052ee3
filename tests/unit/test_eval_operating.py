"""Thresholds from pooled validation histograms against clinfl/thresholds.py's exact rules."""

from __future__ import annotations

import numpy as np
import pytest

from clinfl.errors import EvaluationError
from clinfl.evaluation.grid import DEFAULT_GRID, BinGrid
from clinfl.evaluation.histograms import histograms_from_scores
from clinfl.evaluation.operating import (
    choose_histogram_thresholds,
    histogram_operating_point,
    histogram_sensitivity_specificity,
)
from clinfl.metrics import f1_at_thresholds
from clinfl.thresholds import choose_thresholds, parse_rule, sensitivity_specificity

GRID = BinGrid(256, "uniform")
RULES = ["f1", "youden", "sensitivity:0.8", "sensitivity:1"]


def _centred(seed: int, odd_gaps: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation scores at uniform bin centres, several samples per occupied bin."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([1, 3, 5] if odd_gaps else [1, 2, 3, 4], size=(60, 4))
    bins = np.cumsum(gaps, axis=0) + rng.integers(0, 10, size=4)
    picks = rng.integers(0, 60, size=(300, 4))
    chosen = np.take_along_axis(bins, picks, axis=0)
    scores = (chosen + 0.5) / GRID.bins
    targets = (rng.random((300, 4)) < 0.15 + 0.7 * chosen / chosen.max()).astype(int)
    targets[:, 3] = 0  # a class with no validation positive
    return targets, scores, chosen


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", range(3))
def test_centred_scores_with_odd_gaps_give_exactly_the_exact_thresholds(
    rule: str, seed: int
) -> None:
    targets, scores, _ = _centred(seed, odd_gaps=True)
    exact = choose_thresholds(targets, scores, parse_rule(rule))
    ours = choose_histogram_thresholds(
        histograms_from_scores(targets, scores, grid=GRID), parse_rule(rule)
    )
    assert ours.flagged == exact.flagged == (False, False, False, True)
    for k in range(4):
        lowest = scores[:, k].min()
        if exact.thresholds[k] == lowest and k < 3:  # every sample kept: the bin's lower edge
            assert ours.thresholds[k] == lowest - 0.5 / GRID.bins
        else:
            assert ours.thresholds[k] == exact.thresholds[k]
    assert ours.thresholds[3] == 0.5


@pytest.mark.parametrize("rule", RULES)
def test_any_gaps_give_the_same_validation_partition(rule: str) -> None:
    targets, scores, _ = _centred(7, odd_gaps=False)
    exact = np.array(choose_thresholds(targets, scores, parse_rule(rule)).thresholds)
    ours = np.array(
        choose_histogram_thresholds(
            histograms_from_scores(targets, scores, grid=GRID), parse_rule(rule)
        ).thresholds
    )
    assert np.array_equal(scores >= exact, scores >= ours)
    assert np.all(np.isin(ours, GRID.edges))


def test_test_metrics_at_the_thresholds_match_the_exact_ones() -> None:
    val_targets, val_scores, _ = _centred(3, odd_gaps=False)
    rng = np.random.default_rng(11)
    test_targets = (rng.random((500, 4)) < 0.3).astype(int)
    test_scores = np.clip(rng.beta(2, 3, (500, 4)) + 0.2 * test_targets, 0, 1)
    validation = histograms_from_scores(val_targets, val_scores, grid=DEFAULT_GRID)
    test = histograms_from_scores(test_targets, test_scores, grid=DEFAULT_GRID)
    point = histogram_operating_point(validation, test, parse_rule("youden"))
    thresholds = np.array(point.thresholds)
    assert point.rule == "youden" and point.flagged[3]
    assert (point.macro_f1, point.micro_f1) == pytest.approx(
        f1_at_thresholds(test_targets, test_scores, thresholds), abs=1e-15
    )
    ours = histogram_sensitivity_specificity(test, thresholds)
    exact = sensitivity_specificity(test_targets, test_scores, thresholds)
    assert ours == exact


def test_sensitivity_and_specificity_are_none_where_undefined() -> None:
    targets = np.array([[1, 0], [1, 0]])
    h = histograms_from_scores(targets, np.array([[0.9, 0.2], [0.1, 0.8]]), grid=GRID)
    sensitivity, specificity = histogram_sensitivity_specificity(h, 0.5)
    assert sensitivity == (0.5, None) and specificity == (None, 0.5)


def test_mismatched_class_counts_are_refused() -> None:
    targets, scores, _ = _centred(1, odd_gaps=True)
    validation = histograms_from_scores(targets, scores, grid=GRID)
    test = histograms_from_scores(targets[:, :2], scores[:, :2], grid=GRID)
    with pytest.raises(EvaluationError, match="one threshold or 2"):
        histogram_operating_point(validation, test, parse_rule("f1"))
