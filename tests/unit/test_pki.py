"""The federation PKI: chains verify; sites make their own keys, and no site's private key is
ever written at the coordinator or printed; `pki admit` refuses tampered and duplicate requests."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.errors import PKIError, RosterError
from clinfl.pki import (
    REQUEST_FILE,
    admit_site,
    check_site_request,
    init_pki,
    load_manifest,
    load_pki_roster,
    remove_site,
)
from clinfl.roster import ROSTER_FILE
from site_agent.identity import IDENTITY_DIR, init_site
from tests.support.roster_pki import admit_sites

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


def test_site_init_makes_keys_at_the_site_and_a_request_with_only_public_parts(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    request = init_site(state, "site-1")
    folder = state / IDENTITY_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("signing.key", "node.key", "tls.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    signing = serialization.load_pem_private_key((folder / "signing.key").read_bytes(), None)
    node = serialization.load_ssh_private_key((folder / "node.key").read_bytes(), None)
    tls = serialization.load_pem_private_key((folder / "tls.key").read_bytes(), None)
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert isinstance(node, ec.EllipticCurvePrivateKey)
    assert isinstance(tls, ec.EllipticCurvePrivateKey)
    on_disk = json.loads((state / REQUEST_FILE).read_text())
    assert on_disk == request
    assert set(request) == {
        "format", "site", "signing_public_key", "node_public_key", "tls_csr", "proofs",
        "fingerprint",
    }  # fmt: skip
    assert "PRIVATE" not in (state / REQUEST_FILE).read_text()
    checked = check_site_request(request)
    assert checked.site == "site-1"
    assert checked.csr.public_key() == tls.public_key()
    assert checked.signing_public_key == signing.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(request["fingerprint"].split()) == 10
    with pytest.raises(RosterError, match="never overwritten"):
        init_site(state, "site-1")
    for bad in ("Site One", "../escape", "", "x" * 41):
        with pytest.raises(RosterError, match="not allowed"):
            init_site(tmp_path / "other", bad)


def test_admit_signs_the_certificate_and_adds_only_public_parts_to_the_roster(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, hosts=["localhost"])
    assert load_pki_roster(pki).members == ()
    init_site(tmp_path / "s1", "site-1")
    done = admit_site(pki, tmp_path / "s1" / REQUEST_FILE)
    client = _cert(done.certificate)
    client.verify_directly_issued_by(_cert(pki / "ca.crt"))
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    tls = serialization.load_pem_private_key(
        (tmp_path / "s1" / IDENTITY_DIR / "tls.key").read_bytes(), None
    )
    assert client.public_key() == tls.public_key()
    roster = load_pki_roster(pki)
    assert roster.names == ("site-1",)
    member = roster.members[0]
    assert member.tls_cert_sha256 == client.fingerprint(hashes.SHA256()).hex()
    assert (
        member.node_public_key == (tmp_path / "s1" / IDENTITY_DIR / "node.pub").read_text().strip()
    )
    document = json.loads((pki / ROSTER_FILE).read_text())
    assert document["fingerprint"] == roster.fingerprint
    assert "PRIVATE" not in (pki / ROSTER_FILE).read_text()


def _tampered(request: dict[str, Any], tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(request))
    return path


def test_admit_refuses_tampered_duplicate_and_unknown_sites(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, hosts=["localhost"])
    request = init_site(tmp_path / "s1", "site-1")
    other = init_site(tmp_path / "s2", "site-2")
    # a key swapped in transit, the fingerprint left as it was
    swapped = dict(request, signing_public_key=other["signing_public_key"])
    with pytest.raises(RosterError, match="fingerprint does not match its keys"):
        admit_site(pki, _tampered(swapped, tmp_path, "swapped.json"))
    renamed = dict(request, site="site-9")
    with pytest.raises(RosterError, match="CSR does not name site"):
        admit_site(pki, _tampered(renamed, tmp_path, "renamed.json"))
    # an attacker who recomputes the fingerprint still cannot prove it holds the site's keys
    forged = dict(other, site="site-2", proofs=request["proofs"])
    with pytest.raises(RosterError, match="does not prove"):
        admit_site(pki, _tampered(forged, tmp_path, "forged.json"))
    with pytest.raises(RosterError, match="not a site request"):
        admit_site(pki, _tampered({"site": "x"}, tmp_path, "junk.json"))
    with pytest.raises(RosterError, match="cannot be read"):
        admit_site(pki, tmp_path / "missing.json")
    with pytest.raises(RosterError, match="not the"):
        admit_site(pki, tmp_path / "s1" / REQUEST_FILE, expect_fingerprint="0" * 40)
    admit_site(pki, tmp_path / "s1" / REQUEST_FILE, expect_fingerprint=request["fingerprint"])
    with pytest.raises(RosterError, match="already in the roster"):
        admit_site(pki, tmp_path / "s1" / REQUEST_FILE)
    with pytest.raises(RosterError, match="nothing to replace"):
        admit_site(pki, tmp_path / "s2" / REQUEST_FILE, replace=True)
    with pytest.raises(RosterError, match="not in the roster"):
        remove_site(pki, "site-7")
    assert load_pki_roster(pki).names == ("site-1",), "nothing refused was added"
    with pytest.raises(PKIError, match="cannot be read"):
        admit_site(tmp_path / "nowhere", tmp_path / "s2" / REQUEST_FILE)


def test_no_site_private_key_is_ever_written_under_the_coordinators_pki(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    made = runner.invoke(app, ["pki", "init", "--out", str(pki), "--host", "localhost"])
    assert made.exit_code == 0, made.output
    outputs = [made.output]
    states = {f"site-{k}": tmp_path / f"state-{k}" for k in (1, 2, 3)}
    for site, state in states.items():
        result = runner.invoke(app, ["site", "init", "--site", site, "--state", str(state)])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["pki", "admit", str(state / REQUEST_FILE), "--pki", str(pki)])
        assert result.exit_code == 0, result.output
        outputs += [result.output]
    # re-keying and removing a member keep it that way
    (tmp_path / "new-1").mkdir()
    init_site(tmp_path / "new-1", "site-1")
    admit_site(pki, tmp_path / "new-1" / REQUEST_FILE, replace=True)
    remove_site(pki, "site-3")
    site_keys = [
        path.read_bytes()
        for state in [*states.values(), tmp_path / "new-1"]
        for path in (state / IDENTITY_DIR).glob("*.key")
    ]
    assert len(site_keys) == 12
    holding_private = []
    for path in pki.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(key in data for key in site_keys), path
            if b"PRIVATE KEY" in data:
                holding_private.append(path.name)
    assert sorted(holding_private) == ["ca.key", "coordinator.key"], "the coordinator's own only"
    printed = "".join(outputs)
    assert "PRIVATE KEY" not in printed
    assert not any(key.decode() in printed for key in site_keys)


def test_the_old_add_site_command_is_gone(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, hosts=["localhost"])
    result = runner.invoke(app, ["pki", "add-site", "site-7", "--pki", str(pki)])
    assert result.exit_code != 0
    assert not (pki / "sites").exists()


def test_admit_cli_refuses_bad_requests_in_one_line(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, hosts=["localhost"])
    admit_sites(pki, {"site-1": tmp_path / "s1"})
    request = json.loads((tmp_path / "s1" / REQUEST_FILE).read_text())
    other = init_site(tmp_path / "s2", "site-2")
    tampered = _tampered(
        dict(request, node_public_key=other["node_public_key"]), tmp_path, "tampered.json"
    )
    cases = [
        ([str(tampered)], "fingerprint does not match its keys"),
        ([str(tmp_path / "s1" / REQUEST_FILE)], "already in the roster"),
        ([str(tmp_path / "s2" / REQUEST_FILE), "--replace"], "not in the roster"),
        ([str(tmp_path / "s2" / REQUEST_FILE), "--fingerprint", "1234"], "is not a fingerprint"),
    ]
    for arguments, says in cases:
        result = runner.invoke(app, ["pki", "admit", *arguments, "--pki", str(pki)])
        assert result.exit_code == 9, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    result = runner.invoke(app, ["pki", "remove", "site-7", "--pki", str(pki)])
    assert result.exit_code == 9 and "not in the roster" in result.output
    assert "Traceback" not in result.output
