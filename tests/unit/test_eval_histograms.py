"""Score histograms: the bin grid, counting, pooling and the integer vector a masked sum carries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinfl.errors import ClinflError, EvaluationError
from clinfl.evaluation.grid import DEFAULT_GRID, BinGrid
from clinfl.evaluation.histograms import (
    LOSS_CLIP,
    LOSS_UNITS,
    ScoreHistograms,
    histograms_from_scores,
    pool,
)
from clinfl.evaluation.vector import (
    from_integer_vector,
    from_residues,
    to_integer_vector,
    to_residues,
    vector_length,
)


def _data(seed: int, samples: int = 50, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((samples, classes)) < 0.3).astype(int), rng.random((samples, classes))


def test_default_grid_is_2048_mixed_bins_with_half_an_edge() -> None:
    assert (DEFAULT_GRID.bins, DEFAULT_GRID.kind) == (2048, "mixed")
    edges = DEFAULT_GRID.edges
    assert edges.size == 2049 and edges[0] == 0.0 and edges[-1] == 1.0 and edges[1024] == 0.5
    assert np.all(np.diff(edges) > 0)
    assert set(BinGrid(1024, "uniform").edges) <= set(edges)  # every uniform 1/1024 edge
    assert set(BinGrid(1026, "logit").edges) <= set(edges)  # and every logit edge


@pytest.mark.parametrize("bins", [8, 12, 1028, 2048, 4096, 8192])
def test_mixed_grids_have_the_bins_they_claim(bins: int) -> None:
    assert BinGrid(bins, "mixed").edges.size == bins + 1


def test_uniform_bin_index_is_floor_p_times_b_capped() -> None:
    grid = BinGrid(1024, "uniform")
    scores = np.r_[np.random.default_rng(0).random(5000), 0.0, 1.0, 0.5, 1023 / 1024, 1 / 1024]
    expected = np.minimum(np.floor(scores * 1024), 1023).astype(np.int64)
    assert np.array_equal(grid.bin_index(scores), expected)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=40),
    st.integers(1, 75),
    st.sampled_from(["uniform", "logit", "mixed"]),
)
def test_score_at_or_above_an_edge_is_exactly_a_bin_at_or_above_its_index(
    scores: list[float], bins: int, kind: str
) -> None:
    grid = BinGrid(bins * 4, kind)  # type: ignore[arg-type]
    values = np.array(scores)
    index = grid.bin_index(values)
    for k in range(grid.bins):  # edges e_0..e_{B-1}: the thresholds a cut can choose
        assert np.array_equal(values >= grid.edges[k], index >= k)


@pytest.mark.parametrize("bad", [[-0.1], [1.5], [float("nan")], [float("inf")]])
def test_scores_outside_the_unit_interval_are_refused(bad: list[float]) -> None:
    with pytest.raises(EvaluationError, match="probabilities"):
        DEFAULT_GRID.bin_index(np.array(bad))


@pytest.mark.parametrize(
    ("bins", "kind", "logit_range"),
    [
        (1, "uniform", 12.0),
        (1 << 17, "uniform", 12.0),
        (8, "cubic", 12.0),
        (8, "logit", 0.0),
        (10, "mixed", 12.0),
    ],
)
def test_bad_grids_are_refused(bins: int, kind: str, logit_range: float) -> None:
    with pytest.raises(EvaluationError) as raised:
        BinGrid(bins, kind, logit_range)  # type: ignore[arg-type]
    assert raised.value.remedy


def test_histograms_count_known_answer() -> None:
    grid = BinGrid(4, "uniform")
    targets = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    scores = np.array([[0.1, 0.9], [0.3, 0.26], [0.99, 0.5], [0.0, 1.0]])
    losses = np.array([0.5, 10.0, -1.0, 0.25])
    h = histograms_from_scores(targets, scores, grid=grid, losses=losses)
    assert h.positives.tolist() == [[1, 0, 0, 1], [0, 0, 1, 1]]
    assert h.negatives.tolist() == [[1, 1, 0, 0], [0, 1, 0, 1]]
    assert h.positive_totals.tolist() == [2, 2] and h.negative_totals.tolist() == [2, 2]
    assert h.loss_sum == round((0.5 + LOSS_CLIP + 0.0 + 0.25) * LOSS_UNITS)
    assert h.loss_count == 4 and h.contributors == 1
    assert h.mean_loss == pytest.approx((0.5 + LOSS_CLIP + 0.25) / 4)
    with pytest.raises(ValueError):
        h.positives[0, 0] = 7  # read-only


def test_histograms_without_losses_have_no_mean_loss() -> None:
    targets, scores = _data(1)
    h = histograms_from_scores(targets, scores, grid=16)
    assert (h.loss_sum, h.loss_count, h.mean_loss) == (0, 0, None)
    assert h.grid == BinGrid(16)
    assert int(h.positives.sum() + h.negatives.sum()) == targets.size


@pytest.mark.parametrize(
    ("targets", "scores", "match"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "both be"),
        (np.zeros(3), np.zeros(3), "both be"),
        (np.full((2, 2), 2), np.zeros((2, 2)), "0 or 1"),
    ],
)
def test_bad_inputs_are_refused(targets: np.ndarray, scores: np.ndarray, match: str) -> None:
    with pytest.raises(EvaluationError, match=match):
        histograms_from_scores(targets, scores, grid=8)


def test_bad_losses_are_refused() -> None:
    targets, scores = _data(2, samples=5)
    with pytest.raises(EvaluationError, match="losses"):
        histograms_from_scores(targets, scores, losses=np.array([0.1, float("nan"), 0, 0, 0]))
    with pytest.raises(EvaluationError, match="losses"):
        histograms_from_scores(targets, scores, losses=np.zeros(4))


def test_negative_counts_bad_shapes_and_floats_are_refused() -> None:
    grid = BinGrid(4)
    good = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(EvaluationError, match="negative"):
        ScoreHistograms(grid, good - 1, good)
    with pytest.raises(EvaluationError, match="integer"):
        ScoreHistograms(grid, good.astype(float), good)
    with pytest.raises(EvaluationError, match="classes, bins"):
        ScoreHistograms(grid, good, np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(EvaluationError, match="grid of 4 bins"):
        ScoreHistograms(grid, np.zeros((2, 5), dtype=int), np.zeros((2, 5), dtype=int))
    with pytest.raises(EvaluationError, match="loss"):
        ScoreHistograms(grid, good, good, loss_sum=-1)


def test_pooling_equals_the_histograms_of_all_the_data() -> None:
    parts = [_data(seed, samples=20 + seed) for seed in range(4)]
    losses = [np.random.default_rng(s).random(len(t)) for s, (t, _) in enumerate(parts)]
    site = [
        histograms_from_scores(t, s, grid=32, losses=loss)
        for (t, s), loss in zip(parts, losses, strict=True)
    ]
    whole = histograms_from_scores(
        np.concatenate([t for t, _ in parts]),
        np.concatenate([s for _, s in parts]),
        grid=32,
        losses=np.concatenate(losses),
    )
    pooled = pool(site)
    assert pooled.contributors == 4
    assert np.array_equal(pooled.positives, whole.positives)
    assert np.array_equal(pooled.negatives, whole.negatives)
    assert (pooled.loss_sum, pooled.loss_count) == (whole.loss_sum, whole.loss_count)
    assert (site[0] + site[1]).same_as(pool(site[:2]))


def test_pooling_refuses_mismatched_grids_and_nothing() -> None:
    targets, scores = _data(3)
    with pytest.raises(EvaluationError, match="8 uniform bins"):
        pool(
            [
                histograms_from_scores(targets, scores, grid=8),
                histograms_from_scores(targets, scores, grid=16),
            ]
        )
    with pytest.raises(EvaluationError, match="cannot pool"):
        pool(
            [
                histograms_from_scores(targets, scores, grid=8),
                histograms_from_scores(targets[:, :2], scores[:, :2], grid=8),
            ]
        )
    with pytest.raises(EvaluationError, match="no histograms"):
        pool([])


@pytest.mark.parametrize("grid", [BinGrid(16, "uniform"), BinGrid(64, "logit", 8.5)])
def test_the_sum_of_vectors_is_the_vector_of_the_sums(grid: BinGrid) -> None:
    sites = [
        histograms_from_scores(*_data(seed), grid=grid, losses=np.full(50, 0.1 * seed))
        for seed in range(5)
    ]
    vectors = [to_integer_vector(h) for h in sites]
    assert all(v.dtype == np.int64 and v.size == vector_length(grid, 3) for v in vectors)
    decoded = from_integer_vector(np.sum(vectors, axis=0), grid=grid)
    assert decoded.same_as(pool(sites))
    assert from_integer_vector(vectors[2], grid=grid).same_as(sites[2])


def test_the_sum_survives_residues_modulo_2_to_the_bits() -> None:
    rng = np.random.default_rng(5)
    vectors = [rng.integers(-1000, 1000, size=50) for _ in range(6)]
    residues = sum(to_residues(v, 32) for v in vectors) % np.uint64(1 << 32)
    assert np.array_equal(from_residues(residues, 32), np.sum(vectors, axis=0))
    assert np.array_equal(from_residues(to_residues(vectors[0], 64), 64), vectors[0])
    with pytest.raises(EvaluationError, match="signed bits"):
        to_residues(np.array([1 << 31]), 32)
    with pytest.raises(EvaluationError, match="bits"):
        from_residues(np.array([1]), 1)


def test_a_pooled_histogram_is_not_encoded_again() -> None:
    h = histograms_from_scores(*_data(6), grid=8)
    with pytest.raises(EvaluationError, match="pool 2"):
        to_integer_vector(h + h)


def test_bad_sums_are_refused_with_a_remedy() -> None:
    grid = BinGrid(8)
    vector = to_integer_vector(histograms_from_scores(*_data(7), grid=grid))
    cases = {
        "other grid": (vector, BinGrid(16)),
        "other kind": (vector, BinGrid(8, "logit")),
        "float": (vector.astype(float), grid),
        "short": (vector[:-1], grid),
        "no contributor": (np.r_[0, vector[1:]], grid),
        "uneven header": (vector + np.r_[0, 0, 0, 0, 1, 0, np.zeros(vector.size - 6, int)], grid),
    }
    for name, (bad, bad_grid) in cases.items():
        with pytest.raises(ClinflError) as raised:
            from_integer_vector(bad, grid=bad_grid)
        assert isinstance(raised.value, EvaluationError), name
        assert raised.value.remedy, name
    doubled_header = vector.copy()
    doubled_header[:6] *= 2  # two contributors: fine
    assert from_integer_vector(doubled_header, grid=grid).contributors == 2


def test_negative_counts_in_a_sum_are_refused_unless_noisy_then_clamped() -> None:
    grid = BinGrid(8)
    vector = to_integer_vector(histograms_from_scores(*_data(8), grid=grid))
    vector[6] = -3  # first positive count of class 0
    vector[-2] = -5  # loss sum
    with pytest.raises(EvaluationError, match="negative"):
        from_integer_vector(vector, grid=grid)
    clamped = from_integer_vector(vector, grid=grid, noisy=True)
    assert clamped.positives[0, 0] == 0 and clamped.loss_sum == 0
