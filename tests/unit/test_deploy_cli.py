"""`clinfl coordinator start` and `clinfl site run` turn every user mistake into one clear line
and an exit code, before any process starts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.config import RunConfig
from clinfl.errors import CheckpointError
from clinfl.pki import add_site, init_pki
from coordinator.deployment import DeploymentPlan
from coordinator.launcher import portable_run_config

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    folder = tmp_path / "pki"
    init_pki(folder, hosts=["127.0.0.1"])
    add_site(folder, "site-1")
    add_site(folder, "site-2")
    return folder


def _site_run(tmp_path: Path, pki: Path, *extra: str) -> list[str]:
    (tmp_path / "export").mkdir(exist_ok=True)
    return [
        "site", "run",
        "--data", str(tmp_path / "export"),
        "--policy", str(ROOT / "policies" / "default.toml"),
        "--pki", str(pki),
        "--state", str(tmp_path / "state"),
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (("--coordinator", "no-port"), 2, "is not HOST:PORT"),
        (("--coordinator", "h:1", "--label-space", "xray"), 2, "--label-space"),
        (("--coordinator", "h:1"), 9, "name the site with --site"),
        (("--coordinator", "h:1", "--site", "site-9"), 9, "not in"),
        (("--coordinator", "h:1", "--site", "site-1", "--connect-timeout", "0"), 2, "positive"),
    ],
)
def test_site_run_refuses_bad_input_in_one_line(
    tmp_path: Path, pki: Path, extra: tuple[str, ...], code: int, says: str
) -> None:
    result = runner.invoke(app, _site_run(tmp_path, pki, *extra))
    assert result.exit_code == code, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "state" / "flower").exists(), "no SuperNode was started"


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
