"""Setting up one site: from its policy and its data to a ready site (ledger, trainer, agent).

This is the only code that turns a site's policy into what the site runs with, for both the
in-process federation (:mod:`clinfl.simulation.sites`) and a deployed site
(:mod:`site_agent.deploy.deployed_site`), both through :func:`site_agent.join.join_run`:

- :func:`ingest_options`: the policy's modality, body-part and view filters as ingest options
  (``clinfl simulate --dataset dicom``, ``site ingest``, ``site run``, ``model predict``);
- :func:`policy_for_run`: the policy tightened by what a run asks (never loosened);
- :class:`SiteData` and :func:`load_export`: a deployed site's export, ingested and split, at
  the run's image size (one :class:`~site_agent.join.SiteSource`);
- :func:`setup_site`: the site's ledger (its policy recorded), its trainer (DP-SGD when the
  policy requires it) and its agent (the policy's secure-aggregation requirements, minimum
  samples, reporting and training bounds).

Both modes reach them through :func:`site_agent.join.join_run`, so a deployed site ingests,
trains, accounts and refuses exactly as a simulated one. A new site-side setting is a policy
field (:mod:`clinfl.config.policy`) applied here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.config import DataConfig, FederationConfig, RunConfig
from clinfl.config.policy import DataPolicy, PrivacyRequest, SitePolicy, apply_request
from clinfl.config.seeds import RunSeeds
from clinfl.data.imageset import ImageSet, SplitData
from clinfl.data.label_space import LabelSpace
from clinfl.device import resolve_device
from clinfl.errors import ConfigError
from clinfl.federation.messages import RoundSettings
from clinfl.privacy.settings import DPSettings, resolve_grad_sample_mode
from clinfl.training_bounds import check_round_settings, check_training_mode
from site_agent.agent import SiteAgent, SiteIdentity, state_layout
from site_agent.ingest.pipeline import SITE_INGEST_DIR, IngestOptions
from site_agent.ingest.split import ingest_and_split
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer
from site_agent.training import (
    SiteTrainer,
    StepCallback,
    plain_trainer,
    simulation_random_bytes,
)

AuditListener = Callable[[str, str], None]


def ingest_options(options: IngestOptions, policies: Sequence[DataPolicy]) -> IngestOptions:
    """Return ``options`` filtered by what every one of ``policies`` accepts (their intersection).

    One policy gives its own modality, body-part and view filters; several (the sites of an
    in-process federation sharing one export) give what all of them accept. No policy leaves
    ``options`` as they are (their defaults are the default policy's).
    """
    if not policies:
        return options

    def common(name: str) -> tuple[str, ...]:
        first: tuple[str, ...] = getattr(policies[0], name)
        return tuple(v for v in first if all(v in getattr(p, name) for p in policies[1:]))

    return replace(
        options,
        modalities=common("modalities"),
        body_parts=common("body_parts"),
        views=common("views"),
    )


def policy_for_run(policy: SitePolicy, config: RunConfig) -> SitePolicy:
    """Return ``policy`` tightened by what the run asks (secure aggregation, its minimum sites).

    A policy that keeps sample counts at the site also declines a run that sets no
    ``federation.local_steps``: by epochs the site's work per round would follow its size
    (:func:`~clinfl.training_bounds.check_training_mode`).

    Raises:
        PolicyViolation: if the run asks for less protection than the policy demands.
    """
    asked = PrivacyRequest(secagg=config.secagg.enabled, min_sites=config.secagg.min_sites)
    tightened = apply_request(policy, asked)
    check_training_mode(tightened, config.federation.local_steps)
    return tightened


@dataclass(frozen=True)
class SiteData:
    """Where a deployed site's export is and how to read it (the run sets the image size)."""

    export: Path
    labels: Path | None
    options: IngestOptions

    @property
    def label_space(self) -> str:
        """The label space the site's labels are in."""
        return self.options.label_space

    @property
    def space(self) -> LabelSpace:
        """The label space with its classes (``custom``: the site's label columns)."""
        return self.options.space

    @property
    def image_size(self) -> int:
        """The size the site reads its images at when the run leaves it to the site."""
        return self.options.image_size

    def localise(self, data: DataConfig) -> DataConfig:
        """Return the run's data settings as this site reads them: its own DICOM export."""
        return replace(data, dataset="dicom", images=self.export)

    def split(self, run: RunConfig, *, image_size: int, state_dir: Path) -> SplitData:
        """Ingest the export at ``image_size`` and split it with the run's split seed.

        Raises:
            DataError, LabelError: see :func:`load_export`.
        """
        options = replace(self.options, uncertain_labels=run.data.uncertain_labels)
        return load_export(
            replace(self, options=options),
            state_dir=state_dir,
            image_size=image_size,
            val_fraction=run.data.val_fraction,
            seed=RunSeeds.of(run.federation).split,
        )


def load_export(
    data: SiteData, *, state_dir: Path, image_size: int, val_fraction: float, seed: int
) -> SplitData:
    """Ingest a deployed site's export into ``<state>/ingest/`` and split it by study.

    Raises:
        DataError, LabelError: see :func:`~site_agent.ingest.split.ingest_and_split`.
    """
    return ingest_and_split(
        data.export,
        state_dir=state_dir / SITE_INGEST_DIR,
        options=replace(data.options, image_size=image_size),
        labels=data.labels,
        val_fraction=val_fraction,
        seed=seed,
    )


@dataclass(frozen=True)
class ReadySite:
    """A site's agent with the trainer and ledger behind it."""

    agent: SiteAgent
    trainer: SiteTrainer
    ledger: SiteLedger


def record_policy(ledger: SiteLedger, site: str, policy: SitePolicy, samples: int) -> None:
    """Write the site's name, policy and sample count to its ledger (for the audit report)."""
    ledger.set_meta("site_id", site)
    ledger.set_meta("policy", json.dumps(asdict(policy)))
    ledger.set_meta("samples", str(samples))
    if policy.dp.required and policy.dp.delta >= 1 / max(samples, 1):
        ledger.set_meta(
            "warning:delta",
            f"delta {policy.dp.delta:g} is not below 1/n = 1/{samples}: the guarantee is weak",
        )


def setup_site(
    identity: SiteIdentity,
    data: ImageSet,
    policy: SitePolicy,
    algorithm: Algorithm,
    spec: ModelSpec,
    *,
    federation: FederationConfig,
    directory: Mapping[str, Ed25519PublicKey],
    state_dir: Path,
    run_id: str,
    config_hash: bytes,
    grad_sample_mode: str,
    simulation_seed: int | None = None,
    roster_hash: bytes | None = None,
    on_step: StepCallback | None = None,
    on_audit: AuditListener | None = None,
) -> ReadySite:
    """Build one site's ledger, trainer and agent under ``state_dir``.

    ``grad_sample_mode`` is the run's (``auto``: the fastest measured at the image size).
    Every training call draws fresh randomness from the operating system's cryptographic source
    (R10). ``simulation_seed`` is for the in-process simulation only: it makes the site's
    shuffling and sampling, and the stochastic rounding of its secure-aggregation update, a
    reproducible, non-cryptographic stream from that seed, so benchmark runs repeat. A deployed
    site never passes it.
    ``roster_hash`` is the digest of the roster the site pinned (a deployed site); the agent
    binds it into every advertisement it signs. Without it the agent uses the directory's hash.
    ``config_hash`` is the digest of the run configuration the site trains by
    (:func:`~clinfl.config.digest.run_config_digest`), bound the same way; the agent refuses any
    round whose settings are not ``federation``'s, and any global state whose entries are not
    the ones ``algorithm`` produces (R1').

    Raises:
        ClinflError: for a model that cannot run DP-SGD, an algorithm the policy's DP excludes,
            a device this machine lacks or DP-SGD asked of an accelerator, a site without
            samples, or an unwritable state directory.
    """
    site = identity.site_id
    device = resolve_device(federation.device)
    if policy.dp.required and device.type != "cpu":
        raise ConfigError(
            f"{site}'s policy requires DP-SGD, which clinfl runs on the CPU only (device {device})",
            remedy="use --device cpu for federations with DP-SGD",
        )
    ledger = SiteLedger(state_dir)
    record_policy(ledger, site, policy, len(data))
    random_bytes = os.urandom
    rounding = None  # the agent's secure-aggregation rounding: fresh randomness by default
    if simulation_seed is not None:  # the in-process simulation only (reproducible runs)
        random_bytes = simulation_random_bytes(simulation_seed)
        rounding = np.random.default_rng(simulation_seed)
    if policy.dp.required:
        mode = resolve_grad_sample_mode(
            grad_sample_mode,
            spec.image_size,
            augment_multiplicity=federation.augment_multiplicity,
        )
        trainer = private_trainer(
            site,
            data,
            algorithm,
            spec,
            dp=DPSettings.from_policy(policy.dp, grad_sample_mode=mode),
            ledger=ledger,
            run_id=run_id,
            batch_size=federation.batch_size,
            local_epochs=federation.local_epochs,
            weight_decay=federation.weight_decay,
            local_steps=federation.local_steps,
            random_bytes=random_bytes,
            on_step=on_step,
            augment_multiplicity=federation.augment_multiplicity,
            ema_decay=federation.ema_decay,
        )
    else:
        trainer = plain_trainer(
            site,
            data,
            algorithm,
            spec,
            weight_decay=federation.weight_decay,
            random_bytes=random_bytes,
            on_step=on_step,
            device=device,
            augment_multiplicity=federation.augment_multiplicity,
            ema_decay=federation.ema_decay,
        )

    def audit(round_id: int, message: str) -> None:
        ledger.record_refusal(run_id=run_id, round_number=round_id, reason=message)
        if on_audit is not None:
            on_audit(site, message)

    agent = SiteAgent(
        trainer,
        identity=identity,
        directory=directory,
        roster_hash=roster_hash,
        requirements=policy.secagg_requirements,
        config_hash=config_hash,
        expected_settings=partial(RoundSettings.for_round, federation),
        layout=state_layout(algorithm.initial_state(trainer.model)),
        run_id=run_id,
        round_store=ledger,
        audit=audit,
        min_samples=policy.data.min_samples,
        report_loss="loss" in policy.reporting.metrics,
        report_counts="counts" in policy.reporting.metrics,
        check_settings=partial(check_round_settings, bounds=policy.training, site_id=site),
        share_epsilon="epsilon" in policy.reporting.metrics,
        rng=rounding,
    )
    return ReadySite(agent, trainer, ledger)
