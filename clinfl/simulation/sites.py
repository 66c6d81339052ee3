"""Building the simulated sites: policies, state directories, ledgers, trainers and agents.

Each site gets its policy (one file for all, one per site, or the built-in research terms),
tightened by what the coordinator asks (:func:`~clinfl.policy.apply_request`); a state
directory ``<out>/sites/<site>/`` with its privacy ledger; a DP-SGD trainer when its policy
requires DP; and a fresh Ed25519 identity for secure aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.config import DEFAULT_MIN_SITES, RunConfig, SecAggConfig
from clinfl.config.digest import run_config_digest
from clinfl.config.secagg_bound import coordinator_secagg
from clinfl.data.imageset import ImageSet
from clinfl.errors import PolicyViolation
from clinfl.federation.roles import TrainingParticipant
from clinfl.policy import DPPolicy, ReportingPolicy, SecAggPolicy, SitePolicy
from clinfl.policy import load_policy as read_policy
from clinfl.privacy.settings import resolve_grad_sample_mode
from clinfl.simulation.dropouts import DroppingParticipant
from site_agent.agent import SiteIdentity
from site_agent.setup import AuditListener, policy_for_run, setup_site
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


def load_site_policies(config: RunConfig, site_ids: Sequence[str]) -> dict[str, SitePolicy]:
    """Read each site's policy and apply the coordinator's request to it.

    Raises:
        ConfigError, ValidationError: for an unreadable or invalid policy file.
        PolicyViolation: if the coordinator's settings are looser than a site's policy, or
            the run trains by epochs and a site's policy keeps sample counts at the site.
    """
    policies: dict[str, SitePolicy] = {}
    for site, policy in read_site_policies(config, site_ids).items():
        try:
            policies[site] = policy_for_run(policy, config)
        except PolicyViolation as refusal:
            raise PolicyViolation(f"{site}: {refusal.message}", remedy=refusal.remedy) from None
    return policies


def build_sites(
    config: RunConfig,
    site_data: Sequence[ImageSet],
    algorithm: Algorithm,
    spec: ModelSpec,
    *,
    out_dir: Path,
    run_id: str,
    on_step: StepCallback | None = None,
    on_audit: AuditListener | None = None,
) -> SimulatedSites:
    """Build every site of the simulated federation.

    Raises:
        ClinflError: for invalid policies, a looser coordinator request, too few sites for the
            policies, a model that cannot run DP-SGD, or an unwritable state directory.
    """
    fed = config.federation
    site_ids = [f"site-{k + 1}" for k in range(len(site_data))]
    policies = load_site_policies(config, site_ids)
    secagg = coordinator_secagg(config.secagg, {s: p.secagg.terms for s, p in policies.items()})
    assert spec.image_size is not None
    mode = resolve_grad_sample_mode(
        config.privacy.grad_sample_mode,
        spec.image_size,
        augment_multiplicity=fed.augment_multiplicity,
    )
    identities = [SiteIdentity(s, Ed25519PrivateKey.generate()) for s in site_ids]
    directory = {i.site_id: i.signing_key.public_key() for i in identities}
    config_hash = run_config_digest(config, image_size=spec.image_size)
    participants: list[TrainingParticipant] = []
    trainers: dict[str, SiteTrainer] = {}
    state_dirs: dict[str, Path] = {}
    for k, (identity, data) in enumerate(zip(identities, site_data, strict=True)):
        site = identity.site_id
        state_dirs[site] = out_dir / SITES_DIR / site
        ready = setup_site(
            identity,
            data,
            policies[site],
            algorithm,
            spec,
            federation=fed,
            directory=directory,
            state_dir=state_dirs[site],
            run_id=run_id,
            config_hash=config_hash,
            grad_sample_mode=mode,
            simulation_seed=fed.seed * 1000 + k,  # in-process only: reproducible runs
            on_step=on_step,
            on_audit=on_audit,
        )
        trainers[site] = ready.trainer
        agent = ready.agent
        participants.append(DroppingParticipant(agent, config.drops) if config.drops else agent)
    return SimulatedSites(participants, policies, state_dirs, trainers, secagg, mode)
