"""Evaluation noise: the exact discrete Laplace sampler, the sensitivity it is calibrated to, epsilon."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinfl.errors import EvaluationError
from clinfl.evaluation.grid import BinGrid
from clinfl.evaluation.histograms import LOSS_CLIP_UNITS, histograms_from_scores
from clinfl.evaluation.noise import (
    discrete_laplace,
    discrete_laplace_variance,
    evaluation_epsilon,
    evaluation_sensitivity,
    noise_for_epsilon,
    noisy_integer_vector,
)
from clinfl.evaluation.vector import HEADER_SLOTS, from_integer_vector, to_integer_vector


def _stream(seed: int) -> random.Random:
    return random.Random(seed)  # a deterministic byte stream for tests only


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(1), Fraction(7, 3), Fraction(16)])
def test_sampler_mean_variance_and_mass_at_zero(scale: Fraction) -> None:
    draws = discrete_laplace(scale, 20_000, random_bytes=_stream(int(scale * 6)).randbytes)
    variance = discrete_laplace_variance(float(scale))
    q = math.exp(-1 / float(scale))
    assert draws.dtype == np.int64
    assert abs(draws.mean()) < 4 * math.sqrt(variance / draws.size)
    assert draws.var() == pytest.approx(variance, rel=0.06)
    assert np.mean(draws == 0) == pytest.approx((1 - q) / (1 + q), abs=0.015)
    assert np.mean(draws > 0) == pytest.approx(np.mean(draws < 0), abs=0.02)


def test_sampler_matches_the_pmf() -> None:
    scale = Fraction(3, 2)
    draws = discrete_laplace(scale, 20_000, random_bytes=_stream(9).randbytes)
    q = math.exp(-1 / 1.5)
    for x in range(-4, 5):
        expected = (1 - q) / (1 + q) * q ** abs(x)
        assert np.mean(draws == x) == pytest.approx(expected, abs=4 * math.sqrt(expected / 20_000))


def test_sampler_is_a_function_of_its_byte_stream_only() -> None:
    a = discrete_laplace(Fraction(5), 500, random_bytes=_stream(1).randbytes)
    b = discrete_laplace(Fraction(5), 500, random_bytes=_stream(1).randbytes)
    c = discrete_laplace(Fraction(5), 500, random_bytes=_stream(2).randbytes)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert discrete_laplace(Fraction(5), 0).size == 0
    assert discrete_laplace(Fraction(5), 10).size == 10  # os.urandom by default


@pytest.mark.parametrize("scale", [Fraction(0), Fraction(-1), Fraction(1, 1 << 41)])
def test_bad_scales_are_refused(scale: Fraction) -> None:
    with pytest.raises(EvaluationError, match="scale"):
        discrete_laplace(scale, 3)


def test_epsilon_known_answers_and_inverse() -> None:
    assert evaluation_sensitivity(14) == 16
    assert evaluation_sensitivity(14, neighbouring="replace-one") == 29
    assert evaluation_epsilon(Fraction(16), 14) == 1.0
    assert evaluation_epsilon(Fraction(29, 2), 14, neighbouring="replace-one") == 2.0
    for epsilon in (0.1, 0.5, 1.0, 2.0, 3.3, 4.0):
        for relation in ("add-remove", "replace-one"):
            scale = noise_for_epsilon(epsilon, 14, neighbouring=relation)  # type: ignore[arg-type]
            assert scale.denominator <= 1000
            spent = evaluation_epsilon(scale, 14, neighbouring=relation)  # type: ignore[arg-type]
            assert epsilon * (1 - 1e-3) <= spent <= epsilon
    with pytest.raises(EvaluationError, match="finite"):
        noise_for_epsilon(math.inf, 14)
    with pytest.raises(EvaluationError, match="positive"):
        evaluation_epsilon(0.0, 14)
    with pytest.raises(EvaluationError, match="neighbouring"):
        evaluation_sensitivity(14, neighbouring="swap")  # type: ignore[arg-type]


def _noise_units(a: np.ndarray, b: np.ndarray) -> float:
    """L1 distance of two vectors in noise units (the loss sum counts per LOSS_CLIP_UNITS)."""
    diff = np.abs(a - b)
    return float(diff[HEADER_SLOTS:-2].sum() + diff[-1] + diff[-2] / LOSS_CLIP_UNITS)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from(["uniform", "mixed"]))
def test_one_study_moves_a_vector_by_at_most_the_stated_sensitivity(
    seed: int, classes: int, kind: str
) -> None:
    rng = np.random.default_rng(seed)
    grid = BinGrid(16, kind)  # type: ignore[arg-type]
    samples = int(rng.integers(1, 20))
    targets = rng.integers(0, 2, (samples + 1, classes))
    scores, losses = rng.random((samples + 1, classes)), rng.random(samples + 1) * 10
    whole = to_integer_vector(histograms_from_scores(targets, scores, grid=grid, losses=losses))
    removed = to_integer_vector(
        histograms_from_scores(targets[1:], scores[1:], grid=grid, losses=losses[1:])
    )
    targets[0], scores[0], losses[0] = rng.integers(0, 2, classes), rng.random(classes), 0.0
    replaced = to_integer_vector(histograms_from_scores(targets, scores, grid=grid, losses=losses))
    assert _noise_units(whole, removed) <= evaluation_sensitivity(classes)
    assert _noise_units(whole, replaced) <= evaluation_sensitivity(
        classes, neighbouring="replace-one"
    )


def test_the_worst_neighbour_reaches_the_sensitivity() -> None:
    grid, classes = BinGrid(8), 3
    targets, scores = np.ones((1, classes), int), np.full((1, classes), 0.9)
    one = to_integer_vector(
        histograms_from_scores(targets, scores, grid=grid, losses=np.array([50.0]))
    )
    empty = to_integer_vector(
        histograms_from_scores(targets[:0], scores[:0], grid=grid, losses=np.zeros(0))
    )
    other = to_integer_vector(
        histograms_from_scores(0 * targets, scores / 9, grid=grid, losses=np.zeros(1))
    )
    assert _noise_units(one, empty) == evaluation_sensitivity(classes)
    assert _noise_units(one, other) == evaluation_sensitivity(classes, neighbouring="replace-one")


def test_noisy_vectors_keep_the_header_and_decode_after_clamping() -> None:
    grid = BinGrid(32)
    rng = np.random.default_rng(4)
    sites = [
        histograms_from_scores(
            (rng.random((40, 2)) < 0.3).astype(int), rng.random((40, 2)), grid=grid
        )
        for _ in range(3)
    ]
    vectors = [
        noisy_integer_vector(h, Fraction(3), random_bytes=_stream(i).randbytes)
        for i, h in enumerate(sites)
    ]
    clean = [to_integer_vector(h) for h in sites]
    for noisy, exact in zip(vectors, clean, strict=True):
        assert np.array_equal(noisy[:HEADER_SLOTS], exact[:HEADER_SLOTS])
        assert np.any(noisy[HEADER_SLOTS:] != exact[HEADER_SLOTS:])
    total = np.sum(vectors, axis=0)
    assert total[HEADER_SLOTS:].min() < 0  # noise made some empty cells negative
    with pytest.raises(EvaluationError, match="negative"):
        from_integer_vector(total, grid=grid)
    pooled = from_integer_vector(total, grid=grid, noisy=True)
    assert pooled.contributors == 3 and pooled.positives.min() >= 0 and pooled.loss_count >= 0
