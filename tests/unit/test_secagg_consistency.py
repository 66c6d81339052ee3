from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.errors import ProtocolViolation
from clinfl.secagg.consistency import (
    SurvivorSignature,
    check_neighbourhood_quorum,
    check_unmask_request,
    sign_survivors,
    valid_signers,
)

SITES = [f"site-{i}" for i in range(5)]
KEYS = {s: Ed25519PrivateKey.generate() for s in SITES}
DIRECTORY = {s: k.public_key() for s, k in KEYS.items()}
U3 = frozenset(SITES[:4])
TRANSCRIPT = b"\x01" * 32
COMPLETE = {s: frozenset(SITES) - {s} for s in SITES}


def _signed(
    survivors: frozenset[str], signers: list[str], transcript: bytes = TRANSCRIPT
) -> list[SurvivorSignature]:
    return [
        sign_survivors(site_id=s, transcript=transcript, survivors=survivors, signing_key=KEYS[s])
        for s in signers
    ]


def test_consistent_survivor_set_passes() -> None:
    signers = valid_signers(
        _signed(U3, list(U3)), transcript=TRANSCRIPT, survivors=U3, directory=DIRECTORY
    )
    assert signers == U3
    check_neighbourhood_quorum(signers, sites=U3, graph=COMPLETE, threshold=3)


def test_inconsistent_survivor_sets_sent_to_different_sites_are_refused() -> None:
    other = frozenset(SITES[:3])
    signatures = _signed(U3, SITES[:2]) + _signed(other, SITES[2:3])
    with pytest.raises(ProtocolViolation, match="site-2: signed a different transcript"):
        valid_signers(signatures, transcript=TRANSCRIPT, survivors=U3, directory=DIRECTORY)


def test_signature_over_another_transcript_is_refused() -> None:
    signatures = _signed(U3, SITES[:3], transcript=b"\x02" * 32)
    with pytest.raises(ProtocolViolation, match="site-0: signed a different transcript"):
        valid_signers(signatures, transcript=TRANSCRIPT, survivors=U3, directory=DIRECTORY)


def test_signature_from_outside_u3_and_too_few_signers_are_refused() -> None:
    signatures = _signed(U3, ["site-0"]) + _signed(U3, ["site-4"])
    with pytest.raises(ProtocolViolation, match="site-4: not a survivor"):
        valid_signers(signatures, transcript=TRANSCRIPT, survivors=U3, directory=DIRECTORY)
    signers = valid_signers(
        _signed(U3, ["site-0"]), transcript=TRANSCRIPT, survivors=U3, directory=DIRECTORY
    )
    with pytest.raises(ProtocolViolation, match=r"site-1 \(1 of its holders signed\)"):
        check_neighbourhood_quorum(signers, sites=U3, graph=COMPLETE, threshold=3)


def _request(**overrides: object) -> None:
    arguments: dict[str, object] = {
        "own_id": "site-0",
        "survivors": frozenset({"site-1", "site-2"}),
        "dropped": frozenset({"site-4"}),
        "neighbours": frozenset({"site-1", "site-2", "site-4"}),
        "signed_survivors": U3,
        "threshold": 3,
    }
    arguments.update(overrides)
    check_unmask_request(**arguments)  # type: ignore[arg-type]


def test_honest_unmask_request_passes() -> None:
    _request()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"dropped": frozenset({"site-4", "site-1"})}, "both survived and dropped: site-1"),
        (
            {"survivors": frozenset({"site-1"}), "dropped": frozenset({"site-2", "site-4"})},
            "sent masked input but listed as dropped: site-2",
        ),
        ({"survivors": frozenset({"site-1", "site-3"})}, "not neighbours of site-0: site-3"),
        ({"signed_survivors": frozenset({"site-0", "site-1"})}, "2 survivors, threshold is 3"),
        (
            {
                "own_id": "site-4",
                "neighbours": frozenset({"site-1", "site-2"}),
                "dropped": frozenset(),
            },
            "site-4 is not in the signed survivor set",
        ),
    ],
)
def test_lying_coordinator_unmask_requests_are_refused(
    overrides: dict[str, object], needle: str
) -> None:
    with pytest.raises(ProtocolViolation, match=needle):
        _request(**overrides)
