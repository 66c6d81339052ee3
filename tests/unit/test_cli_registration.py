"""Every ``clinfl`` command is registered once, in clinfl/cli/app.py, and its ``--help`` works."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from clinfl.cli.app import GROUPS, ROOT_COMMANDS, app, build_app

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = (
    "simulate",
    "policy check", "policy plan",
    "audit report",
    "site ingest", "site init", "site trust", "site run",
    "data make-export",
    "pki init", "pki admit", "pki remove", "pki roster",
    "coordinator status", "coordinator pause", "coordinator resume", "coordinator stop",
    "coordinator start",
    "model export", "model predict", "model card",
    "weights list", "weights fetch",
    "cv compare",
)  # fmt: skip
runner = CliRunner()


def _paths(command: click.Command, prefix: tuple[str, ...] = ()) -> list[str]:
    if isinstance(command, click.Group):
        return [
            path for name, sub in command.commands.items() for path in _paths(sub, (*prefix, name))
        ]
    return [" ".join(prefix)]


def _registered(application: typer.Typer) -> list[str]:
    """Every registration the application holds, duplicates included (click would hide them)."""
    names = [info.name or "" for info in application.registered_commands]
    for group in application.registered_groups:
        assert group.typer_instance is not None
        names += [f"{group.name} {name}" for name in _registered(group.typer_instance)]
    return names


def test_every_command_is_registered_exactly_once() -> None:
    registered = _registered(app)
    assert sorted(registered) == sorted(COMMANDS)
    assert len(registered) == len(set(registered))
    assert sorted(_paths(typer.main.get_command(app))) == sorted(COMMANDS)
    table = [name for name, _ in ROOT_COMMANDS]
    table += [f"{group.name} {name}" for group in GROUPS for name, _ in group.commands]
    assert table == registered


def test_building_the_app_again_registers_nothing_twice() -> None:
    """Registration is a function of the table, not of module state an import mutates."""
    build_app()
    assert sorted(_registered(build_app())) == sorted(COMMANDS)
    assert sorted(_registered(app)) == sorted(COMMANDS)


@pytest.mark.parametrize("command", ["", *sorted({c.split()[0] for c in COMMANDS}), *COMMANDS])
def test_help_of_every_command_and_group_works(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Traceback" not in result.output


def test_no_command_module_registers_anything_when_imported() -> None:
    """Only app.py makes Typer applications and adds commands; the others define functions."""
    offenders = []
    for path in sorted((ROOT / "clinfl" / "cli").glob("*.py")):
        if path.name == "app.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            target = node.func
            if target.attr in ("command", "add_typer", "callback") or (
                target.attr == "Typer"
                and isinstance(target.value, ast.Name)
                and target.value.id == "typer"
            ):
                offenders.append(f"{path.name}:{node.lineno} calls .{target.attr}(")
    assert offenders == []


def test_a_commands_home_is_the_module_of_its_function() -> None:
    homes = {
        f"{group.name} {name}": function.__module__
        for group in GROUPS
        for name, function in group.commands
    }
    assert homes["site run"] == "clinfl.cli.site_run"
    assert homes["coordinator start"] == "clinfl.cli.coordinator"
    assert not (ROOT / "clinfl" / "cli" / "deploy.py").exists()
