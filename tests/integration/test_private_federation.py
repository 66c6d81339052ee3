"""Federations under site policies: DP-SGD, budgets that stop a run, reports, policy refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
SMALL = [
    "--image-size", "16",
    "--rho", "0.6", "--max-samples", "160", "--composites-per-pair", "1", "--sites", "4",
]  # fmt: skip


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Round 1 costs epsilon 2 by construction; the budget of 2.5 refuses round 2."""
    tmp_path = tmp_path_factory.mktemp("budget")
    policy = _policy(
        tmp_path,
        "[dp]\nepsilon_budget = 2.5\ntarget_epsilon_per_round = 2.0\n"
        '[data]\nmin_samples = 10\n[reporting]\nmetrics = ["counts", "epsilon"]\n',
    )
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["simulate", *SMALL, "--rounds", "3", "--policy", str(policy), "--out", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_dp_round_runs_and_a_spent_budget_stops_the_run_cleanly(budget_run) -> None:
    _, summary = budget_run
    assert [r["round"] for r in summary["rounds"]] == [1]
    assert summary["rounds"][0]["sites"] == 4
    stopped = summary["stopped"]
    assert stopped.startswith("stopped before round 2:")
    assert stopped.count("past the budget 2.5") == 4  # every site refused, each with its reason
    assert all(site in stopped for site in ("site-1", "site-2", "site-3", "site-4"))
    assert summary["grad_sample_mode"] == "hooks"
    assert summary["best"]["round"] == 1


def test_site_report_shows_budget_rounds_and_refusal(budget_run) -> None:
    out, _ = budget_run
    result = runner.invoke(
        app, ["audit", "report", "--site-state", str(out / "sites" / "site-1"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["dp"]["enabled"] and report["dp"]["epsilon_budget"] == 2.5
    (round_one,) = report["rounds"]
    assert round_one["state"] == "spent" and round_one["secure_aggregation"] is True
    assert round_one["sites_in_sum"] == 4 and round_one["grad_sample_mode"] == "hooks"
    assert 1.9 < round_one["epsilon_cumulative"] <= 2.0 + 1e-6
    # the policy lists no `auc`: the site also declines every federated evaluation, audited
    budget = [r for r in report["refusals"] if "past the budget" in r["reason"]]
    assert len(budget) == 1 and "past the budget 2.5" in budget[0]["reason"]
    declined = [r for r in report["refusals"] if r not in budget]
    assert declined and all("does not join federated evaluations" in r["reason"] for r in declined)
    assert report["policy"]["source"] == "policy.toml" and len(report["policy"]["sha256"]) == 64
    markdown = runner.invoke(
        app, ["audit", "report", "--site-state", str(out / "sites" / "site-1"), "--format", "md"]
    ).output
    assert "## Refusals" in markdown and "past the budget 2.5" in markdown
    html_path = out / "site-1.html"
    written = runner.invoke(
        app,
        [
            "audit",
            "report",
            "--site-state",
            str(out / "sites" / "site-1"),
            "--format",
            "html",
            "--out",
            str(html_path),
        ],
    )
    assert written.exit_code == 0
    page = html_path.read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "http" not in page


def test_the_plan_s_rounds_allowed_is_where_the_real_run_was_refused(budget_run) -> None:
    """Round 1 cost epsilon 2 of 2.5 and round 2 was refused: the plan says 1 round fits."""
    out, summary = budget_run
    policy = out.parent / "policy.toml"
    for site in ("site-1", "site-2", "site-3", "site-4"):
        report = json.loads((out / "sites" / site / "audit_report.json").read_text())
        samples = report["data"]["training_samples"]
        result = runner.invoke(
            app,
            ["policy", "plan", "--policy", str(policy), "--samples", str(samples), "--json"],
        )
        assert result.exit_code == 0, result.output
        plan = json.loads(result.stdout)
        (spent,) = report["rounds"]
        assert plan["rounds_allowed"] == 1 and plan["noise_calibrated_for_epsilon_per_round"] == 2
        assert plan["noise_multiplier"] == spent["noise_multiplier"]
        assert plan["rounds"][0]["epsilon_cumulative"] == spent["epsilon_cumulative"]
        refused = [r["round"] for r in report["refusals"] if "past the budget" in r["reason"]]
        assert refused == [plan["rounds_allowed"] + 1]
        assert report["dp"]["forecast"]["rounds_more"] == 0
    assert summary["stopped"].startswith(f"stopped before round {plan['rounds_allowed'] + 1}:")


def test_federation_report_holds_only_what_sites_may_share(budget_run) -> None:
    out, _ = budget_run
    report = json.loads((out / "federation_report.json").read_text())
    for site in report["sites"]:
        assert site["reports"] == ["counts", "epsilon"]
        assert "epsilon_spent" in site and "training_samples" in site
        assert "ingestion" not in site
    assert (out / "federation_report.html").is_file()
    assert report["stopped"].startswith("stopped before round 2")


def _chromium() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_html_report_draws_its_plot_in_a_headless_browser(budget_run, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs chromium-headless-shell)")
    out, _ = budget_run
    page = out / "sites" / "site-1" / "audit_report.html"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=900,700",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    top = image.crop((0, 60, 700, 460))  # the plot sits under the title
    colours = top.getcolors(maxcolors=1_000_000) or []
    blue = sum(count for count, (r, g, b) in colours if b > 150 and r < 100)  # the epsilon line
    red = sum(count for count, (r, g, b) in colours if r > 180 and g < 80 and b < 80)  # budget
    assert blue > 50 and red > 50


def test_a_looser_coordinator_request_is_refused_at_setup(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            *SMALL,
            "--policy",
            str(POLICIES / "default.toml"),
            "--secagg",
            "off",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
    )
    assert result.exit_code == 8, result.output
    error = json.loads(result.stdout)  # the derived local steps are said on stderr
    assert "site-1" in error["message"] and "secure aggregation off" in error["message"]


def test_a_site_that_keeps_counts_trains_fixed_steps_the_simulation_derives(
    tmp_path: Path,
) -> None:
    """Simulation only: with a policy that keeps counts and no --local-steps, clinfl simulate
    derives local_epochs x ceil(mean site training size / batch size), prints it and records
    it; the sites then take exactly that many steps per round, whatever their sizes."""
    policy = _policy(
        tmp_path,
        "[dp]\nrequired = false\n[secagg]\nmin_sites = 2\n[data]\nmin_samples = 10\n"
        "[reporting]\nmetrics = []\n",
    )
    out = tmp_path / "run"
    args = [*SMALL[:-1], "3", "--rounds", "1", "--width", "8", "--batch-size", "16"]
    result = runner.invoke(
        app,
        ["simulate", *args, "--secagg-min-sites", "2", "--policy", str(policy), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    sizes = summary["partition"]["samples_per_site"]
    expected = -(-sum(sizes) // (len(sizes) * 16))  # ceil(mean / 16), one local epoch
    assert len({-(-n // 16) for n in sizes}) > 1  # by epochs their steps would differ
    assert summary["config"]["federation"]["local_steps"] == expected
    assert (
        json.loads((out / "run_config.json").read_text())["federation"]["local_steps"] == expected
    )
    text = " ".join(result.output.split())
    assert f"this simulation trains every site {expected} local steps per round" in text
    assert "a deployed run must set --local-steps itself" in text


def test_strict_policy_needs_more_sites_than_given(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["simulate", *SMALL, "--policy", str(POLICIES / "strict.toml"), "--out", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "at least 5 sites besides 2 possible colluder(s); the federation has 4" in result.output
    text = " ".join(result.output.split())  # both ways out, with what each means
    assert "use at least 7 sites" in text and "set min_sites 2" in text
    assert "colluding with 3 sites learns one honest site's update exactly" in text


def test_policy_check_prints_what_a_policy_allows() -> None:
    result = runner.invoke(app, ["policy", "check", str(POLICIES / "strict.toml")])
    assert result.exit_code == 0, result.output
    assert "epsilon 3.0 in total" in result.output and "at least 5 sites" in result.output
    as_json = json.loads(
        runner.invoke(app, ["policy", "check", str(POLICIES / "research.toml"), "--json"]).output
    )
    assert as_json["valid"] and as_json["dp"]["required"] is False
    assert set(as_json["discloses"]) == set(as_json["reporting"]["metrics"])


def test_policy_check_says_what_each_reported_metric_gives_a_lying_coordinator(
    tmp_path: Path,
) -> None:
    result = runner.invoke(app, ["policy", "check", str(POLICIES / "research.toml")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "counts: the sample count weights the masked update" in text
    assert "computes it exactly" in text and "auc: this site joins the federated evaluation" in text
    assert "no per-site metric leaves in the clear" in text
    silent = _policy(tmp_path, "[reporting]\nmetrics = []\n")
    result = runner.invoke(app, ["policy", "check", str(silent), "--json"])
    assert json.loads(result.output)["discloses"] == {}


def test_policy_check_of_the_defaults_default_discloses_nothing_research_warns() -> None:
    # the default lists auc only: it joins the federated evaluation (masked histograms)
    default = runner.invoke(app, ["policy", "check", str(POLICIES / "default.toml")])
    assert default.exit_code == 0, default.output
    text = " ".join(default.output.split())
    assert "may leave the site │ auc" in text and "Warning" not in text
    as_json = json.loads(
        runner.invoke(app, ["policy", "check", str(POLICIES / "default.toml"), "--json"]).output
    )
    assert list(as_json["discloses"]) == ["auc"] and as_json["warnings"] == []
    research = runner.invoke(app, ["policy", "check", str(POLICIES / "research.toml")])
    text = " ".join(research.output.split())
    for metric in ("loss", "auc", "counts", "epsilon", "ingest"):
        assert f"{metric}: " in text
    assert "Warning: this policy lets the site train without DP-SGD" in text
    assert "close approximation of this site's update" in text
    as_json = json.loads(
        runner.invoke(app, ["policy", "check", str(POLICIES / "research.toml"), "--json"]).output
    )
    assert len(as_json["warnings"]) == 1 and "without DP-SGD" in as_json["warnings"][0]


def test_policy_check_lists_every_problem(tmp_path: Path) -> None:
    bad = _policy(tmp_path, "[dp]\nepsilon_budget = 0\ndelta = 5\n[secagg]\nmin_sites = 1\n")
    result = runner.invoke(app, ["policy", "check", str(bad)])
    assert result.exit_code == 2
    for field in ("dp.epsilon_budget=0", "dp.delta=5", "secagg.min_sites=1"):
        assert field in result.output


def test_audit_report_of_a_folder_without_a_ledger_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "report", "--site-state", str(tmp_path)])
    assert result.exit_code == 3 and "holds no privacy ledger" in result.output
