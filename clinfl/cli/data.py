"""``clinfl data make-export``: a realistic DICOM export from PNGs and their labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from clinfl.cli.errors import cli_errors
from clinfl.data.make_export import make_export

data_app = typer.Typer(help="Data preparation for demos and tests.", no_args_is_help=True)


@data_app.command("make-export")
def make_export_command(
    images: Annotated[Path, typer.Option(help="Folder of PNG images (searched recursively).")],
    labels: Annotated[
        Path, typer.Option(help="ChestX-ray14-style CSV: Image Index, Finding Labels.")
    ],
    out: Annotated[Path, typer.Option(help="New folder for the DICOM export.")],
    limit: Annotated[int | None, typer.Option(help="Export at most this many images.")] = None,
) -> None:
    """Write a PACS-like DICOM export (mixed modalities, bit depths, codecs) with labels.csv."""
    with cli_errors(as_json=False):
        with Progress(transient=True) as bar:
            task = bar.add_task("writing DICOM", total=None)
            counts = make_export(
                images,
                labels,
                out,
                limit=limit,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        Console().print(
            f"wrote {counts['images']} images and {counts['broken']} broken files to {out}"
        )
        print(json.dumps(counts))
