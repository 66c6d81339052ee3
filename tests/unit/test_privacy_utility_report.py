"""The privacy-utility report: known answers for the kept margin and the paired rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.privacy_utility_report import (
    draw_privacy_utility,
    kept_margin,
    render_privacy_utility,
)


def _run(variant: str, epsilon: float | None, seed: int, auc: float) -> dict[str, object]:
    return {
        "key": f"digits/{variant}/{epsilon}/seed{seed}",
        "dataset": "digits",
        "variant": variant,
        "epsilon": epsilon,
        "seed": seed,
        "macro_auc": auc,
        "macro_f1_at_thresholds": 0.5,
        "rounds_reached": 10,
        "seconds": 60.0,
        "noise_multipliers": [1.5, 2.0],
        "site_epsilon": {"site-1": epsilon or 0.0},
    }


def test_kept_margin_is_the_share_of_the_reference_margin_over_chance() -> None:
    assert kept_margin({0: 80.0, 1: 70.0}, {0: 90.0, 1: 90.0}) == pytest.approx(
        {0: 75.0, 1: 50.0}
    )
    assert kept_margin({0: 80.0}, {0: 50.0}) == {}  # no margin to keep


def test_the_curve_pairs_seeds_and_keeps_the_margin_of_the_product_defaults(
    tmp_path: Path,
) -> None:
    runs = [
        _run("recipe", 8.0, 0, 0.80),
        _run("recipe", 8.0, 1, 0.84),
        _run("recipe", None, 0, 0.70),
        _run("recipe", None, 1, 0.72),
        _run("nodp-default", None, 0, 0.90),
        _run("nodp-default", None, 1, 0.90),
    ]
    lines = "\n".join(render_privacy_utility({"runs": runs}, plot="x.png"))
    row = next(line for line in lines.splitlines() if line.startswith("| 8 |"))
    assert "82.0 (80.0 to 84.0)" in row  # mean (range) of the two seeds
    assert "+11.0 [" in row  # paired: (10 + 12) / 2 over the recipe without DP
    assert "80.0 (75.0 to 85.0)" in row  # kept: 30/40 and 34/40 of the defaults' margin
    assert "![macro-AUC against epsilon](x.png)" in lines
    assert draw_privacy_utility({"runs": runs}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert render_privacy_utility({"runs": []}) == []
