from __future__ import annotations

import itertools
import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from clinfl.errors import ProtocolViolation
from clinfl.secagg.advertise import (
    Advertisement,
    check_advertisements,
    graph_commitment,
    make_advertisement,
)
from clinfl.secagg.stages import Stage, check_transition
from clinfl.secagg.transcript import RoundBinding, digest


def test_full_stage_transition_matrix() -> None:
    states: list[Stage | None] = [None, *Stage]
    for current, requested in itertools.product(states, Stage):
        legal = (current is None and requested == Stage.ADVERTISE) or (
            current is not None and requested == current + 1
        )
        if legal:
            assert check_transition(current, requested) == requested
        else:
            with pytest.raises(ProtocolViolation):
                check_transition(current, requested)


def _raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _binding(round_id: int = 3) -> RoundBinding:
    return RoundBinding(
        roster_hash=digest(b"roster"),
        run_id="run",
        round_id=round_id,
        params_hash=digest(b"params"),
        model_hash=digest(b"model"),
        config_hash=digest(b"config"),
    )


def _advert(site: str, key: Ed25519PrivateKey, binding: RoundBinding) -> Advertisement:
    return make_advertisement(
        site_id=site,
        binding=binding,
        signing_key=key,
        share_key=_raw(X25519PrivateKey.generate()),
        mask_key=_raw(X25519PrivateKey.generate()),
        commitment=graph_commitment(site, binding, os.urandom(32)),
    )


def _federation(n: int) -> tuple[dict[str, Ed25519PrivateKey], list[Advertisement]]:
    signing = {f"site-{i}": Ed25519PrivateKey.generate() for i in range(n)}
    return signing, [_advert(site, key, _binding()) for site, key in signing.items()]


def test_honest_advertisements_pass() -> None:
    signing, adverts = _federation(4)
    directory = {site: key.public_key() for site, key in signing.items()}
    check_advertisements(adverts, binding=_binding(), directory=directory, threshold=3)


def test_key_substitution_by_the_coordinator_is_refused() -> None:
    signing, adverts = _federation(4)
    directory = {site: key.public_key() for site, key in signing.items()}
    forged = replace(adverts[1], mask_key=_raw(X25519PrivateKey.generate()))
    with pytest.raises(ProtocolViolation, match="site-1: signature does not match"):
        check_advertisements(
            [adverts[0], forged, *adverts[2:]], binding=_binding(), directory=directory, threshold=3
        )


def test_replayed_round_unknown_site_duplicate_and_threshold_are_all_listed() -> None:
    signing, adverts = _federation(3)
    directory = {site: key.public_key() for site, key in signing.items()}
    old_round = _advert("site-0", signing["site-0"], _binding(round_id=2))
    stranger = replace(adverts[2], site_id="site-9")
    with pytest.raises(ProtocolViolation) as caught:
        check_advertisements(
            [old_round, adverts[1], adverts[1], stranger],
            binding=_binding(),
            directory=directory,
            threshold=3,
        )
    message = caught.value.message
    assert "site-0: bound to another round_id" in message
    assert "site-1: advertised twice" in message
    assert "site-9: not in the federation's roster" in message
    assert "only 2 sites advertised, threshold is 3" in message
