"""The site agent: trains locally, then sends its update only as its policy allows.

With secure aggregation, the update is flattened, clipped, quantised, weighted by the capped
sample count (which rides inside the masked vector) and masked; the coordinator sees only
uniform-looking residues. Without it, the site sends the weighted update in the clear, and only
if its policy does not require secure aggregation.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clinfl.errors import FederationError, PolicyViolation, ProtocolViolation
from clinfl.federation.messages import RoundSettings, SiteContribution, TrainingReport
from clinfl.federation.vectors import flatten_state
from clinfl.secagg.encoding import encode_update
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import RoundParameters, SecAggRequirements
from clinfl.secagg.site_session import SiteSession
from clinfl.typing import StateDict
from site_agent.training import LocalUpdate

AuditHook = Callable[[int, str], None]  # (round id, why the site refused)


class LocalTrainer(Protocol):
    """What the agent needs from local training (:class:`~site_agent.training.LocalSite`)."""

    @property
    def site_id(self) -> str:
        """The site's identifier."""
        ...

    @property
    def num_samples(self) -> int:
        """Local training set size."""
        ...

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> LocalUpdate:
        """Train from ``global_state`` and return the private update."""
        ...

    def update_sent(self, *, secagg: bool) -> None:
        """The round's update left the site (DP trainers mark its privacy spend as spent)."""
        ...

    def aggregate_size(self, sites: int) -> None:
        """The round's sum covers ``sites`` sites (recorded for the audit report)."""
        ...


@dataclass(frozen=True)
class SiteIdentity:
    """A site's name and long-term Ed25519 signing key (its public half is in the directory)."""

    site_id: str
    signing_key: Ed25519PrivateKey


class SiteAgent:
    """One hospital's participant: a local trainer plus the policy-checked upload paths."""

    def __init__(
        self,
        trainer: LocalTrainer,
        *,
        identity: SiteIdentity,
        directory: Mapping[str, Ed25519PublicKey],
        requirements: SecAggRequirements,
        audit: AuditHook | None = None,
        min_samples: int = 1,
        share_epsilon: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        if identity.site_id != trainer.site_id:
            raise ValueError("identity and trainer name different sites")
        self._trainer = trainer
        self._identity = identity
        self._directory = dict(directory)
        self._requirements = requirements
        self._audit = audit
        self._min_samples = min_samples
        self._share_epsilon = share_epsilon
        self._rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self._pending: LocalUpdate | None = None
        self._template: StateDict | None = None
        self._session: SiteSession | None = None
        self._last_round_id: int | None = None

    @property
    def site_id(self) -> str:
        """The site's identifier."""
        return self._identity.site_id

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        """Train from ``global_state``; keep the update here until a permitted upload.

        Raises:
            PolicyViolation: if the site holds fewer samples than its policy's ``min_samples``.
            BudgetExhausted: if the round would pass the site's privacy budget.
            FederationError: if training fails.
        """
        self._session = None
        self._pending = None
        if self._trainer.num_samples < self._min_samples:
            reason = (
                f"{self.site_id} holds {self._trainer.num_samples} samples, its policy requires "
                f"at least {self._min_samples} to train"
            )
            if self._audit is not None:
                self._audit(settings.round, reason)
            raise PolicyViolation(reason, remedy="add data at the site or relax data.min_samples")
        self._pending = self._trainer.train_round(global_state, settings)
        self._template = global_state
        epsilon = getattr(self._trainer, "epsilon", None)
        spent = float(epsilon()) if self._share_epsilon and callable(epsilon) else None
        return TrainingReport(self.site_id, self._pending.mean_loss, self._pending.steps, spent)

    def _take_pending(self) -> tuple[LocalUpdate, StateDict]:
        if self._pending is None or self._template is None:
            raise FederationError(
                f"{self.site_id} has no trained update for this round",
                remedy="the coordinator must ask the site to train first",
            )
        return self._pending, self._template

    def _weight(self, update: LocalUpdate) -> int:
        return min(update.num_samples, self._requirements.max_weight)

    def upload_plain(self) -> SiteContribution:
        """Send ``w_i * delta_i`` and ``w_i`` unmasked.

        Raises:
            ProtocolViolation: if this site's policy requires secure aggregation.
            FederationError: if there is no trained update.
        """
        if self._requirements.required:
            raise ProtocolViolation(
                f"{self.site_id} refuses to send its update in the clear: its policy requires "
                "secure aggregation",
                remedy="run with secure aggregation on (--secagg on)",
            )
        update, _ = self._take_pending()
        self._pending = None
        weight = self._weight(update)
        weighted = {name: value * float(weight) for name, value in update.delta.items()}
        self._trainer.update_sent(secagg=False)
        return SiteContribution(self.site_id, weighted, weight)

    def _current(self) -> SiteSession:
        if self._session is None:
            raise ProtocolViolation(
                f"{self.site_id}: no secure-aggregation round in progress",
                remedy="the coordinator must start with the advertise stage",
            )
        return self._session

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        """Check the round's parameters against the policy and advertise fresh keys.

        Raises:
            ProtocolViolation: if the parameters break the policy or replay an old round.
        """
        self._take_pending()
        self._session = SiteSession(
            params,
            site_id=self.site_id,
            signing_key=self._identity.signing_key,
            directory=self._directory,
            requirements=self._requirements,
            last_round_id=self._last_round_id,
            audit=self._audit,
        )
        self._last_round_id = params.round_id
        return self._session.advertise()

    def secagg_share(self, adverts: tuple[Advertisement, ...]) -> list[EncryptedShare]:
        """Check the relayed advertisements and return sealed shares.

        Raises:
            ProtocolViolation: see :meth:`SiteSession.share`.
        """
        return self._current().share(adverts)

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        """Encode and mask the pending update.

        Raises:
            ProtocolViolation: see :meth:`SiteSession.masked_input`.
            FederationError: if there is no trained update.
        """
        session = self._current()
        update, template = self._take_pending()
        params = session.params
        flat = flatten_state(update.delta, template=template)
        weight = self._weight(update)
        encoded = encode_update(flat, num_samples=weight, params=params, rng=self._rng)
        self._pending = None
        masked = session.masked_input(shares, encoded)
        self._trainer.update_sent(secagg=True)
        return masked

    def secagg_sign(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Sign the announced survivor set.

        Raises:
            ProtocolViolation: see :meth:`SiteSession.sign_survivors`.
        """
        signature = self._current().sign_survivors(survivors)
        self._trainer.aggregate_size(len(survivors))
        return signature

    def secagg_reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Reveal the shares the request allows; the session ends.

        Raises:
            ProtocolViolation: see :meth:`SiteSession.reveal`.
        """
        session = self._current()
        self._session = None
        return session.reveal(request)
