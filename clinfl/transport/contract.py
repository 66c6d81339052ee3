"""The contract between a coordinator and its sites: every call, what it carries, how it fails.

``CALLS`` is the one table of the calls a coordinator makes of a site. Each row
(:class:`Call`) gives the call's name on the wire, its argument and reply types (both sides
decode against these types only, :mod:`clinfl.transport.wire`), the stage of the round it
belongs to (:data:`~clinfl.secagg.stages.RoundStage`; None for the calls outside a round) and
its timeout class. Everything else is derived from the table:

- :class:`TrainingParticipant`, a site as the coordinator's round code sees it, one method per
  round call (an in-process :class:`~site_agent.agent.SiteAgent` is one);
- :class:`CallingParticipant`, that interface for whoever turns each method into one call:
  the coordinator's remote sites (:class:`~coordinator.deploy.remote_sites.RemoteSite`) and the
  injected dropouts (:class:`~clinfl.simulation.dropouts.DroppingParticipant`);
- how a participant answers each round call (:attr:`Call.answer`), which the deployed site
  dispatches through (:class:`~site_agent.deploy.deployed_site.DeployedSite`);
- the dropout stages (``DROP_STAGES`` in :mod:`clinfl.config`), from the round's stages.

Adding a call means adding one row here (with its method in the two classes below, which a
test checks against the table) and its handler at the site.

A site that refuses or fails answers with an error envelope naming the kind of failure, and
the coordinator raises the matching clinfl error, so a remote site behaves exactly like an
in-process one.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import torch

from clinfl.errors import (
    BudgetExhausted,
    ClinflError,
    FederationError,
    PolicyViolation,
    ProtocolViolation,
    SiteUnavailable,
    WireError,
)
from clinfl.federation.messages import (
    EvaluationReport,
    RoundSettings,
    SiteContribution,
    TrainingReport,
)
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import RoundParameters, SecAggTerms
from clinfl.secagg.stages import SCORE, TRAIN, RoundStage, Stage
from clinfl.transport.wire import decode, encode, from_json_value
from clinfl.typing import StateDict

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class JoinRequest:
    """The first call of a run: what the federation trains, so a site can build its trainer.

    ``run_config`` is the coordinator's run configuration as JSON, with every local path removed;
    the site checks it against its policy before it agrees to take part.
    """

    run_id: str
    run_config: dict[str, Any] = field(default_factory=dict)
    send_initial_state: bool = False


@dataclass(frozen=True)
class JoinReply:
    """A site's answer to :class:`JoinRequest`: who it is and the clinfl it runs.

    On request it also carries the model's initial travelling state, so the coordinator never
    builds the model or the ETF. ``secagg`` declares the secure-aggregation terms of the site's
    policy as the run tightened it (policy terms, never data), so the coordinator plans rounds
    the site accepts (:func:`~clinfl.config.secagg_bound.coordinator_secagg`); the site still
    checks every round against its policy.
    """

    site_id: str
    clinfl_version: str
    initial_state: dict[str, torch.Tensor] | None = None
    secagg: SecAggTerms | None = None


@dataclass(frozen=True)
class TrainRequest:
    """Train one round from the global state (the trainable weights only, never the ETF)."""

    global_state: dict[str, torch.Tensor]
    settings: RoundSettings


@dataclass(frozen=True)
class EvaluateRequest:
    """Score the global model on the site's held-out studies, for the round's federated evaluation.

    ``settings`` are the round's own (the site checks them as for training and binds their
    hash into its evaluation advertisement, with the model's).
    """

    global_state: dict[str, torch.Tensor]
    settings: RoundSettings


@dataclass(frozen=True)
class ScoreAck:
    """A site's answer to :class:`EvaluateRequest`: it holds an evaluation vector of this length.

    The length depends only on the run (the label set and the score grid); the vector itself
    leaves the site only masked, in the evaluation session that follows.
    """

    site_id: str
    vector_length: int


@dataclass(frozen=True)
class Nothing:
    """The argument of calls that take none."""


class SecureAggregationParticipant(Protocol):
    """A site as the secure-aggregation protocol sees it (one method per stage).

    Any stage may raise :class:`~clinfl.errors.SiteUnavailable` (the site dropped out) or
    :class:`~clinfl.errors.ProtocolViolation` (the site refused the request).
    """

    @property
    def site_id(self) -> str:
        """The site's pseudonymous identifier."""
        ...

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        """Check the round's parameters and advertise fresh public keys."""
        ...

    def secagg_graph(self, adverts: tuple[Advertisement, ...]) -> GraphReveal:
        """Check the advertisements and open the site's graph commitment."""
        ...

    def secagg_share(self, reveals: tuple[GraphReveal, ...]) -> list[EncryptedShare]:
        """Check every site's graph reveal and return sealed shares for the neighbours."""
        ...

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        """Open the received shares and return the masked, encoded update."""
        ...

    def secagg_sign(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Sign the announced survivor set."""
        ...

    def secagg_reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Check the unmask request and reveal the shares it allows."""
        ...


class TrainingParticipant(SecureAggregationParticipant, Protocol):
    """A site, as the coordinator's round code sees it: one method per round call of ``CALLS``.

    A participant trains, then either uploads in the clear (only when secure aggregation is off
    and its policy allows it) or answers the six secure-aggregation stages.
    """

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        """Train locally from ``global_state``; the update stays at the site until sent."""
        ...

    def upload_plain(self) -> SiteContribution:
        """Send the update unmasked (refused when the site's policy requires secure aggregation)."""
        ...

    def score_round(self, global_state: StateDict, settings: RoundSettings) -> ScoreAck:
        """Score ``global_state`` on the site's held-out studies; the counts stay until masked."""
        ...


class TimeoutClass(Enum):
    """How long a call may take: the coordinator sets the seconds of each class."""

    JOIN = "join"
    TRAIN = "train"
    STAGE = "stage"
    EVALUATE = "evaluate"


@dataclass(frozen=True)
class Call(Generic[A, R]):
    """One call a coordinator makes of a site: a row of ``CALLS``.

    ``argument`` and ``reply`` are the types the two ends decode against (``A`` and ``R``, as
    :mod:`clinfl.transport.wire` reads them). ``stage`` is where in a round the call belongs
    (None: outside a round). ``answer`` is how a :class:`TrainingParticipant` answers the call
    (None for the calls a site answers itself: ``join`` and ``evaluate``). After a call that
    ``ends_round``, a deployed site writes its audit report.
    """

    name: str
    argument: Any
    reply: Any
    stage: RoundStage | None
    timeout: TimeoutClass
    answer: Callable[[TrainingParticipant, A], R] | None = None
    ends_round: bool = False


JOIN: Call[JoinRequest, JoinReply] = Call("join", JoinRequest, JoinReply, None, TimeoutClass.JOIN)
TRAIN_ROUND: Call[TrainRequest, TrainingReport] = Call(
    "train_round", TrainRequest, TrainingReport, TRAIN, TimeoutClass.TRAIN,
    answer=lambda site, request: site.train_round(request.global_state, request.settings),
)  # fmt: skip
# the plain upload takes the protocol's place: a site dropped at advertise does not upload
UPLOAD_PLAIN: Call[Nothing, SiteContribution] = Call(
    "upload_plain", Nothing, SiteContribution, Stage.ADVERTISE, TimeoutClass.STAGE,
    answer=lambda site, _: site.upload_plain(), ends_round=True,
)  # fmt: skip
SECAGG_ADVERTISE: Call[RoundParameters, Advertisement] = Call(
    "secagg_advertise", RoundParameters, Advertisement, Stage.ADVERTISE, TimeoutClass.STAGE,
    answer=lambda site, params: site.secagg_advertise(params),
)  # fmt: skip
SECAGG_GRAPH: Call[tuple[Advertisement, ...], GraphReveal] = Call(
    "secagg_graph", tuple[Advertisement, ...], GraphReveal, Stage.GRAPH, TimeoutClass.STAGE,
    answer=lambda site, adverts: site.secagg_graph(adverts),
)  # fmt: skip
SECAGG_SHARE: Call[tuple[GraphReveal, ...], list[EncryptedShare]] = Call(
    "secagg_share", tuple[GraphReveal, ...], list[EncryptedShare], Stage.SHARE,
    TimeoutClass.STAGE, answer=lambda site, reveals: site.secagg_share(reveals),
)  # fmt: skip
SECAGG_MASKED_INPUT: Call[list[EncryptedShare], MaskedInput] = Call(
    "secagg_masked_input", list[EncryptedShare], MaskedInput, Stage.MASKED_INPUT,
    TimeoutClass.STAGE, answer=lambda site, shares: site.secagg_masked_input(shares),
)  # fmt: skip
SECAGG_SIGN: Call[frozenset[str], SurvivorSignature] = Call(
    "secagg_sign", frozenset[str], SurvivorSignature, Stage.CONSISTENCY, TimeoutClass.STAGE,
    answer=lambda site, survivors: site.secagg_sign(survivors),
)  # fmt: skip
SECAGG_REVEAL: Call[UnmaskRequest, RevealedShares] = Call(
    "secagg_reveal", UnmaskRequest, RevealedShares, Stage.UNMASK, TimeoutClass.STAGE,
    answer=lambda site, request: site.secagg_reveal(request), ends_round=True,
)  # fmt: skip
# the round's federated evaluation: the site scores the new model, then the six stages run again
# in a session of purpose "evaluation" (RoundParameters.purpose) to sum the sites' histograms
SCORE_ROUND: Call[EvaluateRequest, ScoreAck] = Call(
    "score_round", EvaluateRequest, ScoreAck, SCORE, TimeoutClass.EVALUATE,
    answer=lambda site, request: site.score_round(request.global_state, request.settings),
)  # fmt: skip
EVALUATE: Call[StateDict, EvaluationReport] = Call(
    "evaluate", dict[str, torch.Tensor], EvaluationReport, None, TimeoutClass.EVALUATE
)

CALLS: dict[str, Call[Any, Any]] = {
    call.name: call
    for call in (
        JOIN,
        TRAIN_ROUND,
        UPLOAD_PLAIN,
        SECAGG_ADVERTISE,
        SECAGG_GRAPH,
        SECAGG_SHARE,
        SECAGG_MASKED_INPUT,
        SECAGG_SIGN,
        SECAGG_REVEAL,
        SCORE_ROUND,
        EVALUATE,
    )
}
ROUND_CALLS: tuple[Call[Any, Any], ...] = tuple(c for c in CALLS.values() if c.stage is not None)


def answer(participant: TrainingParticipant, call: Call[A, R], argument: A) -> R:
    """Return ``participant``'s answer to ``call`` (a round call) with ``argument``.

    Raises:
        ProtocolViolation: for a call a participant does not answer (``join``, ``evaluate``).
        ClinflError: what the participant raised.
    """
    if call.answer is None:
        raise ProtocolViolation(
            f"{call.name} is not a round call", remedy="check that both sides run the same clinfl"
        )
    return call.answer(participant, argument)


class CallingParticipant(TrainingParticipant):
    """A :class:`TrainingParticipant` whose every method is one :meth:`call` of the contract.

    A subclass implements :meth:`call` once (send it to a remote site, or check an injected
    dropout and pass it on), instead of one method per call.
    """

    @property
    @abstractmethod
    def site_id(self) -> str:
        """The site's identifier."""

    @abstractmethod
    def call(self, call: Call[A, R], argument: A) -> R:
        """Make ``call`` with ``argument`` and return the site's reply.

        Raises:
            ClinflError: what the site raised, or SiteUnavailable if it did not answer.
        """

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        """Train locally from ``global_state``; the update stays at the site until sent."""
        return self.call(TRAIN_ROUND, TrainRequest(global_state, settings))

    def upload_plain(self) -> SiteContribution:
        """Send the update unmasked (refused when the site's policy requires secure aggregation)."""
        return self.call(UPLOAD_PLAIN, Nothing())

    def score_round(self, global_state: StateDict, settings: RoundSettings) -> ScoreAck:
        """Score the global model for the round's federated evaluation."""
        return self.call(SCORE_ROUND, EvaluateRequest(global_state, settings))

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        """Secure aggregation, stage 1."""
        return self.call(SECAGG_ADVERTISE, params)

    def secagg_graph(self, adverts: tuple[Advertisement, ...]) -> GraphReveal:
        """Secure aggregation, stage 2."""
        return self.call(SECAGG_GRAPH, adverts)

    def secagg_share(self, reveals: tuple[GraphReveal, ...]) -> list[EncryptedShare]:
        """Secure aggregation, stage 3."""
        return self.call(SECAGG_SHARE, reveals)

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        """Secure aggregation, stage 4."""
        return self.call(SECAGG_MASKED_INPUT, shares)

    def secagg_sign(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Secure aggregation, stage 5."""
        return self.call(SECAGG_SIGN, survivors)

    def secagg_reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Secure aggregation, stage 6."""
        return self.call(SECAGG_REVEAL, request)


_KINDS: dict[str, type[ClinflError]] = {
    "budget": BudgetExhausted,
    "policy": PolicyViolation,
    "protocol": ProtocolViolation,
    "unavailable": SiteUnavailable,
    "federation": FederationError,
}


def _kind(error: ClinflError) -> str:
    for kind, cls in _KINDS.items():  # most specific first
        if isinstance(error, cls):
            return kind
    return "federation"


def call_named(name: str) -> Call[Any, Any]:
    """Return the row of call ``name``.

    Raises:
        WireError: for a call clinfl does not have.
    """
    call = CALLS.get(name)
    if call is None:
        raise WireError(
            f"unknown call {name[:40]!r}",
            remedy="the peer runs an incompatible or tampered clinfl; check both versions",
        )
    return call


def check_call(name: str) -> tuple[Any, Any]:
    """Return the argument and reply types of call ``name``.

    Raises:
        WireError: for a call clinfl does not have.
    """
    call = call_named(name)
    return call.argument, call.reply


def encode_reply(value: object) -> bytes:
    """Return a successful reply."""
    return encode({"ok": value})


WITHHELD_REASONS: dict[str, str] = {
    "budget": "the round would take it past its privacy budget",
    "policy": "its policy does not allow this round",
    "unavailable": "it cannot take part now",
    "federation": "it could not take part in this round",
}
"""What a site tells the coordinator when it refuses a round call for a reason of its own."""


def withheld_refusal(error: ClinflError, *, site_id: str, call: str) -> ClinflError:
    """Return what a site may tell the coordinator about refusing round call ``call``.

    A protocol violation describes what the coordinator sent, and goes back as it is. Any other
    refusal of a round call may depend on the site's data (its sample count, the epsilon a round
    would cost, its steps per epoch), so only its kind leaves the site, with a fixed text
    (SECAGG.md, R7): a coordinator that varies the batch size or the budget it asks for learns
    nothing from the wording. The reason stays in the site's log and audit report.
    """
    if isinstance(error, ProtocolViolation):
        return error
    kind = _kind(error)
    return _KINDS[kind](
        f"{site_id} declined {call[:40]}: {WITHHELD_REASONS[kind]} (the reason is in its audit "
        "report)",
        remedy=f"ask {site_id}'s operator for the reason in the site's audit report",
    )


def encode_refusal(error: ClinflError, *, site_id: str | None) -> bytes:
    """Return a refusal or failure reply: its kind, message and remedy, and the site's name."""
    body = {"kind": _kind(error), "message": error.message, "remedy": error.remedy}
    return encode({"error": body, "site": site_id})


@dataclass(frozen=True)
class Refusal:
    """A decoded error reply: the clinfl error to raise and the site that sent it."""

    error: ClinflError
    site_id: str | None


def open_reply(data: bytes, expected: Any) -> Any:
    """Return the reply's value decoded as ``expected``, or the :class:`Refusal` it carries.

    The reply is parsed once, however large (a model state, a masked vector).

    Raises:
        WireError: if the reply is malformed.
    """
    document: dict[str, Any] = decode(data, dict[str, Any])
    if "error" in document:
        return _refusal(document)
    if set(document) != {"ok"}:
        raise WireError("malformed reply", remedy="check that both sides run the same clinfl")
    return from_json_value(document["ok"], expected, "reply")


def decode_reply(data: bytes, expected: Any) -> Any:
    """Return the reply's value, or raise the site's refusal as the matching clinfl error.

    Raises:
        ClinflError: the site's refusal (PolicyViolation, ProtocolViolation, SiteUnavailable...).
        WireError: if the reply is malformed.
    """
    value = open_reply(data, expected)
    if isinstance(value, Refusal):
        raise value.error
    return value


def read_refusal(data: bytes) -> Refusal | None:
    """Return the refusal in an error reply, or None for a successful one.

    Raises:
        WireError: if the reply is malformed.
    """
    document: dict[str, Any] = decode(data, dict[str, Any])
    return _refusal(document) if "error" in document else None


def _refusal(document: dict[str, Any]) -> Refusal:
    body, site = document.get("error"), document.get("site")
    if not isinstance(body, dict) or not (site is None or isinstance(site, str)):
        raise WireError("malformed refusal", remedy="check that both sides run the same clinfl")
    cls = _KINDS.get(str(body.get("kind")), FederationError)
    message = str(body.get("message", "the site refused"))[:2000]
    remedy = str(body.get("remedy", "see the site's audit log"))[:500]
    return Refusal(cls(message, remedy=remedy), site)
