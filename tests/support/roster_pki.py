"""A federation's PKI made the way real sites make it: keys at each site, `pki admit`, `site trust`.

Everything goes through the same functions the CLI calls: `clinfl pki init` at the coordinator,
`clinfl site init` in each site's own state folder, `clinfl pki admit` of each request, and
`clinfl site trust` of the resulting roster at every site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.pki import ISSUED_DIR, REQUEST_FILE, admit_site, init_pki
from clinfl.roster import ROSTER_FILE, Member, Roster
from site_agent.identity import init_site, pin_roster, review_roster

# A site policy without DP, for tests of identity and joins: sums of two sites.
RESEARCH_POLICY = """
[dp]
required = false
[secagg]
required = true
min_sites = 2
[data]
min_samples = 10
[reporting]
# as policies/research.toml: the metrics leave the site (a policy lists none unless it says so)
metrics = ["loss", "auc", "counts", "epsilon"]
"""


def admit_sites(pki: Path, states: dict[str, Path], *, replace: bool = False) -> None:
    """`site init` each site in its state folder (if not yet), then `pki admit` its request."""
    for site, state in states.items():
        if not (state / REQUEST_FILE).is_file():
            init_site(state, site)
        admit_site(pki, state / REQUEST_FILE, replace=replace)


def trust(pki: Path, state: Path, site: str) -> None:
    """`clinfl site trust --yes` of the coordinator's current roster, with the cert and CA."""
    review = review_roster(
        state,
        pki / ROSTER_FILE,
        cert=pki / ISSUED_DIR / f"{site}.crt",
        ca=pki / "ca.crt",
    )
    pin_roster(state, review)


def trusted_federation(
    root: Path,
    sites: Iterable[str],
    *,
    state_of: str = "state-{site}",
    hosts: tuple[str, ...] = ("127.0.0.1",),
) -> tuple[Path, dict[str, Path]]:
    """Make `root/pki` and one state folder per site; every site trusts the full roster."""
    pki = root / "pki"
    init_pki(pki, hosts=list(hosts))
    states = {site: root / state_of.format(site=site) for site in sites}
    admit_sites(pki, states)
    for site, state in states.items():
        trust(pki, state, site)
    return pki, states


def roster_of(keys: Mapping[str, Ed25519PrivateKey]) -> Roster:
    """An in-memory roster over these signing keys (fresh node keys, made-up certificates)."""
    members = []
    for site, key in sorted(keys.items()):
        node = ec.generate_private_key(ec.SECP256R1()).public_key()
        members.append(
            Member(
                site,
                key.public_key().public_bytes_raw(),
                node.public_bytes(
                    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
                ).decode(),
                hashlib.sha256(f"certificate of {site}".encode()).hexdigest(),
            )
        )
    return Roster(hashlib.sha256(b"a CA").hexdigest(), tuple(members))
