"""A site's own keys, certificates and pinned roster, all kept in the site's state folder.

``clinfl site init`` makes the keys here and nowhere else; ``clinfl site trust`` installs the
certificates the administrator handed back and pins the roster the site's operator approved.
``clinfl site run`` reads everything from here::

    <state>/identity/           mode 0700
        site.json               the site's name
        signing.key             Ed25519 signing key (secure aggregation), mode 0600
        node.key, node.pub      ECDSA P-256 Flower node key (SuperNode authentication), key 0600
        tls.key                 ECDSA P-256 TLS key, mode 0600
        site.crt, ca.crt        the site's TLS certificate and the federation's CA certificate
        roster.json             the pinned roster
    <state>/site-request.json   public: what the site sends to the federation's administrator

Private keys are created exclusively with mode 0600, never printed and never overwritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from clinfl.errors import RosterError
from clinfl.pki import (
    REQUEST_FILE,
    certificate_sha256,
    make_site_request,
    pem_private,
    write_private,
)
from clinfl.roster import (
    SITE_NAME_RULE,
    Member,
    Roster,
    load_roster,
    normalise_node_key,
    roster_changes,
    save_roster,
    valid_site_name,
)

IDENTITY_DIR = "identity"
NAME_FILE = "site.json"
SIGNING_KEY, NODE_KEY, NODE_PUBLIC, TLS_KEY = "signing.key", "node.key", "node.pub", "tls.key"
SITE_CERT, CA_CERT, PINNED_ROSTER = "site.crt", "ca.crt", "roster.json"
_TRUST = "clinfl site trust --roster roster.json --state DIR"


def identity_dir(state_dir: Path) -> Path:
    """Where the site keeps its keys, certificates and pinned roster."""
    return state_dir / IDENTITY_DIR


def init_site(state_dir: Path, site: str) -> dict[str, Any]:
    """Make the site's three key pairs in its state folder and write ``site-request.json``.

    Returns the request (public parts only).

    Raises:
        RosterError: for a bad name, or a state folder that already holds a site's keys.
    """
    if not valid_site_name(site):
        raise RosterError(f"site name {site!r} is not allowed", remedy=SITE_NAME_RULE)
    folder = identity_dir(state_dir)
    if (folder / NAME_FILE).exists() or any(
        (folder / name).exists() for name in (SIGNING_KEY, NODE_KEY, TLS_KEY)
    ):
        raise RosterError(
            f"{state_dir} already holds a site's keys; they are never overwritten",
            remedy=f"keep them (the request is {state_dir / REQUEST_FILE}); to start over as "
            "a new site, use a new --state folder",
        )
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    signing_key = ed25519.Ed25519PrivateKey.generate()
    node_key = ec.generate_private_key(ec.SECP256R1())
    tls_key = ec.generate_private_key(ec.SECP256R1())
    write_private(folder / SIGNING_KEY, pem_private(signing_key))
    write_private(
        folder / NODE_KEY,
        node_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    write_private(folder / TLS_KEY, pem_private(tls_key))
    request = make_site_request(site, signing_key=signing_key, node_key=node_key, tls_key=tls_key)
    (folder / NODE_PUBLIC).write_text(request["node_public_key"] + "\n")
    (folder / NAME_FILE).write_text(json.dumps({"site": site}) + "\n")
    (state_dir / REQUEST_FILE).write_text(json.dumps(request, indent=2) + "\n")
    return request


def _not_initialised(state_dir: Path) -> RosterError:
    return RosterError(
        f"{state_dir} holds no site identity",
        remedy="run `clinfl site init --site NAME --state DIR` at the site first, "
        "and pass the same --state",
    )


def site_name(state_dir: Path) -> str:
    """The name ``clinfl site init`` gave this site.

    Raises:
        RosterError: if the state folder holds no site identity.
    """
    try:
        name = json.loads((identity_dir(state_dir) / NAME_FILE).read_text())["site"]
    except (OSError, ValueError, KeyError, TypeError):
        raise _not_initialised(state_dir) from None
    if not isinstance(name, str) or not valid_site_name(name):
        raise _not_initialised(state_dir)
    return name


def load_signing_key(state_dir: Path) -> ed25519.Ed25519PrivateKey:
    """The site's Ed25519 signing key.

    Raises:
        RosterError: if it is missing or not an Ed25519 key.
    """
    path = identity_dir(state_dir) / SIGNING_KEY
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError):
        raise _not_initialised(state_dir) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise RosterError(f"{path} is not an Ed25519 key", remedy="restore it from a backup")
    return key


def _own_keys(state_dir: Path) -> tuple[bytes, str, ec.EllipticCurvePublicKey]:
    folder = identity_dir(state_dir)
    signing = load_signing_key(state_dir).public_key()
    try:
        node = normalise_node_key((folder / NODE_PUBLIC).read_text())
        tls = serialization.load_pem_private_key((folder / TLS_KEY).read_bytes(), None)
    except (OSError, ValueError):
        raise _not_initialised(state_dir) from None
    if not isinstance(tls, ec.EllipticCurvePrivateKey):
        raise RosterError(f"{folder / TLS_KEY} is not an EC key", remedy="restore it")
    raw = signing.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw, node, tls.public_key()


def check_own_entry(state_dir: Path, roster: Roster, *, source: str) -> Member:
    """Check that ``roster`` lists this site with exactly its own signing and node keys.

    Raises:
        RosterError: if the site is missing or listed with keys it does not hold (a roster
            that re-keyed this site).
    """
    site = site_name(state_dir)
    member = roster.member(site)
    if member is None:
        raise RosterError(
            f"{source} does not list this site ({site}); its members are "
            f"{', '.join(roster.names) or 'none'}",
            remedy="ask the administrator to admit this site's site-request.json, then trust "
            "the new roster",
        )
    signing, node, _ = _own_keys(state_dir)
    wrong = [
        name
        for name, ours, theirs in (
            ("signing key", signing, member.signing_public_key),
            ("node key", node, member.node_public_key),
        )
        if ours != theirs
    ]
    if wrong:
        raise RosterError(
            f"{source} lists {site} with a {' and a '.join(wrong)} this site does not hold",
            remedy="do not trust it: the roster was changed after this site's request was "
            "admitted; ask the administrator why",
        )
    return member


def _read_certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        raise RosterError(
            f"{path} cannot be read as a PEM certificate",
            remedy=f"pass the {what} the federation's administrator handed back",
        ) from None


@dataclass(frozen=True)
class TrustReview:
    """A roster checked against the site's own keys, waiting for its operator's approval."""

    site: str
    roster: Roster
    previous: Roster | None
    ca_pem: bytes
    cert_pem: bytes

    @property
    def changes(self) -> list[str]:
        """How the roster differs from the one pinned now (empty when none is pinned)."""
        return [] if self.previous is None else roster_changes(self.previous, self.roster)

    @property
    def unchanged(self) -> bool:
        """Whether the roster is the one pinned now."""
        return self.previous is not None and self.previous.digest == self.roster.digest


def review_roster(
    state_dir: Path, roster_path: Path, *, cert: Path | None = None, ca: Path | None = None
) -> TrustReview:
    """Check a roster before the site's operator is asked to trust it.

    ``ca`` and ``cert`` (the federation's CA certificate and this site's TLS certificate, both
    from the administrator) are needed the first time and whenever they change; otherwise the
    installed ones are used.

    Raises:
        RosterError: for an invalid roster; one that does not list this site with exactly its
            own keys and certificate; a CA certificate the roster was not made for; or a site
            certificate not issued by that CA for this site's TLS key.
    """
    site = site_name(state_dir)
    folder = identity_dir(state_dir)
    roster = load_roster(roster_path)
    ca_path = ca if ca is not None else folder / CA_CERT
    if not ca_path.is_file():
        raise RosterError(
            "this site has no CA certificate yet",
            remedy="pass --ca ca.crt (the federation's administrator hands it back with the "
            "roster)",
        )
    ca_cert = _read_certificate(ca_path, "ca.crt")
    if certificate_sha256(ca_cert) != roster.ca_sha256:
        raise RosterError(
            f"{roster_path} was made for another CA than {ca_path}",
            remedy="ask the administrator for the ca.crt and roster.json of the same federation",
        )
    cert_path = cert if cert is not None else folder / SITE_CERT
    if not cert_path.is_file():
        raise RosterError(
            "this site has no TLS certificate yet",
            remedy=f"pass --cert {site}.crt (what `clinfl pki admit` issued for this site)",
        )
    site_cert = _read_certificate(cert_path, f"{site}.crt")
    _, _, tls_public = _own_keys(state_dir)
    names = [a.value for a in site_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        site_cert.verify_directly_issued_by(ca_cert)
        issued = True
    except (ValueError, TypeError, InvalidSignature):
        issued = False
    if not issued or names != [site] or site_cert.public_key() != tls_public:
        raise RosterError(
            f"{cert_path} is not a certificate the federation's CA issued for this site's TLS key",
            remedy=f"pass the {site}.crt that `clinfl pki admit` issued for this site's request",
        )
    member = check_own_entry(state_dir, roster, source=str(roster_path))
    if member.tls_cert_sha256 != certificate_sha256(site_cert):
        raise RosterError(
            f"{roster_path} lists another TLS certificate for {site} than {cert_path}",
            remedy="pass the certificate and roster.json from the same `clinfl pki admit`",
        )
    previous = load_roster(folder / PINNED_ROSTER) if (folder / PINNED_ROSTER).is_file() else None
    return TrustReview(
        site,
        roster,
        previous,
        ca_cert.public_bytes(serialization.Encoding.PEM),
        site_cert.public_bytes(serialization.Encoding.PEM),
    )


def pin_roster(state_dir: Path, review: TrustReview) -> None:
    """Install the certificates and pin the reviewed roster (the operator accepted it)."""
    folder = identity_dir(state_dir)
    (folder / CA_CERT).write_bytes(review.ca_pem)
    (folder / SITE_CERT).write_bytes(review.cert_pem)
    save_roster(folder / PINNED_ROSTER, review.roster)


def pinned_roster(state_dir: Path) -> Roster:
    """The roster this site's operator trusted, checked again against the site's own keys.

    Raises:
        RosterError: if none is pinned, or the pinned one no longer lists this site's keys.
    """
    path = identity_dir(state_dir) / PINNED_ROSTER
    if not path.is_file():
        site_name(state_dir)  # a folder without `site init` says so first
        raise RosterError(
            f"{state_dir} trusts no roster yet",
            remedy=f"compare the roster's fingerprint with the other hospitals, then `{_TRUST}`",
        )
    roster = load_roster(path)
    check_own_entry(state_dir, roster, source=f"the pinned roster {path}")
    return roster


@dataclass(frozen=True)
class SiteFiles:
    """What ``clinfl site run`` reads from the state folder."""

    site: str
    signing_key: ed25519.Ed25519PrivateKey
    roster: Roster
    ca_cert: Path
    node_key: Path


def read_site_files(state_dir: Path) -> SiteFiles:
    """The site's name, signing key, pinned roster, CA certificate and node key.

    Raises:
        RosterError: if the site was not initialised, trusts no roster, or lacks its CA
            certificate or node key.
    """
    site = site_name(state_dir)
    signing = load_signing_key(state_dir)
    roster = pinned_roster(state_dir)
    folder = identity_dir(state_dir)
    for name in (CA_CERT, NODE_KEY):
        if not (folder / name).is_file():
            raise RosterError(
                f"{folder / name} is missing", remedy=f"run `{_TRUST} --ca ca.crt --cert SITE.crt`"
            )
    return SiteFiles(site, signing, roster, folder / CA_CERT, folder / NODE_KEY)
