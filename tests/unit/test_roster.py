"""The roster: canonical digest and fingerprint, validation, and the sites' pinning of it.

A coordinator that adds sybils, re-keys a member or drops one is refused by every honest site
until that site's operator trusts the new roster; a coordinator holding no site's private key
cannot make an advertisement that a site accepts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_files
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.config import RunConfig
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import parse_policy
from clinfl.errors import ProtocolViolation, RosterError
from clinfl.pki import REQUEST_FILE, admit_site, load_pki_roster, remove_site
from clinfl.roster import (
    ROSTER_FILE,
    Roster,
    announce,
    format_fingerprint,
    load_roster,
    normalise_fingerprint,
    roster_changes,
    split_announcement,
)
from clinfl.secagg.advertise import check_advertisements, make_advertisement
from clinfl.secagg.transcript import RoundBinding
from clinfl.transport.contract import JoinRequest, read_refusal
from clinfl.transport.flower.bundle import app_pyproject
from clinfl.transport.wire import encode
from coordinator.deploy.launcher import portable_run_config
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.identity import (
    PINNED_ROSTER,
    identity_dir,
    init_site,
    load_signing_key,
    pinned_roster,
    read_site_files,
    review_roster,
)
from site_agent.ingest.pipeline import IngestOptions
from tests.support.roster_pki import RESEARCH_POLICY, admit_sites, trust, trusted_federation

runner = CliRunner()
SITES = ("site-1", "site-2", "site-3")
BUNDLE, _ = build_fab_from_files({"pyproject.toml": app_pyproject().encode()})


@pytest.fixture
def federation(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    return trusted_federation(tmp_path, SITES)


def _document(pki: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((pki / ROSTER_FILE).read_text())
    return document


# --- the roster file ------------------------------------------------------------------------


def test_digest_is_canonical_and_changes_with_every_member(
    federation: tuple[Path, dict[str, Path]],
) -> None:
    pki, _ = federation
    roster = load_pki_roster(pki)
    document = _document(pki)
    shuffled = dict(document, members=list(reversed(document["members"])))
    shuffled.pop("fingerprint")
    shuffled["members"][0] = dict(
        shuffled["members"][0],
        signing_public_key=shuffled["members"][0]["signing_public_key"].upper(),
        node_public_key=shuffled["members"][0]["node_public_key"] + " a-comment\n",
    )
    same = Roster.from_document(shuffled)
    assert same.digest == roster.digest and len(roster.digest) == 32
    assert roster.fingerprint == format_fingerprint(roster.digest)
    assert len(roster.fingerprint.split()) == 10
    assert roster.digest == hashlib.sha256(roster.canonical_bytes()).digest()
    assert set(roster.directory) == set(SITES)
    dropped = roster.without("site-3")
    site2 = roster.member("site-2")
    assert site2 is not None
    fresh = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    rekeyed = roster.with_member(replace(site2, signing_public_key=fresh))
    digests = {roster.digest, dropped.digest, rekeyed.digest}
    assert len(digests) == 3
    assert roster_changes(roster, dropped) == ["- site-3: removed"]
    assert roster_changes(roster, rekeyed) == ["~ site-2: re-keyed (signing_public_key)"]
    assert roster_changes(dropped, roster) == ["+ site-3: added"]
    assert roster_changes(roster, roster) == []


def test_fingerprints_are_compared_whatever_their_spelling() -> None:
    digest = bytes(range(32))
    short = format_fingerprint(digest)
    assert normalise_fingerprint(short.upper().replace(" ", "-")) == short
    assert normalise_fingerprint(digest.hex()) == short
    for bad in ("", "1234", "zz" * 20):
        with pytest.raises(RosterError, match="not a fingerprint"):
            normalise_fingerprint(bad)


def test_invalid_rosters_are_refused_with_every_reason(
    federation: tuple[Path, dict[str, Path]],
) -> None:
    pki, _ = federation
    document = _document(pki)
    members = document["members"]
    twice = dict(document, members=[*members, dict(members[0])])
    twice.pop("fingerprint")
    with pytest.raises(RosterError, match="site 'site-1' is named 2 times"):
        Roster.from_document(twice)
    shared = dict(document, members=[members[0], dict(members[0], site="site-9")])
    shared.pop("fingerprint")
    with pytest.raises(RosterError, match="share one signing_public_key"):
        Roster.from_document(shared)
    bad = dict(
        document,
        members=[dict(members[0], node_public_key="ssh-rsa AAAA", signing_public_key="00")],
        extra=1,
    )
    bad.pop("fingerprint")
    with pytest.raises(RosterError) as refused:
        Roster.from_document(bad)
    for says in ("unknown field(s) extra", "signing_public_key is not", "node_public_key is not"):
        assert says in refused.value.message
    edited = dict(document, members=members[:2])  # the fingerprint field left as it was
    with pytest.raises(RosterError, match="fingerprint field"):
        Roster.from_document(edited)


def test_the_join_announces_the_roster_digest() -> None:
    digest = bytes(range(32))
    config = announce({"federation": {"rounds": 1}}, digest)
    assert split_announcement(config) == (digest, {"federation": {"rounds": 1}})
    assert split_announcement({"federation": {}}) == (None, {"federation": {}})
    for bad in ({"sha256": "00"}, "x", {"sha256": digest.hex(), "more": 1}):
        with pytest.raises(RosterError, match="malformed"):
            split_announcement({"roster": bad})


# --- trusting a roster at a site ------------------------------------------------------------


def test_trust_pins_the_roster_with_the_certificates_and_survives_a_restart(
    federation: tuple[Path, dict[str, Path]],
) -> None:
    pki, states = federation
    files = read_site_files(states["site-2"])  # what `site run` reads at every start
    assert files.site == "site-2"
    assert files.roster.digest == load_pki_roster(pki).digest
    assert files.ca_cert.read_bytes() == (pki / "ca.crt").read_bytes()
    assert set(files.roster.directory) == set(SITES)
    own = files.roster.directory["site-2"]
    assert own == files.signing_key.public_key()


def test_a_site_refuses_to_trust_a_roster_that_rekeys_or_omits_it(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    pki, states = federation
    impostor = tmp_path / "coordinator-made-site-2"
    init_site(impostor, "site-2")  # keys the coordinator holds, under site-2's name
    admit_site(pki, impostor / REQUEST_FILE, replace=True)
    with pytest.raises(RosterError, match="lists site-2 with a signing key and a node key"):
        review_roster(states["site-2"], pki / ROSTER_FILE)
    with pytest.raises(RosterError, match="not a certificate the federation's CA issued"):
        review_roster(states["site-2"], pki / ROSTER_FILE, cert=pki / "issued" / "site-2.crt")
    remove_site(pki, "site-2")
    with pytest.raises(RosterError, match="does not list this site"):
        review_roster(states["site-2"], pki / ROSTER_FILE)
    init_site(tmp_path / "new", "site-4")
    with pytest.raises(RosterError, match="no CA certificate"):
        review_roster(tmp_path / "new", pki / ROSTER_FILE)
    with pytest.raises(RosterError, match="holds no site identity"):
        review_roster(tmp_path / "nobody", pki / ROSTER_FILE)


def test_a_certificate_or_ca_from_elsewhere_is_refused(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    pki, states = federation
    other_pki, _ = trusted_federation(tmp_path / "other", ("site-1",))
    with pytest.raises(RosterError, match="made for another CA"):
        review_roster(states["site-1"], pki / ROSTER_FILE, ca=other_pki / "ca.crt")
    with pytest.raises(RosterError, match="not a certificate the federation's CA issued"):
        review_roster(states["site-1"], pki / ROSTER_FILE, cert=other_pki / "issued" / "site-1.crt")
    with pytest.raises(RosterError, match="not a certificate the federation's CA issued"):
        review_roster(states["site-1"], pki / ROSTER_FILE, cert=pki / "issued" / "site-2.crt")


# --- what a deployed site does with runs over other rosters ---------------------------------


def _site(state: Path, site: str, export: Path) -> DeployedSite:
    return DeployedSite(
        SiteIdentity(site, load_signing_key(state)),
        policy=parse_policy(RESEARCH_POLICY),
        roster=lambda: pinned_roster(state),
        data=SiteData(export, None, IngestOptions(image_size=16, label_space="digits")),
        state_dir=state,
        threads=1,
    )


def _config() -> dict[str, Any]:
    document = {
        "data": {"dataset": "dicom", "label_space": "cxr14", "image_size": 16},
        "federation": {"rounds": 1, "batch_size": 16, "sites": 3},
        "secagg": {"min_sites": 2},
        "method": {"name": "fedavg"},
    }
    config: RunConfig = run_config_from_mapping(document, base=Path("."))
    return portable_run_config(config)


def _join(site: DeployedSite, run_config: dict[str, Any]) -> str:
    """The refusal's message (every join here is refused: the run is over cxr14 labels)."""
    reply = site.handle(
        flower_run=1,
        bundle=BUNDLE,
        bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
        call="join",
        body=encode(JoinRequest("run-1", run_config)),
    )
    refusal = read_refusal(reply)
    assert refusal is not None
    return refusal.error.message


PAST_THE_ROSTER = "labels its images in the 'digits' space"  # the next check after the roster's


@pytest.mark.parametrize("attack", ["sybils", "rekey", "drop"])
def test_a_changed_roster_is_refused_by_every_honest_site_until_it_trusts_it(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path, attack: str
) -> None:
    pki, states = federation
    export = tmp_path / "export"
    export.mkdir()
    sites = {name: _site(state, name, export) for name, state in states.items()}
    honest = dict(sites)
    original = load_pki_roster(pki)
    for site in sites.values():
        assert PAST_THE_ROSTER in _join(site, announce(_config(), original.digest))
    if attack == "sybils":  # two sites whose keys the coordinator holds
        admit_sites(pki, {f"sybil-{k}": tmp_path / f"sybil-{k}" for k in (1, 2)})
    elif attack == "rekey":  # site-3 under keys the coordinator holds
        init_site(tmp_path / "impostor", "site-3")
        admit_site(pki, tmp_path / "impostor" / REQUEST_FILE, replace=True)
        del honest["site-3"]  # the real site-3 cannot even trust that roster
    else:
        remove_site(pki, "site-3")
        del honest["site-3"]
    changed = load_pki_roster(pki)
    assert changed.digest != original.digest
    for name, site in honest.items():
        refusal = _join(site, announce(_config(), changed.digest))
        assert "declines the run: the run's roster is not the one" in refusal, name
        assert original.fingerprint in refusal
        assert PAST_THE_ROSTER in _join(site, announce(_config(), original.digest))
        assert "names no roster" in _join(site, _config())
    # site-1's operator compares the new fingerprint out of band and accepts it: only site-1
    # then takes part in runs over the changed roster; the others still refuse them
    trust(pki, states["site-1"], "site-1")
    assert PAST_THE_ROSTER in _join(sites["site-1"], announce(_config(), changed.digest))
    refusal = _join(sites["site-2"], announce(_config(), changed.digest))
    assert "is not the one" in refusal
    assert "is not the one" in _join(sites["site-1"], announce(_config(), original.digest))


def test_a_coordinator_without_the_sites_keys_cannot_make_an_accepted_advertisement(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    pki, states = federation
    pinned = pinned_roster(states["site-1"])
    binding = RoundBinding(pinned.digest, "run-1", 1, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)

    def advert(site: str, key: Ed25519PrivateKey, bound: RoundBinding = binding) -> Any:
        return make_advertisement(
            site_id=site,
            binding=bound,
            signing_key=key,
            share_key=hashlib.sha256(f"{site}/s".encode()).digest(),
            mask_key=hashlib.sha256(f"{site}/m".encode()).digest(),
            commitment=hashlib.sha256(f"{site}/c".encode()).digest(),
        )

    own = advert("site-1", load_signing_key(states["site-1"]))
    real = [own, advert("site-2", load_signing_key(states["site-2"]))]
    check_advertisements(real, binding=binding, directory=pinned.directory, threshold=2)
    # (a) fresh keys pretending to be members
    forged = [own, *(advert(s, Ed25519PrivateKey.generate()) for s in ("site-2", "site-3"))]
    with pytest.raises(ProtocolViolation) as refused:
        check_advertisements(forged, binding=binding, directory=pinned.directory, threshold=2)
    assert "site-2: signature does not match" in refused.value.message
    assert "site-3: signature does not match" in refused.value.message
    # (b) sybils the coordinator admitted to its own roster, and bound to that roster
    admit_sites(pki, {f"sybil-{k}": tmp_path / f"sybil-{k}" for k in (1, 2)})
    sybil_roster = load_pki_roster(pki)
    sybil_binding = RoundBinding(sybil_roster.digest, "run-1", 1, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    sybils = [
        advert(s, load_signing_key(tmp_path / s), sybil_binding) for s in ("sybil-1", "sybil-2")
    ]
    with pytest.raises(ProtocolViolation) as refused:
        check_advertisements(
            [own, *sybils], binding=binding, directory=pinned.directory, threshold=2
        )
    assert "sybil-1: not in the federation's roster" in refused.value.message
    # (c) a site that never trusted the sybil roster compares bindings with its own pinned one
    honest_other = advert("site-2", load_signing_key(states["site-2"]), sybil_binding)
    with pytest.raises(ProtocolViolation, match="site-2: bound to another roster_hash"):
        check_advertisements(
            [own, honest_other], binding=binding, directory=pinned.directory, threshold=2
        )


# --- the CLI: bad input is one clear line and a non-zero exit -------------------------------


def test_site_trust_cli_pins_only_what_the_operator_accepts(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    pki, states = federation
    remove_site(pki, "site-3")
    roster = load_roster(pki / ROSTER_FILE)
    state = states["site-1"]
    pinned_before = (identity_dir(state) / PINNED_ROSTER).read_bytes()
    base = ["site", "trust", "--roster", str(pki / ROSTER_FILE), "--state", str(state)]
    declined = runner.invoke(app, base, input="n\n")
    assert declined.exit_code == 9, declined.output
    assert "- site-3: removed" in declined.output
    assert roster.fingerprint in declined.output
    assert "nothing was pinned" in declined.output
    wrong = runner.invoke(app, [*base, "--accept", "0" * 40])
    assert wrong.exit_code == 9 and "nothing was pinned" in wrong.output, wrong.output
    assert (identity_dir(state) / PINNED_ROSTER).read_bytes() == pinned_before
    accepted = runner.invoke(app, [*base, "--accept", roster.fingerprint.replace(" ", "-")])
    assert accepted.exit_code == 0, accepted.output
    assert pinned_roster(state).digest == roster.digest
    again = runner.invoke(app, base)
    assert again.exit_code == 0 and "already the pinned one" in again.output
    confirmed = runner.invoke(
        app, ["site", "trust", "--roster", str(pki / ROSTER_FILE), "--state", str(states["site-2"])],
        input="y\n",
    )  # fmt: skip
    assert confirmed.exit_code == 0, confirmed.output
    assert pinned_roster(states["site-2"]).digest == roster.digest


def test_site_cli_refuses_bad_input_in_one_line(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    pki, states = federation
    document = _document(pki)
    twice = dict(document, members=[*document["members"], document["members"][0]])
    twice.pop("fingerprint")
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    (tmp_path / "junk.json").write_text("{")
    state = str(states["site-1"])
    cases = [
        (["site", "trust", "--roster", str(tmp_path / "twice.json"), "--state", state, "--yes"],
         "is named 2 times"),
        (["site", "trust", "--roster", str(tmp_path / "junk.json"), "--state", state, "--yes"],
         "cannot be read"),
        (["site", "trust", "--roster", str(pki / ROSTER_FILE), "--state", state,
          "--accept", "nope"], "is not a fingerprint"),
        (["site", "trust", "--roster", str(pki / ROSTER_FILE), "--state",
          str(tmp_path / "nobody"), "--yes"], "holds no site identity"),
        (["site", "init", "--site", "site-1", "--state", state], "never overwritten"),
        (["site", "init", "--site", "Bad Name", "--state", str(tmp_path / "b")], "not allowed"),
    ]  # fmt: skip
    for arguments, says in cases:
        result = runner.invoke(app, arguments)
        assert result.exit_code == 9, (arguments, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and says in lines[-1], lines
        assert "Traceback" not in result.output
    assert pinned_roster(states["site-1"]).digest == load_pki_roster(pki).digest
