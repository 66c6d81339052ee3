"""A deployed site's refusal of a round says nothing about its data (SECAGG.md, R7).

The attack (found by an attacker's review): a coordinator joins with a batch size of its choice
and a site whose budget refuses the round; the refusal used to quote the epsilon the round would
cost, a function of ceil(N / batch size), so a few joins with chosen batch sizes gave the site's
exact sample count N, even with a policy that lets no metric leave. Here the coordinator plays
that attack to the end against two sites that differ only in N, and must not tell them apart.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from clinfl.config.policy import parse_policy
from clinfl.data.make_export import make_digits_export
from clinfl.errors import BudgetExhausted, PolicyViolation, ProtocolViolation
from clinfl.federation.messages import RoundSettings
from clinfl.privacy.accounting import epsilon_of
from clinfl.roster import announce
from clinfl.transport.contract import (
    JoinRequest,
    TrainRequest,
    open_reply,
    read_refusal,
    withheld_refusal,
)
from clinfl.transport.wire import encode
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ledger import SiteLedger
from tests.unit.test_deployed_join import BUNDLE, HONEST, KEY, ROSTER

# DP-SGD with a budget no round fits in; no metric may leave the site
TIGHT_BUDGET_POLICY = """
[dp]
required = true
epsilon_budget = 0.0001
noise_multiplier = 1.0
[secagg]
required = true
min_sites = 2
[data]
min_samples = 10
[reporting]
metrics = []
"""
NOISE = 1.0


def _call(site: DeployedSite, call: str, argument: object) -> bytes:
    return site.handle(
        flower_run=1,
        bundle=BUNDLE,
        bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
        call=call,
        body=encode(argument),
    )


def _refusal_of_round_one(tmp_path: Path, samples: int, batch_size: int) -> bytes:
    """What the coordinator gets back: join a site holding ``samples`` images, ask round 1."""
    export = tmp_path / f"export-{samples}"
    if not export.is_dir():
        make_digits_export(export, seed=0, limit=samples, image_size=32)
    state_dir = tmp_path / f"state-{samples}-{batch_size}"
    site = DeployedSite(
        SiteIdentity("site-1", KEY),
        policy=parse_policy(TIGHT_BUDGET_POLICY),
        roster=ROSTER,
        data=SiteData(export, None, IngestOptions(image_size=16, label_space="digits")),
        state_dir=state_dir,
        threads=1,
    )
    config: dict[str, Any] = {  # the policy keeps counts at the site: fixed local steps
        **HONEST,
        "federation": {**HONEST["federation"], "batch_size": batch_size, "local_steps": 4},
    }
    request = JoinRequest("run-1", announce(config, ROSTER.digest), send_initial_state=True)
    joined = _call(site, "join", request)
    assert read_refusal(joined) is None
    state = open_reply(joined, Any)["initial_state"]
    settings = RoundSettings(round=1, local_epochs=1, batch_size=batch_size, lr=1e-3, local_steps=4)
    reply = _call(site, "train_round", TrainRequest(state, settings))
    reasons = [r.reason for r in SiteLedger(state_dir).refusals()]
    assert any("past the budget" in reason for reason in reasons), "the site keeps the reason"
    return reply


def test_a_budget_refusal_does_not_tell_two_sample_counts_apart(tmp_path: Path) -> None:
    replies = {
        (samples, batch): _refusal_of_round_one(tmp_path, samples, batch)
        for samples in (40, 70)
        for batch in (8, 16)
    }
    # the attacker's inversion: read the epsilon out of each refusal, then the steps per epoch
    for reply in replies.values():
        refusal = read_refusal(reply)
        assert refusal is not None and isinstance(refusal.error, BudgetExhausted)
        quoted = re.findall(r"epsilon to ([0-9.]+)", refusal.error.message)
        candidates = {
            steps
            for epsilon in map(float, quoted)
            for steps in range(1, 100)
            if abs(epsilon_of([(NOISE, 1 / steps, steps)], delta=1e-5, accountant="rdp") - epsilon)
            < 1e-3
        }
        assert candidates == set(), "the refusal lets the coordinator compute steps per epoch"
    # and more: no function of the reply can tell the sites or the batch sizes apart
    assert len(set(replies.values())) == 1


@pytest.mark.parametrize(
    "error",
    [
        PolicyViolation("site-1 holds 12 samples, its policy requires at least 50", remedy="x"),
        BudgetExhausted("it would bring epsilon to 1.542, spent so far 0.3", remedy="y"),
    ],
)
def test_a_round_refusal_keeps_only_its_kind(error: PolicyViolation) -> None:
    public = withheld_refusal(error, site_id="site-1", call="train_round")
    assert type(public) is type(error)
    assert not re.search(r"\d", public.message.replace("site-1", "")), public.message
    assert "audit report" in public.message and "site-1" in public.remedy


def test_a_protocol_violation_goes_back_as_it_is() -> None:
    error = ProtocolViolation("round id 7 is not the next one (6)", remedy="send round 6")
    assert withheld_refusal(error, site_id="site-1", call="secagg_advertise") is error
