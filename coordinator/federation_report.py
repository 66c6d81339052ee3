"""The coordinator's federation report: round metrics plus what each site chose to report.

Sites share only what their policy's ``reporting.metrics`` allows; the coordinator never reads a
site's ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

from clinfl.audit.schema import FederationReport, SiteSummary
from clinfl.federation.results_schema import RoundEntry


def build_federation_report(
    *,
    run_id: str,
    rounds: Sequence[RoundEntry],
    stopped: str | None,
    site_summaries: Sequence[SiteSummary],
) -> FederationReport:
    """Return the federation report as JSON types."""
    return {
        "report_version": 1,
        "run_id": run_id,
        "stopped": stopped,
        "rounds": [
            {
                "round": r["round"],
                "sites": r["sites"],
                "macro_auc": r["macro_auc"],
                "val_macro_auc": r["val_macro_auc"],
                "aborted": r["aborted"],
            }
            for r in rounds
        ],
        "sites": list(site_summaries),
    }
