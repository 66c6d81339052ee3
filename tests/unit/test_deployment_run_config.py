"""The deployment's run-config rules: the sites are the roster's, the data each site's export,
defaults resolved, no path kept; the sites' own settings and invalid values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinfl.config.presets import XRAY
from clinfl.config.site_fields import portable_run_config
from clinfl.errors import ConfigError, ValidationError
from coordinator.deploy.run_config import deployment_run_config


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def test_the_run_takes_the_rosters_sites_the_dicom_export_and_the_xray_defaults(
    tmp_path: Path,
) -> None:
    config = deployment_run_config(
        _file(tmp_path, '[federation]\nrounds = 3\n[method]\nname = "fedavg"\n'), roster_size=4
    )
    assert config.federation.sites == 4
    assert config.federation.rounds == 3
    assert config.method.name == "fedavg"
    assert config.data.dataset == "dicom"
    assert config.data.images is None and config.data.labels is None
    assert config.data.image_size == XRAY.image_size == 64
    assert config.method.width == XRAY.width
    assert config.federation.lr == XRAY.lr
    assert config.secagg.enabled
    assert "site-export" not in repr(portable_run_config(config))


def test_a_roster_of_one_or_none_runs_one_site_without_secure_aggregation(tmp_path: Path) -> None:
    path = _file(tmp_path, "[federation]\nrounds = 2\n")
    for size in (0, 1):
        config = deployment_run_config(path, roster_size=size)
        assert config.federation.sites == 1
        assert not config.secagg.enabled


def test_the_roster_size_is_checked_as_the_runs_sites(tmp_path: Path) -> None:
    """Three sites cannot cover secure aggregation's default floor plus one colluder."""
    with pytest.raises(ValidationError) as caught:
        deployment_run_config(_file(tmp_path, "[federation]\nrounds = 2\n"), roster_size=3)
    assert [violation.field for violation in caught.value.violations] == ["sites"]
    assert caught.value.violations[0].value == 3


def test_naming_the_deployed_data_set_is_allowed_and_the_others_are_refused(
    tmp_path: Path,
) -> None:
    config = deployment_run_config(_file(tmp_path, '[data]\ndataset = "dicom"\n'), roster_size=4)
    assert config.data.dataset == "dicom"
    with pytest.raises(ValidationError, match=r"data\.dataset"):
        deployment_run_config(_file(tmp_path, '[data]\ndataset = "cxr14"\n'), roster_size=3)


def test_every_setting_of_the_sites_is_refused_at_once(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        '[data]\nimages = "/pacs"\nlabels = "/pacs/l.csv"\n[federation]\nsites = 4\nthreads = 2\n',
    )
    with pytest.raises(ValidationError) as caught:
        deployment_run_config(path, roster_size=3)
    fields = {violation.field for violation in caught.value.violations}
    assert fields == {"data.images", "data.labels", "federation.sites", "federation.threads"}


def test_invalid_values_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="rounds"):
        deployment_run_config(_file(tmp_path, "[federation]\nrounds = 0\n"), roster_size=3)
    with pytest.raises(ValidationError, match="no_such_key"):
        deployment_run_config(_file(tmp_path, "[federation]\nno_such_key = 1\n"), roster_size=3)
    with pytest.raises(ConfigError, match="not valid TOML"):
        deployment_run_config(_file(tmp_path, "[federation\n"), roster_size=3)
    with pytest.raises(ConfigError, match="cannot read"):
        deployment_run_config(tmp_path / "missing.toml", roster_size=3)
