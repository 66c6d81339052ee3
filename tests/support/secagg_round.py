"""Drive one secure-aggregation round over SiteSessions and a ServerSession, with dropouts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.errors import ProtocolViolation
from clinfl.secagg.messages import EncryptedShare
from clinfl.secagg.server_session import ServerSession
from clinfl.secagg.settings import RoundParameters, SecAggRequirements
from clinfl.secagg.site_session import SiteSession
from clinfl.secagg.transcript import RoundBinding, digest, directory_hash

T = TypeVar("T")
STAGES = ("advertise", "graph", "share", "masked-input", "consistency", "unmask")
MODEL_HASH = digest(b"test-model")
SETTINGS_HASH = digest(b"test-settings")
CONFIG_HASH = digest(b"test-config")


def binding_for(
    params: RoundParameters, *, roster_hash: bytes, model_hash: bytes = MODEL_HASH
) -> RoundBinding:
    """The binding an honest site derives for ``params`` (fixed test settings and model)."""
    return RoundBinding(
        roster_hash=roster_hash,
        run_id=params.run_id,
        round_id=params.round_id,
        params_hash=params.bound_to(SETTINGS_HASH),
        model_hash=model_hash,
        config_hash=CONFIG_HASH,
    )


@dataclass
class Federation:
    """Site names, signing keys and the public directory."""

    site_ids: tuple[str, ...]
    signing_keys: dict[str, Ed25519PrivateKey]
    audit: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, count: int) -> Federation:
        ids = tuple(f"site-{k:02d}" for k in range(count))
        return cls(ids, {s: Ed25519PrivateKey.generate() for s in ids})

    @property
    def directory(self) -> dict:
        return {s: k.public_key() for s, k in self.signing_keys.items()}

    @property
    def roster_hash(self) -> bytes:
        return directory_hash(self.directory)

    def session(
        self,
        site: str,
        params: RoundParameters,
        *,
        requirements: SecAggRequirements | None = None,
        binding: RoundBinding | None = None,
    ) -> SiteSession:
        return SiteSession(
            params,
            site_id=site,
            signing_key=self.signing_keys[site],
            directory=self.directory,
            requirements=requirements or SecAggRequirements(min_sites=2),
            binding=binding or binding_for(params, roster_hash=self.roster_hash),
            audit=lambda round_id, message, s=site: self.audit.append((s, message)),
        )


def run_round(
    federation: Federation,
    params: RoundParameters,
    inputs: Mapping[str, np.ndarray],
    *,
    drops: Mapping[str, str] | None = None,
    requirements: SecAggRequirements | None = None,
) -> tuple[np.ndarray, frozenset[str]]:
    """Run an honest round; ``drops`` maps a site to the stage from which it stops answering.

    Returns the unmasked sum and U3. Raises RoundAborted like the coordinator would.
    """
    drops = drops or {}

    def alive(site: str, stage: str) -> bool:
        return site not in drops or STAGES.index(stage) < STAGES.index(drops[site])

    sessions = {
        s: federation.session(s, params, requirements=requirements) for s in params.site_ids
    }
    refused: set[str] = set()

    def ask(site: str, stage: str, call: Callable[[SiteSession], T]) -> T | None:
        """An honest site that refuses (ProtocolViolation) looks like a dropout."""
        if not alive(site, stage) or site in refused:
            return None
        try:
            return call(sessions[site])
        except ProtocolViolation:
            refused.add(site)
            return None

    def present(items: Iterable[T | None]) -> list[T]:
        return [item for item in items if item is not None]

    server = ServerSession(params)
    relayed = server.relay_advertisements(
        present(ask(s, "advertise", lambda x: x.advertise()) for s in params.site_ids)
    )
    reveals = server.relay_graph_reveals(
        present(ask(a.site_id, "graph", lambda x: x.reveal_graph_nonce(relayed)) for a in relayed)
    )
    shares: dict[str, list[EncryptedShare]] = {}
    for advert in relayed:
        sent = ask(advert.site_id, "share", lambda x: x.share(reveals))
        if sent is not None:
            shares[advert.site_id] = sent
    inbox = server.route_shares(shares)
    survivors = server.add_masked_inputs(
        present(
            ask(s, "masked-input", lambda x, s=s: x.masked_input(inbox[s], inputs[s]))
            for s in sorted(server.sharers)
        )
    )
    server.collect_signatures(
        present(
            ask(s, "consistency", lambda x: x.sign_survivors(survivors)) for s in sorted(survivors)
        )
    )
    revealed = present(
        ask(s, "unmask", lambda x, s=s: x.reveal(server.unmask_request(s)))
        for s in sorted(server.signers)
    )
    return server.unmask(revealed), survivors
