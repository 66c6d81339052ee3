"""A deployed federation (real processes, TLS, node authentication, DICOM exports, secure
aggregation and DP-SGD) survives a site dying in the masked-input stage and the coordinator being
killed and started again; the site comes back and is admitted again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.deployment_harness import (
    Federation,
    federation_processes,
    policy_text,
    wait_until,
)

SITES = ("site-1", "site-2", "site-3")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    yield from federation_processes(tmp_path, SITES)


@pytest.mark.slow
def test_site_dies_in_masked_input_and_coordinator_restarts(federation: Federation) -> None:
    fed = federation
    # two of three sites must be able to sum: no colluder is assumed (t > (h + c) / 2 = 1.5)
    coordinator = fed.start_coordinator(rounds=2, max_colluders=0)
    lenient = policy_text(max_colluders=0)
    fed.start_site("site-1", policy=lenient)
    fed.start_site("site-2", policy=lenient)
    dying = fed.start_site("site-3", policy=lenient, extra=("--crash-at", "secagg_masked_input"))

    # (a) site-3 dies when asked for its masked input; round 1 completes with the other two
    wait_until(lambda: 1 in fed.rounds_recorded(), timeout=420, what="round 1", logs=fed.logs)
    assert dying.wait(timeout=30) != 0
    assert "crashing on secagg_masked_input" in fed.log("site-3").read_text()
    status = fed.status()
    first = status["last_round"] if status["last_round"]["round"] == 1 else None
    assert first is not None and first["aborted"] is None, fed.logs()
    assert first["sites"] == 2, fed.logs()

    # (b) the coordinator (clinfl, SuperLink, ServerApp) dies between rounds, and comes back;
    # site-3 comes back too (it waits for the coordinator) and is admitted to round 2: it
    # restarts from its state folder with its own keys and the roster it pinned before
    fed.kill("coordinator")
    assert coordinator.poll() is not None
    pinned = (fed.state("site-3") / "identity" / "roster.json").read_bytes()
    fed.start_site("site-3", policy=lenient)
    restarted = fed.start_coordinator(rounds=2, name="coordinator-restarted", max_colluders=0)
    assert restarted.wait(timeout=600) == 0, fed.logs()

    results = json.loads((fed.run_dir / "results.json").read_text())
    rounds = [r["round"] for r in results["rounds"]]
    assert rounds == [1, 2], "every round is applied exactly once across the restart"
    assert all(r["aborted"] is None for r in results["rounds"])
    assert results["rounds"][1]["sites"] == 3, "the site that came back is in round 2"
    assert (fed.state("site-3") / "identity" / "roster.json").read_bytes() == pinned
    assert "roster: site-1, site-2, site-3 (fingerprint" in fed.log("coordinator").read_text()
    assert fed.rounds_recorded() == [1, 2]
    manifest = json.loads((fed.run_dir / "checkpoints" / "manifest.json").read_text())
    assert [c["round"] for c in manifest["checkpoints"]] == [1, 2]
    assert "node key already registered" in fed.log("coordinator-restarted").read_text()

    # every site's audit report shows its spend; site-3's round 1 was trained but never sent,
    # so its ledger keeps that cost reserved (counted), never released
    fed.stop_all()
    spent: dict[str, set[int]] = {}
    for site in SITES:
        report = json.loads((fed.root / f"state-{site}" / "audit_report.json").read_text())
        spent[site] = {r["round"] for r in report["rounds"] if r["state"] == "spent"}
        assert report["rounds"][-1]["epsilon_cumulative"] > 0
    assert spent == {"site-1": {1, 2}, "site-2": {1, 2}, "site-3": {2}}
    site3 = json.loads((fed.root / "state-site-3" / "audit_report.json").read_text())
    assert [r["state"] for r in site3["rounds"] if r["round"] == 1] == ["reserved"]
