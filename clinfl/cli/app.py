"""The ``clinfl`` Typer application: every command is registered here, and only here.

The command modules define plain functions; :data:`GROUPS` names each group, its help and its
commands, and :func:`build_app` registers them, so what ``clinfl --help`` lists is this table,
never a side effect of which modules happened to be imported. A command's home is the module
its function is in (``clinfl site run``: :func:`clinfl.cli.site_run.run`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from clinfl.cli import audit, coordinator, cv, data, model, pki, policy, site, site_run, weights
from clinfl.cli.simulate import simulate

Command = Callable[..., Any]


@dataclass(frozen=True)
class Group:
    """A ``clinfl`` command group: its name, its help line, its commands in help order."""

    name: str
    help: str
    commands: tuple[tuple[str, Command], ...]


ROOT_COMMANDS: tuple[tuple[str, Command], ...] = (("simulate", simulate),)
GROUPS: tuple[Group, ...] = (
    Group("policy", "Site privacy policies.", (("check", policy.check), ("plan", policy.plan))),
    Group("audit", "Privacy audit reports.", (("report", audit.report),)),
    Group(
        "site",
        "What runs at a hospital.",
        (
            ("ingest", site.ingest),
            ("init", site.init),
            ("trust", site.trust),
            ("run", site_run.run),
        ),
    ),
    Group(
        "data",
        "Data preparation for demos and tests.",
        (("make-export", data.make_export_command),),
    ),
    Group(
        "pki",
        "Certificates and keys of the federation.",
        (
            ("init", pki.init),
            ("admit", pki.admit),
            ("remove", pki.remove),
            ("roster", pki.show_roster),
        ),
    ),
    Group(
        "coordinator",
        "Start a deployed federation; watch and steer one (status, pause, resume, stop).",
        (
            ("status", coordinator.status),
            ("pause", coordinator.pause),
            ("resume", coordinator.resume),
            ("stop", coordinator.stop),
            ("start", coordinator.start),
        ),
    ),
    Group(
        "model",
        "Use a trained model: export it from a run, predict with it, write its model card.",
        (("export", model.export), ("predict", model.predict), ("card", model.card)),
    ),
    Group(
        "weights",
        "Pretrained weights: list the catalogue, fetch a weights set into the local cache.",
        (("list", weights.list_command), ("fetch", weights.fetch_command)),
    ),
    Group("cv", "Cross-validated runs (`clinfl simulate --cv K`).", (("compare", cv.compare),)),
)


def _root() -> None:
    """clinfl: FedNCAlign-ML federations across hospitals."""


def build_app() -> typer.Typer:
    """Return a new ``clinfl`` application with every command of :data:`GROUPS` registered."""
    root = typer.Typer(
        name="clinfl",
        help="Privacy-hardened federated learning for multi-label chest X-ray classification.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    root.callback()(_root)
    for name, function in ROOT_COMMANDS:
        root.command(name)(function)
    for group in GROUPS:
        sub = typer.Typer(help=group.help, no_args_is_help=True)
        for name, function in group.commands:
            sub.command(name)(function)
        root.add_typer(sub, name=group.name)
    return root


app = build_app()


def main() -> None:
    """Entry point of the ``clinfl`` console command."""
    app()
