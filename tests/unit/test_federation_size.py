"""Small federations: the refusal names both ways out, and the table in
docs/secure-aggregation.md is the protocol's own rules (it cannot drift from them)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.algorithms import available_algorithms
from clinfl.cli.app import app
from clinfl.config import RunConfig, SecAggConfig, validate_run_config
from clinfl.config.federation_size import (
    DOC_SECTION,
    TABLE_SETTINGS,
    TABLE_SITES,
    assess,
    markdown_table,
    small_federation_fix,
)
from clinfl.errors import ProtocolViolation, ValidationError
from clinfl.secagg.settings import SecAggRequirements, check_holders
from tests.support.roster_pki import trusted_federation

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "secure-aggregation.md"
runner = CliRunner()


def _config(sites: int, *, min_sites: int | None = None, max_colluders: int = 1) -> RunConfig:
    base = RunConfig()
    return replace(
        base,
        federation=replace(base.federation, sites=sites),
        secagg=SecAggConfig(min_sites=min_sites, max_colluders=max_colluders),
    )


def _validate(config: RunConfig) -> RunConfig:
    return validate_run_config(config, known_methods=available_algorithms())


def test_the_doc_table_is_generated_from_the_rules() -> None:
    text = DOC.read_text()
    assert f"## {DOC_SECTION}" in text
    start = text.index("<!-- small-federations table")
    end = text.index("<!-- end of the small-federations table -->")
    table = text[start:end].split("\n", 1)[1].strip()
    assert table == markdown_table(), "regenerate the table: clinfl.config.federation_size"


@pytest.mark.parametrize("sites", TABLE_SITES)
@pytest.mark.parametrize(("min_sites", "colluders"), TABLE_SETTINGS)
def test_every_row_is_what_the_code_accepts(sites: int, min_sites: int, colluders: int) -> None:
    """A row runs exactly when the run configuration is accepted; its threshold is the one the
    coordinator plans and every site accepts; its survivors are the sites' own floor."""
    size = assess(sites, min_sites=min_sites, max_colluders=colluders)
    config = _config(sites, min_sites=min_sites, max_colluders=colluders)
    if not size.runs:
        with pytest.raises(ValidationError, match="sites="):
            _validate(config)
        return
    _validate(config)
    plan = config.secagg.plan(
        round_id=1, site_ids=tuple(f"site-{k}" for k in range(sites)), vector_length=4
    )
    requirements = SecAggRequirements(min_sites=min_sites, max_colluders=colluders)
    assert plan.threshold == size.threshold
    check_holders(plan, holders=sites, requirements=requirements)
    lower = replace(plan, threshold=plan.threshold - 1)
    if lower.threshold >= min_sites:  # a smaller threshold is refused as not split-proof
        with pytest.raises(ProtocolViolation):
            check_holders(lower, holders=sites, requirements=requirements)
    assert size.survivors == requirements.survivor_floor(plan.threshold)
    # the Goal: with up to c colluders, every sum the coordinator computes covers min_sites
    for k in range(colluders + 1):
        assert size.fewest_honest(k) >= min_sites
    if sites == min_sites + colluders:  # the fewest sites: one colluder more breaks the Goal
        assert size.fewest_honest(colluders + 1) < min_sites


def test_three_hospitals_with_the_defaults_are_told_both_ways_out() -> None:
    with pytest.raises(ValidationError) as caught:
        _validate(_config(3))
    message = caught.value.one_line()
    assert "\n" not in message
    assert "sites=3 is invalid" in message
    assert "use at least 4 sites" in message and "only sums over 3 or more honest" in message
    assert "--secagg-min-sites 2" in message and "[secagg] min_sites = 2" in message
    assert "every site's policy" in message and "no dropout allowed" in message
    assert "colluding with 1 site learns only sums over 2 or more honest sites" in message
    assert "colluding with 2 sites learns one honest site's update exactly" in message
    assert f"'{DOC_SECTION}'" in message
    # both ways out are accepted
    _validate(_config(4))
    _validate(_config(3, min_sites=2))


def test_two_sites_need_no_colluder_assumed_and_are_told_so() -> None:
    fix = small_federation_fix(2, min_sites=3, max_colluders=1)
    assert "use at least 4 sites" in fix
    assert "min_sites 2 and max_colluders 0" in fix and "--secagg-max-colluders 0" in fix
    assert "colluding with 1 site learns one honest site's update exactly" in fix
    assert "each site can compute the other's update" in fix
    _validate(_config(2, min_sites=2, max_colluders=0))


def test_simulate_refuses_three_sites_in_one_line_naming_both_ways(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--sites", "3", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.output)
    assert "use at least 4 sites" in error["message"]
    assert "--secagg-min-sites 2" in error["message"]
    assert not (tmp_path / "results.json").exists()


def test_a_deployed_coordinator_of_three_sites_gets_the_same_answer(tmp_path: Path) -> None:
    pki, _ = trusted_federation(tmp_path, ("site-1", "site-2", "site-3"))
    config = tmp_path / "federation.toml"
    config.write_text("[federation]\nrounds = 2\n")
    arguments = ["coordinator", "start", "--config", str(config), "--pki", str(pki)]
    result = runner.invoke(app, [*arguments, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "use at least 4 sites" in text and "[secagg] min_sites = 2" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "flower").exists(), "no SuperLink was started"
