"""Each data set's defaults: one table, resolved before a run records or binds its config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clinfl.algorithms import available_algorithms, create_algorithm
from clinfl.config import DataConfig, MethodConfig, RunConfig, validate_run_config
from clinfl.config.digest import run_config_digest
from clinfl.config.presets import (
    DIGITS,
    PRESET_FIELDS,
    XRAY,
    Preset,
    preset_name,
    resolve_defaults,
)
from clinfl.config.site_fields import portable_run_config
from clinfl.errors import ValidationError


def _value(config: RunConfig, field: str) -> object:
    section, _, key = field.partition(".")
    return getattr(getattr(config, section), key)


def test_every_preset_field_defaults_to_none_in_the_schema() -> None:
    for field in PRESET_FIELDS:
        assert _value(RunConfig(), field) is None, field


@pytest.mark.parametrize(
    ("data", "preset"),
    [
        (DataConfig(dataset="digits"), DIGITS),
        (DataConfig(dataset="dicom", label_space="digits", images=Path("x")), DIGITS),
        (DataConfig(dataset="dicom", images=Path("x")), XRAY),
        (DataConfig(dataset="cxr14", images=Path("x"), labels=Path("y")), XRAY),
    ],
)
def test_an_unset_field_takes_its_data_sets_preset(data: DataConfig, preset: Preset) -> None:
    resolved = resolve_defaults(RunConfig(data=data))
    for field, name in PRESET_FIELDS.items():
        assert _value(resolved, field) == getattr(preset, name), field


def test_a_set_field_keeps_its_value() -> None:
    config = RunConfig(
        method=MethodConfig(width=32, lambda_con=0.0, head_bias="zero", fedcurv_lambda=5.0),
        data=DataConfig(image_size=48),
    )
    resolved = resolve_defaults(config)
    assert resolved.method.width == 32 and resolved.method.lambda_con == 0.0
    assert resolved.method.head_bias == "zero" and resolved.method.fedcurv_lambda == 5.0
    assert resolved.data.image_size == 48
    assert resolved.method.lambda_rej == DIGITS.lambda_rej  # unset: the preset's


def test_the_presets_differ_where_validation_chose_for_digits() -> None:
    # the point of per-data-set defaults: digits' tuned values are not the X-ray ones
    assert preset_name(DataConfig()) == "digits"
    assert (DIGITS.width, DIGITS.lambda_con) != (XRAY.width, XRAY.lambda_con)


def test_the_digest_binds_the_resolved_values() -> None:
    # what a site hashes is the resolved configuration: unset and the preset's value written
    # out hash alike, and another data set's value does not
    unset = resolve_defaults(RunConfig())
    written = resolve_defaults(RunConfig(method=MethodConfig(lambda_con=DIGITS.lambda_con)))
    other = resolve_defaults(RunConfig(method=MethodConfig(lambda_con=XRAY.lambda_con)))
    assert run_config_digest(unset) == run_config_digest(written)
    assert run_config_digest(unset) != run_config_digest(other)
    sent = portable_run_config(unset)
    assert sent["method"]["width"] == DIGITS.width and sent["federation"]["lr"] == DIGITS.lr


def test_validation_checks_a_dependent_setting_against_the_preset_value() -> None:
    # LADM's heads must divide the attention width, 8 x the base width: 256 divides the
    # X-ray preset's 512 but not the digits preset's 128
    assert (8 * XRAY.width) % 256 == 0 and (8 * DIGITS.width) % 256 != 0
    config = RunConfig(method=MethodConfig(heads=256))
    with pytest.raises(ValidationError, match="heads=256"):
        validate_run_config(config, known_methods=available_algorithms())
    xray = DataConfig(dataset="cxr14", images=Path("x"), labels=Path("y"))
    validate_run_config(
        dataclasses.replace(config, data=xray), known_methods=available_algorithms()
    )
    ok = dataclasses.replace(config, method=MethodConfig(heads=8))
    assert validate_run_config(ok, known_methods=available_algorithms()) is ok


def test_an_algorithm_built_outside_a_run_uses_the_library_preset() -> None:
    # no data set, no run: the X-ray preset (clinfl's purpose), the values before presets
    algorithm = create_algorithm(MethodConfig(name="fedncalign"))
    assert algorithm.lambda_rej == XRAY.lambda_rej  # type: ignore[attr-defined]
