"""AUC and F1 from pooled histograms against the exact metrics of clinfl/metrics.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinfl.errors import EvaluationError
from clinfl.evaluation.auc import (
    auc_error_bound,
    binned_auc,
    counts_at_thresholds,
    histogram_metrics,
    micro_auc,
    per_class_auc,
)
from clinfl.evaluation.grid import DEFAULT_GRID, BinGrid
from clinfl.evaluation.histograms import ScoreHistograms, histograms_from_scores
from clinfl.metrics import binary_auc, multilabel_metrics

UNIFORM = BinGrid(1024, "uniform")


def _one_class(grid: BinGrid, targets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    h = histograms_from_scores(targets[:, None], scores[:, None], grid=grid)
    auc, bound = (
        binned_auc(h.positives[0], h.negatives[0]),
        auc_error_bound(h.positives[0], h.negatives[0]),
    )
    assert auc is not None and bound is not None
    return auc, bound


def test_known_answers() -> None:
    grid = BinGrid(4, "uniform")  # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    # one positive in bin 2 above two negatives in bins 0 and 1, one positive tied in bin 0
    targets, scores = np.array([1, 0, 0, 1]), np.array([0.6, 0.1, 0.3, 0.2])
    auc, bound = _one_class(grid, targets, scores)
    assert auc == (2 + 0.5 + 0) / 4  # exact: 0.6 beats both, 0.2 beats 0.1 only -> 3/4
    assert binary_auc(targets, scores) == 0.75
    assert bound == 0.5 * 1 / 4  # one positive/negative pair shares bin 0
    assert abs(auc - 0.75) <= bound
    assert binned_auc(np.array([3, 0]), np.array([0, 0])) is None
    assert auc_error_bound(np.array([0, 0]), np.array([1, 0])) is None


def test_scores_in_distinct_bins_give_the_exact_auc() -> None:
    rng = np.random.default_rng(0)
    bins = rng.choice(1024, size=300, replace=False)
    scores, targets = (bins + 0.5) / 1024, (rng.random(300) < 0.3).astype(int)
    auc, bound = _one_class(UNIFORM, targets, scores)
    assert bound == 0.0
    assert auc == pytest.approx(binary_auc(targets, scores), abs=1e-15)


def test_identical_scores_give_one_half_on_the_histogram_and_exactly() -> None:
    targets, scores = np.array([1, 0, 1, 0]), np.full(4, 0.3)
    auc, bound = _one_class(DEFAULT_GRID, targets, scores)
    assert auc == 0.5 == binary_auc(targets, scores) and bound == 0.5


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 16),
    st.sampled_from(["uniform", "logit", "mixed"]),
    st.integers(2, 200),
)
def test_the_error_never_exceeds_half_the_same_bin_pair_probability(
    seed: int, bins: int, kind: str, samples: int
) -> None:
    rng = np.random.default_rng(seed)
    targets = (rng.random(samples) < rng.uniform(0.05, 0.95)).astype(int)
    targets[:2] = [0, 1]
    scores = np.where(
        rng.random(samples) < 0.3, rng.integers(0, 5, samples) / 4, rng.random(samples)
    )
    auc, bound = _one_class(BinGrid(4 * bins, kind), targets, scores)  # type: ignore[arg-type]
    exact = binary_auc(targets, scores)
    assert exact is not None
    assert abs(auc - exact) <= bound + 1e-12


def test_the_bound_is_attained_when_every_tied_pair_is_ordered_one_way() -> None:
    grid = BinGrid(2, "uniform")
    targets, scores = np.array([1, 1, 0, 0]), np.array([0.4, 0.3, 0.2, 0.1])  # all in bin 0
    auc, bound = _one_class(grid, targets, scores)
    assert binary_auc(targets, scores) - auc == pytest.approx(bound) == 0.5


def _worst_error(grid: BinGrid, draw: object, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(trials):
        targets, scores = draw(rng)  # type: ignore[operator]
        exact = binary_auc(targets, scores)
        if exact is not None:
            worst = max(worst, abs(_one_class(grid, targets, scores)[0] - exact))
    return worst


def _beta(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    samples = int(rng.integers(300, 3000))
    targets = (rng.random(samples) < rng.uniform(0.02, 0.3)).astype(int)
    return targets, np.where(targets == 1, rng.beta(3, 2, samples), rng.beta(2, 3, samples))


def _rare_sigmoid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid outputs of a rare finding (about 1 % prevalence): scores crowd near 1e-3."""
    samples = int(rng.integers(2000, 4000))
    targets = (rng.random(samples) < 0.01).astype(int)
    targets[:30] = 1  # at least 30 positives
    logits = rng.normal(-7 + targets, 0.7)
    return targets, 1 / (1 + np.exp(-logits))


@pytest.mark.parametrize("grid", [UNIFORM, DEFAULT_GRID], ids=str)
def test_beta_scores_on_fine_grids_are_within_a_tenth_of_a_point(grid: BinGrid) -> None:
    assert _worst_error(grid, _beta, trials=20, seed=1) < 0.001


def test_rare_sigmoid_scores_need_logit_bins() -> None:
    """Measured over 300 draws (clinfl/evaluation/grid.py): uniform 1,024 bins erred by up to
    4.85 AUC points on scores crowding near 0, the default mixed grid by 0.087 points."""
    assert _worst_error(DEFAULT_GRID, _rare_sigmoid, trials=10, seed=2) < 0.001
    assert _worst_error(UNIFORM, _rare_sigmoid, trials=10, seed=2) > 0.005


def _multilabel(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((400, 5)) < [0.3, 0.1, 0.02, 0.5, 0.0]).astype(int)
    scores = np.clip(rng.beta(2, 4, (400, 5)) + 0.25 * targets, 0, 1)
    return targets, scores


@pytest.mark.parametrize("grid", [UNIFORM, DEFAULT_GRID, BinGrid(32, "uniform")], ids=str)
def test_metrics_match_multilabel_metrics_within_the_bound(grid: BinGrid) -> None:
    targets, scores = _multilabel(3)
    h = histograms_from_scores(targets, scores, grid=grid)
    ours, exact = histogram_metrics(h), multilabel_metrics(targets, scores)
    assert ours.per_class_auc[4] is None and exact.per_class_auc[4] is None  # no positive
    for k in range(4):
        bound = auc_error_bound(h.positives[k], h.negatives[k])
        assert bound is not None
        assert abs(ours.per_class_auc[k] - exact.per_class_auc[k]) <= bound + 1e-12  # type: ignore[operator]
    pooled_bound = auc_error_bound(h.positives.sum(0), h.negatives.sum(0))
    assert pooled_bound is not None and micro_auc(h) is not None
    assert abs(ours.micro_auc - exact.micro_auc) <= pooled_bound + 1e-12
    assert ours.macro_auc == pytest.approx(np.mean(ours.per_class_auc[:4]))
    assert (ours.macro_f1, ours.micro_f1) == pytest.approx((exact.macro_f1, exact.micro_f1), abs=0)


def test_counts_at_an_edge_threshold_are_exact() -> None:
    targets, scores = _multilabel(4)
    h = histograms_from_scores(targets, scores, grid=DEFAULT_GRID)
    thresholds = DEFAULT_GRID.edges[[100, 400, 1024, 1400, 2000]]
    tp, fp, fn, tn = counts_at_thresholds(h, thresholds)
    predicted, truth = scores >= thresholds, targets.astype(bool)
    assert tp.tolist() == (predicted & truth).sum(0).tolist()
    assert fp.tolist() == (predicted & ~truth).sum(0).tolist()
    assert fn.tolist() == (~predicted & truth).sum(0).tolist()
    assert tn.tolist() == (~predicted & ~truth).sum(0).tolist()
    with pytest.raises(EvaluationError, match="one threshold or 5"):
        counts_at_thresholds(h, np.array([0.5, 0.5]))


def test_no_class_with_both_outcomes_is_an_error_and_micro_nan_when_undefined() -> None:
    grid = BinGrid(4)
    only_negatives = ScoreHistograms(grid, np.zeros((2, 4), int), np.ones((2, 4), int))
    with pytest.raises(EvaluationError, match="both positive and negative"):
        histogram_metrics(only_negatives)
    assert per_class_auc(only_negatives) == (None, None) and micro_auc(only_negatives) is None
