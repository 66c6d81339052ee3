"""The coordinator's side of one secure-aggregation round.

A :class:`ServerSession` relays advertisements, graph reveals and sealed shares (it cannot open
them), adds up
masked vectors as they arrive (it keeps only the running sum, never one site's vector), collects
survivor signatures, asks each site for the shares it may reveal, and finally removes the masks
to obtain the sum modulo ``2**bits``. If fewer than ``threshold`` sites remain at any stage, the
round is abandoned with :class:`~clinfl.errors.RoundAborted` and nothing is produced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from clinfl.errors import InternalError, RoundAborted
from clinfl.secagg.graph import COMPLETE_GRAPH_LIMIT, graph_seed
from clinfl.secagg.hazmat import keys
from clinfl.secagg.hazmat.prg import reduce_residues, residue_dtype
from clinfl.secagg.hazmat.shamir import Share, reconstruct_secret
from clinfl.secagg.masking import unmask_sum
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
from clinfl.secagg.share_codec import pair_context
from clinfl.secagg.stages import Stage, check_transition


class ServerSession:
    """The coordinator's state for one round; see the module docstring."""

    def __init__(self, params: RoundParameters) -> None:
        self._params = params
        self._graph: dict[str, frozenset[str]] = {}
        self._stage: Stage | None = None
        self._adverts: dict[str, Advertisement] = {}
        self._sharers: frozenset[str] = frozenset()
        self._survivors: frozenset[str] = frozenset()
        self._signatures: tuple[SurvivorSignature, ...] = ()
        self._masked_sum: np.ndarray | None = None

    @property
    def params(self) -> RoundParameters:
        """The round's parameters."""
        return self._params

    @property
    def survivors(self) -> frozenset[str]:
        """U3: the sites whose masked input arrived."""
        return self._survivors

    @property
    def sharers(self) -> frozenset[str]:
        """U2: the sites whose shares arrived."""
        return self._sharers

    def _require(self, count: int, stage: Stage) -> None:
        if count < self._params.threshold:
            raise RoundAborted(
                f"round {self._params.round_id} abandoned at {stage.name.lower()}: only {count} "
                f"site(s) remain, the threshold is {self._params.threshold}; nothing was applied",
                remedy="bring more sites online or lower the threshold within every site's policy",
            )

    def relay_advertisements(self, adverts: Sequence[Advertisement]) -> tuple[Advertisement, ...]:
        """Record U1 and return the advertisements to broadcast.

        Raises:
            RoundAborted: if fewer than ``threshold`` sites advertised.
        """
        self._stage = check_transition(self._stage, Stage.ADVERTISE)
        listed = set(self._params.site_ids)
        self._adverts = {a.site_id: a for a in adverts if a.site_id in listed}
        self._require(len(self._adverts), Stage.ADVERTISE)
        return tuple(self._adverts.values())

    def relay_graph_reveals(self, reveals: Sequence[GraphReveal]) -> tuple[GraphReveal, ...]:
        """Compute the round's graph from the sites' reveals; return them to relay.

        A site that does not reveal has dropped out; in a sparse graph that aborts the round
        (sites would refuse it: a missing reveal must never change the graph).

        Raises:
            RoundAborted: if a site of a sparse graph did not reveal, or fewer than the
                threshold revealed.
        """
        self._stage = check_transition(self._stage, Stage.GRAPH)
        opened = {
            r.site_id: r
            for r in reveals
            if r.site_id in self._adverts and r.round_id == self._params.round_id
        }
        missing = sorted(set(self._adverts) - set(opened))
        if missing and len(self._adverts) > COMPLETE_GRAPH_LIMIT:
            raise RoundAborted(
                f"round {self._params.round_id} abandoned at graph: {', '.join(missing)} did "
                "not reveal a graph commitment; nothing was applied",
                remedy="every advertised site must answer the graph stage; retry the round",
            )
        self._adverts = {site: self._adverts[site] for site in opened}
        self._require(len(self._adverts), Stage.GRAPH)
        seed = graph_seed({site: reveal.nonce for site, reveal in opened.items()})
        self._graph = self._params.neighbours(self._adverts, seed=seed)
        return tuple(opened.values())

    def route_shares(
        self, shares_by_sender: Mapping[str, Sequence[EncryptedShare]]
    ) -> dict[str, list[EncryptedShare]]:
        """Record U2 and return the sealed shares grouped by receiver.

        Raises:
            RoundAborted: if fewer than ``threshold`` sites sent shares.
        """
        self._stage = check_transition(self._stage, Stage.SHARE)
        self._sharers = frozenset(s for s in shares_by_sender if s in self._adverts)
        self._require(len(self._sharers), Stage.SHARE)
        inbox: dict[str, list[EncryptedShare]] = {site: [] for site in self._sharers}
        for sender in self._sharers:
            for item in shares_by_sender[sender]:
                if item.sender == sender and item.receiver in inbox:
                    inbox[item.receiver].append(item)
        return inbox

    def add_masked_inputs(self, inputs: Iterable[MaskedInput]) -> frozenset[str]:
        """Add each arriving masked vector to the running sum; return U3.

        Raises:
            RoundAborted: if fewer than ``threshold`` masked inputs arrived.
        """
        self._stage = check_transition(self._stage, Stage.MASKED_INPUT)
        expected = (self._params.masked_length,)
        dtype = residue_dtype(self._params.bits)
        total = np.zeros(expected, dtype=dtype)
        arrived: set[str] = set()
        for item in inputs:
            if (
                item.site_id not in self._sharers
                or item.site_id in arrived
                or item.round_id != self._params.round_id
                or item.vector.shape != expected
            ):
                continue
            np.add(total, item.vector.astype(dtype, copy=False), out=total)
            reduce_residues(total, self._params.bits)
            arrived.add(item.site_id)
        self._survivors = frozenset(arrived)
        self._require(len(self._survivors), Stage.MASKED_INPUT)
        self._masked_sum = total
        return self._survivors

    def collect_signatures(self, signatures: Sequence[SurvivorSignature]) -> None:
        """Keep the survivors' signatures over U3 (sites check them themselves).

        Raises:
            RoundAborted: if fewer than ``threshold`` survivors signed.
        """
        self._stage = check_transition(self._stage, Stage.CONSISTENCY)
        self._signatures = tuple(s for s in signatures if s.site_id in self._survivors)
        self._require(len({s.site_id for s in self._signatures}), Stage.CONSISTENCY)

    def unmask_request(self, site_id: str) -> UnmaskRequest:
        """Return what ``site_id`` is asked to reveal: its neighbours split by U3."""
        holding = (self._graph[site_id] & self._sharers) | {site_id}
        return UnmaskRequest(
            round_id=self._params.round_id,
            survivors=frozenset(holding & self._survivors),
            dropped=frozenset(holding - self._survivors),
            signed_survivors=self._survivors,
            signatures=self._signatures,
        )

    @property
    def signers(self) -> frozenset[str]:
        """The survivors that signed U3 (the sites asked to unmask)."""
        return frozenset(s.site_id for s in self._signatures)

    def unmask(self, responses: Sequence[RevealedShares]) -> np.ndarray:
        """Reconstruct the secrets, remove every mask and return the sum modulo ``2**bits``.

        Raises:
            RoundAborted: if some secret has fewer than ``threshold`` shares.
            InternalError: if no masked sum is held (an explicit check: it survives ``-O``).
        """
        self._stage = check_transition(self._stage, Stage.UNMASK)
        params = self._params
        answered = [r for r in responses if r.round_id == params.round_id]
        self._require(len({r.site_id for r in answered}), Stage.UNMASK)
        self_seeds = [
            self._reconstruct(site, [r.self_mask_shares.get(site) for r in answered])
            for site in sorted(self._survivors)
        ]
        orphaned: list[tuple[str, str, bytes]] = []
        for dropped in sorted(self._sharers - self._survivors):
            masked_with = self._graph[dropped] & self._survivors
            if not masked_with:
                continue
            raw_key = self._reconstruct(dropped, [r.mask_key_shares.get(dropped) for r in answered])
            private = keys.agreement_private_key(raw_key)
            for survivor in sorted(masked_with):
                public = keys.agreement_public_key(self._adverts[survivor].mask_key)
                seed = keys.derive_shared_key(
                    private,
                    public,
                    purpose=keys.PAIRWISE_MASK,
                    context=pair_context(params.round_id, survivor, dropped, directed=False),
                )
                orphaned.append((survivor, dropped, seed))
        masked_sum = self._masked_sum
        if masked_sum is None:
            raise InternalError(
                f"round {params.round_id}: the masked sum is missing at unmask; nothing applied"
            )
        total = unmask_sum(
            masked_sum, self_seeds=self_seeds, orphaned_pairs=orphaned, bits=params.bits
        )
        self._masked_sum = None
        return total

    def _reconstruct(self, site: str, shares: list[Share | None]) -> bytes:
        found = [s for s in shares if s is not None]
        unique = list({s.x: s for s in found}.values())
        if len(unique) < self._params.threshold:
            raise RoundAborted(
                f"round {self._params.round_id} abandoned at unmask: {len(unique)} share(s) of "
                f"{site}'s secret arrived, the threshold is {self._params.threshold}; nothing "
                "was applied",
                remedy="bring more sites online for the unmask stage",
            )
        try:
            return reconstruct_secret(unique, threshold=self._params.threshold)
        except ValueError as error:
            raise RoundAborted(
                f"round {self._params.round_id} abandoned: the shares of {site}'s secret do not "
                f"agree ({error})",
                remedy="a site sent corrupt shares; check the sites' audit logs",
            ) from None
