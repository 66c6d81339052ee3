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
from typing import NoReturn, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clinfl.errors import ClinflError, FederationError, PolicyViolation, ProtocolViolation
from clinfl.federation.digests import round_parameters_digest, state_digest
from clinfl.federation.messages import RoundSettings, SiteContribution, TrainingReport
from clinfl.federation.vectors import flatten_state
from clinfl.secagg.encoding import encode_update
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import RoundParameters, SecAggRequirements
from clinfl.secagg.site_session import SiteSession
from clinfl.secagg.transcript import RoundBinding, directory_hash
from clinfl.typing import StateDict
from site_agent.round_guard import MemoryRoundStore, RoundStore, accept_round, complete_round
from site_agent.training import LocalUpdate

AuditHook = Callable[[int, str], None]  # (round id, why the site refused)
SettingsCheck = Callable[[RoundSettings], None]  # raises PolicyViolation outside the bounds


class LocalTrainer(Protocol):
    """What the agent needs from local training (:class:`~site_agent.training.SiteTrainer`)."""

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
    """A site's name and long-term Ed25519 signing key (its public half is in the roster)."""

    site_id: str
    signing_key: Ed25519PrivateKey


@dataclass(frozen=True)
class _Received:
    """What the site received for the round it is in: the hashes it binds into its advert."""

    settings: RoundSettings
    model_hash: bytes


class SiteAgent:
    """One hospital's participant: a local trainer plus the policy-checked upload paths.

    ``report_loss`` and ``report_counts`` say whether the policy's ``reporting.metrics`` lets
    the training loss and the sample count leave the site; even then they travel only inside
    the masked vector (the coordinator learns federation-wide sums). Without ``report_counts``
    the site contributes with weight 1. ``roster_hash`` is the hash of the roster the site
    pinned (the directory's hash when None); ``round_store`` persists the last round id of each
    run (in memory when None).
    """

    def __init__(
        self,
        trainer: LocalTrainer,
        *,
        identity: SiteIdentity,
        directory: Mapping[str, Ed25519PublicKey],
        requirements: SecAggRequirements,
        run_id: str = "",
        roster_hash: bytes | None = None,
        round_store: RoundStore | None = None,
        audit: AuditHook | None = None,
        min_samples: int = 1,
        share_epsilon: bool = False,
        report_loss: bool = False,
        report_counts: bool = False,
        check_settings: SettingsCheck | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if identity.site_id != trainer.site_id:
            raise ValueError("identity and trainer name different sites")
        self._trainer = trainer
        self._identity = identity
        self._directory = dict(directory)
        self._requirements = requirements
        self._run_id = run_id
        self._roster_hash = roster_hash if roster_hash is not None else directory_hash(directory)
        self._rounds: RoundStore = round_store if round_store is not None else MemoryRoundStore()
        self._audit = audit
        self._min_samples = min_samples
        self._share_epsilon = share_epsilon
        self._report_loss = report_loss
        self._report_counts = report_counts
        self._check_settings = check_settings
        self._rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self._pending: LocalUpdate | None = None
        self._template: StateDict | None = None
        self._received: _Received | None = None
        self._session: SiteSession | None = None

    @property
    def site_id(self) -> str:
        """The site's identifier."""
        return self._identity.site_id

    def _refuse(self, round_id: int, error: ClinflError) -> NoReturn:
        if self._audit is not None:
            self._audit(round_id, error.message)
        raise error

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        """Train from ``global_state``; keep the update here until a permitted upload.

        The round id must be the last one plus one (R2), and the settings within the policy's
        training bounds, before any training step.

        Raises:
            PolicyViolation: if the site holds fewer samples than its policy's ``min_samples``,
                or the settings are outside the policy's training bounds.
            ProtocolViolation: for a replayed, repeated or skipped round id.
            BudgetExhausted: if the round would pass the site's privacy budget.
            FederationError: if training fails.
        """
        self._session = None
        self._pending = None
        self._received = None
        if self._trainer.num_samples < self._min_samples:
            reason = (
                f"{self.site_id} holds {self._trainer.num_samples} samples, its policy requires "
                f"at least {self._min_samples} to train"
            )
            self._refuse(
                settings.round,
                PolicyViolation(reason, remedy="add data at the site or relax data.min_samples"),
            )
        if self._check_settings is not None:
            try:
                self._check_settings(settings)
            except PolicyViolation as refusal:
                self._refuse(settings.round, refusal)
        try:
            accept_round(
                self._rounds, run_id=self._run_id, round_id=settings.round, site_id=self.site_id
            )
        except ProtocolViolation as refusal:
            self._refuse(settings.round, refusal)
        received = _Received(settings, state_digest(global_state))
        self._pending = self._trainer.train_round(global_state, settings)
        self._template = global_state
        self._received = received
        epsilon = getattr(self._trainer, "epsilon", None)  # None without DP-SGD
        value = epsilon() if self._share_epsilon and callable(epsilon) else None
        spent = None if value is None else float(value)
        return TrainingReport(self.site_id, spent)

    def _take_pending(self) -> tuple[LocalUpdate, StateDict]:
        if self._pending is None or self._template is None:
            raise FederationError(
                f"{self.site_id} has no trained update for this round",
                remedy="the coordinator must ask the site to train first",
            )
        return self._pending, self._template

    def _weight(self, update: LocalUpdate) -> int:
        if not self._report_counts:
            return 1
        return min(update.num_samples, self._requirements.max_weight)

    def _loss(self, update: LocalUpdate) -> float | None:
        return update.mean_loss if self._report_loss else None

    def upload_plain(self) -> SiteContribution:
        """Send ``w_i * delta_i`` and ``w_i`` unmasked (and the loss, if the policy allows).

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
        self._complete()
        self._trainer.update_sent(secagg=False)
        return SiteContribution(self.site_id, weighted, weight, self._loss(update))

    def _current(self) -> SiteSession:
        if self._session is None:
            raise ProtocolViolation(
                f"{self.site_id}: no secure-aggregation round in progress",
                remedy="the coordinator must start with the advertise stage",
            )
        return self._session

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        """Check the round's parameters against the policy and advertise fresh keys.

        The advertisement binds the pinned roster, the run, the round, the parameters with the
        round's settings, and the global model this site received (R1).

        Raises:
            ProtocolViolation: if the parameters break the policy, or name another run or
                round than the one this site trained for.
        """
        self._take_pending()
        received = self._received
        assert received is not None
        try:
            params_hash = round_parameters_digest(params, received.settings)
        except ValueError:
            self._refuse(
                params.round_id,
                ProtocolViolation(
                    f"{self.site_id} refuses round {params.round_id}: malformed parameters",
                    remedy="check the coordinator",
                ),
            )
        binding = RoundBinding(
            roster_hash=self._roster_hash,
            run_id=self._run_id,
            round_id=received.settings.round,
            params_hash=params_hash,
            model_hash=received.model_hash,
        )
        self._session = SiteSession(
            params,
            site_id=self.site_id,
            signing_key=self._identity.signing_key,
            directory=self._directory,
            requirements=self._requirements,
            binding=binding,
            audit=self._audit,
        )
        return self._session.advertise()

    def secagg_graph(self, adverts: tuple[Advertisement, ...]) -> GraphReveal:
        """Check the relayed advertisements and open this site's graph commitment.

        Raises:
            ProtocolViolation: see :meth:`SiteSession.reveal_graph_nonce`.
        """
        return self._current().reveal_graph_nonce(adverts)

    def secagg_share(self, reveals: tuple[GraphReveal, ...]) -> list[EncryptedShare]:
        """Check every site's graph reveal and return sealed shares.

        Raises:
            ProtocolViolation: see :meth:`SiteSession.share`.
        """
        return self._current().share(reveals)

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        """Encode and mask the pending update (sample weight and loss inside the vector).

        Raises:
            ProtocolViolation: see :meth:`SiteSession.masked_input`.
            FederationError: if there is no trained update.
        """
        session = self._current()
        update, template = self._take_pending()
        params = session.params
        flat = flatten_state(update.delta, template=template)
        encoded = encode_update(
            flat,
            num_samples=self._weight(update),
            params=params,
            rng=self._rng,
            loss=self._loss(update),
        )
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
        revealed = session.reveal(request)
        self._complete()
        return revealed

    def _complete(self) -> None:
        if self._received is not None:
            round_id = self._received.settings.round
            complete_round(self._rounds, run_id=self._run_id, round_id=round_id)
