"""Federated evaluation of a deployed run over loopback: every encoded message is captured.

Three deployed sites behind the wire codec (:class:`LoopbackLink`); site-1 and site-2 join the
federated evaluation (``auc`` in their policies), site-3's policy keeps evaluation at the site.
The coordinator's own :func:`~coordinator.deploy.deployment.run_planned` drives one round; the
captured messages are then scanned for each site's own histograms, counts and AUC.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from clinfl.audit.render import render_site
from clinfl.config.site_fields import portable_run_config
from clinfl.errors import ProtocolViolation
from clinfl.evaluation.grid import DEFAULT_GRID
from clinfl.evaluation.vector import HEADER_SLOTS, vector_length
from clinfl.federation.messages import RoundSettings
from clinfl.metrics import multilabel_metrics
from clinfl.secagg.settings import SecAggConfig
from clinfl.transport.contract import call_named, open_reply
from clinfl.transport.wire import decode
from coordinator.deploy.deployment import DeploymentPlan, run_planned
from coordinator.deploy.remote_sites import RemoteSite, SiteRoster, Timeouts
from site_agent.agent import SiteIdentity
from site_agent.audit_report import build_site_report
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.federated_scoring import SiteScorer
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ledger import SiteLedger
from tests.integration.test_remote_round import RESEARCH, LoopbackLink, _config
from tests.support.roster_pki import roster_of

NO_AUC = RESEARCH.replace('"loss", "auc", "counts"', '"loss", "counts"')
CLASSES = 10
HALF = vector_length(DEFAULT_GRID, CLASSES)


class CapturingLink(LoopbackLink):
    """A loopback link that keeps every call's name, encoded argument and encoded reply."""

    def __init__(self, sites: dict[int, DeployedSite]) -> None:
        super().__init__(sites)
        self.messages: list[tuple[str, bytes, bytes]] = []

    def call(self, node_id: int, call: str, body: bytes, *, timeout: float) -> bytes:
        reply = super().call(node_id, call, body, timeout=timeout)
        self.messages.append((call, body, reply))
        return reply


@dataclasses.dataclass
class Run:
    run_dir: Path
    link: CapturingLink
    sites: dict[str, DeployedSite]
    results: dict[str, Any]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from clinfl.data.make_export import make_digits_export

    root = tmp_path_factory.mktemp("fedeval")
    keys = {f"site-{k + 1}": Ed25519PrivateKey.generate() for k in range(3)}
    roster = roster_of(keys)
    options = IngestOptions(image_size=16, label_space="digits")
    policies = {"site-1": RESEARCH, "site-2": RESEARCH, "site-3": NO_AUC}
    from clinfl.config.policy import parse_policy

    sites: dict[str, DeployedSite] = {}
    for k, name in enumerate(keys):
        export = root / f"export-{k}"
        make_digits_export(export, seed=k, limit=60, image_size=32)
        sites[name] = DeployedSite(
            SiteIdentity(name, keys[name]),
            policy=parse_policy(policies[name]),
            roster=roster,
            data=SiteData(export, None, options),
            state_dir=root / name,
            threads=1,
        )
    config = dataclasses.replace(_config(), secagg=SecAggConfig(min_sites=2, max_colluders=0))
    run_dir = root / "run"
    run_dir.mkdir()
    DeploymentPlan(
        run_id="fedeval",
        run_config=portable_run_config(config),
        sites=roster.names,
        roster_sha256=roster.digest.hex(),
        join_wait=10,
    ).save(run_dir)
    link = CapturingLink({100 + k: site for k, site in enumerate(sites.values())})
    run_planned(link, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    return Run(run_dir, link, sites, results)


def _walk(
    value: Any, arrays: list[np.ndarray], numbers: list[float], ints: list[list[int]]
) -> None:
    if isinstance(value, torch.Tensor):
        arrays.append(value.detach().numpy().ravel())
    elif isinstance(value, np.ndarray):
        arrays.append(value.ravel())
    elif isinstance(value, bool):
        return
    elif isinstance(value, float):
        numbers.append(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            _walk(getattr(value, item.name), arrays, numbers, ints)
    elif isinstance(value, dict):
        for item in value.values():
            _walk(item, arrays, numbers, ints)
    elif isinstance(value, (list, tuple, set, frozenset)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            ints.append(list(value))
        for item in value:
            _walk(item, arrays, numbers, ints)


def _decoded(link: CapturingLink) -> tuple[list[np.ndarray], list[float], list[list[int]], bytes]:
    """Every array, float and int list in every captured message, and all their bytes."""
    arrays: list[np.ndarray] = []
    numbers: list[float] = []
    ints: list[list[int]] = []
    for name, body, reply in link.messages:
        row = call_named(name)
        _walk(decode(body, row.argument), arrays, numbers, ints)
        _walk(open_reply(reply, row.reply), arrays, numbers, ints)
    raw = b"".join(body + reply for _, body, reply in link.messages)
    return arrays, numbers, ints, raw


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Whether ``haystack`` holds ``needle`` as a contiguous run, as int64 or as uint32."""
    if haystack.dtype.kind not in "iu" or haystack.size < needle.size:
        return False
    for dtype in (np.int64, np.uint32):
        if needle.astype(dtype).tobytes() in haystack.astype(dtype).tobytes():
            return True
    return False


def _own_figures(site: DeployedSite, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the site must never send in the clear: its count blocks, positives and AUC."""
    joined = site._runs[1]
    vector = SiteScorer(lambda: joined.evaluator, CLASSES).vector(state)
    blocks = [vector[start + HEADER_SLOTS : start + HALF - 2] for start in (0, HALF)]
    validation = joined.evaluator.targets("validation")
    scores = joined.evaluator.probabilities(state, "validation")
    aucs = [a for a in multilabel_metrics(validation, scores).per_class_auc if a is not None]
    aucs.append(float(np.mean(aucs)))
    return {
        "blocks": [b for b in blocks if b.any()],
        "positives": [int(v) for v in validation.sum(axis=0)],
        # only distinctive values can be searched for (an AUC of 1.0 or 0.5 is everywhere)
        "aucs": [a for a in aucs if len(repr(a)) >= 10],
    }


def test_the_deployed_run_ends_with_thresholds_from_the_pooled_histograms(run: Run) -> None:
    best = run.results["best"]
    operating = best["operating"]
    assert operating is not None and operating["chosen_on"].startswith("pooled validation")
    assert operating["sites"] == 2 and set(operating["classes"]) == {str(d) for d in range(10)}
    for entry in operating["classes"].values():
        assert 0.0 <= entry["threshold"] <= 1.0
        assert entry["test_sensitivity"] is None or 0.0 <= entry["test_sensitivity"] <= 1.0
    assert best["macro_f1_at_thresholds"] is not None
    assert best["val_macro_auc"] == best["val_macro_auc"]  # evaluated: not NaN
    evaluation = run.results["evaluation"]
    assert evaluation["method"] == "secure-aggregation" and evaluation["central"] is None
    assert evaluation["sites"] == {"1": 2} and evaluation["unevaluated"] == {}


def test_a_site_whose_policy_lacks_auc_refuses_to_score_and_audits_it(run: Run) -> None:
    refusal = run.results["evaluation"]["refusals"]["1"]
    assert list(refusal) == ["site-3"]
    assert "declined score_round" in refusal["site-3"]  # the reason stays at the site (R7)
    reasons = [r.reason for r in SiteLedger(run.run_dir.parent / "site-3").refusals()]
    assert any("does not join federated evaluations" in r for r in reasons), reasons
    scored = {s: len(SiteLedger(run.run_dir.parent / s).evaluations()) for s in run.sites}
    assert scored == {"site-1": 1, "site-2": 1, "site-3": 0}
    report = build_site_report(run.run_dir.parent / "site-1")
    assert report["evaluations"] == [{"run_id": "fedeval", "round": 1, "epsilon": None}]
    text = render_site(report, "md")
    assert "1 scored, histograms sent only masked; no evaluation noise" in text


def test_no_site_s_histograms_counts_or_auc_cross_the_wire_in_the_clear(run: Run) -> None:
    arrays, numbers, ints, raw = _decoded(run.link)
    assert any(name == "score_round" for name, _, _ in run.link.messages)
    state = load_file(str(run.run_dir / "checkpoints" / "round-0001.safetensors"))
    figures = {name: _own_figures(run.sites[name], state) for name in ("site-1", "site-2")}
    for name, own in figures.items():
        assert own["blocks"], f"{name} scored nothing: the scan would prove nothing"
        # positive control: the scan finds a site's block when it is there
        assert _contains(np.concatenate([[7], own["blocks"][0], [9]]), own["blocks"][0])
        for block in own["blocks"]:
            assert not any(_contains(array, block) for array in arrays), name
        assert own["positives"] not in ints, name
        assert own["aucs"], f"{name} has no distinctive AUC to search for"
        for auc in own["aucs"]:
            assert auc not in numbers, (name, auc)
            assert struct.pack("<d", auc) not in raw and repr(auc).encode() not in raw, name


def test_an_evaluation_session_is_never_taken_for_a_training_one(run: Run) -> None:
    """Purpose binding: a site holding an update refuses evaluation parameters, and back."""
    roster = SiteRoster(run.link, _join(run), expected=frozenset(run.sites), timeout=5)
    roster.wait_for_sites(deadline_seconds=5, quorum=3)
    site = RemoteSite("site-1", roster, run.link, Timeouts())
    state = load_file(str(run.run_dir / "checkpoints" / "round-0001.safetensors"))
    settings = RoundSettings.for_round(_run_config(run).federation, 2)
    config = SecAggConfig(min_sites=2, max_colluders=0)
    sites = tuple(sorted(run.sites))
    site.train_round(state, settings)  # an update of round 2 is pending
    evaluation = config.plan(
        run_id="fedeval", round_id=2, site_ids=sites, vector_length=2 * HALF, purpose="evaluation"
    )
    # refused by the purpose check (and, behind it, by the per-purpose session binding: the
    # site has no evaluation of round 2 to bind a session to)
    with pytest.raises(ProtocolViolation):
        site.secagg_advertise(evaluation)
    newer = _shifted(state, 0.01)  # a model not scored yet
    site.score_round(newer, settings)  # now the counts of round 2 are pending
    # only the purpose check stands here: round 2's training attempt has no session yet, so
    # without it the site would advertise for a training session over its evaluation counts
    update = config.plan(run_id="fedeval", round_id=2, site_ids=sites, vector_length=10)
    with pytest.raises(ProtocolViolation, match="purpose 'update'"):
        site.secagg_advertise(update)
    with pytest.raises(ProtocolViolation, match="already scored a model for round 2"):
        site.score_round(_shifted(state, 0.02), settings)


def _shifted(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {n: v + by if v.is_floating_point() else v for n, v in state.items()}


def _run_config(run: Run) -> Any:
    from clinfl.config.file import run_config_from_mapping

    plan = DeploymentPlan.load(run.run_dir)
    return run_config_from_mapping(plan.run_config, base=run.run_dir)


def _join(run: Run) -> Any:
    from clinfl.roster import announce
    from clinfl.transport.contract import JoinRequest

    plan = DeploymentPlan.load(run.run_dir)
    return JoinRequest("fedeval", announce(plan.run_config, bytes.fromhex(plan.roster_sha256)))


def test_model_export_of_the_deployed_run_carries_the_pooled_thresholds(
    run: Run, tmp_path: Path
) -> None:
    from clinfl.model_io.card import build_card
    from clinfl.model_io.export import export_run

    bundle = export_run(run.run_dir, tmp_path / "model")
    thresholds = json.loads((tmp_path / "model" / "thresholds.json").read_text())
    operating = run.results["best"]["operating"]
    assert thresholds["classes"] == operating["classes"]
    assert thresholds["chosen_on"] == operating["chosen_on"]
    card = build_card(bundle)
    assert card["interval"].startswith("Hanley-McNeil")


def test_a_lying_coordinator_recovers_no_site_s_evaluation_below_the_floor(run: Run) -> None:
    """The evaluation attack replayed over the wire: crafted models, one site at a time.

    Before issue 32 one site answered ``evaluate`` in the clear, so crafted models gave its
    validation and test sizes and positives. Now (1) the clear call is refused in a run with
    secure aggregation, and (2) an evaluation sum over fewer sites than a site's floor is
    refused by the site before anything is masked, so nothing is unmasked.
    """
    from clinfl.errors import RoundAborted
    from clinfl.transport.contract import EVALUATE, Refusal
    from clinfl.transport.wire import encode
    from coordinator.secure_aggregation import run_protocol

    state = load_file(str(run.run_dir / "checkpoints" / "round-0001.safetensors"))
    # a crafted model: every study gets the same scores, so a histogram is the site's counts
    crafted = {n: torch.zeros_like(v) if v.is_floating_point() else v for n, v in state.items()}
    node = next(k for k, site in run.link.sites.items() if site.site_id == "site-1")
    reply = run.link.call(node, EVALUATE.name, encode(crafted), timeout=5)
    refused = open_reply(reply, EVALUATE.reply)
    assert isinstance(refused, Refusal), "site-1 sent its metrics in the clear"
    assert "masked evaluation sum" in str(refused), refused

    roster = SiteRoster(run.link, _join(run), expected=frozenset(run.sites), timeout=5)
    roster.wait_for_sites(deadline_seconds=5, quorum=3)
    lone = RemoteSite("site-1", roster, run.link, Timeouts())
    last = SiteLedger(run.run_dir.parent / "site-1").last_round("fedeval")
    next_round = (last[0] if last else 0) + 1  # round ids only go up (other tests train too)
    settings = RoundSettings.for_round(_run_config(run).federation, next_round)
    lone.train_round(state, settings)  # the round the site accepted: it may score it once
    lone.score_round(_shifted(crafted, 0.0), settings)
    # the coordinator plans a "sum" over site-1 alone (its policy: at least 2 sites)
    alone = SecAggConfig(min_sites=2, max_colluders=0).plan(
        run_id="fedeval",
        round_id=next_round,
        site_ids=("site-1",),
        vector_length=2 * HALF,
        purpose="evaluation",
    )
    refusals: dict[str, str] = {}
    with pytest.raises(RoundAborted):
        run_protocol({"site-1": lone}, alone, refusals=refusals)
    assert "site-1" in refusals, refusals  # refused by the site itself, before masking
