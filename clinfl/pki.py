"""The federation's PKI: a CA, the coordinator's TLS certificate, and the roster of sites.

``init_pki`` writes a new CA (ECDSA P-256), the coordinator's TLS server certificate for the
host names and addresses it will be reached at, ``manifest.json`` and an empty ``roster.json``.

Sites make their own keys (``clinfl site init``, :func:`make_site_request`) and send only a
``site-request.json``: their name, the public halves of their Ed25519 signing key and Flower
node key, a certificate signing request for their TLS key, proofs that they hold each private
key, and a fingerprint over all of it. :func:`admit_site` checks that request, signs the TLS
certificate (``issued/NAME.crt``) and adds the public parts to the roster. No function here
ever sees or writes a site's private key.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clinfl.errors import PKIError, RosterError
from clinfl.roster import (
    ROSTER_FILE,
    SITE_NAME_RULE,
    Member,
    Roster,
    format_fingerprint,
    load_roster,
    normalise_fingerprint,
    normalise_node_key,
    save_roster,
    valid_site_name,
)

MANIFEST = "manifest.json"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
COORDINATOR_CERT, COORDINATOR_KEY = "coordinator.crt", "coordinator.key"
ISSUED_DIR = "issued"
REQUEST_FILE = "site-request.json"


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never over an existing file) and write ``data``."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def pem_private(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (written only with :func:`write_private`)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "clinfl federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def certificate_sha256(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint in hex."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, days: int) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def _alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    """Every host given, plus loopback: the coordinator's own tools reach its Control API there."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOOPBACK_NAMES]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def init_pki(out_dir: Path, *, hosts: list[str], days: int = 825) -> dict[str, Any]:
    """Create the CA, the coordinator's certificate, the manifest and an empty roster.

    Raises:
        PKIError: if ``out_dir`` is not empty, no host is given, or ``days`` is not positive.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PKIError(f"{out_dir} is not empty", remedy="choose a new --out folder")
    if not hosts or days < 1:
        raise PKIError(
            "the coordinator needs at least one host name or address and a positive validity",
            remedy="--host coordinator.example.org --host 10.0.0.5 --days 825",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("clinfl federation CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _builder(_name(hosts[0]), ca_name, server_key.public_key(), days)
        .add_extension(_alternative_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(out_dir / CA_KEY, pem_private(ca_key))
    write_private(out_dir / COORDINATOR_KEY, pem_private(server_key))
    (out_dir / CA_CERT).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (out_dir / COORDINATOR_CERT).write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    manifest = {
        "format": 2,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ca_sha256": certificate_sha256(ca_cert),
        "coordinator": {"hosts": hosts, "cert_sha256": certificate_sha256(server_cert)},
    }
    _save_manifest(out_dir, manifest)
    save_roster(out_dir / ROSTER_FILE, Roster(certificate_sha256(ca_cert)))
    return manifest


def load_manifest(pki_dir: Path) -> dict[str, Any]:
    """Read the federation manifest.

    Raises:
        PKIError: if the folder holds no readable manifest.
    """
    path = pki_dir / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PKIError(
            f"{path} cannot be read ({error.__class__.__name__})",
            remedy="run `clinfl pki init --out DIR` first, or pass the right --pki",
        ) from None
    return manifest


def _save_manifest(pki_dir: Path, manifest: dict[str, Any]) -> None:
    partial = pki_dir / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, pki_dir / MANIFEST)


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((pki_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((pki_dir / CA_KEY).read_bytes(), None)
    except (OSError, ValueError) as error:
        raise PKIError(
            f"the CA in {pki_dir} cannot be read ({error.__class__.__name__})",
            remedy="admit sites where `clinfl pki init` wrote ca.crt and ca.key",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{pki_dir / CA_KEY} is not an EC key", remedy="recreate the PKI")
    return cert, key


_REQUEST_LABEL = b"clinfl/site-request/v1\n"
_PROOF_LABEL = b"clinfl/site-request/proof/v1\n"
_REQUEST_KEYS = frozenset(
    {"format", "site", "signing_public_key", "node_public_key", "tls_csr", "proofs", "fingerprint"}
)
_REMEDY_REQUEST = (
    "ask the site for the site-request.json that `clinfl site init` wrote, sent unchanged"
)


def _raw_public(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _request_digest(
    site: str, signing_public: bytes, node_public: str, tls_public: ec.EllipticCurvePublicKey
) -> bytes:
    spki = tls_public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = {
        "site": site,
        "signing_public_key": signing_public.hex(),
        "node_public_key": node_public,
        "tls_public_key": spki.hex(),
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(_REQUEST_LABEL + text.encode()).digest()


def make_site_request(
    site: str,
    *,
    signing_key: ed25519.Ed25519PrivateKey,
    node_key: ec.EllipticCurvePrivateKey,
    tls_key: ec.EllipticCurvePrivateKey,
) -> dict[str, Any]:
    """Return a site's request to join (public parts only), as ``site-request.json`` holds it.

    It carries a CSR signed with the TLS key and a signature by each of the other two keys over
    the request's digest, so the administrator knows the site holds all three private keys.
    """
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(site))
        .sign(tls_key, hashes.SHA256())
    )
    signing_public = _raw_public(signing_key.public_key())
    node_public = normalise_node_key(
        node_key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    digest = _request_digest(site, signing_public, node_public, tls_key.public_key())
    proof = _PROOF_LABEL + digest
    return {
        "format": 1,
        "site": site,
        "signing_public_key": signing_public.hex(),
        "node_public_key": node_public,
        "tls_csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "proofs": {
            "signing": signing_key.sign(proof).hex(),
            "node": node_key.sign(proof, ec.ECDSA(hashes.SHA256())).hex(),
        },
        "fingerprint": format_fingerprint(digest),
    }


@dataclass(frozen=True)
class SiteRequest:
    """A checked ``site-request.json``."""

    site: str
    signing_public_key: bytes
    node_public_key: str
    csr: x509.CertificateSigningRequest
    fingerprint: str


def _refuse(source: str, why: str, remedy: str = _REMEDY_REQUEST) -> RosterError:
    return RosterError(f"{source} is refused: {why}", remedy=remedy)


def check_site_request(document: object, *, source: str = "the site request") -> SiteRequest:
    """Check a parsed site request: its form, its CSR, its fingerprint and its key proofs.

    Raises:
        RosterError: for a malformed request, a bad name or key, a CSR that is not signed by
            its own key or names another site, a fingerprint that does not match the keys
            (the file was changed after ``clinfl site init``), or a missing proof of a key.
    """
    if not isinstance(document, dict) or set(document) != _REQUEST_KEYS:
        raise _refuse(source, "it is not a site request (wrong or missing fields)")
    strings = ("site", "signing_public_key", "node_public_key", "tls_csr", "fingerprint")
    proofs = document["proofs"]
    if (
        document["format"] != 1
        or not all(isinstance(document[k], str) for k in strings)
        or not isinstance(proofs, dict)
        or set(proofs) != {"signing", "node"}
        or not all(isinstance(v, str) for v in proofs.values())
    ):
        raise _refuse(source, "it is not a format-1 site request")
    site = document["site"]
    if not valid_site_name(site):
        raise _refuse(source, f"site name {site!r} is not allowed", remedy=SITE_NAME_RULE)
    try:
        signing_public = bytes.fromhex(document["signing_public_key"])
        signing = ed25519.Ed25519PublicKey.from_public_bytes(signing_public)
    except ValueError:
        raise _refuse(source, "signing_public_key is not an Ed25519 public key") from None
    try:
        node_public = normalise_node_key(document["node_public_key"])
    except ValueError:
        raise _refuse(source, "node_public_key is not an OpenSSH ECDSA P-256 key") from None
    node = serialization.load_ssh_public_key(node_public.encode())
    if not isinstance(node, ec.EllipticCurvePublicKey):  # normalise_node_key made sure
        raise _refuse(source, "node_public_key is not an OpenSSH ECDSA P-256 key")
    try:
        csr = x509.load_pem_x509_csr(document["tls_csr"].encode())
        tls_public = csr.public_key()
    except ValueError:
        raise _refuse(source, "tls_csr is not a PEM certificate signing request") from None
    if not isinstance(tls_public, ec.EllipticCurvePublicKey) or tls_public.curve.name != (
        "secp256r1"
    ):
        raise _refuse(source, "the TLS key is not ECDSA P-256")
    if not csr.is_signature_valid:
        raise _refuse(source, "the CSR is not signed by its own key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [site]:
        raise _refuse(source, f"the CSR does not name site {site!r}")
    digest = _request_digest(site, signing_public, node_public, tls_public)
    try:
        shown = normalise_fingerprint(document["fingerprint"])
    except RosterError:
        shown = ""
    if shown != format_fingerprint(digest):
        raise _refuse(
            source,
            "its fingerprint does not match its keys (the file was changed after "
            "`clinfl site init`)",
        )
    proof = _PROOF_LABEL + digest
    try:
        signing.verify(bytes.fromhex(proofs["signing"]), proof)
    except (ValueError, InvalidSignature):
        raise _refuse(source, "it does not prove that the site holds its signing key") from None
    try:
        node.verify(bytes.fromhex(proofs["node"]), proof, ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        raise _refuse(source, "it does not prove that the site holds its node key") from None
    return SiteRequest(site, signing_public, node_public, csr, format_fingerprint(digest))


def read_site_request(path: Path) -> SiteRequest:
    """Read and check a ``site-request.json``.

    Raises:
        RosterError: if it cannot be read or fails :func:`check_site_request`.
    """
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RosterError(
            f"{path} cannot be read ({error.__class__.__name__})", remedy=_REMEDY_REQUEST
        ) from None
    return check_site_request(document, source=str(path))


@dataclass(frozen=True)
class Admission:
    """What :func:`admit_site` did: the member added, its certificate, the new roster."""

    member: Member
    certificate: Path
    roster: Roster
    replaced: bool


def load_pki_roster(pki_dir: Path) -> Roster:
    """The coordinator's roster (``<pki>/roster.json``), checked against the PKI's CA.

    Raises:
        PKIError: if the folder has no manifest; RosterError if its roster is invalid or was
            made for another CA.
    """
    manifest = load_manifest(pki_dir)
    roster = load_roster(pki_dir / ROSTER_FILE)
    if roster.ca_sha256 != manifest.get("ca_sha256"):
        raise RosterError(
            f"{pki_dir / ROSTER_FILE} was made for another CA than {pki_dir / CA_CERT}",
            remedy="use the roster.json of this PKI folder",
        )
    return roster


def admit_site(
    pki_dir: Path,
    request_path: Path,
    *,
    replace: bool = False,
    expect_fingerprint: str | None = None,
    days: int = 825,
) -> Admission:
    """Admit a site from its request: sign its TLS certificate and add it to the roster.

    The certificate goes to ``<pki>/issued/NAME.crt``; the roster is rewritten atomically.

    Raises:
        RosterError: for a refused request (see :func:`check_site_request`), a fingerprint
            other than ``expect_fingerprint``, a name already in the roster (without
            ``replace``), ``replace`` of a site the roster does not hold, or a key another
            member already uses.
        PKIError: for a PKI folder without a CA, manifest or roster.
    """
    request = read_site_request(request_path)
    if expect_fingerprint is not None and (
        normalise_fingerprint(expect_fingerprint) != request.fingerprint
    ):
        raise RosterError(
            f"{request_path} has fingerprint {request.fingerprint}, not the "
            f"{normalise_fingerprint(expect_fingerprint)} the site gave you",
            remedy="do not admit it: ask the site to send its request again, and compare again",
        )
    roster = load_pki_roster(pki_dir)
    present = roster.member(request.site) is not None
    if present and not replace:
        raise RosterError(
            f"site {request.site!r} is already in the roster",
            remedy="choose another name; to give this site new keys, pass --replace (every "
            "site must then trust the new roster)",
        )
    if replace and not present:
        raise RosterError(
            f"site {request.site!r} is not in the roster, so there is nothing to replace",
            remedy="admit it without --replace",
        )
    if days < 1:
        raise PKIError("--days must be positive", remedy="--days 825")
    ca_cert, ca_key = _load_ca(pki_dir)
    certificate = (
        _builder(_name(request.site), ca_cert.subject, request.csr.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    member = Member(
        request.site,
        request.signing_public_key,
        request.node_public_key,
        certificate_sha256(certificate),
    )
    new_roster = roster.with_member(member)
    issued = pki_dir / ISSUED_DIR
    issued.mkdir(exist_ok=True)
    path = issued / f"{request.site}.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    save_roster(pki_dir / ROSTER_FILE, new_roster)
    return Admission(member, path, new_roster, replaced=present)


def remove_site(pki_dir: Path, site: str) -> Roster:
    """Take ``site`` out of the roster; return the new roster.

    Raises:
        RosterError: if the roster does not hold ``site``.
        PKIError: for a PKI folder without a manifest or roster.
    """
    roster = load_pki_roster(pki_dir)
    if roster.member(site) is None:
        known = ", ".join(roster.names) or "none"
        raise RosterError(
            f"site {site!r} is not in the roster (members: {known})",
            remedy="name a member of the roster",
        )
    new_roster = roster.without(site)
    save_roster(pki_dir / ROSTER_FILE, new_roster)
    (pki_dir / ISSUED_DIR / f"{site}.crt").unlink(missing_ok=True)
    return new_roster
