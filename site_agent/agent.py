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
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clinfl.errors import (
    ClinflError,
    FederationError,
    LocalTrainingFailed,
    PolicyViolation,
    ProtocolViolation,
)
from clinfl.federation.digests import (
    canonical_state_digest,
    round_parameters_digest,
    state_digest,
)
from clinfl.federation.messages import RoundSettings, SiteContribution, TrainingReport
from clinfl.federation.vectors import flatten_state
from clinfl.secagg.encoding import encode_counts, encode_update
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import Purpose, RoundParameters, SecAggRequirements
from clinfl.secagg.site_session import SiteSession
from clinfl.secagg.transcript import RoundBinding, directory_hash
from clinfl.transport.contract import ScoreAck
from clinfl.typing import StateDict
from site_agent.round_guard import MemoryRoundStore, RoundStore, accept_round, complete_round
from site_agent.training import LocalUpdate

AuditHook = Callable[[int, str], None]  # (round id, why the site refused)
SettingsCheck = Callable[[RoundSettings], None]  # raises PolicyViolation outside the bounds
ExpectedSettings = Callable[[int], RoundSettings]  # a round's settings under the joined config
StateLayout = Mapping[str, tuple[tuple[int, ...], torch.dtype]]  # name -> (shape, dtype)


def state_layout(state: StateDict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Return the names, shapes and dtypes of ``state`` (what a site accepts as a global state)."""
    return {name: (tuple(value.shape), value.dtype) for name, value in state.items()}


def layout_problem(state: StateDict, layout: StateLayout) -> str | None:
    """Return why ``state`` does not have exactly ``layout``'s entries, or None if it does.

    A site refuses a global state with any entry its own algorithm does not produce (another
    algorithm's ``aux/`` slots, R1'), or without one it does, or of another shape or dtype.
    """
    extra = sorted(set(state) - set(layout))
    if extra:
        return f"it carries entries this site's algorithm does not produce: {', '.join(extra[:3])}"
    missing = sorted(set(layout) - set(state))
    if missing:
        return f"it lacks entries this site's algorithm needs: {', '.join(missing[:3])}"
    for name, (shape, dtype) in layout.items():
        value = state[name]
        if tuple(value.shape) != shape or value.dtype != dtype:
            found = f"{value.dtype} {tuple(value.shape)}"
            return f"{name} is {found}, this site expects {dtype} {shape}"
    return None


def zero_update(global_state: StateDict) -> LocalUpdate:
    """The update a site sends when its training failed: zeros, weight 0, no loss (R7')."""
    delta = {name: torch.zeros_like(value) for name, value in global_state.items()}
    return LocalUpdate(delta=delta, num_samples=0, mean_loss=float("nan"), steps=0)


class EvaluationStore(Protocol):
    """Where a site persists the evaluations it scored (its ledger, :class:`SiteLedger`)."""

    def claim_evaluation(
        self, run_id: str, round_id: int, *, model_hash: bytes, epsilon: float | None
    ) -> str | None:
        """Record an evaluation of ``model_hash`` for ``round_id``; return why not, or None."""
        ...

    def use_evaluation_session(self, run_id: str, round_id: int, session: str) -> bool:
        """Bind ``session`` to the evaluation of ``round_id``; False if it cannot be used."""
        ...


class Scorer(Protocol):
    """What the agent needs to score a model (:class:`~site_agent.federated_scoring.SiteScorer`)."""

    @property
    def vector_length(self) -> int:
        """The length of the evaluation vector."""
        ...

    @property
    def epsilon(self) -> float | None:
        """The epsilon one evaluation's noise costs (None: no noise)."""
        ...

    def vector(self, global_state: StateDict) -> np.ndarray:
        """Return the site's int64 evaluation vector of ``global_state``."""
        ...


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


@dataclass(frozen=True)
class _Scored:
    """A scored model waiting for its evaluation session: the counts and what they bind."""

    vector: np.ndarray
    received: _Received


class SiteAgent:
    """One hospital's participant: a local trainer plus the policy-checked upload paths.

    ``report_loss`` and ``report_counts`` say whether the policy's ``reporting.metrics`` lets
    the training loss and the sample count leave the site; even then they travel only inside
    the masked vector (the coordinator learns federation-wide sums). Without ``report_counts``
    the site contributes with weight 1. ``roster_hash`` is the hash of the roster the site
    pinned (the directory's hash when None); ``round_store`` persists the last round id of each
    run and its attempts (in memory when None).

    ``config_hash`` is the digest of the run configuration the site joined with
    (:func:`~clinfl.config.digest.run_config_digest`), bound into every advertisement (R1').
    ``expected_settings`` gives each round's settings under that configuration: a round asked
    with any other settings is refused. ``layout`` is the global state the site's algorithm
    works with (names, shapes, dtypes): a global state with other entries, such as another
    algorithm's ``aux/`` slots, is refused.

    A local training that fails for a reason that may depend on the data (a diverging loss) is
    audited, and the site takes part with a zero update of weight 0, so the coordinator sees a
    normal round (R7').

    After :meth:`enable_evaluation` (its policy's ``reporting.metrics`` lists ``auc``) the site
    also takes part in each round's federated evaluation (:meth:`score_round`, then a secure
    aggregation session of purpose ``evaluation``); otherwise it refuses to score.
    """

    def __init__(
        self,
        trainer: LocalTrainer,
        *,
        identity: SiteIdentity,
        directory: Mapping[str, Ed25519PublicKey],
        requirements: SecAggRequirements,
        config_hash: bytes,
        run_id: str = "",
        expected_settings: ExpectedSettings | None = None,
        layout: StateLayout | None = None,
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
        self._config_hash = config_hash
        self._run_id = run_id
        self._expected_settings = expected_settings
        self._layout = dict(layout) if layout is not None else None
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
        self._session_purpose: Purpose = "update"
        self._abandoned_seen = 0  # abandoned attempts already audited (since this process began)
        self._scorer: Scorer | None = None
        self._evaluations: EvaluationStore | None = None
        self._scored: _Scored | None = None

    def enable_evaluation(self, scorer: Scorer, store: EvaluationStore) -> None:
        """Take part in federated evaluations: score with ``scorer``, record them in ``store``."""
        self._scorer = scorer
        self._evaluations = store

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

        Before any training step: the settings must be the joined configuration's for this
        round and within the policy's training bounds, the global state must have exactly the
        entries the site's algorithm produces, the round id must be the last one plus one or
        an allowed retry (R2, R3'), and the site must not have sent a completed update from
        this global model before (R10). A training failure that may depend on the data is not
        a refusal: it is audited and the site sends a zero update of weight 0 (R7').

        Raises:
            PolicyViolation: if the site holds fewer samples than its policy's ``min_samples``,
                or the settings are outside the policy's training bounds.
            ProtocolViolation: for settings other than the run's, a global state with entries
                the algorithm does not produce, a replayed, repeated or skipped round id, a
                retry past the policy's cap, or a global model already trained from.
            BudgetExhausted: if the round would pass the site's privacy budget.
            FederationError: if the global state does not fit the local model.
        """
        self._session = None
        self._pending = None
        self._received = None
        self._scored = None
        round_id = settings.round
        if self._trainer.num_samples < self._min_samples:
            reason = (
                f"{self.site_id} holds {self._trainer.num_samples} samples, its policy requires "
                f"at least {self._min_samples} to train"
            )
            self._refuse(
                round_id,
                PolicyViolation(reason, remedy="add data at the site or relax data.min_samples"),
            )
        if self._check_settings is not None:
            try:
                self._check_settings(settings)
            except PolicyViolation as refusal:
                self._refuse(round_id, refusal)
        self._check_run_settings(settings)
        self._check_layout(global_state, round_id)
        model_hash = state_digest(global_state)
        abandoned_before = self._rounds.abandoned(self._run_id)
        try:
            attempt = accept_round(
                self._rounds,
                run_id=self._run_id,
                round_id=round_id,
                site_id=self.site_id,
                model_hash=canonical_state_digest(global_state),
                max_retries=self._requirements.max_retries,
                max_abandoned=self._requirements.max_abandoned_rounds,
            )
        except ProtocolViolation as refusal:
            self._refuse(round_id, refusal)
        if abandoned_before > self._abandoned_seen:
            self._note(
                round_id,
                f"{abandoned_before} attempt(s) of this run ended before the site completed them "
                f"(the policy allows {self._requirements.max_abandoned_rounds})",
            )
        self._abandoned_seen = abandoned_before
        if attempt > 1:
            self._note(
                round_id,
                f"round {round_id} retried by the coordinator: attempt {attempt}, the policy "
                f"allows {self._requirements.max_retries} retries",
            )
        try:
            update = self._trainer.train_round(global_state, settings)
        except LocalTrainingFailed as failure:
            self._note(
                round_id,
                f"training failed ({failure.message}); the site takes part with a zero update "
                "of weight 0",
            )
            update = zero_update(global_state)
        self._pending = update
        self._template = global_state
        self._received = _Received(settings, model_hash)
        epsilon = getattr(self._trainer, "epsilon", None)  # None without DP-SGD
        value = epsilon() if self._share_epsilon and callable(epsilon) else None
        spent = None if value is None else float(value)
        return TrainingReport(self.site_id, spent)

    def _note(self, round_id: int, message: str) -> None:
        """Audit an event of the round that is not a refusal (a retry, a training failure)."""
        if self._audit is not None:
            self._audit(round_id, message)

    def _check_run_settings(self, settings: RoundSettings) -> None:
        if self._expected_settings is None:
            return
        expected = self._expected_settings(settings.round)
        if settings != expected:
            self._refuse(
                settings.round,
                ProtocolViolation(
                    f"{self.site_id} refuses round {settings.round}: its settings are not the "
                    "ones of the run configuration the site joined with",
                    remedy="the coordinator must ask every round with the run's own settings",
                ),
            )

    def _check_layout(self, global_state: StateDict, round_id: int) -> None:
        if self._layout is None:
            return
        problem = layout_problem(global_state, self._layout)
        if problem is not None:
            self._refuse(
                round_id,
                ProtocolViolation(
                    f"{self.site_id} refuses the global state of round {round_id}: {problem}",
                    remedy="every site of a run trains the same method; check the coordinator",
                ),
            )

    def _take_pending(self) -> tuple[LocalUpdate, StateDict]:
        if self._pending is None or self._template is None:
            raise FederationError(
                f"{self.site_id} has no trained update for this round",
                remedy="the coordinator must ask the site to train first",
            )
        return self._pending, self._template

    def _weight(self, update: LocalUpdate) -> int:
        if update.num_samples == 0:  # a failed training: a zero update that weighs nothing
            return 0
        if not self._report_counts:
            return 1
        return min(update.num_samples, self._requirements.max_weight)

    def _loss(self, update: LocalUpdate) -> float | None:
        if update.num_samples == 0 or not self._report_loss:
            return None
        return update.mean_loss

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

        The advertisement binds the pinned roster, the run, the round, the parameters (with the
        session nonce) and the round's settings, the global model this site received, and the
        run configuration it joined with (R1, R1').

        Raises:
            ProtocolViolation: if the parameters break the policy, name another run or round
                than the one this site trained for, or reuse a session nonce (or this
                training was already advertised in another session).
            FederationError: if there is no trained update (nothing to advertise keys for).
        """
        held: Purpose = "evaluation" if self._scored is not None else "update"
        if held == "update":
            self._take_pending()
        if params.purpose != held:  # an evaluation session is never a training one (or back)
            self._refuse(
                params.round_id,
                ProtocolViolation(
                    f"{self.site_id} refuses a session of purpose {str(params.purpose)[:20]!r} "
                    f"for round {params.round_id}: it holds a vector of purpose {held!r}",
                    remedy="the coordinator must sum each vector in a session of its own purpose",
                ),
            )
        received = self._scored.received if self._scored is not None else self._received
        if received is None:
            raise FederationError(
                f"{self.site_id} holds no global model for this round",
                remedy="the coordinator must ask the site to train first",
            )
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
            config_hash=self._config_hash,
        )
        if params.round_id == received.settings.round and not self._use_session(params):
            self._refuse(
                params.round_id,
                ProtocolViolation(
                    f"{self.site_id} refuses session {params.session[:12]!r} of round "
                    f"{params.round_id}: a session nonce is used once, and one training takes "
                    "part in one session",
                    remedy="the coordinator must retry a round from training, with a fresh "
                    "session nonce",
                ),
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
        self._session_purpose = held
        return self._session.advertise()

    def _use_session(self, params: RoundParameters) -> bool:
        """Bind the session nonce to this round's training attempt or evaluation (once each)."""
        if params.purpose == "evaluation":
            store = self._evaluations
            return store is not None and store.use_evaluation_session(
                self._run_id, params.round_id, params.session
            )
        return self._rounds.use_session(self._run_id, params.round_id, params.session)

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
        params = session.params
        if self._session_purpose == "evaluation":
            return self._masked_counts(session, shares)
        update, template = self._take_pending()
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
        if self._session_purpose == "update":
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
        if self._session_purpose == "update":
            self._complete()
        return revealed

    def score_round(self, global_state: StateDict, settings: RoundSettings) -> ScoreAck:
        """Score ``global_state`` on the site's held-out studies for the round's evaluation.

        The counts stay here until they are masked in the evaluation session that follows
        (purpose ``evaluation``). Before scoring: the site's policy must let it join federated
        evaluations (``auc`` in ``reporting.metrics``), the settings must be the run's for this
        round, the global state the algorithm's, the round the last one the site accepted to
        train, and the site must never have scored a model for this round nor this model
        before (two sums over one model with different survivor sets would give its
        histograms by differencing). The evaluation, with the epsilon of its noise, is
        recorded in the ledger before anything is scored.

        Raises:
            PolicyViolation: if the policy keeps evaluation at the site.
            ProtocolViolation: for other settings than the run's, a foreign global state, a
                round the site did not accept, or a round or model already scored.
            EvaluationError: if the model's scores are malformed.
        """
        self._session = None
        self._pending = None
        self._received = None
        self._scored = None
        round_id = settings.round
        scorer, store = self._scorer, self._evaluations
        if scorer is None or store is None:
            self._refuse(
                round_id,
                PolicyViolation(
                    f"{self.site_id} does not join federated evaluations: its policy's "
                    "reporting.metrics does not list 'auc'",
                    remedy="add 'auc' to reporting.metrics to let the site's histograms join "
                    "the masked evaluation sum",
                ),
            )
        self._check_run_settings(settings)
        self._check_layout(global_state, round_id)
        last = self._rounds.last_round(self._run_id)
        if last is None or last[0] != round_id:
            self._refuse(
                round_id,
                ProtocolViolation(
                    f"{self.site_id} refuses to score round {round_id}: the last round it "
                    f"accepted is {None if last is None else last[0]}",
                    remedy="the coordinator evaluates each round after its training",
                ),
            )
        why_not = store.claim_evaluation(
            self._run_id,
            round_id,
            model_hash=canonical_state_digest(global_state),
            epsilon=scorer.epsilon,
        )
        if why_not is not None:
            self._refuse(
                round_id,
                ProtocolViolation(
                    f"{self.site_id} refuses to score round {round_id}: {why_not}",
                    remedy="the coordinator evaluates each round's model once",
                ),
            )
        vector = scorer.vector(global_state)
        self._scored = _Scored(vector, _Received(settings, state_digest(global_state)))
        return ScoreAck(self.site_id, int(vector.size))

    def _masked_counts(self, session: SiteSession, shares: list[EncryptedShare]) -> MaskedInput:
        """Encode and mask the scored counts (stage 4 of an evaluation session).

        Raises:
            ProtocolViolation: if the session's length is not the vector's, or it could overflow.
        """
        scored = self._scored
        if scored is None:
            raise FederationError(
                f"{self.site_id} holds no scored model",
                remedy="the coordinator must ask it to score",
            )
        self._scored = None
        try:
            encoded = encode_counts(scored.vector, params=session.params)
        except ValueError as error:
            self._session = None
            self._refuse(
                session.params.round_id,
                ProtocolViolation(
                    f"{self.site_id} refuses the evaluation session: {error}",
                    remedy="the coordinator must plan the session for the sites' vector length",
                ),
            )
        return session.masked_input(shares, encoded)

    def _complete(self) -> None:
        if self._received is not None:
            round_id = self._received.settings.round
            complete_round(self._rounds, run_id=self._run_id, round_id=round_id)
