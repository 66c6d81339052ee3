"""The federation's PKI: a CA, the coordinator's TLS certificate, one identity per site.

``init_pki`` writes a new CA (ECDSA P-256), the coordinator's TLS server certificate for the
host names and addresses it will be reached at, and ``manifest.json``. ``add_site`` writes a
site's TLS client certificate (signed by the CA), its Flower node key (ECDSA P-256 in the
OpenSSH format Flower reads, for SuperNode authentication) and its Ed25519 signing key (for
secure aggregation), and adds only their public parts to the manifest. Private keys are
created with mode 0600, never printed and never written to the manifest.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clinfl.errors import PKIError

MANIFEST = "manifest.json"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
COORDINATOR_CERT, COORDINATOR_KEY = "coordinator.crt", "coordinator.key"
SITES_DIR = "sites"
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class SiteFiles:
    """Where ``add_site`` wrote a site's files (copy the folder to the site, securely)."""

    folder: Path
    tls_cert: Path
    tls_key: Path
    node_key: Path
    node_public_key: Path
    signing_key: Path


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _pem_private(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
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


def _fingerprint(certificate: x509.Certificate) -> str:
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
    """Create the CA, the coordinator's certificate and the manifest in a new folder.

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
    _write_private(out_dir / CA_KEY, _pem_private(ca_key))
    _write_private(out_dir / COORDINATOR_KEY, _pem_private(server_key))
    (out_dir / CA_CERT).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (out_dir / COORDINATOR_CERT).write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    manifest = {
        "format": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ca_sha256": _fingerprint(ca_cert),
        "coordinator": {"hosts": hosts, "cert_sha256": _fingerprint(server_cert)},
        "sites": {},
    }
    _save_manifest(out_dir, manifest)
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
            remedy="add sites where `clinfl pki init` wrote ca.crt and ca.key",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{pki_dir / CA_KEY} is not an EC key", remedy="recreate the PKI")
    return cert, key


def add_site(pki_dir: Path, name: str, *, days: int = 825) -> SiteFiles:
    """Create a site's TLS client certificate, Flower node key and signing key.

    Raises:
        PKIError: for a bad or taken name, or a PKI folder without a CA or manifest.
    """
    if not SITE_NAME.match(name):
        raise PKIError(
            f"site name {name!r} is not allowed",
            remedy="use 1-40 lower-case letters, digits and dashes, starting with a letter or "
            "digit (a pseudonym, never the hospital's patient-facing name)",
        )
    manifest = load_manifest(pki_dir)
    folder = pki_dir / SITES_DIR / name
    if name in manifest["sites"] or folder.exists():
        raise PKIError(f"site {name!r} already exists in {pki_dir}", remedy="choose another name")
    ca_cert, ca_key = _load_ca(pki_dir)
    folder.mkdir(parents=True)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = (
        _builder(_name(name), ca_cert.subject, tls_key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    node_key = ec.generate_private_key(ec.SECP256R1())
    signing_key = ed25519.Ed25519PrivateKey.generate()
    files = SiteFiles(
        folder=folder,
        tls_cert=folder / "site.crt",
        tls_key=folder / "site.key",
        node_key=folder / "node.key",
        node_public_key=folder / "node.pub",
        signing_key=folder / "signing.key",
    )
    _write_private(files.tls_key, _pem_private(tls_key))
    _write_private(
        files.node_key,
        node_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    _write_private(files.signing_key, _pem_private(signing_key))
    files.tls_cert.write_bytes(tls_cert.public_bytes(serialization.Encoding.PEM))
    node_public = node_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    files.node_public_key.write_bytes(node_public)
    (folder / CA_CERT).write_bytes((pki_dir / CA_CERT).read_bytes())
    manifest["sites"][name] = {
        "tls_cert_sha256": _fingerprint(tls_cert),
        "node_public_key": node_public.decode(),
        "signing_public_key": signing_key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex(),
    }
    _save_manifest(pki_dir, manifest)
    return files
