"""The site's audit report, built from its state directory (ledger and recorded policy).

It holds everything PRIVACY.md lists: the policy and its hash, each round's privacy spend and
the cumulative epsilon at the policy's delta, noise, sampling rate, steps, the per-sample-
gradient mode, secure aggregation and the size of each sum, refusals with reasons, and the data
summary. It carries no patient data and no file paths.

Its forecast says how many more rounds fit in the budget at the last counted round's spend (its
noise, sampling rate and steps), counted exactly as the ledger would charge them
(:func:`clinfl.privacy.plan.rounds_within_budget`).
"""

from __future__ import annotations

import json
from pathlib import Path

from clinfl.audit.render import FORMATS, render_site
from clinfl.audit.schema import (
    EvaluationEntry,
    Forecast,
    LedgerRoundEntry,
    RefusalEntry,
    SiteReport,
    SiteSummary,
)
from clinfl.errors import DataError
from clinfl.files import write_atomically
from clinfl.privacy.accounting import HistoryEntry, charge_epsilon
from clinfl.privacy.plan import (
    MAX_PLANNED_ROUNDS,
    RoundCharge,
    epsilon_after,
    poisson_steps_per_epoch,
    rounds_within_budget,
)
from site_agent.ingest.pipeline import SITE_INGEST_DIR, SUMMARY_FILE
from site_agent.ledger import LEDGER_FILE, SiteLedger
from site_agent.local_thresholds import local_thresholds_summary

REPORT_VERSION = 1
REPORT_NAME = "audit_report"


def ingest_summary_path(state_dir: Path) -> Path:
    """Where a site keeps the summary of the export it trains on: ``<state>/ingest/``.

    ``clinfl site run`` ingests there, and the in-process federation copies its shared
    export's summary there for each site, so both modes report the same.
    """
    return state_dir / SITE_INGEST_DIR / SUMMARY_FILE


def _per_round(ledger: SiteLedger, delta: float, accountant: str) -> list[LedgerRoundEntry]:
    rows: list[LedgerRoundEntry] = []
    history: list[tuple[float, float, int]] = []
    previous = 0.0
    for entry in ledger.rounds():
        counted = entry.state != "released"
        if counted:
            history.append((entry.noise_multiplier, entry.sample_rate, entry.steps))
        charge = charge_epsilon(history, delta=delta, accountant=accountant)
        cumulative = charge.epsilon
        rows.append(
            {
                "run_id": entry.run_id,
                "round": entry.round,
                "state": entry.state,
                "noise_multiplier": entry.noise_multiplier,
                "sample_rate": entry.sample_rate,
                "steps": entry.steps,
                "grad_sample_mode": entry.grad_sample_mode,
                "secure_aggregation": entry.secagg,
                "sites_in_sum": entry.sites_in_sum,
                "accountant": entry.accountant,
                "epsilon_round": cumulative - previous if counted else 0.0,
                "epsilon_cumulative": cumulative,
            }
        )
        previous = cumulative
    return rows


def forecast(
    history: list[HistoryEntry], *, budget: float | None, delta: float, accountant: str
) -> Forecast | None:
    """Return how many more rounds at the last round's spend fit in ``budget`` (None: no round).

    ``rounds_more`` counts rounds of the last entry's noise, rate and steps that keep the
    cumulative epsilon of the whole history at or under the budget (``capped``: at least
    that many; the count stops at :data:`~clinfl.privacy.plan.MAX_PLANNED_ROUNDS`);
    ``epsilon_round`` is one such round's epsilon on its own.

    Raises:
        ValueError: for an unknown accountant.
    """
    if not history or budget is None:
        return None
    noise, rate, steps = history[-1]
    charge = RoundCharge(noise, rate, steps, poisson_steps_per_epoch(rate))
    left = rounds_within_budget(history, charge, budget=budget, delta=delta, accountant=accountant)
    one = epsilon_after((), charge, 1, delta=delta, accountant=accountant)
    return {
        "noise_multiplier": noise,
        "sample_rate": rate,
        "steps": steps,
        "epsilon_round": one.epsilon,
        "rounds_more": left.rounds,
        "capped": left.capped,
        "round_cap": MAX_PLANNED_ROUNDS,
        "epsilon_after": epsilon_after(
            history, charge, left.rounds, delta=delta, accountant=accountant
        ).epsilon,
    }


def build_site_report(state_dir: Path) -> SiteReport:
    """Return the audit report of the site whose state lives in ``state_dir``.

    Raises:
        DataError: if the directory holds no ledger, or unreadable local thresholds.
    """
    if not (state_dir / LEDGER_FILE).is_file():
        raise DataError(
            f"{state_dir} holds no privacy ledger ({LEDGER_FILE})",
            remedy="pass the site's state directory (for simulations: <out>/sites/site-K)",
        )
    ledger = SiteLedger(state_dir)
    try:
        meta = ledger.meta()
        policy = json.loads(meta.get("policy", "{}"))
        dp = policy.get("dp", {})
        delta = float(dp.get("delta", 1e-5))
        accountant = str(dp.get("accountant", "rdp"))
        rounds = _per_round(ledger, delta, accountant)
        budget = dp.get("epsilon_budget")
        ahead = forecast(
            ledger.history(),
            budget=None if budget is None else float(budget),
            delta=delta,
            accountant=accountant,
        )
        refusals: list[RefusalEntry] = [
            {"run_id": r.run_id, "round": r.round, "reason": r.reason} for r in ledger.refusals()
        ]
        completed = ledger.completed_rounds()
        evaluations: list[EvaluationEntry] = [
            {"run_id": e.run_id, "round": e.round, "epsilon": e.epsilon}
            for e in ledger.evaluations()
        ]
    finally:
        ledger.close()
    spent = rounds[-1]["epsilon_cumulative"] if rounds else 0.0
    ingest_path = ingest_summary_path(state_dir)
    ingest = json.loads(ingest_path.read_text()) if ingest_path.is_file() else None
    return {
        "report_version": REPORT_VERSION,
        "site_id": meta.get("site_id", state_dir.name),
        "policy": {
            "source": Path(str(policy.get("source", "?"))).name,
            "sha256": policy.get("sha256", ""),
            "terms": {k: v for k, v in policy.items() if k not in ("source", "sha256")},
        },
        "dp": {
            "enabled": bool(dp.get("required", False)),
            "epsilon_budget": dp.get("epsilon_budget"),
            "delta": delta,
            "accountant": accountant,
            "epsilon_spent": spent,
            "grad_sample_modes": sorted({r["grad_sample_mode"] for r in rounds}),
            "forecast": ahead,
        },
        "rounds": rounds,
        "rounds_completed": completed,
        "refusals": refusals,
        "warnings": sorted(v for k, v in meta.items() if k.startswith("warning:")),
        "data": {"training_samples": int(meta.get("samples", 0)), "ingestion": ingest},
        "evaluations": evaluations,
        "local_thresholds": local_thresholds_summary(state_dir),
    }


def rounds_trained(report: SiteReport) -> int:
    """Return the rounds a site trained: with DP-SGD those its ledger charged, else completed.

    A DP round counts once it is reserved (it may have trained before a crash); a round
    without DP writes no privacy row, so it counts once the site completed it.
    """
    if report["dp"]["enabled"]:
        return sum(1 for r in report["rounds"] if r["state"] != "released")
    return int(report.get("rounds_completed", 0))


def shareable_summary(report: SiteReport) -> SiteSummary:
    """Return the part of a site report its policy lets leave the site (``reporting.metrics``)."""
    allowed = set(report["policy"]["terms"].get("reporting", {}).get("metrics", ()))
    summary: SiteSummary = {"site_id": report["site_id"], "reports": sorted(allowed)}
    if "epsilon" in allowed:
        summary["epsilon_spent"] = report["dp"]["epsilon_spent"]
        summary["epsilon_budget"] = report["dp"]["epsilon_budget"]
        summary["delta"] = report["dp"]["delta"]
        summary["dp_enabled"] = report["dp"]["enabled"]
        summary["epsilon_by_round"] = [
            (r["round"], r["epsilon_cumulative"]) for r in report["rounds"]
        ]
    if "counts" in allowed:
        summary["training_samples"] = report["data"]["training_samples"]
        summary["rounds_trained"] = rounds_trained(report)
        summary["refusals"] = len(report["refusals"])
    if "ingest" in allowed and report["data"]["ingestion"] is not None:
        summary["ingestion"] = report["data"]["ingestion"]
    return summary


def write_site_report(state_dir: Path) -> SiteReport:
    """Write the site's audit report as ``<state>/audit_report.{json,md,html}``, each atomically.

    Both modes write it here (the in-process federation at the end of the run, a deployed site
    after each round and when it stops). Returns the report.

    Raises:
        DataError: if the directory holds no ledger.
        CheckpointError: if a file cannot be written.
    """
    report = build_site_report(state_dir)
    for fmt in FORMATS:
        write_atomically(state_dir / f"{REPORT_NAME}.{fmt}", render_site(report, fmt))
    return report
