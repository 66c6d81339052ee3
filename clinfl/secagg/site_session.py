"""The site's side of one secure-aggregation round: a state machine that checks everything.

A :class:`SiteSession` lives for one round. Each method is one stage and may only be called in
order; any failed check aborts the session for good (it reveals nothing afterwards) and is written
to the site's audit hook. Secrets (the self-mask seed, the private keys, the shares held for
neighbours) stay inside the session and are dropped when the round ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from clinfl.errors import ProtocolViolation
from clinfl.secagg.advertise import check_advertisements, make_advertisement
from clinfl.secagg.consistency import (
    check_survivor_signatures,
    check_unmask_request,
    sign_survivors,
)
from clinfl.secagg.hazmat import keys
from clinfl.secagg.hazmat.prg import residue_dtype
from clinfl.secagg.hazmat.shamir import Share, split_secret
from clinfl.secagg.masking import mask_vector
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import RoundParameters, SecAggRequirements, check_round_parameters
from clinfl.secagg.share_codec import decode_share_pair, encode_share_pair, pair_context
from clinfl.secagg.stages import Stage, check_transition

AuditHook = Callable[[int, str], None]  # (round id, why the site refused)
RandomBytes = Callable[[int], bytes]


@dataclass
class _HeldShares:
    self_mask: Share
    mask_key: Share


def _check_stage(current: Stage | None, requested: Stage) -> None:
    check_transition(current, requested)


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
        last_round_id: int | None,
        audit: AuditHook | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        """Check the proposed round before anything is generated.

        Raises:
            ProtocolViolation: if the parameters break this site's policy (see
                :func:`~clinfl.secagg.settings.check_round_parameters`).
        """
        self._audit = audit
        self._params = params
        self._site_id = site_id
        self._signing_key = signing_key
        self._directory = {s: directory[s] for s in params.site_ids if s in directory}
        self._requirements = requirements
        self._random_bytes = random_bytes
        self._stage: Stage | None = None
        self._aborted = False
        self._share_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._adverts: dict[str, Advertisement] = {}
        self._self_seed: bytes | None = None
        self._own_shares: _HeldShares | None = None
        self._held: dict[str, _HeldShares] = {}
        self._signed_survivors: frozenset[str] | None = None
        self._guard(
            lambda: check_round_parameters(
                params, own_id=site_id, requirements=requirements, last_round_id=last_round_id
            )
        )
        self._neighbours = params.neighbours()[site_id]

    @property
    def params(self) -> RoundParameters:
        """The round's (checked) parameters."""
        return self._params

    @property
    def neighbours(self) -> frozenset[str]:
        """This site's neighbours in the round's graph."""
        return self._neighbours

    def _guard(self, check: Callable[[], None]) -> None:
        try:
            check()
        except ProtocolViolation as violation:
            self._abort(violation)
            raise

    def _abort(self, violation: ProtocolViolation) -> None:
        self._aborted = True
        self._self_seed = None
        self._share_key = self._mask_key = None
        self._held.clear()
        self._own_shares = None
        if self._audit is not None:
            self._audit(self._params.round_id, violation.message)

    def _advance(self, stage: Stage) -> None:
        if self._aborted:
            raise ProtocolViolation(
                f"round {self._params.round_id} was abandoned; {stage.name} refused",
                remedy="start a new round",
            )
        current = self._stage
        self._guard(lambda: _check_stage(current, stage))
        self._stage = stage

    def _violation(self, message: str) -> None:
        violation = ProtocolViolation(
            f"round {self._params.round_id}, {self._site_id}: {message}",
            remedy="the round is abandoned and no share was revealed; check the coordinator",
        )
        self._abort(violation)
        raise violation

    # Stage 1 ---------------------------------------------------------------------------------
    def advertise(self) -> Advertisement:
        """Make two fresh X25519 key pairs and return them signed with the round id."""
        self._advance(Stage.ADVERTISE)
        self._share_key = keys.new_agreement_key()
        self._mask_key = keys.new_agreement_key()
        advert = make_advertisement(
            site_id=self._site_id,
            round_id=self._params.round_id,
            signing_key=self._signing_key,
            share_key=keys.agreement_public_bytes(self._share_key),
            mask_key=keys.agreement_public_bytes(self._mask_key),
        )
        self._adverts[self._site_id] = advert
        return advert

    # Stage 2 ---------------------------------------------------------------------------------
    def share(self, adverts: Sequence[Advertisement]) -> list[EncryptedShare]:
        """Check the relayed advertisements; return this site's sealed shares for its neighbours.

        Raises:
            ProtocolViolation: for any failed advertisement check, a substituted own key, or
                fewer than ``threshold`` share holders.
        """
        self._advance(Stage.SHARE)
        params = self._params
        own = self._adverts[self._site_id]
        self._guard(
            lambda: check_advertisements(
                adverts,
                round_id=params.round_id,
                directory=self._directory,
                threshold=params.threshold,
            )
        )
        by_site = {advert.site_id: advert for advert in adverts}
        if by_site.get(self._site_id) != own:
            self._violation("its own advertisement was changed or left out")
        holders = sorted((self._neighbours & by_site.keys()) | {self._site_id})
        if len(holders) < params.threshold:
            self._violation(f"only {len(holders)} share holders, threshold {params.threshold}")
        self._adverts = by_site
        assert self._mask_key is not None and self._share_key is not None
        seed = self._random_bytes(32)
        self._self_seed = seed
        seed_shares = split_secret(seed, threshold=params.threshold, holders=len(params.site_ids))
        key_shares = split_secret(
            keys.agreement_private_bytes(self._mask_key),
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
        own = self._share_key if purpose == keys.SHARE_ENCRYPTION else self._mask_key
        assert own is not None
        advert = self._adverts[peer]
        public = advert.share_key if purpose == keys.SHARE_ENCRYPTION else advert.mask_key
        context = pair_context(self._params.round_id, self._site_id, peer, directed=False)
        return keys.derive_shared_key(
            own, keys.agreement_public_key(public), purpose=purpose, context=context
        )

    # Stage 3 ---------------------------------------------------------------------------------
    def masked_input(
        self, shares: Sequence[EncryptedShare], encoded_update: np.ndarray
    ) -> MaskedInput:
        """Open the shares sent to this site; return the masked update.

        Raises:
            ProtocolViolation: for a share from a non-neighbour, for another receiver or
                round, a repeated or unauthentic share, too few senders, or a bad vector.
        """
        self._advance(Stage.MASKED_INPUT)
        params = self._params
        for item in shares:
            if item.receiver != self._site_id or item.round_id != params.round_id:
                self._violation(f"a share from {item.sender} was meant for another round or site")
            if item.sender not in self._neighbours or item.sender not in self._adverts:
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
        expected = (params.vector_length + 1,)
        dtype = residue_dtype(params.bits)
        if encoded_update.shape != expected or encoded_update.dtype != dtype:
            self._violation(f"the encoded update is not a {dtype} vector of shape {expected}")
        if params.bits < 64 and int(encoded_update.max()) >> params.bits:
            self._violation("the encoded update does not fit the round's modulus")
        pairwise = {
            peer: self._agreement_key(peer, purpose=keys.PAIRWISE_MASK) for peer in self._held
        }
        assert self._self_seed is not None
        masked = mask_vector(
            encoded_update,
            own_id=self._site_id,
            self_seed=self._self_seed,
            pairwise_seeds=pairwise,
            bits=params.bits,
        )
        return MaskedInput(self._site_id, params.round_id, masked)

    # Stage 4 ---------------------------------------------------------------------------------
    def sign_survivors(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Sign the survivor set U3 the coordinator announced.

        Raises:
            ProtocolViolation: if this site is missing, a survivor never advertised, or U3 is
                smaller than the threshold or this site's policy minimum.
        """
        self._advance(Stage.CONSISTENCY)
        floor = max(self._params.threshold, self._requirements.min_sites)
        if self._site_id not in survivors:
            self._violation("it is not in the announced survivor set")
        unknown = survivors - self._adverts.keys()
        if unknown:
            self._violation(f"survivors never advertised: {', '.join(sorted(unknown))}")
        if len(survivors) < floor:
            self._violation(f"{len(survivors)} survivors; this site requires at least {floor}")
        self._signed_survivors = survivors
        return sign_survivors(
            site_id=self._site_id,
            round_id=self._params.round_id,
            survivors=survivors,
            signing_key=self._signing_key,
        )

    # Stage 5 ---------------------------------------------------------------------------------
    def reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Check the unmask request; reveal one kind of share per neighbour, never both.

        Raises:
            ProtocolViolation: if the request's U3 is not the one this site signed, the
                signatures do not show ``threshold`` sites agreeing on it, or the lists are not
                disjoint subsets of this site's share-holding neighbours.
        """
        self._advance(Stage.UNMASK)
        params = self._params
        signed = self._signed_survivors
        assert signed is not None
        if request.round_id != params.round_id:
            self._violation(f"unmask request for round {request.round_id}")
        if request.signed_survivors != signed:
            self._violation("the unmask request cites a survivor set this site did not sign")
        self._guard(
            lambda: check_survivor_signatures(
                list(request.signatures),
                round_id=params.round_id,
                survivors=signed,
                directory=self._directory,
                threshold=params.threshold,
            )
        )
        self._guard(
            lambda: check_unmask_request(
                own_id=self._site_id,
                survivors=request.survivors,
                dropped=request.dropped,
                neighbours=frozenset(self._held),
                signed_survivors=signed,
                threshold=params.threshold,
            )
        )
        assert self._own_shares is not None
        held = {**self._held, self._site_id: self._own_shares}
        revealed = RevealedShares(
            site_id=self._site_id,
            round_id=params.round_id,
            self_mask_shares={site: held[site].self_mask for site in request.survivors},
            mask_key_shares={site: held[site].mask_key for site in request.dropped},
        )
        self._self_seed = None
        self._share_key = self._mask_key = None
        self._held.clear()
        return revealed
