"""How a site joins a run, in both modes: :func:`join_run`, the one place a run becomes a site.

A deployed site (:class:`~site_agent.deploy.deployed_site.DeployedSite`, after its transport
checks) and every site of the in-process simulation (:func:`clinfl.simulation.sites.build_sites`)
call :func:`join_run` with the same portable run configuration a coordinator sends
(:func:`~clinfl.config.site_fields.portable_run_config`: no path, no dropout). They differ only
in the data the site reads (a :class:`SiteSource`) and in what :class:`SimulationOnly` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Protocol

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clinfl.algorithms import Algorithm, ModelSpec, create_algorithm
from clinfl.config import DataConfig, RunConfig
from clinfl.config.digest import run_config_digest
from clinfl.config.policy import SitePolicy
from clinfl.config.seeds import RunSeeds
from clinfl.data.imageset import ImageSet, SplitData
from clinfl.data.label_space import LabelSpace, resolve_label_space, space_difference
from clinfl.device import resolve_device
from clinfl.errors import ConfigError, PolicyViolation
from clinfl.federation.messages import RoundSettings
from clinfl.roster import Roster
from clinfl.thresholds import parse_rule
from clinfl.training_bounds import check_round_settings
from clinfl.typing import StateDict
from site_agent.agent import SiteAgent, SiteIdentity
from site_agent.evaluation import HeldOutEvaluator
from site_agent.federated_scoring import SiteScorer
from site_agent.ledger import SiteLedger
from site_agent.setup import AuditListener, policy_for_run, setup_site
from site_agent.training import SiteTrainer, StepCallback


class SiteSource(Protocol):
    """Where a joining site's data comes from: a deployed export, or a simulation's slice."""

    @property
    def space(self) -> LabelSpace:
        """The label space the site's labels are in."""
        ...

    @property
    def image_size(self) -> int:
        """The image size the site reads at when the run leaves it to the site."""
        ...

    def localise(self, data: DataConfig) -> DataConfig:
        """Return the run's data settings with what this site sets itself filled in."""
        ...

    def split(self, run: RunConfig, *, image_size: int, state_dir: Path) -> SplitData:
        """Return the site's training data and its held-out validation and test sets.

        Raises:
            DataError, LabelError: if the site's data cannot be read or labelled.
        """
        ...


@dataclass(frozen=True)
class SimulatedSlice:
    """A simulated site's data: its slice of the partition and the simulation's held-out sets."""

    train: ImageSet
    held_out: SplitData  # its validation and test sets: the site's slice of the simulation's
    space: LabelSpace

    @property
    def image_size(self) -> int:
        """The size the simulation read its images at."""
        return int(self.train.images.shape[-1])

    def localise(self, data: DataConfig) -> DataConfig:
        """The simulation's data set is the one the run names: nothing to fill in."""
        return data

    def split(self, run: RunConfig, *, image_size: int, state_dir: Path) -> SplitData:
        """Return the slice with the held-out sets (already split with the run's split seed)."""
        return SplitData(
            self.train,
            self.held_out.val,
            self.held_out.test,
            f"{self.held_out.description}; this site's slice: {len(self.train)} images",
        )


@dataclass(frozen=True)
class SimulationOnly:
    """What only an in-process site is given; ``clinfl site run`` never passes any of it.

    - ``stream_seed``: the site's shuffling, sampling and secure-aggregation rounding become a
      reproducible, NOT cryptographic stream from this seed
      (:meth:`~clinfl.config.seeds.RunSeeds.stream`), so benchmark runs repeat; a deployed
      site draws from the operating system's randomness (R10).
    - ``directory``: the in-process sites' public keys, for a federation without a roster (its
      identities are made in-process); a deployed site uses the roster it pinned.
    - ``init_weights``: the weights file the run names (a sent configuration names no path).
    - ``on_step``, ``on_audit``: progress listeners (the CLI's progress bars).
    """

    stream_seed: int | None = None
    directory: Mapping[str, Ed25519PublicKey] | None = None
    init_weights: Path | None = None
    on_step: StepCallback | None = None
    on_audit: AuditListener | None = None


@dataclass(frozen=True)
class JoinedSite:
    """A site that joined a run: its agent, the trainer and ledger behind it, its evaluator."""

    agent: SiteAgent
    trainer: SiteTrainer
    ledger: SiteLedger
    policy: SitePolicy  # the site's policy, tightened by the run
    run: RunConfig  # the run configuration the site trains by (local fields filled in)
    algorithm: Algorithm
    spec: ModelSpec
    data: SplitData

    @property
    def evaluator_device(self) -> torch.device:
        """The device the site evaluates on (the run's)."""
        return resolve_device(self.run.federation.device)

    @cached_property
    def evaluator(self) -> HeldOutEvaluator:
        """The site's evaluator on its held-out sets, at the run's threshold rule (built once)."""
        return HeldOutEvaluator(
            self.data.val,
            self.data.test,
            self.algorithm,
            self.spec,
            device=self.evaluator_device,
            threshold_rule=parse_rule(self.run.federation.threshold_rule),
        )

    def initial_state(self) -> StateDict:
        """The run's initial global state as this site builds it (the same at every site)."""
        return self.algorithm.initial_state(self.algorithm.build_model(self.spec))


def run_label_space(run: RunConfig) -> LabelSpace:
    """The label space ``run`` trains on (the bundled digits data set: always its ten digits)."""
    if run.data.dataset == "digits":
        return resolve_label_space("digits")
    return resolve_label_space(run.data.label_space, run.data.label_columns)


def join_run(
    identity: SiteIdentity,
    policy: SitePolicy,
    source: SiteSource,
    run: RunConfig,
    *,
    roster: Roster | None,
    state_dir: Path,
    run_id: str,
    simulation: SimulationOnly | None = None,
) -> JoinedSite:
    """Join ``identity`` to the run ``run`` under ``policy``, reading its data from ``source``.

    The steps, in order: the site's label space must be the run's; the policy is tightened by
    what the run asks (:func:`~site_agent.setup.policy_for_run`) and the run's round settings
    must be within its ``[training]`` bounds; the data is read at the run's image size (or the
    source's); then the algorithm, the model's spec, the configuration's digest, the site's
    ledger, trainer and agent (:func:`~site_agent.setup.setup_site`), and its evaluator at the
    run's threshold rule. A site whose policy's ``reporting.metrics`` lists ``auc`` joins each
    round's federated evaluation with that evaluator's held-out sets
    (:class:`~site_agent.federated_scoring.SiteScorer`, noisy with
    ``reporting.evaluation_epsilon``); any other site refuses to score.

    Seeds (:class:`~clinfl.config.seeds.RunSeeds`, one derivation for both modes): the split is
    ``federation.seed`` (a deployed export's split here; the simulation's data set and partition
    in :mod:`clinfl.simulation`); the initial weights ``federation.seed``; the fixed classifier
    ``federation.federation_seed``; the site's training stream (shuffling, sampling, and the
    stochastic rounding of its secure-aggregation update) the operating system's randomness,
    or, in-process only, ``simulation.stream_seed`` (``federation.seed * 1000 + site index``);
    the selected model's bootstrap intervals ``federation.seed`` (where the test data is).

    ``roster`` is the roster the site pinned (its members' keys and digest are bound into every
    advertisement); an in-process federation has none and passes ``simulation.directory``.

    Raises:
        PolicyViolation: if the site's labels are in another space than the run's, or the run
            asks for less protection than the policy demands or settings outside its bounds
            (the message starts with the site's name).
        ConfigError: if neither or both of ``roster`` and ``simulation.directory`` are given.
        ClinflError: what reading the data or :func:`~site_agent.setup.setup_site` raises.
    """
    site = identity.site_id
    extra = simulation or SimulationOnly()
    if (roster is None) == (extra.directory is None):
        raise ConfigError(
            f"{site} joins with {'both' if roster else 'neither'} a roster and an in-process "
            "directory",
            remedy="a deployed site passes the roster it pinned; an in-process site the directory",
        )
    space = run_label_space(run)
    difference = space_difference(space, source.space)
    if difference is not None:
        raise PolicyViolation(
            f"{site} labels its images in the {source.space.name!r} space; the run trains on "
            f"{run.data.label_space!r}: {difference}",
            remedy="start the site with the run's --label-space (and --label-column)",
        )
    try:
        tightened = policy_for_run(policy, run)
        # the trainer's batch size (and so DP's sampling rate) comes from the run's settings
        first = RoundSettings.for_round(run.federation, 1)
        check_round_settings(first, bounds=tightened.training, site_id=site)
    except PolicyViolation as refusal:
        raise PolicyViolation(
            f"{site} declines the run: {refusal.message}", remedy=refusal.remedy
        ) from None
    if extra.init_weights is not None:
        run = replace(run, method=replace(run.method, init_weights=extra.init_weights))
    size = run.data.image_size or source.image_size
    seeds = RunSeeds.of(run.federation)
    data = source.split(run, image_size=size, state_dir=state_dir)
    algorithm = create_algorithm(run.method)
    spec = ModelSpec(
        num_classes=len(space.classes),
        image_size=size,
        federation_seed=seeds.etf,
        init_seed=seeds.init,
    )
    ready = setup_site(
        identity,
        data.train,
        tightened,
        algorithm,
        spec,
        federation=run.federation,
        directory=roster.directory if roster is not None else dict(extra.directory or {}),
        roster_hash=roster.digest if roster is not None else None,
        state_dir=state_dir,
        run_id=run_id,
        config_hash=run_config_digest(run, image_size=size),
        grad_sample_mode=run.privacy.grad_sample_mode,
        simulation_seed=extra.stream_seed,
        on_step=extra.on_step,
        on_audit=extra.on_audit,
    )
    joined = JoinedSite(
        ready.agent, ready.trainer, ready.ledger, tightened, run, algorithm, spec, data
    )
    if "auc" in tightened.reporting.metrics:  # the site joins the federated evaluation
        scorer = SiteScorer(
            lambda: joined.evaluator,
            len(space.classes),
            epsilon=tightened.reporting.evaluation_epsilon,
        )
        ready.agent.enable_evaluation(scorer, ready.ledger)
    return joined
