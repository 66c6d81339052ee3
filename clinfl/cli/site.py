"""``clinfl site``: what runs at a hospital.

``init`` makes the site's keys in its state folder, ``trust`` pins the roster its operator
approved, ``ingest`` turns a PACS export into training arrays with a quarantine report (``run``,
which joins a deployed federation, is in :mod:`clinfl.cli.site_run`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from clinfl.cli.pki import roster_table
from clinfl.cli.render import progress_bar
from clinfl.config.policy import load_policy
from clinfl.data.label_space import SPACE_NAMES, UNCERTAIN_POLICIES, resolve_label_space
from clinfl.errors import ConfigError, RosterError
from clinfl.pki import REQUEST_FILE
from clinfl.roster import normalise_fingerprint
from site_agent.identity import identity_dir, init_site, pin_roster, review_roster
from site_agent.ingest.labels import KEY_COLUMNS
from site_agent.ingest.pipeline import (
    QUARANTINE_FILE,
    IngestOptions,
    IngestResult,
    ingest_export,
)
from site_agent.ingest.reasons import DESCRIPTIONS
from site_agent.setup import ingest_options


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


def check_label_options(
    label_space: str, label_column: list[str] | None, uncertain_labels: str = "ones"
) -> tuple[str, ...]:
    """Check ``--label-space``, ``--label-column`` and ``--uncertain-labels``; return the columns.

    Raises:
        ConfigError: for an unknown label space or uncertain-label policy.
        ValidationError: for custom columns that are too few, blank or repeated, or columns
            given with a built-in space.
    """
    if label_space not in SPACE_NAMES:
        raise ConfigError(
            f"--label-space must be one of {', '.join(SPACE_NAMES)}, got {label_space!r}",
            remedy="--label-space cxr14",
        )
    if uncertain_labels not in UNCERTAIN_POLICIES:
        raise ConfigError(
            f"--uncertain-labels must be ones or zeros, got {uncertain_labels!r}",
            remedy="--uncertain-labels ones",
        )
    columns = tuple(label_column or ())
    resolve_label_space(label_space, columns)
    return columns


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
            help="cxr14 (the 14 ChestX-ray14 findings), chexpert (the CheXpert labeler's 14 "
            "observations), custom (your own finding columns: --label-column) or digits "
            "(`make-export --digits` demos)."
        ),
    ] = "cxr14",
    label_column: Annotated[
        list[str] | None,
        typer.Option(
            help="--label-space custom: one finding column of the label CSV (0/1 cells); "
            "repeat it for each class, in the model's output order."
        ),
    ] = None,
    uncertain_labels: Annotated[
        str,
        typer.Option(help="--label-space chexpert: uncertain (-1) cells count as ones or zeros."),
    ] = "ones",
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
        columns = check_label_options(label_space, label_column, uncertain_labels)
        if workers < 1 or not 16 <= image_size <= 1024:
            raise ConfigError(
                "--workers must be >= 1 and --image-size 16..1024", remedy="use the defaults"
            )
        data_policies = [load_policy(policy).data] if policy is not None else []
        options = ingest_options(
            IngestOptions(
                image_size=image_size,
                lenient=lenient,
                label_key=label_key,
                label_space=label_space,
                workers=workers,
                label_columns=columns,
                uncertain_labels=uncertain_labels,
            ),
            data_policies,
        )
        result = ingest_with_progress(data, state, options, labels, console)
        if as_json:
            print(json.dumps(result.summary, indent=2))
            return
        for table in _tables(result.summary):
            console.print(table)
        console.print(f"quarantine report: {state / QUARANTINE_FILE}")


def init(
    site: Annotated[
        str, typer.Option(help="The site's pseudonym in the federation, e.g. st-mary.")
    ],
    state: Annotated[Path, typer.Option(help="The site's state folder (its keys are kept here).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the request as JSON.")] = False,
) -> None:
    """Make the site's signing, node and TLS keys here, and write site-request.json."""
    with cli_errors(as_json=as_json):
        request = init_site(state, site)
        if as_json:
            print(json.dumps(request, indent=2))
            return
        console = Console()
        console.print(
            f"{site}: keys made in {identity_dir(state)} (mode 0600; they never leave this machine)"
        )
        console.print(f"request: {state / REQUEST_FILE}")
        console.print(f"request fingerprint: {request['fingerprint']}")
        console.print(
            "Send site-request.json to the federation's administrator, and read them this "
            "fingerprint by phone: `clinfl pki admit` checks it. They hand back your "
            f"certificate ({site}.crt), ca.crt and roster.json for `clinfl site trust`."
        )


def trust(
    roster: Annotated[Path, typer.Option(help="The roster.json the administrator sent.")],
    state: Annotated[Path, typer.Option(help="The site's state folder (`site init --state`).")],
    cert: Annotated[
        Path | None,
        typer.Option(help="This site's certificate from `pki admit` (needed the first time)."),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(help="The federation's ca.crt (needed the first time)."),
    ] = None,
    accept: Annotated[
        str | None,
        typer.Option(help="Pin only if the roster's fingerprint is this one (scripts)."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Pin without asking (you compared it already).")
    ] = False,
) -> None:
    """Show the roster's members and fingerprint; pin it once you accept it."""
    console = Console()
    with cli_errors(as_json=False):
        expected = normalise_fingerprint(accept) if accept is not None else None
        review = review_roster(state, roster, cert=cert, ca=ca)
        console.print(roster_table(review.roster, this_site=review.site))
        if review.previous is not None and not review.unchanged:
            console.print(f"changes since the pinned roster ({review.previous.fingerprint}):")
            for line in review.changes:
                console.print(f"  {line}")
        console.print(f"roster fingerprint: {review.roster.fingerprint}")
        if expected is not None and expected != review.roster.fingerprint:
            raise RosterError(
                f"the roster's fingerprint is {review.roster.fingerprint}, not the "
                f"{expected} you were given; nothing was pinned",
                remedy="do not trust this roster: ask the other hospitals and the "
                "administrator which roster is the right one",
            )
        if review.unchanged and cert is None and ca is None:
            console.print("this roster is already the pinned one; nothing changed")
            return
        if expected is None and not yes:
            console.print(
                "Compare this fingerprint with the other hospitals by phone or another channel "
                "the coordinator does not control, and check that you approve every member."
            )
            try:
                accepted = typer.confirm("Trust this roster?", default=False)
            except typer.Abort:  # no terminal to answer on
                accepted = False
            if not accepted:
                raise RosterError(
                    "the roster was not accepted; nothing was pinned",
                    remedy="run `clinfl site trust` again once the fingerprint is confirmed",
                )
        pin_roster(state, review)
        console.print(
            f"{review.site} now trusts roster {review.roster.fingerprint} "
            f"({len(review.roster.members)} sites); it refuses runs over any other roster"
        )
