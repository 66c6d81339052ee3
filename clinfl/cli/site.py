"""``clinfl site ingest``: turn a PACS export into training arrays, with a quarantine report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from clinfl.cli.render import progress_bar
from clinfl.data.labels import LABEL_SPACES
from clinfl.errors import ConfigError
from clinfl.policy import load_policy
from site_agent.ingest.labels import KEY_COLUMNS
from site_agent.ingest.pipeline import QUARANTINE_FILE, IngestOptions, IngestResult, ingest_export
from site_agent.ingest.reasons import DESCRIPTIONS

site_app = typer.Typer(help="What runs at a hospital.", no_args_is_help=True)


def _tables(summary: dict[str, object]) -> list[Table]:
    totals = Table(title="ingest")
    totals.add_column("files")
    totals.add_column("count", justify="right")
    for key in (
        "files_seen",
        "accepted",
        "quarantined_total",
        "decoded_this_run",
        "reused_from_index",
    ):
        totals.add_row(key.replace("_", " "), str(summary[key]))
    quarantine = Table(title="quarantined by reason")
    quarantine.add_column("reason")
    quarantine.add_column("files", justify="right")
    quarantine.add_column("meaning")
    for reason, count in dict(summary["quarantined"]).items():  # type: ignore[call-overload]
        quarantine.add_row(reason, str(count), DESCRIPTIONS.get(reason, ""))
    labels = Table(title="label counts of accepted images")
    labels.add_column("finding")
    labels.add_column("images", justify="right")
    for name, count in dict(summary["label_counts"]).items():  # type: ignore[call-overload]
        labels.add_row(name, str(count))
    return [totals, quarantine, labels]


def ingest_with_progress(
    data: Path, state: Path, options: IngestOptions, labels: Path | None, console: Console
) -> IngestResult:
    """Ingest ``data`` into ``state`` with a progress bar (indexing, decoding, packing).

    Raises:
        DataError, LabelError: see :func:`~site_agent.ingest.pipeline.ingest_export`.
    """
    bar = progress_bar(console)
    task = bar.add_task("indexing", total=None)

    def progress(stage: str, done: int, total: int) -> None:
        bar.update(task, description=stage, completed=done, total=total)

    with bar:
        return ingest_export(
            data, state_dir=state, options=options, labels=labels, progress=progress
        )


@site_app.command("ingest")
def ingest(
    data: Annotated[Path, typer.Option(help="The PACS export folder (searched recursively).")],
    state: Annotated[Path, typer.Option(help="The site's state folder (index, cache, reports).")],
    labels: Annotated[
        Path | None, typer.Option(help="Label CSV (default: labels.csv at the top of --data).")
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Site policy: its data.modalities/body_parts/views filter.")
    ] = None,
    label_key: Annotated[
        str, typer.Option(help="Match labels by sop (SOPInstanceUID), study or accession.")
    ] = "sop",
    label_space: Annotated[
        str,
        typer.Option(
            help="cxr14 (the 14 ChestX-ray14 findings) or digits (`make-export --digits` demos)."
        ),
    ] = "cxr14",
    image_size: Annotated[int, typer.Option(help="Training image size in px.")] = 64,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
    lenient: Annotated[
        bool, typer.Option(help="Lenient DICOM reading (recorded in the summary). Default strict.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Ingest a DICOM export: recognise, filter, decode, label; quarantine the rest."""
    console = Console(stderr=as_json)
    with cli_errors(as_json=as_json):
        if label_key not in KEY_COLUMNS:
            raise ConfigError(
                f"--label-key must be sop, study or accession, got {label_key!r}",
                remedy="--label-key sop",
            )
        if label_space not in LABEL_SPACES:
            raise ConfigError(
                f"--label-space must be cxr14 or digits, got {label_space!r}",
                remedy="--label-space cxr14",
            )
        if workers < 1 or not 16 <= image_size <= 1024:
            raise ConfigError(
                "--workers must be >= 1 and --image-size 16..1024", remedy="use the defaults"
            )
        data_policy = load_policy(policy).data if policy is not None else None
        options = IngestOptions(
            image_size=image_size,
            lenient=lenient,
            label_key=label_key,
            label_space=label_space,
            workers=workers,
            **(
                {}
                if data_policy is None
                else {
                    "modalities": data_policy.modalities,
                    "body_parts": data_policy.body_parts,
                    "views": data_policy.views,
                }
            ),
        )
        result = ingest_with_progress(data, state, options, labels, console)
        if as_json:
            print(json.dumps(result.summary, indent=2))
            return
        for table in _tables(result.summary):
            console.print(table)
        console.print(f"quarantine report: {state / QUARANTINE_FILE}")
