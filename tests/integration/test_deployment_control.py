"""A deployed federation refuses an unknown site and a tampered app, reports a site whose policy
declines, and obeys pause, resume and stop from another shell."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clinfl.pki import REQUEST_FILE, admit_site
from clinfl.transport.flower.bundle import app_pyproject
from site_agent.identity import init_site
from tests.integration.deployment_harness import (
    Federation,
    federation_processes,
    policy_text,
    wait_until,
)
from tests.support.roster_pki import trust

SITES = ("site-1", "site-2", "site-3")
EVIL_SERVER = """
import json, time
from pathlib import Path
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()

@app.main()
def main(grid, context):
    nodes, deadline = [], time.time() + 90
    while time.time() < deadline and len(nodes) < {nodes}:
        nodes = list(grid.get_node_ids())
        time.sleep(1)
    content = RecordDict({{"clinfl": ConfigRecord({{"call": "join", "body": b"{{}}"}})}})
    messages = [Message(content, dst_node_id=n, message_type="query") for n in nodes]
    replies = []
    for reply in grid.send_and_receive(messages, timeout=90):
        if reply.has_error():
            replies.append({{"error": str(reply.error.reason)}})
        else:
            replies.append({{"body": reply.content.config_records["clinfl"]["body"].decode()}})
    Path({out!r}).write_text(json.dumps(replies))
"""
EVIL_CLIENT = """
from pathlib import Path
from flwr.clientapp import ClientApp

app = ClientApp()

@app.query()
def pwn(message, context):
    Path("PWNED").write_text("the coordinator's code ran at the site")
    raise SystemExit(0)
"""


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    yield from federation_processes(tmp_path, SITES)


def _submit_tampered_app(fed: Federation, out: Path, nodes: int) -> None:
    app = fed.root / "evil-app"
    app.mkdir()
    pyproject = app_pyproject().replace("coordinator.deploy.server_app", "evil_server")
    (app / "pyproject.toml").write_text(pyproject.replace("site_agent.deploy.client_app", "evil"))
    (app / "evil_server.py").write_text(EVIL_SERVER.format(nodes=nodes, out=str(out)))
    (app / "evil.py").write_text(EVIL_CLIENT)
    flwr = Path(sys.executable).parent / "flwr"
    env = {
        "FLWR_HOME": str(fed.run_dir / "flower"),
        "PATH": str(flwr.parent),
        "PYTHONPATH": str(app),  # `flwr run` checks that the components import
    }
    done = subprocess.run(
        [str(flwr), "run", str(app), "clinfl", "--format", "json"],
        env=env, capture_output=True, timeout=120, check=False, cwd=app,
    )  # fmt: skip
    assert b'"success": true' in done.stdout, done.stdout + done.stderr


ROUNDS = 6


@pytest.mark.slow
def test_refusals_tampering_and_operator_control(federation: Federation) -> None:
    fed = federation
    # the rogue's certificate is signed by the real CA and it trusts a roster naming itself,
    # but its node key is not in the coordinator's roster
    rogue_pki = fed.root / "rogue-pki"
    shutil.copytree(fed.pki, rogue_pki)
    init_site(fed.state("rogue"), "rogue")
    admit_site(rogue_pki, fed.state("rogue") / REQUEST_FILE)
    trust(rogue_pki, fed.state("rogue"), "rogue")
    shutil.copytree(fed.root / "export-site-1", fed.root / "export-rogue")

    # rounds to spare: on a loaded machine the pause below may land after a later round
    # site-3 declines (d), so two sites train: with no colluder assumed, a sum of 2 is allowed
    # (with one, the coordinator refuses to start round 1: too few sites for the sites' terms)
    coordinator = fed.start_coordinator(rounds=ROUNDS, max_colluders=0)
    # a budget for every round: the run must end by the operator's stop, not by the budget,
    # however many rounds a fast small model fits in before the stop lands
    roomy = policy_text(max_colluders=0).replace("epsilon_budget = 8.0", "epsilon_budget = 1000.0")
    fed.start_site("site-1", policy=roomy)
    fed.start_site("site-2", policy=roomy)
    fed.start_site("site-3", policy=policy_text(min_sites=5))  # (d) stricter than the run
    rogue = fed.start_site("rogue", extra=("--connect-timeout", "20"))

    # (c) the rogue site's node key is not registered: it is refused and gives up cleanly
    assert rogue.wait(timeout=180) == 10, fed.log("rogue").read_text()
    assert "could not connect to the coordinator" in fed.log("rogue").read_text()

    # (e) pause once a round runs: it takes effect at the next round boundary. Which boundary
    # depends on how fast the status polls come back (each is a process of its own), so the
    # test reads it from the state instead of assuming round 1.
    wait_until(
        lambda: fed.status().get("last_round_started", 0) >= 1,
        timeout=240, what="round 1 to start", logs=fed.logs,
    )  # fmt: skip
    assert fed.control("pause").returncode == 0
    wait_until(
        lambda: fed.status().get("state") == "paused",
        timeout=420, what="the pause", logs=fed.logs,
    )  # fmt: skip
    status = fed.status()
    paused_after = fed.rounds_recorded()
    assert paused_after == list(range(1, len(paused_after) + 1)) and paused_after, paused_after
    assert len(paused_after) < ROUNDS - 1, "the pause came too late to test a resume"
    assert status["sites_joined"] == ["site-1", "site-2"]
    assert "min sites 2 < policy 5" in status["refusals"]["site-3"]  # (d) and why

    # a tampered app submitted to the same SuperLink is refused by every site; its code never runs
    replies_file = fed.root / "evil-replies.json"
    _submit_tampered_app(fed, replies_file, nodes=3)
    wait_until(replies_file.is_file, timeout=240, what="the tampered run's replies", logs=fed.logs)
    replies = json.loads(replies_file.read_text())
    assert len(replies) == 3
    for reply in replies:
        refusal = json.loads(reply["body"])["error"]
        assert "refused the run's application bundle" in refusal["message"]
    assert not list(fed.root.rglob("PWNED"))
    assert fed.rounds_recorded() == paused_after, "nothing ran while paused"

    # resume; once the next round runs, stop: that round finishes and no later one starts
    resumed = len(paused_after) + 1
    assert fed.control("resume").returncode == 0
    wait_until(
        lambda: fed.status().get("last_round_started", 0) >= resumed,
        timeout=420, what="a round after resuming", logs=fed.logs,
    )  # fmt: skip
    assert fed.control("stop").returncode == 0
    assert coordinator.wait(timeout=420) == 0, fed.logs()
    results = json.loads((fed.run_dir / "results.json").read_text())
    ran = [r["round"] for r in results["rounds"]]
    assert ran == list(range(1, len(ran) + 1)) and resumed <= len(ran) < ROUNDS, ran
    assert results["stopped"] == f"stopped by the operator before round {len(ran) + 1}"
    final = fed.status()
    assert final["state"] == "stopped"
    assert "min sites" in final["refusals"]["site-3"]
