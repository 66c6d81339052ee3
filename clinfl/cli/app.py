"""The ``clinfl`` Typer application."""

from __future__ import annotations

import typer

from clinfl.cli import deploy  # noqa: F401 - registers `coordinator start` and `site run`
from clinfl.cli.audit import audit_app
from clinfl.cli.coordinator import coordinator_app
from clinfl.cli.cv import cv_app
from clinfl.cli.data import data_app
from clinfl.cli.model import model_app
from clinfl.cli.pki import pki_app
from clinfl.cli.policy import policy_app
from clinfl.cli.simulate import simulate
from clinfl.cli.site import site_app
from clinfl.cli.weights import weights_app

app = typer.Typer(
    name="clinfl",
    help="Privacy-hardened federated learning for multi-label chest X-ray classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("simulate")(simulate)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(site_app, name="site")
app.add_typer(data_app, name="data")
app.add_typer(pki_app, name="pki")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(model_app, name="model")
app.add_typer(weights_app, name="weights")
app.add_typer(cv_app, name="cv")


@app.callback()
def _root() -> None:
    """clinfl: FedNCAlign-ML federations across hospitals."""


def main() -> None:
    """Entry point of the ``clinfl`` console command."""
    app()
