"""Stage 1: a site's signed advertisement; stage 2: the graph reveal that follows it.

The signed payload binds the site id, the round's :class:`~clinfl.secagg.transcript.RoundBinding`
(roster, run, round, parameters, global model), both fresh public keys and a commitment to the
site's random contribution to the neighbour graph. A coordinator that substitutes a key, replays
an old advertisement, or shows sites different models, settings or rosters is caught by every
honest site, because each compares every advertisement's binding with its own (R1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clinfl.errors import ProtocolViolation
from clinfl.secagg.hazmat.keys import sign, verify
from clinfl.secagg.transcript import RoundBinding, digest, length_prefixed

_LABEL = b"clinfl/secagg/advertise/v2"
GRAPH_NONCE_BYTES = 32


@dataclass(frozen=True)
class Advertisement:
    """A site's public keys and graph commitment for one round, signed with its binding."""

    site_id: str
    binding: RoundBinding
    share_key: bytes
    mask_key: bytes
    graph_commitment: bytes
    signature: bytes

    @property
    def round_id(self) -> int:
        """The round this advertisement is for."""
        return self.binding.round_id


@dataclass(frozen=True)
class GraphReveal:
    """A site's opened graph commitment: the random bytes it committed to in its advertisement."""

    site_id: str
    round_id: int
    nonce: bytes


def graph_commitment(site_id: str, binding: RoundBinding, nonce: bytes) -> bytes:
    """Return the commitment to ``nonce`` (hiding: the nonce is 32 random bytes)."""
    return digest(b"clinfl/secagg/graph-commit/v1", site_id.encode(), binding.encode(), nonce)


def advertisement_payload(
    site_id: str, binding: RoundBinding, share_key: bytes, mask_key: bytes, commitment: bytes
) -> bytes:
    """Return the unambiguous (length-prefixed) byte string a site signs."""
    return length_prefixed(
        _LABEL, site_id.encode(), binding.encode(), share_key, mask_key, commitment
    )


def make_advertisement(
    *,
    site_id: str,
    binding: RoundBinding,
    signing_key: Ed25519PrivateKey,
    share_key: bytes,
    mask_key: bytes,
    commitment: bytes,
) -> Advertisement:
    """Sign and return this site's advertisement."""
    payload = advertisement_payload(site_id, binding, share_key, mask_key, commitment)
    return Advertisement(
        site_id, binding, share_key, mask_key, commitment, sign(signing_key, payload)
    )


def check_advertisements(
    adverts: Sequence[Advertisement],
    *,
    binding: RoundBinding,
    directory: Mapping[str, Ed25519PublicKey],
    threshold: int,
) -> None:
    """Check every relayed advertisement as an honest site must; list all problems at once.

    Raises:
        ProtocolViolation: for an unknown or repeated site, a binding other than ``binding``
            (another roster, run, round, parameters or global model), a bad signature, a public
            key or commitment used twice, or fewer than ``threshold`` sites.
    """
    problems: list[str] = []
    seen_sites: set[str] = set()
    seen_keys: set[bytes] = set()
    for advert in adverts:
        public = directory.get(advert.site_id)
        if public is None:
            problems.append(f"{advert.site_id}: not in the federation's roster")
            continue
        if advert.site_id in seen_sites:
            problems.append(f"{advert.site_id}: advertised twice")
        seen_sites.add(advert.site_id)
        different = binding.differences(advert.binding)
        if different:
            problems.append(f"{advert.site_id}: bound to another {', '.join(different)}")
        payload = advertisement_payload(
            advert.site_id,
            advert.binding,
            advert.share_key,
            advert.mask_key,
            advert.graph_commitment,
        )
        if not verify(public, advert.signature, payload):
            problems.append(f"{advert.site_id}: signature does not match its advertisement")
        for key in (advert.share_key, advert.mask_key, advert.graph_commitment):
            if key in seen_keys:
                problems.append(f"{advert.site_id}: public key or commitment reused")
            seen_keys.add(key)
    if len(seen_sites) < threshold:
        problems.append(f"only {len(seen_sites)} sites advertised, threshold is {threshold}")
    if problems:
        raise ProtocolViolation(
            "advertisement check failed: " + "; ".join(problems),
            remedy="the round is abandoned; check the coordinator and the federation's roster",
        )


def check_graph_reveals(
    reveals: Sequence[GraphReveal],
    *,
    adverts: Mapping[str, Advertisement],
    round_id: int,
    require_all: bool,
) -> dict[str, bytes]:
    """Return the opened nonce of each site that revealed, checked against its commitment.

    With ``require_all`` (a sparse graph) every advertised site must reveal: a missing reveal
    would let the coordinator choose the graph by choosing whose reveal to drop. A complete
    graph does not depend on the nonces, so a site missing there has simply dropped out.

    Raises:
        ProtocolViolation: for a repeated, unknown or unopened reveal, or (``require_all``) a
            missing one.
    """
    problems: list[str] = []
    opened: dict[str, bytes] = {}
    for reveal in reveals:
        advert = adverts.get(reveal.site_id)
        if advert is None:
            problems.append(f"{reveal.site_id}: revealed without advertising")
        elif reveal.site_id in opened:
            problems.append(f"{reveal.site_id}: revealed twice")
        elif reveal.round_id != round_id or len(reveal.nonce) != GRAPH_NONCE_BYTES:
            problems.append(f"{reveal.site_id}: reveal for another round or malformed")
        elif graph_commitment(reveal.site_id, advert.binding, reveal.nonce) != (
            advert.graph_commitment
        ):
            problems.append(f"{reveal.site_id}: reveal does not open its commitment")
        else:
            opened[reveal.site_id] = reveal.nonce
    missing = sorted(set(adverts) - set(opened))
    if missing and require_all:
        problems.append(f"no valid reveal from {', '.join(missing)}")
    if problems:
        raise ProtocolViolation(
            "graph reveal check failed: " + "; ".join(problems),
            remedy="the round is abandoned; every advertised site must reveal its commitment",
        )
    return opened
