"""A deployed site scores at the run's threshold rule, as the simulation does (issue 31's drift).

Before, the deployed join built its evaluator with the default rule (f1) whatever the run
configuration said; the in-process federation passed the run's rule.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.config.policy import parse_policy
from clinfl.data.make_export import make_digits_export
from clinfl.roster import announce
from clinfl.thresholds import parse_rule
from clinfl.transport.contract import JoinRequest, read_refusal
from clinfl.transport.wire import encode
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from tests.integration.test_deployed_run_binding import BASE, BUNDLE, POLICY, SITES, _with
from tests.support.roster_pki import roster_of


@pytest.mark.parametrize("rule", ["youden", "sensitivity:0.9", "f1"])
def test_the_deployed_evaluator_uses_the_run_s_threshold_rule(tmp_path: Path, rule: str) -> None:
    export = tmp_path / "export"
    make_digits_export(export, seed=0, limit=30, image_size=32)
    keys = {site: Ed25519PrivateKey.generate() for site in SITES}
    roster = roster_of(keys)
    site = DeployedSite(
        SiteIdentity(SITES[0], keys[SITES[0]]),
        policy=parse_policy(POLICY),
        roster=roster,
        data=SiteData(export, None, IngestOptions(image_size=16, label_space="digits")),
        state_dir=tmp_path / "state",
        threads=1,
    )
    config = _with(federation={**BASE["federation"], "threshold_rule": rule})
    request = JoinRequest("run-1", announce(config, roster.digest), True)
    reply = site.handle(
        flower_run=1,
        bundle=BUNDLE,
        bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
        call="join",
        body=encode(request),
    )
    assert read_refusal(reply) is None, read_refusal(reply)
    assert site._runs[1].evaluator.threshold_rule == parse_rule(rule)
