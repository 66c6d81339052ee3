"""Federation config files (TOML): a valid file, every mistake at once, and the CLI's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.config import Dropout
from clinfl.config.file import load_run_config
from clinfl.errors import ConfigError, ValidationError

runner = CliRunner()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def test_a_valid_file_gives_the_run_config(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[data]
dataset = "dicom"
images = "export"
alpha = 1
label_space = "digits"

[method]
name = "scaffold"

[federation]
sites = 4
lr = 0.0005

[secagg]
enabled = false

[privacy]
policy = "/etc/clinfl/policy.toml"

[[drops]]
site = "site-2"
stage = "share"
round = 1
""",
    )
    config = load_run_config(path)
    assert config.data.images == tmp_path / "export"  # relative to the file
    assert config.data.alpha == 1.0 and isinstance(config.data.alpha, float)
    assert config.method.name == "scaffold" and config.federation.sites == 4
    assert config.federation.lr == 0.0005 and config.secagg.enabled is False
    assert config.privacy.policy == Path("/etc/clinfl/policy.toml")
    assert config.drops == (Dropout("site-2", "share", 1),)
    assert config.federation.rounds == 6  # defaults fill the rest


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[data]
alpah = 0.5
rho = "half"

[federation]
sites = true

[model]
depth = 18
""",
    )
    with pytest.raises(ValidationError) as caught:
        load_run_config(path)
    fields = [v.field for v in caught.value.violations]
    assert fields == ["data.alpah", "data.rho", "federation.sites", "model"]
    assert "keys:" in caught.value.violations[0].fix


def test_missing_and_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(_write(tmp_path, "[data\n"))


def test_the_cli_refuses_run_options_next_to_a_config_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[federation]\nsites = 3\n")
    result = runner.invoke(
        app, ["simulate", "--config", str(path), "--sites", "4", "--rounds", "2"]
    )
    assert result.exit_code == 2
    assert "--config cannot be combined with --sites, --rounds" in result.output
    bad = _write(tmp_path, "[federation]\nsites = 0\n")
    result = runner.invoke(app, ["simulate", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "sites" in result.output
    assert "Traceback" not in result.output
