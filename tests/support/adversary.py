"""An adversarial coordinator for secure aggregation: full control, up to ``c`` colluding sites.

:class:`Adversary` plays the coordinator of SECAGG.md "Version 2" against honest
:class:`~clinfl.secagg.site_session.SiteSession` objects. It decides everything a malicious
coordinator decides: the parameters and binding (global model hash) each site gets, which
advertisements, graph reveals and sealed shares each site receives, which survivor set each site
is asked to sign, which signatures and unmask requests each site sees. Up to ``c`` sites collude
with it: it reads their whole session state (private keys, self-mask seed) and opens every share
sealed for them, and it signs anything with their long-term keys.

It records everything it ever receives, and :meth:`Adversary.recover` then tries to *compute*
single honest inputs, or sums of fewer than ``min_sites`` honest inputs, from that alone:

1. every secret with at least ``t`` Shamir shares (revealed by honest sites, or held by colluders)
   is reconstructed; a reconstructed mask key is kept only if it matches the advertised public key;
2. every pairwise seed it can derive (from any known X25519 mask private key and the other end's
   advertised public key, exactly as the sites derive them) is derived;
3. for each honest site ``i`` whose masked vector it holds and whose self-mask seed it knows, it
   takes the smallest set ``S`` containing ``i`` that is closed under "masked with a neighbour
   whose pairwise seed is unknown" (it knows whom each honest site masked with because it routed
   the shares). If ``S`` is smaller than ``min_sites`` and every self-mask seed in ``S`` is known,
   it strips every mask from the sum of ``y`` over ``S`` and returns that as a candidate.

Every closed set smaller than ``min_sites`` contains such a minimal closure, so "no candidate"
means no single input and no small sum can be computed. :meth:`Recovery.leaks` compares the
candidates with the true encoded inputs; the invariant the attack tests check is that it is empty.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import methodcaller

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from clinfl.errors import ProtocolViolation
from clinfl.secagg.advertise import Advertisement, GraphReveal
from clinfl.secagg.consistency import SurvivorSignature, sign_survivors
from clinfl.secagg.hazmat import keys
from clinfl.secagg.hazmat.prg import add_mask_stream, reduce_residues, residue_dtype
from clinfl.secagg.hazmat.shamir import Share, reconstruct_secret
from clinfl.secagg.masking import pairwise_sign
from clinfl.secagg.messages import EncryptedShare, RevealedShares, UnmaskRequest
from clinfl.secagg.settings import RoundParameters, SecAggRequirements
from clinfl.secagg.share_codec import decode_share_pair, pair_context
from clinfl.secagg.site_session import SiteSession
from clinfl.secagg.transcript import RoundBinding
from tests.support.secagg_round import MODEL_HASH, Federation, binding_for

SessionFactory = Callable[..., SiteSession]


@dataclass
class ColluderState:
    """What the coordinator reads from a colluding site's session."""

    share_key: X25519PrivateKey | None = None
    mask_key: X25519PrivateKey | None = None
    self_seed: bytes | None = None


@dataclass
class Recovery:
    """What the adversary computed from what it collected."""

    self_seeds: dict[str, bytes]
    mask_keys: dict[str, X25519PrivateKey]
    candidates: dict[frozenset[str], np.ndarray]
    bits: int

    def leaks(self, truth: Mapping[str, np.ndarray]) -> list[frozenset[str]]:
        """Return the honest sets whose candidate equals the true sum of their inputs."""
        found = []
        for sites, candidate in self.candidates.items():
            total = np.zeros_like(candidate)
            for site in sites:
                np.add(total, truth[site].astype(total.dtype), out=total)
            reduce_residues(total, self.bits)
            if np.array_equal(total, candidate):
                found.append(sites)
        return sorted(found, key=sorted)


@dataclass
class Adversary:
    """The coordinator, with full control of routing and up to ``c`` colluders' state.

    ``params_for`` / ``model_for`` give a site other parameters or another global-model hash
    than the rest (its binding is derived from them, as an honest site derives its own).
    ``session_factory`` builds a site's session (tests pass a deliberately broken one to check
    that the harness would notice a leak). ``random_bytes_for`` fixes a site's randomness.
    """

    federation: Federation
    params: RoundParameters
    requirements: SecAggRequirements
    colluders: frozenset[str] = frozenset()
    params_for: Mapping[str, RoundParameters] = field(default_factory=dict)
    model_for: Mapping[str, bytes] = field(default_factory=dict)
    session_factory: Mapping[str, SessionFactory] = field(default_factory=dict)
    random_bytes_for: Mapping[str, Callable[[int], bytes]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.colluders) > self.requirements.max_colluders:
            raise ValueError("more colluders than the sites' policy allows for")
        self.audit: list[tuple[str, str]] = []
        self.refusals: dict[str, str] = {}
        self.sessions: dict[str, SiteSession] = {}
        rng = np.random.default_rng(self.seed)
        self.inputs: dict[str, np.ndarray] = {}
        for site in self.params.site_ids:
            params = self.params_of(site)
            dtype = residue_dtype(params.bits)
            self.inputs[site] = rng.integers(
                0, 2**params.bits, params.masked_length, dtype=np.uint64
            ).astype(dtype)
            try:
                self.sessions[site] = self._new_session(site, params)
            except ProtocolViolation as refusal:
                self.refusals[site] = refusal.message
        # everything the coordinator collects
        self.adverts: dict[str, list[Advertisement]] = defaultdict(list)
        self.reveals: dict[str, GraphReveal] = {}
        self.sealed: list[EncryptedShare] = []
        self.masked: dict[str, np.ndarray] = {}
        self.revealed: list[RevealedShares] = []
        self.signatures: list[SurvivorSignature] = []
        self.colluder_state: dict[str, ColluderState] = {s: ColluderState() for s in self.colluders}
        # what it routed to whom
        self.shown_adverts: dict[str, dict[str, Advertisement]] = {}
        self.masked_with: dict[str, frozenset[str]] = {}
        self.signed: dict[str, frozenset[str]] = {}

    # set-up -----------------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        """Every site of the round, honest or not."""
        return self.params.site_ids

    @property
    def honest(self) -> tuple[str, ...]:
        """The sites that do not collude."""
        return tuple(s for s in self.sites if s not in self.colluders)

    def params_of(self, site: str) -> RoundParameters:
        """The parameters the coordinator sends ``site``."""
        return self.params_for.get(site, self.params)

    def binding_of(self, site: str) -> RoundBinding:
        """The binding ``site`` derives from what it was sent."""
        return binding_for(
            self.params_of(site),
            roster_hash=self.federation.roster_hash,
            model_hash=self.model_for.get(site, MODEL_HASH),
        )

    def _new_session(self, site: str, params: RoundParameters) -> SiteSession:
        factory = self.session_factory.get(site, SiteSession)
        return factory(
            params,
            site_id=site,
            signing_key=self.federation.signing_keys[site],
            directory=self.federation.directory,
            requirements=self.requirements,
            binding=self.binding_of(site),
            audit=lambda round_id, message, s=site: self.audit.append((s, message)),
            random_bytes=self.random_bytes_for.get(site, os.urandom),
        )

    def _ask(self, site: str, call: Callable[[SiteSession], object]) -> object | None:
        """Ask a site; a refusal (and only a ProtocolViolation) is recorded, never raised."""
        session = self.sessions.get(site)
        if session is None or site in self.refusals:
            return None
        try:
            return call(session)
        except ProtocolViolation as refusal:
            self.refusals[site] = refusal.message
            return None
        finally:
            if site in self.colluders:
                self._snapshot(site)

    def _snapshot(self, site: str) -> None:
        """Read a colluder's private session state (before any wipe)."""
        session = self.sessions[site]
        state = self.colluder_state[site]
        state.share_key = session._share_key or state.share_key
        state.mask_key = session._mask_key or state.mask_key
        state.self_seed = session._self_seed or state.self_seed

    def refused(self, site: str) -> bool:
        """True when ``site`` refused something (its reason is in :attr:`refusals`)."""
        return site in self.refusals

    # stages -----------------------------------------------------------------------------------
    def advertise(self, sites: Iterable[str] | None = None) -> dict[str, Advertisement]:
        """Ask ``sites`` (all by default) to advertise; keep every advertisement."""
        out: dict[str, Advertisement] = {}
        for site in self.sites if sites is None else sites:
            advert = self._ask(site, lambda s: s.advertise())
            if isinstance(advert, Advertisement):
                out[site] = advert
                self.adverts[site].append(advert)
        return out

    def add_advert(self, advert: Advertisement) -> None:
        """Record an advertisement the coordinator made up with a colluder's key."""
        self.adverts[advert.site_id].append(advert)

    def graph(
        self,
        shown: Mapping[str, Sequence[Advertisement]] | None = None,
        sites: Iterable[str] | None = None,
    ) -> dict[str, GraphReveal]:
        """Show each site its advertisements (the latest of every site by default)."""
        default = [ads[-1] for ads in self.adverts.values()]
        targets = list(shown) if shown is not None else list(self.sites if sites is None else sites)
        out: dict[str, GraphReveal] = {}
        for site in targets:
            relayed = tuple(shown[site]) if shown is not None else tuple(default)
            reveal = self._ask(site, methodcaller("reveal_graph_nonce", relayed))
            if isinstance(reveal, GraphReveal):
                self.shown_adverts[site] = {a.site_id: a for a in relayed}
                out[site] = reveal
                self.reveals[site] = reveal
        return out

    def share(
        self, shown: Mapping[str, Sequence[GraphReveal]] | None = None
    ) -> dict[str, list[EncryptedShare]]:
        """Show each site graph reveals (all of them by default); keep every sealed share."""
        targets = list(shown) if shown is not None else list(self.reveals)
        out: dict[str, list[EncryptedShare]] = {}
        for site in targets:
            relayed = tuple(shown[site]) if shown is not None else tuple(self.reveals.values())
            sealed = self._ask(site, methodcaller("share", relayed))
            if isinstance(sealed, list):
                out[site] = sealed
                self.sealed.extend(sealed)
        return out

    def addressed_to(self, site: str, senders: Iterable[str] | None = None) -> list[EncryptedShare]:
        """The sealed shares for ``site`` (from ``senders`` only, if given)."""
        allowed = None if senders is None else set(senders)
        return [
            item
            for item in self.sealed
            if item.receiver == site and (allowed is None or item.sender in allowed)
        ]

    def masked_inputs(
        self, inbox: Mapping[str, Sequence[EncryptedShare]] | None = None
    ) -> dict[str, np.ndarray]:
        """Route shares (everything addressed to a site, by default); keep the masked vectors."""
        targets = list(inbox) if inbox is not None else sorted({i.sender for i in self.sealed})
        out: dict[str, np.ndarray] = {}
        for site in targets:
            delivered = list(inbox[site]) if inbox is not None else self.addressed_to(site)
            masked = self._ask(site, methodcaller("masked_input", delivered, self.inputs[site]))
            if masked is not None:
                vector = masked.vector  # type: ignore[attr-defined]
                out[site] = vector
                self.masked[site] = vector
                self.masked_with[site] = frozenset(item.sender for item in delivered)
        return out

    def sign(self, survivors_for: Mapping[str, frozenset[str]]) -> dict[str, SurvivorSignature]:
        """Ask each site to sign the survivor set chosen for it."""
        out: dict[str, SurvivorSignature] = {}
        for site, survivors in survivors_for.items():
            signature = self._ask(site, methodcaller("sign_survivors", survivors))
            if isinstance(signature, SurvivorSignature):
                out[site] = signature
                self.signed[site] = survivors
                self.signatures.append(signature)
        return out

    def colluder_signatures(
        self, survivors: frozenset[str], transcript: bytes
    ) -> list[SurvivorSignature]:
        """Every colluder in ``survivors`` signs ``(transcript, survivors)``, whatever else it signed."""
        made = [
            sign_survivors(
                site_id=site,
                transcript=transcript,
                survivors=survivors,
                signing_key=self.federation.signing_keys[site],
            )
            for site in sorted(self.colluders & survivors)
        ]
        self.signatures.extend(made)
        return made

    def request_for(
        self, site: str, signatures: Sequence[SurvivorSignature], *, survivors: frozenset[str]
    ) -> UnmaskRequest:
        """The request a site expects for ``survivors`` (split by the shares it was routed)."""
        held = self.masked_with.get(site, frozenset()) | {site}
        return UnmaskRequest(
            round_id=self.params_of(site).round_id,
            survivors=held & survivors,
            dropped=held - survivors,
            signed_survivors=survivors,
            signatures=tuple(signatures),
        )

    def reveal(self, requests: Mapping[str, UnmaskRequest]) -> list[RevealedShares]:
        """Send each site its unmask request; keep whatever it reveals."""
        out = []
        for site, request in requests.items():
            answer = self._ask(site, methodcaller("reveal", request))
            if isinstance(answer, RevealedShares):
                out.append(answer)
                self.revealed.append(answer)
        return out

    def consistent_round(
        self,
        survivors_for: Mapping[str, frozenset[str]],
        inbox: Mapping[str, Sequence[EncryptedShare]] | None = None,
    ) -> None:
        """Advertise, graph and share honestly; route ``inbox``; sign and reveal per world.

        Sites shown the same survivor set form one world: their signatures (and every colluder
        in it, which signs every world) are relayed to each of them with the request it expects.
        """
        self.advertise()
        self.graph()
        self.share()
        self.masked_inputs(inbox)
        self.sign_and_reveal(survivors_for)

    def sign_and_reveal(self, survivors_for: Mapping[str, frozenset[str]]) -> None:
        """Sign and unmask in worlds: one per distinct survivor set (and transcript)."""
        signed = self.sign({s: u for s, u in survivors_for.items() if s not in self.colluders})
        worlds: dict[tuple[bytes, frozenset[str]], list[str]] = defaultdict(list)
        for site in signed:
            worlds[(self.sessions[site].transcript, survivors_for[site])].append(site)
        for (transcript, survivors), members in worlds.items():
            relayed = [signed[s] for s in members] + self.colluder_signatures(survivors, transcript)
            self.reveal({s: self.request_for(s, relayed, survivors=survivors) for s in members})

    # recovery ---------------------------------------------------------------------------------
    def _colluder_held(self) -> list[tuple[str, Share, Share]]:
        """Open every share sealed for a colluder with the colluder's share key."""
        opened = []
        for item in self.sealed:
            state = self.colluder_state.get(item.receiver)
            if state is None or state.share_key is None or not self.adverts.get(item.sender):
                continue
            for advert in self.adverts[item.sender]:
                key = keys.derive_shared_key(
                    state.share_key,
                    keys.agreement_public_key(advert.share_key),
                    purpose=keys.SHARE_ENCRYPTION,
                    context=pair_context(item.round_id, item.receiver, item.sender, directed=False),
                )
                context = pair_context(item.round_id, item.sender, item.receiver, directed=True)
                try:
                    plain = keys.open_sealed(key, item.sealed, associated_data=context)
                except keys.ShareDecryptionError:
                    continue
                self_mask, mask_key = decode_share_pair(plain)
                opened.append((item.sender, self_mask, mask_key))
                break
        return opened

    def recover(self, *, below: int | None = None) -> Recovery:
        """Compute every secret, seed and unmasked small sum that what was collected allows.

        Sums over ``below`` (default: the sites' ``min_sites``) honest sites or more are not
        attempted; tests of the harness itself raise it to check an allowed sum comes out right.
        """
        limit = self.requirements.min_sites if below is None else below
        seed_shares: dict[str, dict[int, Share]] = defaultdict(dict)
        key_shares: dict[str, dict[int, Share]] = defaultdict(dict)
        for answer in self.revealed:
            for site, share in answer.self_mask_shares.items():
                seed_shares[site][share.x] = share
            for site, share in answer.mask_key_shares.items():
                key_shares[site][share.x] = share
        for sender, self_mask, mask_key in self._colluder_held():
            seed_shares[sender][self_mask.x] = self_mask
            key_shares[sender][mask_key.x] = mask_key

        self_seeds: dict[str, bytes] = {}
        private: dict[bytes, X25519PrivateKey] = {}  # advertised public key -> private key
        mask_keys: dict[str, X25519PrivateKey] = {}
        for site, state in self.colluder_state.items():
            if state.self_seed is not None:
                self_seeds[site] = state.self_seed
            if state.mask_key is not None:
                private[keys.agreement_public_bytes(state.mask_key)] = state.mask_key
                mask_keys[site] = state.mask_key
        for site, shares in seed_shares.items():
            secret = self._reconstruct(site, list(shares.values()))
            if secret is not None and site not in self_seeds:
                self_seeds[site] = secret
        for site, shares in key_shares.items():
            raw = self._reconstruct(site, list(shares.values()))
            if raw is None:
                continue
            key = keys.agreement_private_key(raw)
            public = keys.agreement_public_bytes(key)
            if any(public == advert.mask_key for advert in self.adverts.get(site, [])):
                private[public] = key
                mask_keys[site] = key

        bits = self.params.bits
        unknown: dict[str, set[str]] = {}
        known_seeds: dict[tuple[str, str], bytes] = {}
        for site in self.masked:
            if site in self.colluders:
                continue
            unknown[site] = set()
            for peer in self.masked_with[site]:
                seed = self._pair_seed(site, peer, private)
                if seed is None:
                    unknown[site].add(peer)
                else:
                    known_seeds[(site, peer)] = seed

        candidates: dict[frozenset[str], np.ndarray] = {}
        for start in unknown:
            closure = {start}
            frontier = [start]
            while frontier:
                for peer in unknown.get(frontier.pop(), set()) - closure:
                    closure.add(peer)
                    frontier.append(peer)
            members = frozenset(closure)
            if (
                len(members) >= limit
                or members in candidates
                or not members <= unknown.keys()  # a peer whose masked vector never arrived
                or not all(m in self_seeds for m in members)
            ):
                continue
            total = np.zeros(self.params.masked_length, dtype=residue_dtype(bits))
            for member in members:
                np.add(total, self.masked[member].astype(total.dtype), out=total)
                reduce_residues(total, bits)
                add_mask_stream(total, self_seeds[member], bits=bits, subtract=True)
                for peer in self.masked_with[member] - members:
                    add_mask_stream(
                        total,
                        known_seeds[(member, peer)],
                        bits=bits,
                        subtract=pairwise_sign(member, peer) > 0,
                    )
            candidates[members] = total
        return Recovery(self_seeds, mask_keys, candidates, bits)

    def _reconstruct(self, site: str, shares: list[Share]) -> bytes | None:
        threshold = self.params_of(site).threshold
        if len(shares) < threshold:
            return None
        try:
            return reconstruct_secret(shares, threshold=threshold)
        except ValueError:
            return None

    def _pair_seed(
        self, site: str, peer: str, private: Mapping[bytes, X25519PrivateKey]
    ) -> bytes | None:
        """Derive the seed ``site`` used with ``peer``, from either end's known private key."""
        own_adverts = self.adverts.get(site, [])
        seen = self.shown_adverts.get(site, {}).get(peer)
        if not own_adverts or seen is None:
            return None
        own_public = own_adverts[-1].mask_key
        context = pair_context(self.params_of(site).round_id, site, peer, directed=False)
        if seen.mask_key in private:
            mine, theirs = private[seen.mask_key], own_public
        elif own_public in private:
            mine, theirs = private[own_public], seen.mask_key
        else:
            return None
        return keys.derive_shared_key(
            mine, keys.agreement_public_key(theirs), purpose=keys.PAIRWISE_MASK, context=context
        )

    def assert_nothing_recovered(self) -> Recovery:
        """Check the invariant: no honest input and no small honest sum can be computed."""
        recovery = self.recover()
        leaks = recovery.leaks(self.inputs)
        assert not leaks, f"the coordinator computed the inputs of {[sorted(s) for s in leaks]}"
        assert not recovery.candidates, "the harness stripped masks but got a wrong plaintext"
        return recovery
