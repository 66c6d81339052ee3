"""The federation PKI: chains verify, private keys are 0600 and never printed or manifested."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.errors import PKIError
from clinfl.pki import add_site, init_pki, load_manifest

runner = CliRunner()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_makes_a_ca_and_a_server_certificate_for_the_hosts(tmp_path: Path) -> None:
    manifest = init_pki(tmp_path / "pki", hosts=["coord.example.org", "10.0.0.5"], days=30)
    ca, server = _cert(tmp_path / "pki" / "ca.crt"), _cert(tmp_path / "pki" / "coordinator.crt")
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "coordinator.key"):
        assert stat.S_IMODE((tmp_path / "pki" / key).stat().st_mode) == 0o600
    assert manifest["coordinator"]["hosts"] == ["coord.example.org", "10.0.0.5"]
    assert load_manifest(tmp_path / "pki") == manifest


def test_add_site_writes_keys_and_only_public_parts_to_the_manifest(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, hosts=["localhost"])
    files = add_site(pki, "site-1")
    client = _cert(files.tls_cert)
    client.verify_directly_issued_by(_cert(pki / "ca.crt"))
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    for path in (files.tls_key, files.node_key, files.signing_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    signing = serialization.load_pem_private_key(files.signing_key.read_bytes(), None)
    node = serialization.load_ssh_private_key(files.node_key.read_bytes(), None)
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert isinstance(node, ec.EllipticCurvePrivateKey)
    entry = load_manifest(pki)["sites"]["site-1"]
    raw = signing.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert entry["signing_public_key"] == raw.hex()
    assert entry["node_public_key"] == files.node_public_key.read_text()
    assert "PRIVATE" not in (pki / "manifest.json").read_text()


def test_bad_names_duplicates_and_reused_folders_are_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, hosts=["localhost"])
    add_site(pki, "site-1")
    with pytest.raises(PKIError, match="already exists"):
        add_site(pki, "site-1")
    for bad in ("Site One", "../escape", "", "x" * 41):
        with pytest.raises(PKIError, match="not allowed"):
            add_site(pki, bad)
    with pytest.raises(PKIError, match="not empty"):
        init_pki(pki, hosts=["localhost"])
    with pytest.raises(PKIError, match="cannot be read"):
        add_site(tmp_path / "nowhere", "site-2")


def test_cli_never_prints_a_private_key(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    made = runner.invoke(app, ["pki", "init", "--out", str(pki), "--host", "localhost"])
    assert made.exit_code == 0, made.output
    added = runner.invoke(app, ["pki", "add-site", "site-7", "--pki", str(pki), "--json"])
    assert added.exit_code == 0, added.output
    paths = json.loads(added.stdout)
    assert Path(paths["signing_key"]).is_file()
    assert "PRIVATE KEY" not in made.output + added.output
    again = runner.invoke(app, ["pki", "add-site", "site-7", "--pki", str(pki)])
    assert again.exit_code == 9 and "already exists" in again.output
    assert "Traceback" not in again.output
