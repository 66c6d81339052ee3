"""Stages 4 and 5 checks: the signed survivor set, and the unmask request a site will answer.

These are the checks that stop a lying coordinator. Signatures cover the transcript hash and U3
(R6), so none can be replayed into another round or session. A site continues only if, for every
neighbour it is asked about, at least ``t`` of that neighbour's share holders signed the same
transcript and U3, and it reveals a neighbour's self-mask share only for survivors and a mask-key
share only for dropped sites, never both for one neighbour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clinfl.errors import ProtocolViolation
from clinfl.secagg.hazmat.keys import sign, verify
from clinfl.secagg.transcript import length_prefixed

_LABEL = b"clinfl/secagg/survivors/v2"
_REMEDY = "the round is abandoned and no share was revealed; check the coordinator"


def survivors_payload(transcript: bytes, survivors: Set[str]) -> bytes:
    """Return the unambiguous byte string a site signs: the transcript hash and U3."""
    return length_prefixed(_LABEL, transcript, *(s.encode() for s in sorted(survivors)))


@dataclass(frozen=True)
class SurvivorSignature:
    """One site's signature over the transcript so far and the survivor set it was sent."""

    site_id: str
    signature: bytes


def sign_survivors(
    *, site_id: str, transcript: bytes, survivors: Set[str], signing_key: Ed25519PrivateKey
) -> SurvivorSignature:
    """Sign ``survivors`` under ``transcript`` (R6)."""
    return SurvivorSignature(site_id, sign(signing_key, survivors_payload(transcript, survivors)))


def valid_signers(
    signatures: Sequence[SurvivorSignature],
    *,
    transcript: bytes,
    survivors: Set[str],
    directory: Mapping[str, Ed25519PublicKey],
) -> frozenset[str]:
    """Return the sites whose signature over ``(transcript, survivors)`` is valid.

    Raises:
        ProtocolViolation: if any relayed signature is over something else (the coordinator
            told sites different stories, or replayed a signature from another round or
            session), comes from outside U3, or a site signed twice.
    """
    payload = survivors_payload(transcript, survivors)
    problems: list[str] = []
    signers: set[str] = set()
    for item in signatures:
        public = directory.get(item.site_id)
        if public is None or item.site_id not in survivors:
            problems.append(f"{item.site_id}: not a survivor of this round")
        elif item.site_id in signers:
            problems.append(f"{item.site_id}: signed twice")
        elif not verify(public, item.signature, payload):
            problems.append(f"{item.site_id}: signed a different transcript or survivor set")
        else:
            signers.add(item.site_id)
    if problems:
        raise ProtocolViolation("survivor-set check failed: " + "; ".join(problems), remedy=_REMEDY)
    return frozenset(signers)


def check_neighbourhood_quorum(
    signers: Set[str],
    *,
    sites: Set[str],
    graph: Mapping[str, Set[str]],
    threshold: int,
) -> None:
    """Require ``threshold`` signers among the holders of each site in ``sites`` (R5, R6).

    A site reveals a share of a neighbour's secret only when at least ``threshold`` of that
    neighbour's share holders (the neighbour and its neighbours) signed the same transcript and
    U3, so two contradicting survivor sets cannot both unlock a secret.

    Raises:
        ProtocolViolation: naming every site whose holders did not reach the threshold.
    """
    short: list[str] = []
    for site in sorted(sites):
        holders = set(graph.get(site, ())) | {site}
        count = len(holders & signers)
        if count < threshold:
            short.append(f"{site} ({count} of its holders signed)")
    if short:
        raise ProtocolViolation(
            f"too few signatures for the survivor set, threshold {threshold}: " + ", ".join(short),
            remedy=_REMEDY,
        )


def check_unmask_request(
    *,
    own_id: str,
    survivors: Set[str],
    dropped: Set[str],
    neighbours: Set[str],
    signed_survivors: Set[str],
    threshold: int,
) -> None:
    """Check the coordinator's unmask request before any share is revealed.

    Raises:
        ProtocolViolation: if a site is listed as both survived and dropped, a site in the
            signed U3 is listed as dropped, a listed site is not a neighbour, a survivor is not
            in U3, this site is not in U3, or fewer than ``threshold`` survive.
    """
    problems: list[str] = []
    both = survivors & dropped
    if both:
        problems.append(f"listed as both survived and dropped: {', '.join(sorted(both))}")
    outside = (survivors | dropped) - neighbours - {own_id}
    if outside:
        problems.append(f"not neighbours of {own_id}: {', '.join(sorted(outside))}")
    unmasked_dropped = dropped & signed_survivors
    if unmasked_dropped:
        problems.append(
            "sent masked input but listed as dropped: " + ", ".join(sorted(unmasked_dropped))
        )
    if not survivors <= signed_survivors:
        extra = survivors - signed_survivors
        problems.append(f"survivors outside the signed set: {', '.join(sorted(extra))}")
    if own_id not in signed_survivors:
        problems.append(f"{own_id} is not in the signed survivor set")
    if len(signed_survivors) < threshold:
        problems.append(f"{len(signed_survivors)} survivors, threshold is {threshold}")
    if problems:
        raise ProtocolViolation("unmask request refused: " + "; ".join(problems), remedy=_REMEDY)
