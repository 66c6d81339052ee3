"""``clinfl audit report``: a site's privacy audit report from its state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinfl.audit.render import FORMATS, render_site
from clinfl.cli.errors import cli_errors
from clinfl.errors import ConfigError
from clinfl.files import write_atomically
from site_agent.audit_report import build_site_report


def report(
    site_state: Annotated[
        Path,
        typer.Option(help="The site's state directory (it holds ledger.sqlite)."),
    ],
    fmt: Annotated[str, typer.Option("--format", help="json, md or html.")] = "md",
    out: Annotated[
        Path | None, typer.Option(help="Write the report here instead of printing it.")
    ] = None,
) -> None:
    """Render a site's privacy audit report: budget, per-round epsilon, refusals, data."""
    with cli_errors(as_json=fmt == "json"):
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}", remedy="--format md")
        text = render_site(build_site_report(site_state), fmt)
        if out is None:
            print(text)
        else:
            write_atomically(out, text)
            print(f"wrote {out}")
