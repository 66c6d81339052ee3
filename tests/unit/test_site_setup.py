"""One site set-up for both modes: a deployed site reports and writes as a simulated one does."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import DataPolicy, parse_policy
from clinfl.data.make_export import make_digits_export
from clinfl.roster import announce
from clinfl.transport.contract import JoinRequest, read_refusal
from clinfl.transport.wire import encode
from coordinator.deploy.launcher import portable_run_config
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite
from site_agent.ingest.pipeline import IngestOptions
from site_agent.setup import SiteData, ingest_options
from tests.support.roster_pki import RESEARCH_POLICY
from tests.unit.test_deployed_join import BUNDLE, HONEST, KEY, ROSTER


@pytest.fixture(scope="module")
def joined_site(tmp_path_factory: pytest.TempPathFactory) -> DeployedSite:
    """A deployed site that ingested a 30-image export and joined a run."""
    root = tmp_path_factory.mktemp("deployed")
    make_digits_export(root / "export", seed=0, limit=30, image_size=32)
    site = DeployedSite(
        SiteIdentity("site-1", KEY),
        policy=parse_policy(RESEARCH_POLICY),
        roster=ROSTER,
        data=SiteData(root / "export", None, IngestOptions(image_size=16, label_space="digits")),
        state_dir=root / "state",
        threads=1,
    )
    run_config = portable_run_config(run_config_from_mapping(HONEST, base=root))
    reply = site.handle(
        flower_run=1,
        bundle=BUNDLE,
        bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
        call="join",
        body=encode(JoinRequest("run-1", announce(run_config, ROSTER.digest))),
    )
    assert read_refusal(reply) is None
    return site


def test_a_deployed_sites_audit_report_carries_its_ingest_summary(
    joined_site: DeployedSite,
) -> None:
    """A simulated site's report had its ingest summary; a deployed one's had none, because
    the report looked for it beside the ledger and ``site run`` ingests into ``<state>/ingest``."""
    joined_site.write_audit_report()
    state = joined_site._state_dir
    report = json.loads((state / "audit_report.json").read_text())
    ingestion = report["data"]["ingestion"]
    assert ingestion is not None and ingestion["accepted"] > 0
    assert ingestion["label_space"] == "digits"


def test_a_deployed_sites_audit_report_is_written_atomically(
    joined_site: DeployedSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the three files is renamed into place whole (it used to be written in place)."""
    renamed: list[str] = []
    real_replace = os.replace

    def spy(source: str | Path, target: str | Path) -> None:
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    joined_site.write_audit_report()
    assert sorted(renamed) == ["audit_report.html", "audit_report.json", "audit_report.md"]
    state = joined_site._state_dir
    assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]


def test_policies_become_ingest_options_by_intersection() -> None:
    one = DataPolicy(modalities=("CR", "DX"), views=("PA", "AP"))
    other = DataPolicy(modalities=("DX",), views=("PA",))
    options = ingest_options(IngestOptions(image_size=32), [one, other])
    assert (options.modalities, options.views, options.image_size) == (("DX",), ("PA",), 32)
    assert ingest_options(IngestOptions(), []) == IngestOptions()
