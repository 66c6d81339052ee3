"""A deployed federation's run, as the coordinator's ServerApp drives it.

``clinfl coordinator start`` writes the run's plan (``<run dir>/deployment.json``: the run
configuration, the sites the PKI lists, the timeouts) and submits clinfl's ServerApp, which calls
:func:`run_deployment`. Once the sites joined, the coordinator raises its secure-aggregation
settings to the strictest terms the joined sites declared (:func:`planned_secagg`, the rule
``simulate`` uses too), or stops before round 1 if too few joined for them. The rounds are the
same :class:`~coordinator.rounds.Coordinator` as in the in-process federation; only the
participants are remote. Each round is evaluated by every site through secure aggregation
(:class:`~coordinator.federated_evaluation.SecureEvaluator`), so ``results.json``'s operating
thresholds and test rates come from the pooled histograms; only a run with secure aggregation off
falls back to one site evaluating for everyone in the clear
(:class:`~coordinator.deploy.remote_sites.RemoteEvaluator`). Each round's checkpoint and record are
written as it ends, so a coordinator started again continues after the last completed round.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from clinfl.config.file import run_config_from_mapping
from clinfl.config.secagg_bound import coordinator_secagg
from clinfl.data.label_space import resolve_label_space
from clinfl.errors import CheckpointError, ConfigError, FederationError
from clinfl.federation.fanout import ThreadedFanout
from clinfl.federation.messages import RoundRecord
from clinfl.federation.results_schema import ResultsDocument
from clinfl.files import write_json
from clinfl.privacy.settings import resolve_grad_sample_mode
from clinfl.roster import announce
from clinfl.secagg.settings import SecAggConfig
from clinfl.thresholds import parse_rule
from clinfl.transport.contract import JoinRequest
from clinfl.weights.provenance import declared_weights_provenance
from coordinator.checkpoints import CheckpointStore
from coordinator.control import RunControl
from coordinator.deploy.remote_sites import (
    FlowerLink,
    Link,
    RemoteEvaluator,
    RemoteSite,
    SiteRoster,
    Timeouts,
)
from coordinator.federated_evaluation import SecureEvaluator, evaluation_summary
from coordinator.results import SiteEntry, run_results, write_results
from coordinator.resume import begin_run, resume_point
from coordinator.rounds import Coordinator
from coordinator.secure_aggregation import build_aggregator

PLAN_FILE = "deployment.json"
log = logging.getLogger("clinfl.coordinator")


@dataclass(frozen=True)
class DeploymentPlan:
    """What the ServerApp needs: the run, the expected sites, how long to wait for them."""

    run_id: str
    run_config: dict[str, Any]
    sites: tuple[str, ...]
    timeouts: Timeouts = field(default_factory=Timeouts)
    join_wait: float = 300.0
    roster_sha256: str = ""  # the roster the sites must have pinned ("" names none)

    def save(self, run_dir: Path) -> None:
        """Write the plan to ``<run_dir>/deployment.json``.

        Raises:
            CheckpointError: if it cannot be written.
        """
        document = asdict(self)
        write_json(run_dir / PLAN_FILE, document)

    @classmethod
    def load(cls, run_dir: Path) -> DeploymentPlan:
        """Read the plan ``clinfl coordinator start`` wrote.

        Raises:
            CheckpointError: if it is missing or unreadable.
        """
        path = run_dir / PLAN_FILE
        try:
            document = json.loads(path.read_text())
            return cls(
                run_id=str(document["run_id"]),
                run_config=dict(document["run_config"]),
                sites=tuple(str(s) for s in document["sites"]),
                timeouts=Timeouts(**document["timeouts"]),
                join_wait=float(document["join_wait"]),
                roster_sha256=str(document.get("roster_sha256", "")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(
                f"{path} is missing or unreadable",
                remedy="start the federation with `clinfl coordinator start`",
            ) from None


def run_deployment(grid: Grid, run_dir: Path) -> ResultsDocument:
    """Run (or continue) the deployed federation of ``run_dir`` over Flower; return its results.

    Raises:
        CheckpointError: if the plan, a checkpoint or the control database cannot be used.
        FederationError: if no site joins, none provides the initial model, or the sites that
            joined are too few for the strictest secure-aggregation terms they declared.
        ModelError: if the configuration names an initial weights file that cannot be read.
    """
    return run_planned(FlowerLink(grid), run_dir)


def planned_secagg(config: SecAggConfig, roster: SiteRoster, *, expected: int) -> SecAggConfig:
    """The secure-aggregation settings the rounds use: ``config`` raised to the joined sites' terms.

    The same rule as the in-process federation
    (:func:`~clinfl.config.secagg_bound.coordinator_secagg`), over the terms each site declared
    in its join reply; ``expected`` is the roster's size (for the message).

    Raises:
        FederationError: if the sites that joined are too few for the strictest terms.
    """
    joined = len(roster.joined())
    try:
        return coordinator_secagg(config, roster.declared_secagg(), sites=joined)
    except ConfigError as error:
        missing = "start the missing sites (or raise --join-wait); " if joined < expected else ""
        raise FederationError(
            f"round 1 cannot start ({joined} of the roster's {expected} sites joined): "
            f"{error.message}",
            remedy=missing + error.remedy,
        ) from None


def run_planned(link: Link, run_dir: Path) -> ResultsDocument:
    """Run (or continue) the federation ``run_dir``'s plan describes, reaching sites by ``link``.

    Raises:
        See :func:`run_deployment`.
    """
    started = time.perf_counter()
    plan = DeploymentPlan.load(run_dir)
    config = run_config_from_mapping(plan.run_config, base=run_dir)
    init_weights = declared_weights_provenance(config.method)
    fed = config.federation
    run_config = dict(plan.run_config)
    if plan.roster_sha256:  # each site joins only if this is the roster it pinned
        run_config = announce(run_config, bytes.fromhex(plan.roster_sha256))
    roster = SiteRoster(
        link,
        JoinRequest(plan.run_id, run_config),
        expected=frozenset(plan.sites),
        timeout=plan.timeouts.join,
    )
    control = RunControl(run_dir)
    store = CheckpointStore(run_dir, resume=True)
    point = resume_point(store, control)
    begin_run(control, point, plan.run_id)  # a request left from before a restart is cleared
    control.set_status("waiting for sites", sites=list(plan.sites), total_rounds=fed.rounds)
    quorum = config.secagg.sum_floor if config.secagg.enabled else 1
    roster.wait_for_sites(deadline_seconds=plan.join_wait, quorum=quorum)
    control.set_status("running", sites_joined=roster.joined(), refusals=roster.refusals)
    initial = point.state if point.state is not None else roster.initial_state
    if initial is None:
        control.set_status("stopped", stopped="no site joined", refusals=roster.refusals)
        control.close()
        raise FederationError(
            "no site joined the federation, so there is no model to train: "
            + ("; ".join(f"{s}: {r}" for s, r in sorted(roster.refusals.items())) or "none came"),
            remedy="start the site agents (`clinfl site run`) and check their policies",
        )
    try:  # before round 1, as in `simulate`: every joined site's policy is met
        secagg = planned_secagg(config.secagg, roster, expected=len(plan.sites))
    except FederationError as error:
        control.set_status("failed", stopped=error.one_line(), refusals=roster.refusals)
        control.close()
        raise
    control.set_status(
        "running",
        secagg={"min_sites": secagg.sum_floor, "max_colluders": secagg.max_colluders,
                "weight_cap": secagg.weight_cap},
    )  # fmt: skip
    sites = [RemoteSite(site, roster, link, plan.timeouts) for site in plan.sites]
    classes = resolve_label_space(config.data.label_space, config.data.label_columns).classes
    # every site evaluates, through secure aggregation; without it, the first site that agrees
    # evaluates for everyone in the clear (the explicit fallback of a trusted-coordinator run)
    secure: SecureEvaluator | None = None
    fallback: RemoteEvaluator | None = None
    evaluator: SecureEvaluator | RemoteEvaluator
    if secagg.enabled:
        evaluator = secure = SecureEvaluator(
            sites,
            secagg,
            num_classes=len(classes),
            threshold_rule=parse_rule(fed.threshold_rule),
            run_id=plan.run_id,
            fanout=ThreadedFanout(),
        )
    else:
        evaluator = fallback = RemoteEvaluator(sites, len(classes))
    coordinator = Coordinator(
        sites,
        build_aggregator(secagg, fanout=ThreadedFanout(), run_id=plan.run_id),
        evaluator,
        store,
        selection=fed.selection,
        control=control,
        fanout=ThreadedFanout(),
    )

    def on_round(record: RoundRecord) -> None:
        control.set_status(
            "running",
            refusals=roster.refusals,
            sites_joined=roster.joined(),
            evaluated_by="secure aggregation" if fallback is None else fallback.evaluated_by,
        )
        log.info("round %d: %s", record.round, record.to_json_dict())

    try:
        outcome = coordinator.run_from(point, initial, fed, on_round=on_round)
    finally:
        control.close()
    joined = set(roster.joined())
    operating = None
    if secure is not None and outcome.selected is not None:
        operating = secure.describe(outcome.selected.round, classes)
    evaluation = (
        evaluation_summary(secure, method="secure-aggregation")
        if fallback is None
        else evaluation_summary(
            None,
            method="one site (secure aggregation off)",
            evaluated_by=fallback.evaluated_by,
        )
    )
    size = config.data.image_size
    mode = config.privacy.grad_sample_mode
    results = run_results(
        run_id=plan.run_id,
        mode="deployment",
        config=config,
        outcome=outcome,
        class_names=classes,
        seconds=time.perf_counter() - started,
        sites={
            site: SiteEntry(joined=site in joined, refusal=roster.refusals.get(site))
            for site in sorted(set(plan.sites) | set(roster.refusals))
        },
        grad_sample_mode=mode
        if size is None
        else resolve_grad_sample_mode(
            mode, size, augment_multiplicity=config.federation.augment_multiplicity
        ),
        init_weights=init_weights,
        operating=operating,
        evaluation=evaluation,
    )
    write_results(run_dir, results)
    return results.to_json_dict()
