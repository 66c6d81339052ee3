"""Run a whole federation in one process: data, partition, sites, coordinator, results JSON.

This module and the CLI are the only places that see both roles (``site_agent`` and
``coordinator``); the core and the roles never import each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.algorithms import ModelSpec, available_algorithms, create_algorithm
from clinfl.config import RunConfig, validate_run_config
from clinfl.data.imageset import SplitData
from clinfl.data.partition import Partition, partition_label_skew
from clinfl.errors import PartitionError
from clinfl.federation.messages import RoundRecord, RoundSettings
from clinfl.federation.roles import TrainingParticipant
from clinfl.secagg.settings import SecAggRequirements
from clinfl.simulation.datasets import load_split_data, resolve_defaults
from clinfl.simulation.dropouts import DroppingParticipant
from coordinator.aggregation import Aggregator, PlainAggregator
from coordinator.checkpoints import CheckpointStore, write_atomically
from coordinator.rounds import Coordinator, FederationOutcome
from coordinator.secure_aggregation import SecureAggregator
from site_agent.agent import SiteAgent, SiteIdentity
from site_agent.evaluation import HeldOutEvaluator
from site_agent.training import LocalSite

RESULTS_FILE = "results.json"


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


@dataclass(frozen=True)
class SimulationResult:
    """The outcome of a run and where its files are."""

    config: RunConfig
    outcome: FederationOutcome
    partition: Partition
    data: SplitData
    results_path: Path
    summary: dict[str, Any]


def _build_results(
    config: RunConfig,
    data: SplitData,
    partition: Partition,
    outcome: FederationOutcome,
    seconds: float,
) -> dict[str, Any]:
    selected = outcome.selected
    best: dict[str, Any] = selected.to_json_dict()
    best["per_class_auc"] = dict(
        zip(data.train.class_names, selected.report.test.per_class_auc, strict=True)
    )
    best["selection"] = config.federation.selection
    return {
        "method": config.method.name,
        "config": config.to_json_dict(),
        "data": data.description,
        "partition": partition.to_json_dict(data.train.class_names),
        "rounds": [record.to_json_dict() for record in outcome.records],
        "best": best,
        "seconds": seconds,
    }


def build_site_agents(
    config: RunConfig,
    trainers: Sequence[LocalSite],
    *,
    listener: SimulationListener | None = None,
) -> list[TrainingParticipant]:
    """Give each trainer a fresh Ed25519 identity and the run's secure-aggregation policy.

    Every site requires secure aggregation unless the run turned it off; injected dropouts
    wrap the sites they name.
    """
    identities = [SiteIdentity(t.site_id, Ed25519PrivateKey.generate()) for t in trainers]
    directory = {i.site_id: i.signing_key.public_key() for i in identities}
    requirements = SecAggRequirements(
        required=config.secagg.enabled,
        min_sites=config.secagg.min_sites,
        max_weight=config.secagg.weight_cap,
    )
    agents: list[TrainingParticipant] = []
    for trainer, identity in zip(trainers, identities, strict=True):

        def audit(message: str, site: str = trainer.site_id) -> None:
            if listener is not None:
                listener.site_audit(site, message)

        agent = SiteAgent(
            trainer, identity=identity, directory=directory, requirements=requirements, audit=audit
        )
        agents.append(DroppingParticipant(agent, config.drops) if config.drops else agent)
    return agents


def build_aggregator(config: RunConfig) -> Aggregator:
    """Return the secure aggregator, or the plain one when secure aggregation is off."""
    if config.secagg.enabled:
        return SecureAggregator(config.secagg)
    return PlainAggregator()


def run_simulation(
    config: RunConfig, out_dir: Path, *, listener: SimulationListener | None = None
) -> SimulationResult:
    """Run the configured federation in-process and write checkpoints and ``results.json``.

    Raises:
        ClinflError: any configuration, data, partition, federation or checkpoint error.
    """
    started = time.perf_counter()
    config = resolve_defaults(validate_run_config(config, known_methods=available_algorithms()))
    fed, data_cfg = config.federation, config.data
    assert data_cfg.image_size is not None
    data = load_split_data(config, progress=listener.images_read if listener else None)
    partition = partition_label_skew(
        data.train.targets,
        num_sites=fed.sites,
        alpha=data_cfg.alpha,
        rho=data_cfg.rho,
        seed=fed.seed,
    )
    empty = [k for k, n in enumerate(partition.samples) if n == 0]
    if empty:
        raise PartitionError(
            f"site(s) {', '.join(f'site-{k + 1}' for k in empty)} received no training samples",
            remedy="use fewer --sites, a larger --rho or a larger --alpha",
        )
    if listener is not None:
        listener.data_loaded(data, partition)
    algorithm = create_algorithm(config.method)
    spec = ModelSpec(
        num_classes=data.train.num_classes,
        image_size=data_cfg.image_size,
        federation_seed=fed.federation_seed,
        init_seed=fed.seed,
    )
    on_step = listener.site_step if listener is not None else None
    trainers = [
        LocalSite(
            f"site-{k + 1}",
            data.train.subset(indices),
            algorithm,
            spec,
            weight_decay=fed.weight_decay,
            shuffle_seed=fed.seed * 1000 + k,
            on_step=on_step,
        )
        for k, indices in enumerate(partition.site_indices)
    ]
    sites = build_site_agents(config, trainers, listener=listener)
    evaluator = HeldOutEvaluator(data.val, data.test, algorithm, spec)
    initial = algorithm.travelling_state(algorithm.build_model(spec))
    coordinator = Coordinator(
        sites,
        build_aggregator(config),
        evaluator,
        CheckpointStore(out_dir),
        selection=fed.selection,
    )

    def settings_for(round_number: int) -> RoundSettings:
        return RoundSettings(
            round=round_number, local_epochs=fed.local_epochs, batch_size=fed.batch_size, lr=fed.lr
        )

    def on_round(record: RoundRecord) -> None:
        if listener is not None:
            listener.round_finished(record, fed.rounds)

    outcome = coordinator.run(
        initial, rounds=fed.rounds, settings_for=settings_for, on_round=on_round
    )
    summary = _build_results(config, data, partition, outcome, time.perf_counter() - started)
    results_path = out_dir / RESULTS_FILE
    write_atomically(results_path, json.dumps(summary, indent=2).encode())
    return SimulationResult(config, outcome, partition, data, results_path, summary)
