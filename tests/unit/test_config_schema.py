"""One schema, one checker: the CLI's defaults, the secagg settings types and the site's fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main

from clinfl.algorithms import available_algorithms
from clinfl.cli.app import app
from clinfl.cli.simulate import RUN_OPTIONS
from clinfl.config import SECTIONS, RunConfig, SecAggConfig, validate_run_config
from clinfl.config.policy import parse_policy
from clinfl.config.presets import DIGITS, PRESET_FIELDS, XRAY, preset_help
from clinfl.config.site_fields import PATH_FIELDS, SITE_FIELDS, portable_run_config
from clinfl.errors import ValidationError
from clinfl.secagg.settings import SecAggRequirements, largest_safe_scale


def test_every_simulate_option_takes_its_default_from_the_config_schema() -> None:
    command = typer.main.get_command(app).commands["simulate"]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    for option in RUN_OPTIONS:
        section, _, key = option.field.partition(".")
        declared = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}[key]
        assert params[option.param].default == declared, option.field
        preset = f" {preset_help(option.field)}" if option.field in PRESET_FIELDS else ""
        assert params[option.param].help == option.help + preset


def test_the_help_of_a_preset_field_gives_each_data_sets_value() -> None:
    command = typer.main.get_command(app).commands["simulate"]  # type: ignore[attr-defined]
    help_of = {p.name: p.help for p in command.params}
    assert f"digits {DIGITS.lambda_con:g} (chosen on validation)" in help_of["lambda_con"]
    assert f"X-rays (cxr14, dicom) {XRAY.lambda_con:g} (not yet validated)" in help_of["lambda_con"]
    assert f"digits {DIGITS.image_size} (the reference benchmark's)" in help_of["image_size"]


def test_a_policy_secagg_table_is_the_protocols_requirements_type() -> None:
    policy = parse_policy("[secagg]\nmin_sites = 4\nmax_colluders = 0\n")
    assert type(policy.secagg) is SecAggRequirements
    assert policy.secagg == SecAggRequirements(min_sites=4, max_colluders=0)


@pytest.mark.parametrize("bits", [16, 20, 24, 32])
@pytest.mark.parametrize("weight_cap", [1, 100, 10_000, 20_000])
def test_the_config_check_and_the_coordinators_scale_agree_on_overflow(
    bits: int, weight_cap: int
) -> None:
    sites = 5
    secagg = SecAggConfig(bits=bits, weight_cap=weight_cap, clip=0.5, max_colluders=0)
    try:
        largest_safe_scale(sites=sites, weight_cap=weight_cap, clip=0.5, bits=bits)
        fits = True
    except ValueError:
        fits = False
    config = RunConfig(secagg=secagg)
    if fits:
        validate_run_config(config, known_methods=available_algorithms())
    else:
        with pytest.raises(ValidationError, match=r"secagg\.bits"):
            validate_run_config(config, known_methods=available_algorithms())


def test_sites_receive_no_path_and_no_dropout(tmp_path: Path) -> None:
    config = RunConfig()
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, images=tmp_path, labels=tmp_path / "l.csv"),
        method=dataclasses.replace(config.method, init_weights=tmp_path / "w.pt"),
    )
    document = portable_run_config(config)
    for name in PATH_FIELDS:
        section, _, key = name.partition(".")
        assert key not in document.get(section, {}), name
    assert document["drops"] == [] and "drops" in SITE_FIELDS
