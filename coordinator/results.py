"""``results.json``: one schema for ``clinfl simulate`` and a deployed federation, one writer.

The in-process federation (:mod:`clinfl.simulation.runner`) and the deployed coordinator
(:mod:`coordinator.deploy.deployment`) both fill a :class:`RunResults` and write it with
:func:`write_results`, atomically. Every key is present in both modes; a key one mode cannot
know is ``null`` (or empty) there. The schema is documented in docs/coordinator.md, "results.json".
Adding a report field means adding it here, to
:class:`~clinfl.federation.results_schema.ResultsDocument` (a test compares the two) and to that
table; a field computed from the outcome or the configuration is filled in :func:`run_results`
for both modes at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from clinfl.config import RunConfig
from clinfl.federation.results_schema import BestRound, Mode, ResultsDocument, RoundEntry
from clinfl.files import write_json
from clinfl.weights.provenance import WeightsDocument, WeightsProvenance
from coordinator.rounds import FederationOutcome

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class SiteEntry:
    """One site as ``results.json`` lists it."""

    policy: str | None = None
    """The policy file it trained under (simulation; a deployed site keeps its policy)."""
    state_dir: str | None = None
    """Its state folder: ledger, audit report (simulation; a deployed site's is its own)."""
    joined: bool = True
    """Whether it took part (a deployed site may decline the run)."""
    refusal: str | None = None
    """Why it declined the run, if it did."""


@dataclass(frozen=True)
class RunResults:
    """Everything ``results.json`` holds (the field order is the file's key order)."""

    run_id: str
    mode: Mode
    method: str
    config: dict[str, Any]
    init_weights: WeightsDocument | None
    """The file the model's initial weights came from (name, SHA-256, source); None: random."""
    data: str | None
    """How the training data was described (None in a deployment: it stays at the sites)."""
    partition: dict[str, object] | None
    """Simulation only: the label-skew partition of the training data over the sites."""
    rounds: list[RoundEntry]
    best: BestRound | None
    stopped: str | None
    converged: str | None
    seconds: float
    sites: dict[str, SiteEntry]
    sites_joined: list[str]
    refusals: dict[str, str]
    grad_sample_mode: str | None
    """The per-sample-gradient mode the sites ran (the configured one in a deployment)."""
    reports: dict[str, str] = field(default_factory=dict)
    """Where the audit reports were written (simulation: every site's and the federation's)."""
    evaluation: dict[str, Any] | None = None
    """How the rounds were evaluated (:func:`~coordinator.federated_evaluation.evaluation_summary`):
    the method, the unevaluated rounds, and (simulation only) ``central``, the centralized
    evaluation on the whole held-out sets for comparison."""

    def to_json_dict(self) -> ResultsDocument:
        """Return the document ``results.json`` holds (its keys: these fields, in order)."""
        return cast(ResultsDocument, asdict(self))


def best_round(
    outcome: FederationOutcome,
    config: RunConfig,
    class_names: Sequence[str],
    operating: dict[str, Any] | None = None,
) -> BestRound | None:
    """Return the selected round's record with its per-class test AUC and the selection rule.

    ``operating`` describes the thresholds chosen for it and their test rates (from the pooled
    histograms of the federated evaluation; None for an unevaluated round, or in a deployment
    without secure aggregation, whose evaluating site keeps its data).
    """
    selected = outcome.selected
    if selected is None:
        return None
    aucs = selected.report.test.per_class_auc
    return {
        **selected.to_json_dict(),
        "per_class_auc": (
            dict(zip(class_names, aucs, strict=True)) if len(aucs) == len(class_names) else None
        ),
        "selection": config.federation.selection,
        "operating": operating,
    }


def run_results(
    *,
    run_id: str,
    mode: Mode,
    config: RunConfig,
    outcome: FederationOutcome,
    class_names: Sequence[str],
    seconds: float,
    sites: dict[str, SiteEntry],
    grad_sample_mode: str | None,
    init_weights: WeightsProvenance | None,
    data: str | None = None,
    partition: dict[str, object] | None = None,
    operating: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> RunResults:
    """Return the results of a run: what both modes report the same way, filled here.

    ``init_weights`` is :func:`~clinfl.weights.provenance.weights_provenance` of the run's method
    (:func:`~clinfl.weights.provenance.declared_weights_provenance` in a deployment).
    """
    return RunResults(
        run_id=run_id,
        mode=mode,
        method=config.method.name,
        config=config.to_json_dict(),
        init_weights=None if init_weights is None else init_weights.to_json_dict(),
        data=data,
        partition=partition,
        rounds=[record.to_json_dict() for record in outcome.records],
        best=best_round(outcome, config, class_names, operating),
        stopped=outcome.stopped,
        converged=outcome.converged,
        seconds=seconds,
        sites=sites,
        sites_joined=sorted(site for site, entry in sites.items() if entry.joined),
        refusals={site: e.refusal for site, e in sites.items() if e.refusal is not None},
        grad_sample_mode=grad_sample_mode,
        evaluation=evaluation,
    )


def write_results(run_dir: Path, results: RunResults) -> Path:
    """Write ``<run_dir>/results.json`` atomically and return its path.

    Raises:
        CheckpointError: if it cannot be written.
    """
    path = run_dir / RESULTS_FILE
    write_json(path, results.to_json_dict())
    return path
