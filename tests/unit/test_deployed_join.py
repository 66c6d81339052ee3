"""A deployed site's join (SECAGG.md, R8): no path is accepted, and a refusal reveals no file."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_files

from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import parse_policy
from clinfl.config.site_fields import PATH_FIELDS
from clinfl.data.make_export import make_digits_export
from clinfl.errors import PolicyViolation, ProtocolViolation
from clinfl.roster import Member, Roster, announce
from clinfl.transport.contract import JoinRequest, read_refusal
from clinfl.transport.flower.bundle import app_pyproject
from clinfl.transport.wire import encode
from coordinator.deploy.launcher import portable_run_config
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import INVALID_RUN_CONFIG, NAMES_A_PATH, DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ledger import SiteLedger
from tests.support.roster_pki import RESEARCH_POLICY

BUNDLE, _ = build_fab_from_files({"pyproject.toml": app_pyproject().encode()})
HONEST: dict[str, Any] = {
    "data": {"dataset": "dicom", "label_space": "digits", "image_size": 16},
    "federation": {"rounds": 1, "batch_size": 16, "sites": 3},
    "secagg": {"min_sites": 2},
    "method": {"name": "fedavg"},
}


KEY = Ed25519PrivateKey.generate()
ROSTER = Roster(
    ca_sha256="0" * 64,
    members=(
        Member(
            "site-1",
            KEY.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            "ecdsa-sha2-nistp256 AAAA",
            "0" * 64,
        ),
    ),
)


def _site(tmp_path: Path, export: Path | None = None) -> DeployedSite:
    return DeployedSite(
        SiteIdentity("site-1", KEY),
        policy=parse_policy(RESEARCH_POLICY),
        roster=ROSTER,
        data=SiteData(
            export or tmp_path / "export", None, IngestOptions(image_size=16, label_space="digits")
        ),
        state_dir=tmp_path / "state",
        threads=1,
    )


def _join(site: DeployedSite, run_config: dict[str, Any]) -> bytes:
    return site.handle(
        flower_run=1,
        bundle=BUNDLE,
        bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
        call="join",
        body=encode(JoinRequest("run-1", announce(run_config, ROSTER.digest))),
    )


def _with(field: str, value: object) -> dict[str, Any]:
    section, _, key = field.partition(".")
    document = {name: dict(table) for name, table in HONEST.items()}
    if section == "drops":
        document["drops"] = [{"site": "site-1", "stage": "train", key: value}]
    else:
        document.setdefault(section, {})[key] = value
    return document


def test_every_path_typed_field_of_the_run_configuration_is_known() -> None:
    assert set(PATH_FIELDS) == {
        "data.images",
        "data.labels",
        "data.split_dir",
        "method.init_weights",
        "privacy.policy",
        "privacy.policy_dir",
    }


@pytest.mark.parametrize("field", PATH_FIELDS)
def test_a_path_that_exists_and_one_that_does_not_get_byte_identical_refusals(
    field: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = _site(tmp_path)
    existing_dir = tmp_path / "real-dir"
    existing_dir.mkdir()
    existing_file = existing_dir / "site-1.toml"
    existing_file.write_text("[dp]\nrequired = false\n")
    missing = tmp_path / "no-such" / "file.toml"
    with caplog.at_level(logging.WARNING, logger="clinfl.site"):
        replies = [
            _join(site, _with(field, value))
            for value in (str(existing_file), str(existing_dir), str(missing), "", None)
        ]
    assert len(set(replies)) == 1, "the reply must not depend on the path or whether it exists"
    refusal = read_refusal(replies[0])
    assert refusal is not None and refusal.site_id == "site-1"
    assert isinstance(refusal.error, PolicyViolation)
    assert refusal.error.message == NAMES_A_PATH
    assert str(tmp_path).encode() not in replies[0]
    assert field in caplog.text, "the site's own log names the field"
    reasons = [r.reason for r in SiteLedger(tmp_path / "state").refusals()]
    assert reasons == [NAMES_A_PATH] * 5


@pytest.mark.parametrize(
    "run_config",
    [
        {**HONEST, "federation": {"lr": "/etc/passwd"}},
        {**HONEST, "federation": {"batch_size": -3, "secret": "/etc/shadow"}},
        {**HONEST, "/etc/hosts": {}},
        {**HONEST, "method": {"name": "/tmp/evil"}},
        {**HONEST, "drops": [{}]},  # not even the dataclass' required fields
        {**HONEST, "drops": "/var/lib"},
        {**HONEST, "data": ["/var/lib"]},
    ],
)
def test_an_invalid_configuration_gets_one_fixed_refusal_that_quotes_nothing(
    run_config: dict[str, Any], tmp_path: Path
) -> None:
    reply = _join(_site(tmp_path), run_config)
    refusal = read_refusal(reply)
    assert refusal is not None and isinstance(refusal.error, ProtocolViolation)
    assert refusal.error.message == INVALID_RUN_CONFIG
    for quoted in (b"/etc", b"/tmp", b"/var", b"secret"):
        assert quoted not in reply


def test_round_settings_outside_the_training_bounds_are_declined_at_join(tmp_path: Path) -> None:
    run_config = {**HONEST, "federation": {"batch_size": 1, "lr": 0.5, "sites": 3}}
    refusal = read_refusal(_join(_site(tmp_path), run_config))
    assert refusal is not None and isinstance(refusal.error, PolicyViolation)
    message = refusal.error.message
    assert message.startswith("site-1 declines the run: site-1 refuses round 1's settings")
    assert "batch_size=1 is invalid: allowed 8..1024" in message
    assert "lr=0.5 is invalid" in message


def test_an_honest_configuration_without_paths_still_joins(tmp_path: Path) -> None:
    export = tmp_path / "export"
    make_digits_export(export, seed=0, limit=30, image_size=32)
    config = run_config_from_mapping(HONEST, base=tmp_path)
    reply = _join(_site(tmp_path, export), portable_run_config(config))
    assert read_refusal(reply) is None
    assert SiteLedger(tmp_path / "state").refusals() == []
