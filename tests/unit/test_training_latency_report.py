"""The timing-channel benchmark's statistics and its section of docs/benchmarks.md."""

from __future__ import annotations

import pytest

from benchmarks.training_latency import leave_one_size_out, summarise
from benchmarks.training_latency_report import render_training_latency

SIZES = (40, 112, 184, 256)


def test_latency_that_follows_the_size_gives_it_away_and_flat_latency_does_not() -> None:
    linear = {n: [0.01 * n + 0.001 * k for k in range(3)] for n in SIZES}
    found = leave_one_size_out(linear)
    assert found["fit_mean_abs_error_samples"] < 1.0  # N recovered to within a sample
    assert found["median_fit_mean_abs_error_samples"] < 1.0
    flat = {n: [1.0 + 0.001 * ((n * 7 + k) % 5) for k in range(3)] for n in SIZES}
    blind = leave_one_size_out(flat)
    assert blind["fit_mean_abs_error_samples"] > 40  # no better than a guess
    assert blind["median_fit_mean_abs_error_samples"] > 40
    assert blind["guess_mean_abs_error_samples"] == pytest.approx(
        found["guess_mean_abs_error_samples"]
    )
    summary = summarise(linear, {n: -(-n // 16) for n in SIZES})
    assert summary["pearson_latency_vs_samples"] > 0.999
    assert summary["per_size"]["40"]["steps"] == 3


def test_the_section_shows_both_modes_and_every_size() -> None:
    per_size = {str(n): {"steps": 3, "median_seconds": 0.5, "seconds": [0.5]} for n in SIZES}
    mode = {
        "pearson_latency_vs_samples": 0.99,
        "pearson_median_latency_vs_samples": 0.995,
        "fit_mean_abs_error_samples": 2.5,
        "median_fit_mean_abs_error_samples": 1.5,
        "guess_mean_abs_error_samples": 80.0,
        "per_size": per_size,
    }
    results = {
        "settings": {
            "sizes": list(SIZES),
            "batch_size": 16,
            "image_size": 16,
            "backbone": "small",
            "width": 8,
            "reps": 5,
            "local_steps": 10,
        },
        "modes": {"epochs": mode, "fixed_steps": {**mode, "pearson_latency_vs_samples": 0.1}},
        "other_processes_cpu_share": 0.012,
    }
    text = "\n".join(render_training_latency(results))
    assert "| by epochs (1 local epoch) | 0.990 | 0.995 | 2.5 | 1.5 | 80.0 |" in text
    assert "| fixed local steps | 0.100 |" in text
    assert "| 256 | 3 | 0.500 | 3 | 0.500 |" in text
    assert "Other processes used 1.2% of the machine's CPU" in text
    assert render_training_latency({}) == []
