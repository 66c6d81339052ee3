"""Run a whole federation in one process: data, partition, sites, coordinator, results JSON.

This module and the CLI are the only places that see both roles (``site_agent`` and
``coordinator``); the core and the roles never import each other.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from clinfl.algorithms import available_algorithms
from clinfl.audit.render import federation_html, federation_markdown
from clinfl.config import FederationConfig, RunConfig, validate_run_config
from clinfl.config.presets import resolve_defaults
from clinfl.config.seeds import RunSeeds
from clinfl.data.imageset import SplitData
from clinfl.data.partition import Partition, partition_label_skew
from clinfl.device import resolve_device
from clinfl.errors import DataError, InternalError, PartitionError
from clinfl.federation.messages import RoundRecord
from clinfl.federation.results_schema import ResultsDocument
from clinfl.files import write_atomically
from clinfl.simulation.datasets import load_split_data
from clinfl.simulation.evaluation import SimulationEvaluator
from clinfl.simulation.local_steps import DerivedLocalSteps, simulation_local_steps
from clinfl.simulation.resume import ResumePoint, resume_point, save_run_config
from clinfl.simulation.sites import SimulatedSites, build_sites, read_site_policies
from clinfl.thresholds import parse_rule
from clinfl.weights.provenance import weights_provenance
from coordinator.checkpoints import CheckpointStore
from coordinator.control import RunControl
from coordinator.federated_evaluation import SecureEvaluator, evaluation_summary
from coordinator.federation_report import build_federation_report
from coordinator.results import RESULTS_FILE, SiteEntry, run_results, write_results
from coordinator.resume import begin_run, new_run_id
from coordinator.rounds import Coordinator, FederationOutcome
from coordinator.secure_aggregation import build_aggregator
from site_agent.audit_report import ingest_summary_path, shareable_summary, write_site_report
from site_agent.selected_model import describe_selected_model

__all__ = [
    "RESULTS_FILE",
    "PreparedData",
    "SimulationListener",
    "SimulationResult",
    "run_simulation",
]


class SimulationListener(Protocol):
    """Receives progress events (the CLI draws progress bars from them)."""

    def images_read(self, done: int, total: int) -> None:
        """``done`` of ``total`` images have been decoded (ChestX-ray14 loading)."""

    def data_loaded(self, data: SplitData, partition: Partition) -> None:
        """The data is loaded and partitioned."""

    def site_step(self, site_id: str, step: int, total: int) -> None:
        """A site finished a local optimisation step."""

    def round_finished(self, record: RoundRecord, total_rounds: int) -> None:
        """A round was aggregated (or abandoned), evaluated and checkpointed."""

    def site_audit(self, site_id: str, message: str) -> None:
        """A site refused a secure-aggregation request and wrote why to its audit log."""

    def local_steps_derived(self, derived: DerivedLocalSteps, federation: FederationConfig) -> None:
        """The simulation derived ``federation.local_steps`` for ``federation`` (simulation only).

        See :mod:`clinfl.simulation.local_steps`.
        """


@dataclass(frozen=True)
class SimulationResult:
    """The outcome of a run and where its files are."""

    config: RunConfig
    outcome: FederationOutcome
    partition: Partition
    data: SplitData
    results_path: Path
    summary: ResultsDocument
    sites: SimulatedSites
    test_scores: np.ndarray | None = None  # the selected model's test scores (prepared data)


@dataclass(frozen=True)
class PreparedData:
    """Data and site partition given by the caller (a cross-validation fold) instead of loaded.

    ``partition.site_indices`` index ``data.train``.
    """

    data: SplitData
    partition: Partition


def _check_evaluable(data: SplitData) -> None:
    """Refuse held-out sets on which no metric is defined (no class with both outcomes).

    Raises:
        DataError: naming the split.
    """
    for name, part in (("validation", data.val), ("test", data.test)):
        truth = part.targets.astype(bool)
        if len(part) == 0 or not (truth.any(axis=0) & (~truth).any(axis=0)).any():
            raise DataError(
                f"the {name} split ({len(part)} images) has no finding with both positive and "
                "negative images, so no AUC can be computed",
                remedy="use more data (a larger export, --max-samples, or more composites)",
            )


def write_audit_reports(
    out_dir: Path, sites: SimulatedSites, summary: ResultsDocument
) -> dict[str, str]:
    """Write each site's audit report (JSON, Markdown, HTML) and the federation report.

    Site reports go to ``<site state dir>/audit_report.*``; the federation report, built only
    from what each site's policy lets it share, to ``<out>/federation_report.*``.

    Raises:
        CheckpointError: if a report cannot be written.
    """
    written: dict[str, str] = {}
    shared = []
    for site, state_dir in sites.state_dirs.items():
        report = write_site_report(state_dir)
        written[site] = str(state_dir / "audit_report.html")
        shared.append(shareable_summary(report))
    federation = build_federation_report(
        run_id=summary.get("run_id", ""),
        rounds=summary["rounds"],
        stopped=summary.get("stopped"),
        site_summaries=shared,
    )
    renderings = {
        "json": json.dumps(federation, indent=2),
        "md": federation_markdown(federation),
        "html": federation_html(federation),
    }
    for fmt, text in renderings.items():
        write_atomically(out_dir / f"federation_report.{fmt}", text)
    written["federation"] = str(out_dir / "federation_report.html")
    return written


def run_simulation(
    config: RunConfig,
    out_dir: Path,
    *,
    listener: SimulationListener | None = None,
    resume: bool = False,
    prepared: PreparedData | None = None,
) -> SimulationResult:
    """Run the configured federation in-process and write checkpoints and ``results.json``.

    With ``resume``, continue the run in ``out_dir`` after its last checkpointed round (see
    :mod:`clinfl.simulation.resume`); ``config`` must be the one it saved.

    When a site's policy keeps sample counts at the site and ``config`` sets no
    ``federation.local_steps``, the simulation derives one (simulation only:
    :func:`~clinfl.simulation.local_steps.simulation_local_steps`), tells the listener, and runs
    and records the run with it.

    With ``prepared``, the run trains on that data and partition instead of loading and
    partitioning the configured data set (``config.data``'s loading fields are then unused), and
    the result carries the selected model's scores on ``prepared.data.test``.

    Raises:
        ClinflError: any configuration, data, partition, federation or checkpoint error.
    """
    started = time.perf_counter()
    config = resolve_defaults(validate_run_config(config, known_methods=available_algorithms()))
    fed, data_cfg = config.federation, config.data
    if data_cfg.image_size is None:
        raise InternalError("data.image_size is not resolved (resolve_defaults sets it)")
    resolve_device(fed.device)  # refuse a missing device before any data is read
    init_weights = weights_provenance(config.method)  # the file training starts from, if any
    if prepared is None:
        data = load_split_data(
            config,
            progress=listener.images_read if listener else None,
            state_dir=out_dir / "ingest",
        )
    else:
        data = prepared.data
    _check_evaluable(data)
    if prepared is None:
        partition = partition_label_skew(
            data.train.targets,
            num_sites=fed.sites,
            alpha=data_cfg.alpha,
            rho=data_cfg.rho,
            seed=RunSeeds.of(fed).split,
        )
    else:
        partition = prepared.partition
    empty = [k for k, n in enumerate(partition.samples) if n == 0]
    if empty:
        raise PartitionError(
            f"site(s) {', '.join(f'site-{k + 1}' for k in empty)} received no training samples",
            remedy="use fewer --sites, a larger --rho or a larger --alpha",
        )
    if listener is not None:
        listener.data_loaded(data, partition)
    site_ids = [f"site-{k + 1}" for k in range(fed.sites)]
    policies = read_site_policies(config, site_ids)
    derived = simulation_local_steps(fed, partition.samples.tolist(), policies)
    if derived is not None:  # simulation only: a deployed coordinator must set it itself
        config = replace(config, federation=replace(fed, local_steps=derived.steps))
        if listener is not None:
            listener.local_steps_derived(derived, fed)
        fed = config.federation
    control = RunControl(out_dir)
    try:
        store = CheckpointStore(out_dir, resume=resume)
        point = resume_point(store, control) if resume else ResumePoint(1, None, ())
        # a resumed run is the same run: it keeps its ID, as a restarted deployment does
        run_id = (control.run_id() if resume else None) or new_run_id(config.method.name)
        sites = build_sites(
            config,
            data,
            partition.site_indices,
            out_dir=out_dir,
            run_id=run_id,
            on_step=listener.site_step if listener is not None else None,
            on_audit=listener.site_audit if listener is not None else None,
        )
        ingest_summary = ingest_summary_path(out_dir)
        if ingest_summary.is_file():  # the simulated sites share one export: each reports it
            for state_dir in sites.state_dirs.values():
                ingest_summary_path(state_dir).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ingest_summary, ingest_summary_path(state_dir))
        # as in a deployment: the sites evaluate through secure aggregation (each its slice of
        # the held-out sets); the central evaluation on the whole sets is a simulation-only
        # extra (and the evaluator of a federation without secure aggregation)
        central = sites.central_evaluator(data)
        secure = None
        if sites.secagg.enabled:
            secure = SecureEvaluator(
                sites.participants,
                sites.secagg,
                num_classes=len(data.train.class_names),
                threshold_rule=parse_rule(fed.threshold_rule),
                run_id=run_id,
            )
        evaluator = central if secure is None else SimulationEvaluator(secure, central)
        # as in a deployment: the first site gives the initial model
        initial = point.state if point.state is not None else sites.first.initial_state()
        if not resume:
            save_run_config(out_dir, config)
        begin_run(control, point, run_id)
        coordinator = Coordinator(
            sites.participants,
            build_aggregator(sites.secagg, run_id=run_id),
            evaluator,
            store,
            selection=fed.selection,
            control=control,
        )

        def on_round(record: RoundRecord) -> None:
            if listener is not None:
                listener.round_finished(record, fed.rounds)

        outcome = coordinator.run_from(point, initial, fed, on_round=on_round)
    finally:
        control.close()
    seconds = time.perf_counter() - started
    operating, central_selected, test_scores = None, None, None
    if outcome.selected is not None:  # thresholds on validation, then test CIs and rates
        selected_state = store.load(outcome.selected.round)
        central_selected = describe_selected_model(
            central, selected_state, data.train.class_names, seed=RunSeeds.of(fed).bootstrap
        )
        operating = (
            central_selected
            if secure is None
            else secure.describe(outcome.selected.round, data.train.class_names)
        )
        if prepared is not None:
            test_scores = central.probabilities(selected_state, "test")
    if isinstance(evaluator, SimulationEvaluator):
        evaluation = evaluation_summary(
            secure, method="secure-aggregation", central=evaluator.central_block(central_selected)
        )
    else:
        evaluation = evaluation_summary(
            None,
            method="central (secure aggregation off; simulation only)",
            central={"note": "the rounds above are the central evaluation", "selected": None},
        )
    results = run_results(
        run_id=run_id,
        mode="simulation",
        config=config,
        outcome=outcome,
        class_names=data.train.class_names,
        seconds=seconds,
        sites={
            site: SiteEntry(policy=sites.policies[site].source, state_dir=str(path))
            for site, path in sites.state_dirs.items()
        },
        grad_sample_mode=sites.grad_sample_mode,
        init_weights=init_weights,
        data=data.description,
        partition=partition.to_json_dict(data.train.class_names),
        operating=operating,
        evaluation=evaluation,
    )
    results = replace(results, reports=write_audit_reports(out_dir, sites, results.to_json_dict()))
    results_path = write_results(out_dir, results)
    summary = results.to_json_dict()
    return SimulationResult(
        config, outcome, partition, data, results_path, summary, sites, test_scores
    )
