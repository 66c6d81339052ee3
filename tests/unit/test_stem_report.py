from __future__ import annotations

from typing import Any

import pytest

from benchmarks.stem_report import render_stem_comparison, stem_rows


def _run(
    seed: int, auc: float, rounds: int, *, cpu: str = "Intel(R) Xeon(R) Processor", **extra: Any
) -> dict:
    return {
        "stage": "main",
        "dataset": "digits",
        "setting": "s2",
        "variant": "fedavg",
        "seed": seed,
        "cpu": cpu,
        "best": {"macro_auc": auc, "round": rounds},
        "rounds": [{"seconds": 2.0} for _ in range(rounds)],
        **extra,
    }


def test_the_stems_pair_by_seed_and_cell() -> None:
    small = {"runs": [_run(0, 0.90, 10), _run(1, 0.92, 12), _run(2, 0.50, 3)]}
    compact = {
        "runs": [
            _run(0, 0.91, 8),
            _run(1, 0.94, 9),
            _run(7, 0.10, 2),  # no small-stem partner: left out
            _run(0, 0.99, 5, variant="spherefed"),  # a cell the small stem lacks: no row
        ]
    }
    (row,) = stem_rows(compact, small)
    assert row["group"] == ("digits", "s2", "fedavg")
    assert row["gain"].seeds == (0, 1)
    assert row["gain"].mean == pytest.approx(0.015)
    assert (row["rounds_small"], row["rounds_compact"]) == (22, 17)


def test_tuned_runs_pair_only_with_tuned_runs() -> None:
    tuned = {"tuned": {"lambda_rej": 0.1}}
    small = {"runs": [_run(0, 0.90, 10, **tuned), _run(1, 0.9, 10, **tuned)]}
    compact = {"runs": [_run(0, 0.91, 8), _run(1, 0.9, 10)]}
    assert stem_rows(compact, small) == []
    compact = {"runs": [_run(0, 0.91, 8, **tuned), _run(1, 0.93, 10, **tuned)]}
    (row,) = stem_rows(compact, small)
    assert row["group"][2] == "fedavg+tuned"


def test_the_section_gives_seconds_per_round_per_cpu() -> None:
    small = {"runs": [_run(0, 0.90, 10, cpu="AMD EPYC 7B13"), _run(1, 0.92, 12)]}
    compact = {"runs": [_run(0, 0.91, 8), _run(1, 0.95, 9)]}
    text = "\n".join(render_stem_comparison(compact, small))
    assert "What the compact stem costs" in text
    assert "+2.00 [" in text  # mean of +1 and +3 points
    assert "2.00 (AMD EPYC)" in text and "2.00 (Intel Xeon)" in text
    assert "22 -> 17" in text
    assert render_stem_comparison({"runs": []}, small) == []
