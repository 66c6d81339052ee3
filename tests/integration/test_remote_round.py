"""Deployed sites behind the network boundary, without the network: every call goes through the
wire codec, the bundle check and the site's policy exactly as over Flower."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_files

from clinfl.config import RunConfig, SecAggConfig
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import parse_policy
from clinfl.data.make_export import make_digits_export
from clinfl.errors import RoundAborted, SiteUnavailable
from clinfl.federation.fanout import ThreadedFanout
from clinfl.federation.messages import RoundSettings
from clinfl.roster import announce
from clinfl.thresholds import parse_rule
from clinfl.transport.contract import JoinRequest, read_refusal
from clinfl.transport.flower.bundle import app_pyproject
from clinfl.transport.wire import encode
from coordinator.checkpoints import CheckpointStore
from coordinator.deploy.launcher import portable_run_config
from coordinator.deploy.remote_sites import RemoteSite, SiteRoster, Timeouts
from coordinator.federated_evaluation import SecureEvaluator
from coordinator.rounds import Coordinator
from coordinator.secure_aggregation import SecureAggregator
from site_agent.agent import SiteIdentity
from site_agent.audit_report import build_site_report
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ledger import SiteLedger
from tests.support.roster_pki import roster_of

BUNDLE, _ = build_fab_from_files({"pyproject.toml": app_pyproject().encode()})
EVIL, _ = build_fab_from_files(
    {
        "pyproject.toml": app_pyproject().replace("site_agent.deploy.client_app", "evil").encode(),
        "evil.py": b"import pathlib\npathlib.Path('PWNED').write_text('x')\n",
    }
)
RESEARCH = """
[dp]
required = false
[secagg]
required = true
min_sites = 2
# two sites remain once one declines: a sum of two with no colluder assumed
max_colluders = 0
[data]
min_samples = 10
[reporting]
# as policies/research.toml: the metrics leave the site, so a site evaluates for the coordinator
metrics = ["loss", "auc", "counts", "epsilon"]
"""
STRICT = RESEARCH.replace("min_sites = 2", "min_sites = 5")


class LoopbackLink:
    """A :class:`~coordinator.deploy.remote_sites.Link` that hands each call to a site in this process."""

    def __init__(self, sites: dict[int, DeployedSite], bundle: bytes = BUNDLE) -> None:
        self.sites = sites
        self.bundle = bundle
        self.down: set[int] = set()

    def node_ids(self) -> set[int]:
        return set(self.sites) - self.down

    def call(self, node_id: int, call: str, body: bytes, *, timeout: float) -> bytes:
        if node_id in self.down:
            raise SiteUnavailable(f"node {node_id} is down", remedy="-")
        return self.sites[node_id].handle(
            flower_run=1,
            bundle=self.bundle,
            bundle_hash=hashlib.sha256(self.bundle).hexdigest(),
            call=call,
            body=body,
        )


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("exports")
    paths = [root / f"export-{k}" for k in range(3)]
    for k, path in enumerate(paths):
        make_digits_export(path, seed=k, limit=60, image_size=32)
    return paths


def _sites(exports: list[Path], tmp_path: Path, policies: list[str]) -> dict[int, DeployedSite]:
    keys = {f"site-{k + 1}": Ed25519PrivateKey.generate() for k in range(len(exports))}
    roster = roster_of(keys)
    options = IngestOptions(image_size=16, label_space="digits")
    return {
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


def _config() -> RunConfig:
    document = {
        "data": {"dataset": "dicom", "label_space": "digits", "image_size": 16},
        "federation": {"rounds": 1, "batch_size": 16, "sites": 3},
        "secagg": {"min_sites": 2},
        "method": {"name": "fedavg"},
    }
    return run_config_from_mapping(document, base=Path("."))


def test_a_secure_round_over_the_wire_with_one_site_declining(
    exports: list[Path], tmp_path: Path
) -> None:
    sites = _sites(exports, tmp_path, [RESEARCH, RESEARCH, STRICT])
    link = LoopbackLink(sites)
    config = _config()
    digest = sites[100].roster.digest  # every site pinned the same roster
    join = JoinRequest("run-1", announce(portable_run_config(config), digest))
    roster = SiteRoster(
        link, join, expected=frozenset(s.site_id for s in sites.values()), timeout=5
    )
    roster.wait_for_sites(deadline_seconds=5, quorum=2)
    assert roster.joined() == ["site-1", "site-2"]
    assert "site-3" in roster.refusals and "min sites 2 < policy 5" in roster.refusals["site-3"]
    assert roster.initial_state is not None
    participants = [RemoteSite(s.site_id, roster, link, Timeouts()) for s in sites.values()]
    secagg = SecAggConfig(min_sites=2, max_colluders=0)
    coordinator = Coordinator(
        participants,
        SecureAggregator(secagg, fanout=ThreadedFanout(), run_id="run-1"),
        # a secure run evaluates through the masked histogram sum: the clear `evaluate` call
        # is refused by every site (issue 32)
        SecureEvaluator(
            participants, secagg, num_classes=10, threshold_rule=parse_rule("f1"), run_id="run-1"
        ),
        CheckpointStore(tmp_path / "run"),
        fanout=ThreadedFanout(),
    )
    outcome = coordinator.run(
        roster.initial_state,
        rounds=1,
        settings_for=lambda r: RoundSettings(round=r, local_epochs=1, batch_size=16, lr=1e-3),
    )
    record = outcome.records[0]
    assert record.aborted is None and record.sites == 2
    changed = [
        n for n in outcome.final_state if not outcome.final_state[n].equal(roster.initial_state[n])
    ]
    assert changed, "the aggregate was applied"
    assert record.report.validation.macro_auc == record.report.validation.macro_auc  # not NaN
    refusals = SiteLedger(tmp_path / "site-3").refusals()
    assert any("min sites" in r.reason for r in refusals), "the site logged why it declined"


def test_a_lying_coordinator_over_the_wire_is_refused_and_audited(
    exports: list[Path], tmp_path: Path
) -> None:
    """Model inconsistency (Pasquini et al.) through the deployed sites: the coordinator sends
    site-3 another global model than sites 1 and 2. Every site sees an advertisement bound to
    another model at the graph stage, refuses before any share exists, and its audit report says
    why; the round applies nothing."""
    sites = _sites(exports, tmp_path, [RESEARCH, RESEARCH, RESEARCH])
    link = LoopbackLink(sites)
    digest = sites[100].roster.digest
    join = JoinRequest("run-1", announce(portable_run_config(_config()), digest))
    roster = SiteRoster(
        link, join, expected=frozenset(s.site_id for s in sites.values()), timeout=5
    )
    roster.wait_for_sites(deadline_seconds=5, quorum=3)
    assert roster.initial_state is not None
    honest = roster.initial_state
    crafted = {name: value.clone() for name, value in honest.items()}
    first = next(iter(crafted))
    crafted[first] = crafted[first] + 1.0
    settings = RoundSettings(round=1, local_epochs=1, batch_size=16, lr=1e-3)
    participants = [RemoteSite(s.site_id, roster, link, Timeouts()) for s in sites.values()]
    for participant in participants:
        participant.train_round(crafted if participant.site_id == "site-3" else honest, settings)
    aggregator = SecureAggregator(
        SecAggConfig(min_sites=2, max_colluders=0), fanout=ThreadedFanout(), run_id="run-1"
    )
    with pytest.raises(RoundAborted, match="bound to another model_hash"):
        aggregator.aggregate(participants, round_id=1, template=honest)
    for name in ("site-1", "site-2", "site-3"):
        report = build_site_report(tmp_path / name)
        reasons = " ".join(str(r["reason"]) for r in report["refusals"])
        assert "bound to another model_hash" in reasons, (name, reasons)


def test_a_tampered_bundle_is_refused_and_never_imported(
    exports: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sites = _sites(exports[:1], tmp_path, [RESEARCH])
    link = LoopbackLink(sites, bundle=EVIL)
    reply = link.call(
        100, "join", encode(JoinRequest("run-1", portable_run_config(_config()))), timeout=5
    )
    refusal = read_refusal(reply)
    assert refusal is not None and "application bundle" in refusal.error.message
    assert "evil" not in sys.modules
    assert not (tmp_path / "PWNED").exists()
    refusals = SiteLedger(tmp_path / "site-1").refusals()
    assert any("application bundle" in r.reason for r in refusals)


def test_unknown_calls_and_calls_before_join_are_refused(
    exports: list[Path], tmp_path: Path
) -> None:
    site = _sites(exports[:1], tmp_path, [RESEARCH])[100]
    link = LoopbackLink({100: site})
    for call, body in (("os.system", b"{}"), ("train_round", b"{}"), ("secagg_sign", b"[]")):
        refusal = read_refusal(link.call(100, call, body, timeout=5))
        assert refusal is not None, call
    dropped = LoopbackLink({100: site})
    dropped.down.add(100)
    roster = SiteRoster(dropped, JoinRequest("r", {}), expected=frozenset({"site-1"}), timeout=1)
    with pytest.raises(SiteUnavailable):
        roster.node_of("site-1")
