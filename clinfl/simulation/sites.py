"""Building the simulated sites: each joins the run as a deployed site does.

Each site gets its policy (one file for all, one per site, or the built-in research terms), a
fresh Ed25519 identity for secure aggregation, and joins with
:func:`~site_agent.join.join_run` from the portable run configuration a coordinator sends: its
policy tightened by what the run asks, a state directory ``<out>/sites/<site>/`` with its
privacy ledger, a DP-SGD trainer when its policy requires DP, its agent and its evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.config import DEFAULT_MIN_SITES, RunConfig, SecAggConfig
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import DPPolicy, ReportingPolicy, SecAggPolicy, SitePolicy
from clinfl.config.policy import load_policy as read_policy
from clinfl.config.secagg_bound import coordinator_secagg
from clinfl.config.seeds import RunSeeds
from clinfl.config.site_fields import portable_run_config
from clinfl.data.imageset import SplitData
from clinfl.data.label_space import LabelSpace
from clinfl.errors import InternalError
from clinfl.privacy.settings import resolve_grad_sample_mode
from clinfl.simulation.dropouts import DroppingParticipant
from clinfl.thresholds import parse_rule
from clinfl.transport.contract import TrainingParticipant
from site_agent.agent import SiteIdentity
from site_agent.evaluation import HeldOutEvaluator
from site_agent.join import JoinedSite, SimulatedSlice, SimulationOnly, join_run, run_label_space
from site_agent.setup import AuditListener
from site_agent.training import SiteTrainer, StepCallback

SITES_DIR = "sites"


@dataclass(frozen=True)
class SimulatedSites:
    """The participants and what the reports need to know about each site."""

    participants: list[TrainingParticipant]
    policies: dict[str, SitePolicy]
    state_dirs: dict[str, Path]
    trainers: dict[str, SiteTrainer]
    secagg: SecAggConfig
    grad_sample_mode: str
    joined: dict[str, JoinedSite]

    @property
    def first(self) -> JoinedSite:
        """The site that gives the initial model (in a deployment: the first that joins)."""
        return next(iter(self.joined.values()))

    def central_evaluator(self, data: SplitData) -> HeldOutEvaluator:
        """An evaluator on the simulation's whole held-out sets (simulation only).

        The simulation-only comparison with the federated evaluation (``results.json``'s
        ``evaluation.central``), and the evaluator of a federation without secure
        aggregation; the model and threshold rule are the first site's (every site's).
        """
        first = self.first
        return HeldOutEvaluator(
            data.val,
            data.test,
            first.algorithm,
            first.spec,
            device=first.evaluator_device,
            threshold_rule=parse_rule(first.run.federation.threshold_rule),
        )


def held_out_slices(data: SplitData, sites: int, *, seed: int) -> list[SplitData]:
    """Split the held-out validation and test sets over ``sites`` sites, by patient.

    Each site gets a disjoint slice of each set, and the slices cover it: every group (the
    patient, or source image, :attr:`~clinfl.data.imageset.ImageSet.groups`) goes whole to one
    site, the groups dealt round-robin in a ``seed``-shuffled order. The federation's pooled
    histograms are then those of the whole held-out sets, as a centralized evaluation sees them.
    """
    rng = np.random.default_rng(seed)

    def deal(groups: np.ndarray) -> list[np.ndarray]:
        unique = rng.permutation(np.unique(groups))
        owner = {int(g): k % sites for k, g in enumerate(unique)}
        which = np.array([owner[int(g)] for g in groups], dtype=np.int64)
        return [np.flatnonzero(which == k) for k in range(sites)]

    val_parts, test_parts = deal(data.val.groups), deal(data.test.groups)
    return [
        replace(
            data,
            val=data.val.subset(val_parts[k]),
            test=data.test.subset(test_parts[k]),
            description=f"{data.description}; site-{k + 1}'s held-out slice: "
            f"{len(val_parts[k])} validation and {len(test_parts[k])} test images",
        )
        for k in range(sites)
    ]


def builtin_policy(config: RunConfig) -> SitePolicy:
    """The terms of a site without a policy file: no DP, secure aggregation as configured.

    Like ``policies/research.toml``, it lets the training loss, AUC, sample count and epsilon
    leave the site (a policy file lists none unless it says so).
    """
    return SitePolicy(
        dp=DPPolicy(required=False),
        secagg=SecAggPolicy(
            required=config.secagg.enabled,
            min_sites=config.secagg.min_sites or DEFAULT_MIN_SITES,
            max_weight=config.secagg.weight_cap,
            max_colluders=config.secagg.max_colluders,
        ),
        reporting=ReportingPolicy(metrics=("loss", "auc", "counts", "epsilon")),
        source="built-in (no policy file: DP-SGD off)",
    )


def read_site_policies(config: RunConfig, site_ids: Sequence[str]) -> dict[str, SitePolicy]:
    """Read each site's policy as written (one file, one per site, or the built-in terms).

    Raises:
        ConfigError, ValidationError: for an unreadable or invalid policy file.
    """
    privacy = config.privacy
    policies: dict[str, SitePolicy] = {}
    shared = read_policy(privacy.policy) if privacy.policy is not None else None
    for site in site_ids:
        if privacy.policy_dir is not None:
            policies[site] = read_policy(privacy.policy_dir / f"{site}.toml")
        else:
            policies[site] = shared or builtin_policy(config)
    return policies


def simulated_space(config: RunConfig, data: SplitData) -> LabelSpace:
    """The label space the simulation's data is in: the run's name, the loaded data's classes."""
    return LabelSpace(run_label_space(config).name, data.train.class_names)


def build_sites(
    config: RunConfig,
    data: SplitData,
    site_indices: Sequence[np.ndarray],
    *,
    out_dir: Path,
    run_id: str,
    on_step: StepCallback | None = None,
    on_audit: AuditListener | None = None,
) -> SimulatedSites:
    """Join every site of the simulated federation to the run, as a coordinator would.

    Site ``k`` (``site-{k+1}``) trains on ``data.train``'s ``site_indices[k]`` and holds its
    slice of the simulation's validation and test sets (:func:`held_out_slices`, by patient,
    with the split seed), which it scores for the federated evaluation. Each joins with
    :func:`~site_agent.join.join_run` from the portable run configuration a coordinator sends;
    what only the simulation gives a site is named in :class:`~site_agent.join.SimulationOnly`
    (its reproducible training stream, the in-process key directory, the run's initial weights
    file, the listeners), and ``config.drops`` wraps its agent in a
    :class:`~clinfl.simulation.dropouts.DroppingParticipant`.

    Raises:
        ClinflError: for invalid policies, a looser coordinator request, too few sites for the
            policies, a model that cannot run DP-SGD, or an unwritable state directory.
    """
    site_ids = [f"site-{k + 1}" for k in range(len(site_indices))]
    policies = read_site_policies(config, site_ids)
    sent = run_config_from_mapping(portable_run_config(config), base=out_dir)
    seeds = RunSeeds.of(config.federation)
    space = simulated_space(config, data)
    identities = [SiteIdentity(s, Ed25519PrivateKey.generate()) for s in site_ids]
    directory = {i.site_id: i.signing_key.public_key() for i in identities}
    joined: dict[str, JoinedSite] = {}
    held_out = held_out_slices(data, len(site_ids), seed=seeds.split)
    for k, (identity, indices) in enumerate(zip(identities, site_indices, strict=True)):
        site = identity.site_id
        joined[site] = join_run(
            identity,
            policies[site],
            SimulatedSlice(data.train.subset(indices), held_out[k], space),
            sent,
            roster=None,
            state_dir=out_dir / SITES_DIR / site,
            run_id=run_id,
            simulation=SimulationOnly(
                stream_seed=seeds.stream(k),
                directory=directory,
                init_weights=config.method.init_weights,
                on_step=on_step,
                on_audit=on_audit,
            ),
        )
    tightened = {site: j.policy for site, j in joined.items()}
    secagg = coordinator_secagg(
        config.secagg, {site: policy.secagg.terms for site, policy in tightened.items()}
    )
    size = next(iter(joined.values())).spec.image_size
    if size is None:
        raise InternalError("the model spec's image size is not resolved")
    mode = resolve_grad_sample_mode(
        config.privacy.grad_sample_mode,
        size,
        augment_multiplicity=config.federation.augment_multiplicity,
    )
    participants: list[TrainingParticipant] = [
        DroppingParticipant(j.agent, config.drops) if config.drops else j.agent
        for j in joined.values()
    ]
    return SimulatedSites(
        participants,
        tightened,
        {site: out_dir / SITES_DIR / site for site in joined},
        {site: j.trainer for site, j in joined.items()},
        secagg,
        mode,
        joined,
    )
