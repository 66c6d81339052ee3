"""``clinfl data make-export``: a realistic DICOM export from PNGs and labels, or the digits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from clinfl.cli.errors import cli_errors
from clinfl.data.make_export import make_digits_export, make_export
from clinfl.errors import ConfigError
from clinfl.guards import present


def make_export_command(
    out: Annotated[Path, typer.Option(help="New folder for the DICOM export.")],
    images: Annotated[
        Path | None, typer.Option(help="Folder of PNG images (searched recursively).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="ChestX-ray14-style CSV: Image Index, Finding Labels.")
    ] = None,
    digits: Annotated[
        bool,
        typer.Option(
            "--digits",
            help="Export the bundled digit composites instead of PNGs (labels in the digits "
            "label space: ingest and simulate with --label-space digits).",
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Export at most this many images.")] = None,
    seed: Annotated[
        int, typer.Option(help="With --digits: which composites, in which order (one per site).")
    ] = 0,
) -> None:
    """Write a PACS-like DICOM export (mixed modalities, bit depths, codecs) with labels.csv."""
    with cli_errors(as_json=False):
        if digits == (images is not None or labels is not None) or (
            not digits and (images is None or labels is None)
        ):
            raise ConfigError(
                "give either --images DIR --labels CSV, or --digits",
                remedy="clinfl data make-export --digits --out export/",
            )
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}", remedy="--limit 100")
        with Progress(transient=True) as bar:
            task = bar.add_task("writing DICOM", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            if digits:
                counts = make_digits_export(out, seed=seed, limit=limit, progress=progress)
            else:  # both given: checked above
                counts = make_export(
                    present(images, "--images"),
                    present(labels, "--labels"),
                    out,
                    limit=limit,
                    progress=progress,
                )
        Console(stderr=True).print(
            f"wrote {counts['images']} images and {counts['broken']} broken files to {out}"
        )
        print(json.dumps(counts))
