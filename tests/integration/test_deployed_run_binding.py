"""Issue 28 over the deployed path: a lying coordinator that joins the sites of one run with
different configurations, or probes one site with crafted models, played to the end.

Every call goes through the deployed site's own entry point (:meth:`DeployedSite.handle`: the
bundle check, the wire codec, the call table and the refusal wording), exactly as over Flower.
The coordinator here is the attacker: it chooses each site's join, each site's global model
and every relayed message, and it keeps everything the sites send back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_files

from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import parse_policy
from clinfl.data.make_export import make_digits_export
from clinfl.federation.messages import RoundSettings, TrainingReport
from clinfl.federation.vectors import vector_length
from clinfl.roster import Roster, announce
from clinfl.secagg.messages import Advertisement
from clinfl.secagg.settings import plan_round
from clinfl.transport.contract import (
    JoinReply,
    JoinRequest,
    TrainRequest,
    open_reply,
    read_refusal,
)
from clinfl.transport.flower.bundle import app_pyproject
from clinfl.transport.wire import encode
from site_agent.agent import SiteIdentity
from site_agent.audit_report import build_site_report
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from tests.support.roster_pki import roster_of

BUNDLE, _ = build_fab_from_files({"pyproject.toml": app_pyproject().encode()})
SITES = tuple(f"site-{k}" for k in range(1, 6))
# no DP (nothing covers the update but secure aggregation), nothing reported, one colluder
POLICY = """
[dp]
required = false
[secagg]
required = true
min_sites = 2
max_colluders = 1
max_retries = 2
[data]
min_samples = 5
[reporting]
metrics = []
"""
BASE: dict[str, Any] = {
    "data": {"dataset": "dicom", "label_space": "digits", "image_size": 16},
    "federation": {"rounds": 1, "batch_size": 8, "local_steps": 1},
    "secagg": {"min_sites": 2, "max_colluders": 1},
    "method": {"name": "fedavg", "backbone": "small", "width": 8},
}


def _with(**tables: dict[str, Any]) -> dict[str, Any]:
    return {name: {**BASE.get(name, {}), **tables.get(name, {})} for name in {*BASE, *tables}}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("binding") / "export"
    make_digits_export(path, seed=0, limit=30, image_size=32)
    return path


class Attacker:
    """The coordinator: talks to each deployed site through its own entry point only."""

    def __init__(self, export: Path, tmp_path: Path) -> None:
        keys = {site: Ed25519PrivateKey.generate() for site in SITES}
        self.roster: Roster = roster_of(keys)
        self.state_dirs = {site: tmp_path / site for site in SITES}
        self.sites = {
            site: DeployedSite(
                SiteIdentity(site, keys[site]),
                policy=parse_policy(POLICY),
                roster=self.roster,
                data=SiteData(export, None, IngestOptions(image_size=16, label_space="digits")),
                state_dir=self.state_dirs[site],
                threads=1,
            )
            for site in SITES
        }
        self.collected: list[tuple[str, str, bytes]] = []  # everything the sites sent back

    def call(self, site: str, call: str, argument: object) -> bytes:
        reply = self.sites[site].handle(
            flower_run=1,
            bundle=BUNDLE,
            bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
            call=call,
            body=encode(argument),
        )
        self.collected.append((site, call, reply))
        return reply

    def join(self, site: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
        request = JoinRequest("run-1", announce(config, self.roster.digest), True)
        reply = self.call(site, "join", request)
        assert read_refusal(reply) is None, read_refusal(reply)
        state = open_reply(reply, JoinReply).initial_state
        assert state is not None
        return state

    def train(self, site: str, state: dict[str, torch.Tensor], config: dict[str, Any]) -> bytes:
        federation = run_config_from_mapping(config, base=Path(".")).federation
        return self.call(
            site, "train_round", TrainRequest(state, RoundSettings.for_round(federation, 1))
        )

    def secure_round(self, states: dict[str, dict[str, torch.Tensor]]) -> dict[str, str]:
        """Run the protocol as far as any site goes; return each site's refusal at the end."""
        template = next(iter(states.values()))
        params = plan_round(
            run_id="run-1",
            round_id=1,
            site_ids=tuple(states),
            vector_length=vector_length(template),
            min_sites=2,
            max_colluders=1,
        )
        adverts = []
        for site in states:
            reply = self.call(site, "secagg_advertise", params)
            assert read_refusal(reply) is None, read_refusal(reply)
            adverts.append(open_reply(reply, Advertisement))
        refusals: dict[str, str] = {}
        for site in states:
            refusal = read_refusal(self.call(site, "secagg_graph", tuple(adverts)))
            assert refusal is not None, f"{site} opened its graph commitment"
            refusals[site] = refusal.error.message
            # to the end: the attacker asks for shares anyway, with no reveals and with its own
            later = read_refusal(self.call(site, "secagg_share", ()))
            assert later is not None, f"{site} sent shares after refusing"
        return refusals

    def nothing_masked_left_the_sites(self) -> bool:
        past_advertise = {"secagg_share", "secagg_masked_input", "secagg_sign", "secagg_reveal"}
        return all(
            read_refusal(reply) is not None
            for _, call, reply in self.collected
            if call in past_advertise
        )


def test_a_scaffold_victim_among_fedavg_sites_is_refused_before_any_share(
    export: Path, tmp_path: Path
) -> None:
    """Finding 1: the victim joins as SCAFFOLD, the others as FedAvg, under one run id. Whatever
    models the coordinator then sends, no secure round gets past the advertisement check, so
    the ``aux/`` half of a sum (the victim's gradient alone) never exists."""
    attacker = Attacker(export, tmp_path)
    victim = "site-1"
    configs = {
        site: _with(method={"name": "scaffold" if site == victim else "fedavg"}) for site in SITES
    }
    states = {site: attacker.join(site, configs[site]) for site in SITES}
    scaffold = states[victim]
    assert any(name.startswith("aux/") for name in scaffold)
    # (a) the SCAFFOLD state to every site: the FedAvg sites refuse its aux/ slots
    for site in SITES[1:]:
        refusal = read_refusal(attacker.train(site, scaffold, configs[site]))
        assert refusal is not None and "does not produce: aux/" in refusal.error.message
    # (b) each site the state its own algorithm expects: every advertisement check fails
    for site in SITES:
        assert read_refusal(attacker.train(site, states[site], configs[site])) is None
    refusals = attacker.secure_round(states)
    for site, message in refusals.items():
        assert "config_hash" in message, (site, message)
    assert attacker.nothing_masked_left_the_sites()
    for site in SITES:
        reasons = " ".join(str(r["reason"]) for r in build_site_report(tmp_path / site)["refusals"])
        assert "config_hash" in reasons, site


def test_sites_joined_with_other_seeds_weight_decay_and_method_are_refused(
    export: Path, tmp_path: Path
) -> None:
    """Finding 1's second run: one run id, five configurations that differ outside the round
    settings (ETF, init and shuffle seeds, weight decay 5.0, validation fraction, FedProx with
    mu 1e4), one global model for all. Only the configuration binding tells them apart."""
    attacker = Attacker(export, tmp_path)
    variants = [
        _with(),
        _with(federation={"federation_seed": 7, "seed": 3}),
        _with(federation={"weight_decay": 5.0}),
        _with(data={"val_fraction": 0.3}),
        _with(method={"name": "fedprox", "prox_mu": 1e4}),
    ]
    configs = dict(zip(SITES, variants, strict=True))
    initial = {site: attacker.join(site, configs[site]) for site in SITES}
    shared = initial["site-1"]  # one model for everyone: same names, shapes and bytes
    for site in SITES:
        assert read_refusal(attacker.train(site, shared, configs[site])) is None
    refusals = attacker.secure_round(dict.fromkeys(SITES, shared))
    for site, message in refusals.items():
        assert "bound to another config_hash" in message, (site, message)
        assert "model_hash" not in message and "params_hash" not in message
    assert attacker.nothing_masked_left_the_sites()


def test_a_crafted_model_that_makes_training_diverge_is_not_an_oracle(
    export: Path, tmp_path: Path
) -> None:
    """Finding 2: a refusal on divergence, retried without limit, gave a site's exact counts.
    Now a diverging site answers exactly as a healthy one, a round can be retried only as often
    as its policy allows, and the failure is in the site's own audit report."""
    attacker = Attacker(export, tmp_path)
    site = "site-1"
    honest = attacker.join(site, BASE)
    crafted = {
        name: value * 1e30 if value.is_floating_point() else value for name, value in honest.items()
    }
    replies = [attacker.train(site, crafted, BASE) for _ in range(3)]  # first try and 2 retries
    for reply in replies:
        assert read_refusal(reply) is None
        assert open_reply(reply, TrainingReport) == TrainingReport(site, None)
    assert len(set(replies)) == 1
    refusal = read_refusal(attacker.train(site, honest, BASE))
    assert refusal is not None and "allows 2 retries" in refusal.error.message
    reasons = [str(r["reason"]) for r in build_site_report(tmp_path / site)["refusals"]]
    assert sum("training failed" in reason for reason in reasons) == 3
    assert sum("retried by the coordinator" in reason for reason in reasons) == 2
