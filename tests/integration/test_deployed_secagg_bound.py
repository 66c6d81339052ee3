"""A deployed coordinator plans its secure aggregation by the sites' declared terms, as `simulate`
does (issue 31's drift): the run configuration assumes one colluder, site-4's policy two.

The federation runs through :func:`coordinator.deploy.deployment.run_planned`, the deployment's own
code from the plan to ``results.json``, with every call going through the wire codec, the
bundle check and each :class:`DeployedSite` in this process (the loopback link of
``test_remote_round.py``). Before the fix, the coordinator planned with its configuration's
``max_colluders = 1`` (threshold 3 of 4) and site-4 refused every round.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.config import RunConfig, SecAggConfig
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import parse_policy
from clinfl.config.site_fields import portable_run_config
from clinfl.data.make_export import make_digits_export
from clinfl.errors import FederationError
from clinfl.federation.fanout import ThreadedFanout
from clinfl.federation.messages import RoundSettings
from clinfl.roster import announce
from clinfl.transport.contract import JoinRequest
from coordinator.control import RunControl
from coordinator.deploy.deployment import DeploymentPlan, run_planned
from coordinator.deploy.remote_sites import RemoteSite, SiteRoster, Timeouts
from coordinator.secure_aggregation import SecureAggregator
from site_agent.agent import SiteIdentity
from site_agent.audit_report import build_site_report
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from tests.integration.test_remote_round import RESEARCH, LoopbackLink
from tests.support.roster_pki import roster_of

ONE_COLLUDER = RESEARCH.replace("max_colluders = 0", "max_colluders = 1")
TWO_COLLUDERS = RESEARCH.replace("max_colluders = 0", "max_colluders = 2")
SITES = ("site-1", "site-2", "site-3", "site-4")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("exports")
    paths = [root / f"export-{k}" for k in range(len(SITES))]
    for k, path in enumerate(paths):
        make_digits_export(path, seed=k, limit=40, image_size=32)
    return paths


def _federation(
    exports: list[Path], tmp_path: Path, policies: list[str]
) -> tuple[LoopbackLink, bytes]:
    keys = {site: Ed25519PrivateKey.generate() for site in SITES[: len(policies)]}
    roster = roster_of(keys)
    options = IngestOptions(image_size=16, label_space="digits")
    sites = {
        100 + k: DeployedSite(
            SiteIdentity(name, keys[name]),
            policy=parse_policy(policies[k]),
            roster=roster,
            data=SiteData(exports[k], None, options),
            state_dir=tmp_path / name,
            threads=1,
        )
        for k, name in enumerate(keys)
    }
    return LoopbackLink(sites), roster.digest


def _config() -> RunConfig:
    document = {
        "data": {"dataset": "dicom", "label_space": "digits", "image_size": 16},
        "federation": {"rounds": 1, "batch_size": 16, "sites": 4},
        "secagg": {"min_sites": 2, "max_colluders": 1},
        "method": {"name": "fedavg"},
    }
    return run_config_from_mapping(document, base=Path("."))


def _plan(run_dir: Path, digest: bytes, sites: tuple[str, ...]) -> None:
    run_dir.mkdir()
    plan = DeploymentPlan(
        run_id="run-1",
        run_config=portable_run_config(_config()),
        sites=sites,
        timeouts=Timeouts(join=5, train=60, stage=30, evaluate=60),
        join_wait=5,
        roster_sha256=digest.hex(),
    )
    plan.save(run_dir)


def _status(run_dir: Path) -> dict[str, object]:
    control = RunControl(run_dir)
    try:
        return control.status()
    finally:
        control.close()


def test_a_site_assuming_more_colluders_than_the_run_config_trains_when_deployed(
    exports: list[Path], tmp_path: Path
) -> None:
    link, digest = _federation(exports, tmp_path, [ONE_COLLUDER] * 3 + [TWO_COLLUDERS])
    run_dir = tmp_path / "run"
    _plan(run_dir, digest, SITES)
    results = run_planned(link, run_dir)
    assert results["sites_joined"] == list(SITES)
    (record,) = results["rounds"]
    assert record["aborted"] is None, record["aborted"]
    assert record["sites"] == 4
    status = _status(run_dir)
    assert status["secagg"] == {"min_sites": 2, "max_colluders": 2, "weight_cap": 10_000}
    refusals = build_site_report(tmp_path / "site-4")["refusals"]
    assert refusals == [], refusals


def test_too_few_sites_for_a_site_s_terms_stop_the_deployment_before_round_1(
    exports: list[Path], tmp_path: Path
) -> None:
    """Three sites, one assuming two colluders: a sum over min_sites 2 honest sites besides two
    colluders needs four, so the run stops before round 1, saying why and what to change."""
    link, digest = _federation(exports, tmp_path, [ONE_COLLUDER] * 2 + [TWO_COLLUDERS])
    run_dir = tmp_path / "run"
    _plan(run_dir, digest, SITES[:3])
    with pytest.raises(FederationError) as caught:
        run_planned(link, run_dir)
    message = caught.value.message
    assert "3 of the roster's 3 sites joined" in message
    assert "at least 2 sites besides 2 possible colluder(s); the federation has 3" in message
    assert "max_colluders 2 from site-3" in message
    assert "Small federations" in caught.value.remedy
    status = _status(run_dir)
    assert status["state"] == "failed"
    assert "max_colluders 2 from site-3" in str(status["stopped"])
    assert status["rounds_done"] == 0 and status["last_round"] is None


def test_a_coordinator_ignoring_the_declared_terms_is_refused_over_the_wire(
    exports: list[Path], tmp_path: Path
) -> None:
    """The lying coordinator: it plans with one colluder (threshold 3 of 4) although site-4
    declared two. Site-4 refuses at the share stage, before any of its shares exists, and its
    audit report says why (a protocol violation describes what the coordinator sent, so it goes
    back as it is); the round can only go on without site-4 (sites 1 to 3 accept one colluder)."""
    link, digest = _federation(exports, tmp_path, [ONE_COLLUDER] * 3 + [TWO_COLLUDERS])
    join = JoinRequest("run-1", announce(portable_run_config(_config()), digest))
    roster = SiteRoster(link, join, expected=frozenset(SITES), timeout=5)
    roster.wait_for_sites(deadline_seconds=5, quorum=4)
    assert roster.declared_secagg()["site-4"].max_colluders == 2
    initial = roster.initial_state
    assert initial is not None
    participants = [RemoteSite(site, roster, link, Timeouts()) for site in SITES]
    settings = RoundSettings(round=1, local_epochs=1, batch_size=16, lr=1e-3)
    for participant in participants:
        participant.train_round(initial, settings)
    lying = SecureAggregator(
        SecAggConfig(min_sites=2, max_colluders=1), fanout=ThreadedFanout(), run_id="run-1"
    )
    aggregate = lying.aggregate(participants, round_id=1, template=initial)
    assert aggregate.site_ids == frozenset(SITES[:3]), "site-4's update is in no sum"
    assert "2 possible colluder(s)" in aggregate.refusals["site-4"], "it names what was sent"
    reasons = " ".join(str(r["reason"]) for r in build_site_report(tmp_path / "site-4")["refusals"])
    assert "threshold 3 must be at least 4" in reasons, reasons
    assert "2 possible colluder(s)" in reasons, reasons
