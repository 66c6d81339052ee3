"""The audit report's forecast, its rounds trained without DP, the plot's round axis, the card."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.ticker import MaxNLocator

from clinfl.audit.plot import epsilon_figure
from clinfl.audit.render import federation_markdown, render_site
from clinfl.config.policy import DPPolicy, ReportingPolicy, SitePolicy
from clinfl.model_io.card import secagg_rows
from clinfl.privacy.accounting import epsilon_of
from site_agent.audit_report import build_site_report, shareable_summary
from site_agent.ledger import SiteLedger
from site_agent.setup import record_policy

DELTA = 1e-5
ENTRY = (1.0, 0.05, 20)


def _ledger(tmp_path: Path, *, dp: bool = True, budget: float = 4.0) -> SiteLedger:
    policy = SitePolicy(
        dp=DPPolicy(required=dp, epsilon_budget=budget),
        reporting=ReportingPolicy(metrics=("counts", "epsilon")),
    )
    ledger = SiteLedger(tmp_path)
    record_policy(ledger, "site-1", policy, 400)
    return ledger


def _reserve(ledger: SiteLedger, number: int, entry: tuple = ENTRY) -> int:
    noise, rate, steps = entry
    return ledger.reserve(
        run_id="run", round_number=number, noise_multiplier=noise, sample_rate=rate,
        steps=steps, budget=100.0, delta=DELTA, accountant="rdp", grad_sample_mode="hooks",
    ).row_id  # fmt: skip


def test_the_forecast_counts_the_rounds_left_at_the_last_round_s_spend(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    _reserve(ledger, 1, (1.5, 0.1, 10))
    ledger.spend(_reserve(ledger, 2), secagg=True)
    ledger.release(_reserve(ledger, 3, (0.5, 0.5, 50)))  # released: not the last counted round
    history = [(1.5, 0.1, 10), ENTRY]
    more = next(
        k
        for k in range(0, 200)
        if epsilon_of([*history, *[ENTRY] * (k + 1)], delta=DELTA, accountant="rdp") > 4.0
    )
    assert more >= 1
    forecast = build_site_report(tmp_path)["dp"]["forecast"]
    assert forecast["rounds_more"] == more and not forecast["capped"]
    assert (forecast["noise_multiplier"], forecast["sample_rate"], forecast["steps"]) == ENTRY
    assert forecast["epsilon_round"] == epsilon_of([ENTRY], delta=DELTA, accountant="rdp")
    after = epsilon_of([*history, *[ENTRY] * more], delta=DELTA, accountant="rdp")
    assert forecast["epsilon_after"] == pytest.approx(after) and after <= 4.0
    report = build_site_report(tmp_path)
    for fmt in ("md", "html"):
        assert f"{more} more round(s) fit in the budget" in render_site(report, fmt)
    assert [r["accountant"] for r in report["rounds"]] == ["rdp"] * 3


def test_no_counted_round_has_no_forecast(tmp_path: Path) -> None:
    _ledger(tmp_path)
    report = build_site_report(tmp_path)
    assert report["dp"]["forecast"] is None
    assert "no round charged yet" in render_site(report, "md")


def test_rounds_trained_without_dp_come_from_the_completed_rounds(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, dp=False)
    for number in range(1, 4):
        ledger.record_attempt("run", number, model_hash=bytes([number]) * 32)
        ledger.complete_attempt("run", number)
    ledger.record_attempt("run", 4, model_hash=b"\x04" * 32)  # never completed
    ledger.record_attempt("run", 3, model_hash=b"\x05" * 32)  # a retry of a completed round
    ledger.complete_attempt("run", 3)
    report = build_site_report(tmp_path)
    assert report["rounds"] == [] and report["rounds_completed"] == 3
    summary = shareable_summary(report)
    assert summary["rounds_trained"] == 3
    federation = {"run_id": "run", "sites": [summary], "rounds": []}
    assert "| site-1 | no | 0 | 4 | 400 | 3 | 0 | counts, epsilon |" in federation_markdown(
        federation
    )


def test_rounds_trained_with_dp_are_the_rounds_the_ledger_charged(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    _reserve(ledger, 1)
    ledger.release(_reserve(ledger, 2))
    assert shareable_summary(build_site_report(tmp_path))["rounds_trained"] == 1


def test_the_epsilon_plot_ticks_whole_rounds_only() -> None:
    figure = epsilon_figure([("site-1", [0.5, 0.9, 1.2])], budget=8.0, title="t")
    try:
        axes = figure.axes[0]
        locator = axes.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        figure.canvas.draw()
        ticks = [t for t in axes.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert len(ticks) == 3  # a default locator puts 1.25, 1.5, ... between 1 and 3
    finally:
        plt.close(figure)


def test_the_model_card_shows_a_complete_secagg_graph_as_complete() -> None:
    settings = {"enabled": True, "degree": None, "threshold": None}
    rows = dict(map(tuple, secagg_rows(settings, 5)))
    assert rows["degree"] == "complete" and rows["threshold"] == "null"
    assert dict(map(tuple, secagg_rows({"degree": 4}, 5)))["degree"] == "complete"
    sparse = dict(map(tuple, secagg_rows({"degree": None}, 100)))["degree"]
    assert sparse == "14 (SecAgg+ neighbour graph)"
    assert json.loads(dict(map(tuple, secagg_rows({"degree": None}, None)))["degree"]) is None


def test_the_reports_have_exactly_the_keys_their_typed_dicts_name(tmp_path: Path) -> None:
    from clinfl.audit.schema import (
        DataSection,
        DPSection,
        Forecast,
        LedgerRoundEntry,
        PolicySection,
        SiteReport,
        SiteSummary,
    )

    ledger = _ledger(tmp_path)
    _reserve(ledger, 1)
    report = build_site_report(tmp_path)
    assert list(report) == list(SiteReport.__annotations__)
    assert list(report["policy"]) == list(PolicySection.__annotations__)
    assert list(report["dp"]) == list(DPSection.__annotations__)
    assert list(report["dp"]["forecast"] or {}) == list(Forecast.__annotations__)
    assert list(report["rounds"][0]) == list(LedgerRoundEntry.__annotations__)
    assert list(report["data"]) == list(DataSection.__annotations__)
    summary = shareable_summary(report)  # this policy shares counts and epsilon, not ingest
    assert set(summary) == set(SiteSummary.__annotations__) - {"ingestion"}
    assert summary["epsilon_by_round"] == [(1, report["rounds"][0]["epsilon_cumulative"])]
