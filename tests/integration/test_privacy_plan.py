"""`clinfl policy plan` against real federations: the plan's epsilon after round k is the
ledger's after k real DP rounds, and a run without DP reports the rounds its sites trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from site_agent.ledger import SiteLedger

runner = CliRunner()
SMALL = [
    "--image-size", "16",
    "--rho", "0.6", "--max-samples", "160", "--composites-per-pair", "1", "--sites", "4",
]  # fmt: skip
ROUNDS = 2
BATCH = "16"


@pytest.fixture(scope="module")
def prv_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two DP rounds charged by PRV, at batch 16: each site's rate is 1 / ceil(N / 16)."""
    tmp_path = tmp_path_factory.mktemp("prv")
    policy = tmp_path / "prv.toml"
    policy.write_text(
        '[dp]\nepsilon_budget = 12\nnoise_multiplier = 1.0\naccountant = "prv"\n'
        '[data]\nmin_samples = 10\n[reporting]\nmetrics = ["counts", "epsilon"]\n'
    )
    out = tmp_path / "run"
    args = [*SMALL, "--rounds", str(ROUNDS), "--width", "8", "--batch-size", BATCH]
    args += ["--policy", str(policy)]
    result = runner.invoke(app, ["simulate", *args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return policy, out


def test_the_plan_s_epsilon_after_round_k_is_the_ledger_s(prv_run: tuple[Path, Path]) -> None:
    policy, out = prv_run
    rates = set()
    for site in sorted((out / "sites").iterdir()):
        ledger = SiteLedger(site)
        rounds, samples = ledger.rounds(), int(ledger.meta()["samples"])
        ledger.close()
        assert [r.state for r in rounds] == ["spent"] * ROUNDS
        result = runner.invoke(
            app,
            ["policy", "plan", "--policy", str(policy), "--samples", str(samples),
             "--batch-size", BATCH, "--local-epochs", "1", "--rounds", str(ROUNDS), "--json"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        plan = json.loads(result.stdout)
        assert (plan["noise_multiplier"], plan["sample_rate"], plan["steps_per_round"]) == (
            rounds[0].noise_multiplier,
            rounds[0].sample_rate,
            rounds[0].steps,
        )
        planned = [(r["epsilon_cumulative"], r["accountant"]) for r in plan["rounds"]]
        assert planned == [(r.epsilon, r.accountant) for r in rounds]
        assert {r.accountant for r in rounds} == {"prv"}
        rates.add(plan["sample_rate"])
        report = json.loads((site / "audit_report.json").read_text())
        forecast = report["dp"]["forecast"]
        assert forecast["rounds_more"] == plan["rounds_allowed"] - ROUNDS
    assert len(rates) > 1  # sites of different sizes: the samples really enter the plan


def test_a_run_without_dp_reports_the_rounds_its_sites_trained(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*SMALL, "--rounds", "2", "--width", "8"]
    result = runner.invoke(app, ["simulate", *args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "federation_report.json").read_text())
    assert [s["rounds_trained"] for s in report["sites"]] == [2, 2, 2, 2]
    assert "| 2 |" in (out / "federation_report.md").read_text()
