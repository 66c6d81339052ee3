"""The calls a coordinator makes of a site over the network, and how replies and refusals travel.

Every call has one argument type and one reply type (``CALLS``); both sides decode against these
types only (:mod:`clinfl.transport.wire`). A site that refuses or fails answers with an error
envelope naming the kind of failure, and the coordinator raises the matching clinfl error, so a
remote site behaves exactly like an in-process one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
from clinfl.secagg.settings import RoundParameters
from clinfl.transport.wire import decode, encode, from_json_value


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
    builds the model or the ETF.
    """

    site_id: str
    clinfl_version: str
    initial_state: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class TrainRequest:
    """Train one round from the global state (the trainable weights only, never the ETF)."""

    global_state: dict[str, torch.Tensor]
    settings: RoundSettings


@dataclass(frozen=True)
class Nothing:
    """The argument of calls that take none."""


CALLS: dict[str, tuple[Any, Any]] = {
    "join": (JoinRequest, JoinReply),
    "train_round": (TrainRequest, TrainingReport),
    "upload_plain": (Nothing, SiteContribution),
    "secagg_advertise": (RoundParameters, Advertisement),
    "secagg_graph": (tuple[Advertisement, ...], GraphReveal),
    "secagg_share": (tuple[GraphReveal, ...], list[EncryptedShare]),
    "secagg_masked_input": (list[EncryptedShare], MaskedInput),
    "secagg_sign": (frozenset[str], SurvivorSignature),
    "secagg_reveal": (UnmaskRequest, RevealedShares),
    "evaluate": (dict[str, torch.Tensor], EvaluationReport),
}

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


def check_call(name: str) -> tuple[Any, Any]:
    """Return the argument and reply types of call ``name``.

    Raises:
        WireError: for a call clinfl does not have.
    """
    if name not in CALLS:
        raise WireError(
            f"unknown call {name[:40]!r}",
            remedy="the peer runs an incompatible or tampered clinfl; check both versions",
        )
    return CALLS[name]


def encode_reply(value: object) -> bytes:
    """Return a successful reply."""
    return encode({"ok": value})


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
