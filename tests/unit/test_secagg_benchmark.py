"""The secure-aggregation benchmark's measurements are correct on a small input."""

from __future__ import annotations

import pytest

from benchmarks.flower_secaggplus import flower_version
from benchmarks.secagg import measure, prg_throughput
from benchmarks.secagg_report import render_secagg
from clinfl.secagg.settings import METADATA_SLOTS
from clinfl.secagg.stages import Stage, stage_name


def test_small_measurement_is_accurate_and_renders() -> None:
    with_flower = flower_version() is not None
    row = measure(5_000, 5, with_flower=with_flower)
    assert row["clinfl"]["max_error"] < 1e-4  # quantisation error only
    assert row["plain"]["max_error"] < 1e-6
    assert row["clinfl"]["bytes_per_site"]["masked-input"] == 4 * (5_000 + METADATA_SLOTS)
    # timed under the stage table's names, in its order
    assert list(row["clinfl"]["site_max"]) == [stage_name(stage) for stage in Stage]
    assert list(row["clinfl"]["site_max"])[3] == "masked-input"
    if with_flower:
        assert row["flower"]["max_error"] < 1e-4  # Flower's own aggregate is right too
    document = {"flower": flower_version(), "rows": [row], "prg": [prg_throughput(10_000)]}
    text = "\n".join(render_secagg(document))
    assert "| 5,000 | 5 | 4 | 4 |" in text  # complete graph; t > (h + c) / 2 = (5 + 1) / 2
    assert ("Flower parallel round ms" in text) == with_flower


def test_prg_throughput_reports_both_rates() -> None:
    result = prg_throughput(700_000)
    assert result["bytes"] == 2 * (1 << 20)  # whole 1 MiB chunks
    assert result["prg_gb_s"] > 0 and result["aes_ctr_gb_s"] > 0
    best = max(result["aes_ctr_gb_s"], result["aes_ctr_one_shot_gb_s"])
    assert result["ratio"] == pytest.approx(best / result["prg_gb_s"])
