"""`clinfl coordinator start` and `clinfl site run` turn every user mistake into one clear line
and an exit code, before any process starts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.config import RunConfig
from clinfl.errors import CheckpointError
from clinfl.pki import init_pki
from coordinator.deploy.deployment import DeploymentPlan
from coordinator.deploy.launcher import portable_run_config
from site_agent.identity import init_site
from tests.support.roster_pki import trusted_federation

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def states(tmp_path: Path) -> dict[str, Path]:
    """site-1 and site-2 made their keys and trust the roster; site-3 only made its keys."""
    _, trusted = trusted_federation(tmp_path, ("site-1", "site-2"))
    init_site(tmp_path / "state-site-3", "site-3")
    return {**trusted, "site-3": tmp_path / "state-site-3", "none": tmp_path / "state-none"}


def _site_run(tmp_path: Path, state: Path, *extra: str) -> list[str]:
    (tmp_path / "export").mkdir(exist_ok=True)
    return [
        "site", "run",
        "--data", str(tmp_path / "export"),
        "--policy", str(ROOT / "policies" / "default.toml"),
        "--state", str(state),
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("site", "extra", "code", "says"),
    [
        ("site-1", ("--coordinator", "no-port"), 2, "is not HOST:PORT"),
        ("site-1", ("--coordinator", "h:1", "--label-space", "xray"), 2, "--label-space"),
        ("none", ("--coordinator", "h:1"), 9, "holds no site identity"),
        ("site-3", ("--coordinator", "h:1"), 9, "trusts no roster yet"),
        ("site-1", ("--coordinator", "h:1", "--connect-timeout", "0"), 2, "positive"),
    ],
)
def test_site_run_refuses_bad_input_in_one_line(
    tmp_path: Path,
    states: dict[str, Path],
    site: str,
    extra: tuple[str, ...],
    code: int,
    says: str,
) -> None:
    result = runner.invoke(app, _site_run(tmp_path, states[site], *extra))
    assert result.exit_code == code, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert not (states[site] / "flower").exists(), "no SuperNode was started"


def test_coordinator_start_refuses_a_missing_pki_and_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text("[federation]\nrounds = 0\n")
    base = ["coordinator", "start", "--config", str(config), "--run-dir", str(tmp_path / "run")]
    result = runner.invoke(app, [*base, "--pki", str(tmp_path / "nowhere")])
    assert result.exit_code in (2, 9), result.output
    init_pki(tmp_path / "pki", hosts=["127.0.0.1"])
    result = runner.invoke(app, [*base, "--pki", str(tmp_path / "pki")])
    assert result.exit_code == 2 and "rounds" in result.output, result.output
    config.write_text("[federation]\nrounds = 2\n")
    result = runner.invoke(app, [*base, "--pki", str(tmp_path / "pki"), "--address", "x"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
    result = runner.invoke(app, [*base, "--pki", str(tmp_path / "pki")])
    assert result.exit_code == 10 and "lists no sites" in result.output, result.output
    assert not (tmp_path / "run" / "flower").exists(), "no SuperLink was started"


def test_coordinator_start_refuses_every_setting_that_belongs_to_the_sites(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(
        '[data]\nimages = "/pacs"\nalpha = 0.1\n[federation]\nsites = 4\n'
        '[privacy]\npolicy = "p.toml"\n'
    )
    init_pki(tmp_path / "pki", hosts=["127.0.0.1"])
    result = runner.invoke(
        app,
        ["coordinator", "start", "--config", str(config), "--pki", str(tmp_path / "pki"),
         "--run-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    for name in ("data.images", "data.alpha", "federation.sites", "privacy.policy"):
        assert name in output


def test_sites_receive_the_run_without_any_coordinator_path(tmp_path: Path) -> None:
    base = RunConfig()
    config = replace(
        base,
        data=replace(base.data, images=tmp_path / "secret-images", labels=tmp_path / "l.csv"),
        privacy=replace(base.privacy, policy=tmp_path / "p.toml"),
    )
    document = portable_run_config(config)
    assert str(tmp_path) not in repr(document)
    plan = DeploymentPlan("run-1", document, ("site-1", "site-2"))
    plan.save(tmp_path)
    assert DeploymentPlan.load(tmp_path) == plan
    (tmp_path / "deployment.json").write_text("{")
    with pytest.raises(CheckpointError):
        DeploymentPlan.load(tmp_path)


def test_coordinator_start_refuses_a_roster_naming_a_site_twice(tmp_path: Path) -> None:
    pki, _ = trusted_federation(tmp_path, ("site-1",))
    document = json.loads((pki / "roster.json").read_text())
    document["members"].append(document["members"][0])
    del document["fingerprint"]
    (pki / "roster.json").write_text(json.dumps(document))
    config = tmp_path / "federation.toml"
    config.write_text("[federation]\nrounds = 2\n")
    result = runner.invoke(
        app,
        ["coordinator", "start", "--config", str(config), "--pki", str(pki),
         "--run-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 9, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "site 'site-1' is named 2 times" in lines[0], lines
    assert not (tmp_path / "run" / "flower").exists(), "no SuperLink was started"


def test_site_runs_signal_handlers_are_restored_when_it_returns() -> None:
    """An in-process ``site run`` (a test's CLI runner) must give Ctrl-C back afterwards."""
    import signal
    import threading

    from clinfl.cli.site_run import _stop_on_signals

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    with _stop_on_signals(stop):
        assert signal.getsignal(signal.SIGINT) not in before
        signal.raise_signal(signal.SIGINT)  # stops the site instead of interrupting
        assert stop.is_set()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize(
    ("members", "secagg", "need"),
    [(3, "[secagg]\nmin_sites = 2\nmax_colluders = 2\n", 4), (1, "", 4)],
)
def test_coordinator_start_refuses_a_roster_too_small_for_the_run_s_secagg(
    tmp_path: Path, members: int, secagg: str, need: int
) -> None:
    """Refused at once, in one line, before a SuperLink starts: the run could never sum (one
    site with secure aggregation on passed the configuration's checks before)."""
    pki, _ = trusted_federation(tmp_path, tuple(f"site-{k + 1}" for k in range(members)))
    config = tmp_path / "federation.toml"
    config.write_text("[federation]\nrounds = 2\n" + secagg)
    result = runner.invoke(
        app,
        ["coordinator", "start", "--config", str(config), "--pki", str(pki),
         "--run-dir", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"lists {members} site(s)" in lines[0] and f"needs at least {need}" in lines[0]
    assert "clinfl pki admit" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists(), "nothing was started"
