"""A lying coordinator against honest SiteSessions: every attack is refused, nothing leaks.

Each test plays the coordinator by hand and checks a share count: for no site does the
coordinator hold ``threshold`` shares of both the self-mask seed and the mask key. Counting
shares misses attacks such as selective routing; tests/unit/test_secagg_attacks.py plays issue
14's attacks to the end and tries to compute the inputs from what the coordinator collected.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from clinfl.errors import ProtocolViolation
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.server_session import ServerSession
from clinfl.secagg.settings import SecAggRequirements, plan_round
from clinfl.secagg.site_session import SiteSession
from tests.support.secagg_round import Federation, binding_for

POLICY = SecAggRequirements(min_sites=3)


class Round:
    """An honest run up to the consistency stage, with hooks for the attacks."""

    def __init__(self, n: int = 5, round_id: int = 2) -> None:
        self.federation = Federation.of(n)
        self.params = plan_round(
            round_id=round_id, site_ids=self.federation.site_ids, vector_length=6, min_sites=3
        )
        self.sessions: dict[str, SiteSession] = {
            s: self.federation.session(s, self.params, requirements=POLICY)
            for s in self.params.site_ids
        }
        self.server = ServerSession(self.params)
        self.collected: list[RevealedShares] = []

    @property
    def sites(self) -> tuple[str, ...]:
        return self.params.site_ids

    def advertise(self) -> tuple[Advertisement, ...]:
        return self.server.relay_advertisements([self.sessions[s].advertise() for s in self.sites])

    def graph(self, relayed: tuple[Advertisement, ...]) -> tuple[GraphReveal, ...]:
        return self.server.relay_graph_reveals(
            [self.sessions[s].reveal_graph_nonce(relayed) for s in self.sites]
        )

    def share(self, reveals: tuple[GraphReveal, ...]) -> dict[str, list[EncryptedShare]]:
        return self.server.route_shares({s: self.sessions[s].share(reveals) for s in self.sites})

    def masked(self, inbox: dict[str, list[EncryptedShare]]) -> frozenset[str]:
        length = self.params.masked_length
        inputs = {s: np.arange(length, dtype=np.uint32) for s in self.sites}
        return self.server.add_masked_inputs(
            self.sessions[s].masked_input(inbox[s], inputs[s]) for s in self.sites
        )

    def honest_until_consistency(self) -> None:
        self.masked(self.share(self.graph(self.advertise())))

    def reveal(self, site: str, request: UnmaskRequest) -> None:
        self.collected.append(self.sessions[site].reveal(request))

    def unmaskable_sites(self) -> set[str]:
        """Sites for which the coordinator holds t shares of both secrets."""
        seeds: dict[str, set[int]] = defaultdict(set)
        mask_keys: dict[str, set[int]] = defaultdict(set)
        for answer in self.collected:
            for site, share in answer.self_mask_shares.items():
                seeds[site].add(share.x)
            for site, share in answer.mask_key_shares.items():
                mask_keys[site].add(share.x)
        t = self.params.threshold
        return {s for s in self.sites if len(seeds[s]) >= t and len(mask_keys[s]) >= t}


def _substitute_key(advert: Advertisement) -> Advertisement:
    fake = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return replace(advert, mask_key=fake)


def test_key_substitution_is_refused_by_every_honest_site() -> None:
    game = Round()
    relayed = list(game.advertise())
    victim = relayed[1].site_id
    relayed[1] = _substitute_key(relayed[1])
    for site in game.sites:
        with pytest.raises(ProtocolViolation, match=f"{victim}: signature does not match"):
            game.sessions[site].reveal_graph_nonce(tuple(relayed))
    assert len(game.federation.audit) == len(game.sites)  # each site logged why
    # a refused session never answers again
    with pytest.raises(ProtocolViolation, match="abandoned"):
        game.sessions[game.sites[0]].sign_survivors(frozenset(game.sites))


def test_site_listed_as_both_survived_and_dropped_is_refused() -> None:
    game = Round()
    game.honest_until_consistency()
    survivors = game.server.survivors
    signatures = tuple(game.sessions[s].sign_survivors(survivors) for s in game.sites)
    victim = game.sites[0]
    for site in game.sites[1:]:
        request = UnmaskRequest(
            round_id=game.params.round_id,
            survivors=frozenset(game.sites),
            dropped=frozenset({victim}),
            signed_survivors=survivors,
            signatures=signatures,
        )
        with pytest.raises(ProtocolViolation, match="asks for other shares than the signed"):
            game.reveal(site, request)
    assert game.collected == [] and game.unmaskable_sites() == set()


def test_split_requests_cannot_collect_both_secrets_of_one_site() -> None:
    """Ask half the sites for the victim's seed and the other half for its mask key."""
    game = Round(n=7)
    game.honest_until_consistency()
    survivors = game.server.survivors
    signatures = tuple(game.sessions[s].sign_survivors(survivors) for s in game.sites)
    victim, others = game.sites[0], game.sites[1:]
    for position, site in enumerate(others):
        honest = game.server.unmask_request(site)
        if position % 2:
            lying = replace(
                honest,
                survivors=honest.survivors - {victim},
                dropped=honest.dropped | {victim},
                signatures=signatures,
            )
            with pytest.raises(ProtocolViolation, match="asks for other shares than the signed"):
                game.reveal(site, lying)
        else:
            game.reveal(site, replace(honest, signatures=signatures))
    assert game.collected and victim not in game.unmaskable_sites()
    assert all(not answer.mask_key_shares for answer in game.collected)


def test_inconsistent_survivor_sets_are_refused_at_unmask() -> None:
    game = Round(n=6)
    game.honest_until_consistency()
    full = game.server.survivors
    victim = game.sites[0]
    smaller = full - {victim}  # the victim's input arrived, but half are told it dropped
    told_full, told_smaller = game.sites[:3], game.sites[3:]
    signatures = [game.sessions[s].sign_survivors(full) for s in told_full] + [
        game.sessions[s].sign_survivors(smaller) for s in told_smaller
    ]
    for site, signed in [(s, full) for s in told_full] + [(s, smaller) for s in told_smaller]:
        request = UnmaskRequest(
            round_id=game.params.round_id,
            survivors=frozenset(signed),
            dropped=frozenset(set(game.sites) - signed),
            signed_survivors=signed,
            signatures=tuple(signatures),
        )
        with pytest.raises(ProtocolViolation, match="signed a different transcript or survivor"):
            game.reveal(site, request)
    assert game.collected == [] and game.unmaskable_sites() == set()


def test_threshold_below_policy_is_refused_before_any_key_is_made() -> None:
    federation = Federation.of(5)
    params = plan_round(
        round_id=1, site_ids=federation.site_ids, vector_length=4, min_sites=2, threshold=2
    )
    for site in params.site_ids:
        with pytest.raises(
            ProtocolViolation, match="threshold 2 is below this site's policy minimum 3"
        ):
            federation.session(site, params, requirements=POLICY)


def test_survivor_set_below_policy_is_not_signed() -> None:
    game = Round()
    game.honest_until_consistency()
    tiny = frozenset(game.sites[:2])
    for site in tiny:
        with pytest.raises(ProtocolViolation, match="2 survivors; this site requires at least 4"):
            game.sessions[site].sign_survivors(tiny)


def test_parameters_for_another_round_than_the_site_accepted_are_refused() -> None:
    """Round ids themselves are checked by the site agent (tests/unit/test_secagg_attacks.py)."""
    federation = Federation.of(4)
    params = plan_round(round_id=5, site_ids=federation.site_ids, vector_length=4, min_sites=3)
    for accepted in (4, 6):
        binding = binding_for(
            replace(params, round_id=accepted), roster_hash=federation.roster_hash
        )
        with pytest.raises(ProtocolViolation, match=f"this site accepted round {accepted}"):
            federation.session(federation.site_ids[0], params, requirements=POLICY, binding=binding)


def _next_round(game: Round) -> Round:
    later = Round.__new__(Round)
    later.federation = game.federation
    later.params = replace(game.params, round_id=game.params.round_id + 1)
    later.sessions = {
        s: game.federation.session(s, later.params, requirements=POLICY) for s in game.sites
    }
    later.server = ServerSession(later.params)
    later.collected = []
    return later


def test_replayed_advertisement_from_an_old_round_is_refused() -> None:
    old = Round()
    old_adverts = old.advertise()
    new = _next_round(old)
    fresh = list(new.advertise())
    fresh[2] = next(a for a in old_adverts if a.site_id == fresh[2].site_id)
    for site in new.sites:
        if site == fresh[2].site_id:
            continue
        with pytest.raises(ProtocolViolation, match="bound to another round_id"):
            new.sessions[site].reveal_graph_nonce(tuple(fresh))


def test_replayed_share_from_an_old_round_is_refused() -> None:
    old = Round()
    old_inbox = old.share(old.graph(old.advertise()))
    new = _next_round(old)
    inbox = new.share(new.graph(new.advertise()))
    target = new.sites[0]
    stale = [replace(s, round_id=new.params.round_id) for s in old_inbox[target]]
    vector = np.zeros(new.params.masked_length, dtype=np.uint32)
    with pytest.raises(ProtocolViolation, match="failed authentication"):
        new.sessions[target].masked_input(stale, vector)
    assert inbox[target]  # the fresh shares existed; the coordinator swapped them


def test_replayed_survivor_signatures_are_refused() -> None:
    old = Round()
    old.honest_until_consistency()
    old_signatures = tuple(old.sessions[s].sign_survivors(old.server.survivors) for s in old.sites)
    new = _next_round(old)
    new.honest_until_consistency()
    survivors = new.server.survivors
    for site in new.sites:
        new.sessions[site].sign_survivors(survivors)
    for site in new.sites:
        request = replace(new.server.unmask_request(site), signatures=old_signatures)
        with pytest.raises(ProtocolViolation, match="signed a different transcript"):
            new.reveal(site, request)
    assert new.unmaskable_sites() == set()


def test_forged_signature_for_a_site_is_refused() -> None:
    game = Round()
    game.honest_until_consistency()
    survivors = game.server.survivors
    signatures = [game.sessions[s].sign_survivors(survivors) for s in game.sites[:2]]
    forged = SurvivorSignature(game.sites[2], bytes(64))
    for site in game.sites[:2]:
        request = replace(game.server.unmask_request(site), signatures=(*signatures, forged))
        with pytest.raises(ProtocolViolation, match="signed a different transcript"):
            game.reveal(site, request)


def test_out_of_order_stage_is_refused_and_ends_the_session() -> None:
    game = Round()
    session = game.sessions[game.sites[0]]
    with pytest.raises(ProtocolViolation, match="SHARE requested after the start"):
        session.share(())
    with pytest.raises(ProtocolViolation, match="abandoned"):
        session.advertise()


def test_honest_round_under_the_same_harness_reveals_only_what_is_needed() -> None:
    game = Round()
    game.honest_until_consistency()
    survivors = game.server.survivors
    signatures = [game.sessions[s].sign_survivors(survivors) for s in game.sites]
    game.server.collect_signatures(signatures)
    for site in game.sites:
        game.reveal(site, game.server.unmask_request(site))
    total = game.server.unmask(game.collected)
    expected = np.arange(game.params.masked_length, dtype=np.uint64) * 5
    assert np.array_equal(total, expected.astype(np.uint32))
    assert game.unmaskable_sites() == set()
