"""Putting one site together: its ledger, its trainer (DP-SGD when its policy says so), its agent.

The in-process federation and ``clinfl site run`` build their sites here, so a deployed site
trains, accounts and refuses exactly as a simulated one does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.config import FederationConfig
from clinfl.data.imageset import ImageSet
from clinfl.device import resolve_device
from clinfl.errors import ConfigError
from clinfl.policy import SitePolicy
from clinfl.privacy.settings import DPSettings
from clinfl.training_bounds import check_round_settings
from site_agent.agent import LocalTrainer, SiteAgent, SiteIdentity
from site_agent.ledger import SiteLedger
from site_agent.private_training import PrivateSite
from site_agent.training import LocalSite, StepCallback

AuditListener = Callable[[str, str], None]


@dataclass(frozen=True)
class AssembledSite:
    """A site's agent with the trainer and ledger behind it."""

    agent: SiteAgent
    trainer: LocalTrainer
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


def assemble_site(
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
    grad_sample_mode: str,
    shuffle_seed: int,
    roster_hash: bytes | None = None,
    on_step: StepCallback | None = None,
    on_audit: AuditListener | None = None,
) -> AssembledSite:
    """Build one site's ledger, trainer and agent under ``state_dir``.

    ``roster_hash`` is the digest of the roster the site pinned (a deployed site); the agent
    binds it into every advertisement it signs. Without it the agent uses the directory's hash.

    Raises:
        ClinflError: for a model that cannot run DP-SGD, an algorithm the policy's DP excludes,
            a device this machine lacks or DP-SGD asked of an accelerator, or an unwritable
            state directory.
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
    trainer: LocalTrainer
    if policy.dp.required:
        trainer = PrivateSite(
            site,
            data,
            algorithm,
            spec,
            dp=DPSettings.from_policy(policy.dp, grad_sample_mode=grad_sample_mode),
            ledger=ledger,
            run_id=run_id,
            batch_size=federation.batch_size,
            local_epochs=federation.local_epochs,
            weight_decay=federation.weight_decay,
            on_step=on_step,
        )
    else:
        trainer = LocalSite(
            site,
            data,
            algorithm,
            spec,
            weight_decay=federation.weight_decay,
            shuffle_seed=shuffle_seed,
            on_step=on_step,
            device=device,
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
        run_id=run_id,
        round_store=ledger,
        audit=audit,
        min_samples=policy.data.min_samples,
        report_loss="loss" in policy.reporting.metrics,
        report_counts="counts" in policy.reporting.metrics,
        check_settings=partial(check_round_settings, bounds=policy.training, site_id=site),
        share_epsilon="epsilon" in policy.reporting.metrics,
    )
    return AssembledSite(agent, trainer, ledger)
