"""The site's side of one secure-aggregation round: a state machine that checks everything.

A :class:`SiteSession` lives for one round. Each method is one stage and may only be called in
order. Every rule of SECAGG.md "Version 2" that protects this site is checked here, before the
site releases anything that depends on it:

- R1: every advertisement carries this site's own binding (roster, run, round, parameters,
  global model), or the round is refused;
- R3: the neighbour graph comes from every advertised site's committed-then-revealed nonce;
- R4: a survivor set U3 is signed only if every neighbour in it shared with this site, and this
  site masked with it;
- R5: the threshold is split-proof (``t > (h + c) / 2``) and U3 holds at least
  ``max(t, min_sites + c)`` sites;
- R6: survivor signatures cover the transcript hash, and a neighbour's share is revealed only
  when ``t`` of that neighbour's holders signed the same transcript and U3;
- R9: any exception while handling a peer's input becomes a
  :class:`~clinfl.errors.ProtocolViolation`, the session is aborted for good, its secrets are
  wiped, and the reason goes to the site's audit hook.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from clinfl.errors import ProtocolViolation
from clinfl.secagg.advertise import (
    GRAPH_NONCE_BYTES,
    check_advertisements,
    check_graph_reveals,
    graph_commitment,
    make_advertisement,
)
from clinfl.secagg.consistency import (
    check_neighbourhood_quorum,
    sign_survivors,
    valid_signers,
)
from clinfl.secagg.fail_closed import fail_closed as _fail_closed
from clinfl.secagg.graph import COMPLETE_GRAPH_LIMIT, graph_seed
from clinfl.secagg.hazmat import keys
from clinfl.secagg.hazmat.prg import residue_dtype
from clinfl.secagg.hazmat.shamir import Share, split_secret
from clinfl.secagg.masking import mask_vector
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import (
    RoundParameters,
    SecAggRequirements,
    check_holders,
    check_round_parameters,
)
from clinfl.secagg.share_codec import decode_share_pair, encode_share_pair, pair_context
from clinfl.secagg.stages import Stage, check_transition
from clinfl.secagg.transcript import RoundBinding, transcript_hash

AuditHook = Callable[[int, str], None]  # (round id, why the site refused)
RandomBytes = Callable[[int], bytes]
T = TypeVar("T")


@dataclass
class _HeldShares:
    self_mask: Share
    mask_key: Share


class SiteSession:
    """One site's state for one round; see the module docstring."""

    def __init__(
        self,
        params: RoundParameters,
        *,
        site_id: str,
        signing_key: Ed25519PrivateKey,
        directory: Mapping[str, Ed25519PublicKey],
        requirements: SecAggRequirements,
        binding: RoundBinding,
        audit: AuditHook | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        """Check the proposed round before anything is generated.

        ``binding`` is what this site itself knows of the round: its pinned roster's hash, the
        run it joined, the round id it accepted, the hash of these parameters with the round's
        training settings, and the hash of the global model it received.

        Raises:
            ProtocolViolation: if the parameters break this site's policy or do not match the
                run and round the site accepted.
        """
        self._audit = audit
        self._params = params
        self._site_id = site_id
        self._signing_key = signing_key
        self._directory = {s: directory[s] for s in params.site_ids if s in directory}
        self._requirements = requirements
        self._binding = binding
        self._random_bytes = random_bytes
        self._stage: Stage | None = None
        self._aborted = False
        self._share_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._graph_nonce: bytes | None = None
        self._adverts: dict[str, Advertisement] = {}
        self._graph: dict[str, frozenset[str]] = {}
        self._neighbours: frozenset[str] = frozenset()
        self._transcript = b""
        self._self_seed: bytes | None = None
        self._own_shares: _HeldShares | None = None
        self._held: dict[str, _HeldShares] = {}
        self._signed_survivors: frozenset[str] | None = None
        self._guard(self._check_params)

    def _check_params(self) -> None:
        params, binding = self._params, self._binding
        check_round_parameters(params, own_id=self._site_id, requirements=self._requirements)
        if (params.run_id, params.round_id) != (binding.run_id, binding.round_id):
            raise ProtocolViolation(
                f"round {params.round_id} of run {params.run_id!r} refused: this site accepted "
                f"round {binding.round_id} of run {binding.run_id!r}",
                remedy="the coordinator must run the round it announced",
            )
        if self._site_id not in self._directory:
            raise ProtocolViolation(
                f"{self._site_id} is not in its own roster", remedy="check the pinned roster"
            )

    @property
    def params(self) -> RoundParameters:
        """The round's (checked) parameters."""
        return self._params

    @property
    def site_id(self) -> str:
        """This site's name."""
        return self._site_id

    @property
    def aborted(self) -> bool:
        """True once the session refused something; it then reveals nothing more."""
        return self._aborted

    @property
    def neighbours(self) -> frozenset[str]:
        """This site's neighbours in the round's graph (known after the share stage)."""
        return self._neighbours

    @property
    def transcript(self) -> bytes:
        """The transcript hash survivor signatures cover (known after the share stage)."""
        return self._transcript

    def _guard(self, check: Callable[[], None]) -> None:
        try:
            check()
        except ProtocolViolation as violation:
            self._abort(violation)
            raise

    def _abort(self, violation: ProtocolViolation) -> None:
        self._aborted = True
        self._wipe()
        if self._audit is not None:
            self._audit(self._params.round_id, violation.message)

    def _wipe(self) -> None:
        self._self_seed = None
        self._share_key = self._mask_key = None
        self._graph_nonce = None
        self._held.clear()
        self._own_shares = None

    def _advance(self, stage: Stage) -> None:
        if self._aborted:
            raise ProtocolViolation(
                f"round {self._params.round_id} was abandoned; {stage.name} refused",
                remedy="start a new round",
            )
        current = self._stage

        def check() -> None:
            check_transition(current, stage)

        self._guard(check)
        self._stage = stage

    def _violation(self, message: str) -> NoReturn:
        violation = ProtocolViolation(
            f"round {self._params.round_id}, {self._site_id}: {message}",
            remedy="the round is abandoned and no share was revealed; check the coordinator",
        )
        self._abort(violation)
        raise violation

    def _secret(self, value: T | None, what: str) -> T:
        """Return a secret an earlier stage made; abort the round (wiping all) if it is gone.

        An explicit check, not ``assert`` (``python -O`` removes those): a wiped or never
        made secret must stop the round, never reach a message as None.

        Raises:
            ProtocolViolation: if ``value`` is None.
        """
        if value is None:
            self._violation(f"{what} is missing (wiped, or its stage never ran); nothing sent")
        return value

    # Stage 1 ---------------------------------------------------------------------------------
    @_fail_closed
    def advertise(self) -> Advertisement:
        """Make two fresh X25519 key pairs and a graph commitment; return them signed."""
        self._advance(Stage.ADVERTISE)
        self._share_key = keys.new_agreement_key()
        self._mask_key = keys.new_agreement_key()
        nonce = self._random_bytes(GRAPH_NONCE_BYTES)
        self._graph_nonce = nonce
        advert = make_advertisement(
            site_id=self._site_id,
            binding=self._binding,
            signing_key=self._signing_key,
            share_key=keys.agreement_public_bytes(self._share_key),
            mask_key=keys.agreement_public_bytes(self._mask_key),
            commitment=graph_commitment(self._site_id, self._binding, nonce),
        )
        self._adverts[self._site_id] = advert
        return advert

    # Stage 2 ---------------------------------------------------------------------------------
    @_fail_closed
    def reveal_graph_nonce(self, adverts: Sequence[Advertisement]) -> GraphReveal:
        """Check the relayed advertisements (R1); open this site's graph commitment.

        Raises:
            ProtocolViolation: for any failed advertisement check, another binding, a
                substituted own advertisement, or too few sites for this site's policy.
        """
        self._advance(Stage.GRAPH)
        params = self._params
        own = self._adverts[self._site_id]
        self._guard(
            lambda: check_advertisements(
                adverts, binding=self._binding, directory=self._directory, threshold=1
            )
        )
        by_site = {advert.site_id: advert for advert in adverts}
        if by_site.get(self._site_id) != own:
            self._violation("its own advertisement was changed or left out")
        floor = self._requirements.survivor_floor(params.threshold)
        if len(by_site) < floor:
            self._violation(f"only {len(by_site)} sites advertised; this site requires {floor}")
        self._adverts = by_site
        nonce = self._secret(self._graph_nonce, "the graph nonce")
        return GraphReveal(self._site_id, params.round_id, nonce)

    # Stage 3 ---------------------------------------------------------------------------------
    @_fail_closed
    def share(self, reveals: Sequence[GraphReveal]) -> list[EncryptedShare]:
        """Check every advertised site's graph reveal (R3); return sealed shares for neighbours.

        Raises:
            ProtocolViolation: for a missing or false reveal, a threshold that is not
                split-proof for this site's share holders (R5), or too few holders.
        """
        self._advance(Stage.SHARE)
        params = self._params
        opened: dict[str, bytes] = {}

        sparse = len(self._adverts) > COMPLETE_GRAPH_LIMIT

        def check_reveals() -> None:
            opened.update(
                check_graph_reveals(
                    reveals, adverts=self._adverts, round_id=params.round_id, require_all=sparse
                )
            )

        self._guard(check_reveals)
        if opened.get(self._site_id) != self._graph_nonce:
            self._violation("its own graph reveal was changed or left out")
        self._adverts = {site: self._adverts[site] for site in opened}
        floor = self._requirements.survivor_floor(params.threshold)
        if len(opened) < floor:
            self._violation(f"only {len(opened)} sites revealed; this site requires {floor}")
        self._graph = params.neighbours(opened, seed=graph_seed(opened))
        self._neighbours = self._graph[self._site_id]
        holders = sorted(self._neighbours | {self._site_id})
        self._guard(
            lambda: check_holders(params, holders=len(holders), requirements=self._requirements)
        )
        self._transcript = transcript_hash(self._binding, self._adverts, opened)
        mask_key = self._secret(self._mask_key, "the mask key")
        self._secret(self._share_key, "the share key")
        seed = self._random_bytes(32)
        self._self_seed = seed
        seed_shares = split_secret(seed, threshold=params.threshold, holders=len(params.site_ids))
        key_shares = split_secret(
            keys.agreement_private_bytes(mask_key),
            threshold=params.threshold,
            holders=len(params.site_ids),
        )
        sealed: list[EncryptedShare] = []
        for holder in holders:
            point = params.share_point(holder) - 1
            pair = _HeldShares(seed_shares[point], key_shares[point])
            if holder == self._site_id:
                self._own_shares = pair
                continue
            key = self._agreement_key(holder, purpose=keys.SHARE_ENCRYPTION)
            context = pair_context(params.round_id, self._site_id, holder, directed=True)
            blob = keys.seal(
                key, encode_share_pair(pair.self_mask, pair.mask_key), associated_data=context
            )
            sealed.append(EncryptedShare(self._site_id, holder, params.round_id, blob))
        return sealed

    def _agreement_key(self, peer: str, *, purpose: str) -> bytes:
        sharing = purpose == keys.SHARE_ENCRYPTION
        own = self._secret(
            self._share_key if sharing else self._mask_key,
            "the share key" if sharing else "the mask key",
        )
        advert = self._adverts[peer]
        public = advert.share_key if sharing else advert.mask_key
        context = pair_context(self._params.round_id, self._site_id, peer, directed=False)
        return keys.derive_shared_key(
            own, keys.agreement_public_key(public), purpose=purpose, context=context
        )

    # Stage 4 ---------------------------------------------------------------------------------
    @_fail_closed
    def masked_input(
        self, shares: Sequence[EncryptedShare], encoded_update: np.ndarray
    ) -> MaskedInput:
        """Open the shares sent to this site; return the update masked with those senders only.

        Raises:
            ProtocolViolation: for a share from a non-neighbour, for another receiver or
                round, a repeated or unauthentic share, too few senders, or a bad vector.
        """
        self._advance(Stage.MASKED_INPUT)
        params = self._params
        for item in shares:
            if item.receiver != self._site_id or item.round_id != params.round_id:
                self._violation(f"a share from {item.sender} was meant for another round or site")
            if item.sender not in self._neighbours:
                self._violation(f"a share came from {item.sender}, not an advertised neighbour")
            if item.sender in self._held:
                self._violation(f"{item.sender} sent two shares")
            key = self._agreement_key(item.sender, purpose=keys.SHARE_ENCRYPTION)
            context = pair_context(params.round_id, item.sender, self._site_id, directed=True)
            try:
                plaintext = keys.open_sealed(key, item.sealed, associated_data=context)
                self_mask, mask_key = decode_share_pair(plaintext)
            except (keys.ShareDecryptionError, ValueError):
                self._violation(f"the share from {item.sender} failed authentication")
            if self_mask.x != params.share_point(self._site_id) or mask_key.x != self_mask.x:
                self._violation(f"the share from {item.sender} is for another evaluation point")
            self._held[item.sender] = _HeldShares(self_mask, mask_key)
        if len(self._held) + 1 < params.threshold:
            self._violation(
                f"only {len(self._held)} neighbours shared, threshold {params.threshold}"
            )
        expected = (params.masked_length,)
        dtype = residue_dtype(params.bits)
        if encoded_update.shape != expected or encoded_update.dtype != dtype:
            self._violation(f"the encoded update is not a {dtype} vector of shape {expected}")
        if params.bits < 64 and int(encoded_update.max()) >> params.bits:
            self._violation("the encoded update does not fit the round's modulus")
        pairwise = {
            peer: self._agreement_key(peer, purpose=keys.PAIRWISE_MASK) for peer in self._held
        }
        self_seed = self._secret(self._self_seed, "the self-mask seed")
        masked = mask_vector(
            encoded_update,
            own_id=self._site_id,
            self_seed=self_seed,
            pairwise_seeds=pairwise,
            bits=params.bits,
        )
        return MaskedInput(self._site_id, params.round_id, masked)

    # Stage 5 ---------------------------------------------------------------------------------
    @_fail_closed
    def sign_survivors(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Sign the survivor set U3 the coordinator announced, with the transcript hash.

        Raises:
            ProtocolViolation: if this site is missing, a survivor never advertised, a
                neighbour in U3 is not one this site masked with (R4), or U3 is smaller than
                ``max(t, min_sites + c)`` (R5).
        """
        self._advance(Stage.CONSISTENCY)
        floor = self._requirements.survivor_floor(self._params.threshold)
        if self._site_id not in survivors:
            self._violation("it is not in the announced survivor set")
        unknown = survivors - self._adverts.keys()
        if unknown:
            self._violation(f"survivors never advertised: {', '.join(sorted(unknown))}")
        unmasked = (survivors & self._neighbours) - self._held.keys()
        if unmasked:
            self._violation(
                "survivors this site never received shares from or masked with: "
                + ", ".join(sorted(unmasked))
            )
        if len(survivors) < floor:
            self._violation(f"{len(survivors)} survivors; this site requires at least {floor}")
        self._signed_survivors = survivors
        return sign_survivors(
            site_id=self._site_id,
            transcript=self._transcript,
            survivors=survivors,
            signing_key=self._signing_key,
        )

    # Stage 6 ---------------------------------------------------------------------------------
    @_fail_closed
    def reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Check the unmask request; reveal one kind of share per neighbour, never both.

        The site decides itself what it reveals: self-mask shares of the sites it holds shares
        of (itself included) that are in the U3 it signed, mask-key shares of the others. The
        request must ask for exactly that, with ``t`` valid signatures over the same
        transcript and U3 from the holders of every site concerned.

        Raises:
            ProtocolViolation: if the request's U3 is not the one this site signed, a
                signature is invalid, some site's holders did not reach the threshold, or the
                request asks for other shares than the signed U3 allows.
        """
        self._advance(Stage.UNMASK)
        params = self._params
        signed = self._secret(self._signed_survivors, "the signed survivor set")
        if request.round_id != params.round_id:
            self._violation(f"unmask request for round {request.round_id}")
        if request.signed_survivors != signed:
            self._violation("the unmask request cites a survivor set this site did not sign")
        signers = valid_signers(
            request.signatures,
            transcript=self._transcript,
            survivors=signed,
            directory=self._directory,
        )
        held_sites = frozenset(self._held) | {self._site_id}
        alive = held_sites & signed
        dropped = held_sites - signed
        if request.survivors != alive or request.dropped != dropped:
            self._violation(
                "the unmask request asks for other shares than the signed survivor set allows"
            )
        check_neighbourhood_quorum(
            signers, sites=held_sites, graph=self._graph, threshold=params.threshold
        )
        own_shares = self._secret(self._own_shares, "this site's own shares")
        held = {**self._held, self._site_id: own_shares}
        revealed = RevealedShares(
            site_id=self._site_id,
            round_id=params.round_id,
            self_mask_shares={site: held[site].self_mask for site in alive},
            mask_key_shares={site: held[site].mask_key for site in dropped},
        )
        self._wipe()
        return revealed
