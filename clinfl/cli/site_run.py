"""``clinfl site run``: a hospital's side of a deployed federation, as a real process on Flower.

The command stays in the foreground: it ingests the export, starts the site's SuperNode, and
serves until interrupted (Ctrl-C or SIGTERM); the SuperNode stops with it. The site's other
commands (``init``, ``trust``, ``ingest``) are in :mod:`clinfl.cli.site`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from clinfl.cli.errors import cli_errors
from clinfl.cli.site import check_label_options, ingest_with_progress
from clinfl.config.policy import load_policy
from clinfl.errors import ConfigError
from clinfl.transport.flower.processes import split_address
from site_agent.deploy.runner import run_site
from site_agent.identity import read_site_files
from site_agent.ingest.pipeline import SITE_INGEST_DIR, IngestOptions
from site_agent.setup import SiteData, ingest_options


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``stop`` while the block runs, then restore the handlers.

    Restoring matters when the command runs inside another program (a test's CLI runner):
    its Ctrl-C must go back to raising KeyboardInterrupt.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    for number in previous:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def run(
    data: Annotated[Path, typer.Option(help="The PACS export folder (searched recursively).")],
    policy: Annotated[Path, typer.Option(help="The site's privacy policy (TOML).")],
    coordinator: Annotated[str, typer.Option(help="The coordinator's address, HOST:PORT.")],
    state: Annotated[
        Path,
        typer.Option(
            help="The site's state folder: its keys (`site init`), pinned roster (`site "
            "trust`), ledger, cache and reports."
        ),
    ],
    labels: Annotated[
        Path | None, typer.Option(help="Label CSV (default: labels.csv at the top of --data).")
    ] = None,
    label_space: Annotated[
        str, typer.Option(help="cxr14, chexpert, digits, or custom (with --label-column).")
    ] = "cxr14",
    label_column: Annotated[
        list[str] | None,
        typer.Option(
            help="--label-space custom: one finding column of the label CSV; repeat it for "
            "each class, in the run's order."
        ),
    ] = None,
    label_key: Annotated[
        str, typer.Option(help="Match labels by sop, study or accession.")
    ] = "sop",
    image_size: Annotated[int, typer.Option(help="Image size of the first ingest.")] = 64,
    runtime_port: Annotated[
        int, typer.Option(help="Local port of the SuperNode's Runtime API (loopback).")
    ] = 9094,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for training (default: torch's choice).")
    ] = None,
    connect_timeout: Annotated[
        float, typer.Option(help="Seconds to keep retrying an unreachable coordinator.")
    ] = 900.0,
    crash_at: Annotated[
        str | None, typer.Option(hidden=True, help="Fault injection: die on this call.")
    ] = None,
) -> None:
    """Ingest the export, start the SuperNode, and answer the coordinator until stopped."""
    console = Console(stderr=True)
    with cli_errors(as_json=False):
        split_address(coordinator)
        if connect_timeout <= 0:
            raise ConfigError("--connect-timeout must be positive", remedy="--connect-timeout 900")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}", remedy="--threads 1")
        columns = check_label_options(label_space, label_column)
        site_policy = load_policy(policy)
        keys = read_site_files(state)
        options = ingest_options(
            IngestOptions(
                image_size=image_size,
                label_key=label_key,
                label_space=label_space,
                label_columns=columns,
            ),
            [site_policy.data],
        )
        result = ingest_with_progress(data, state / SITE_INGEST_DIR, options, labels, console)
        summary = result.summary
        console.print(
            f"{keys.site}: ingested {summary['accepted']} of {summary['files_seen']} files "
            f"({summary['quarantined_total']} quarantined; report in {state / 'ingest'})"
        )
        stop = threading.Event()
        with _stop_on_signals(stop):
            run_site(
                keys,
                policy=site_policy,
                data=SiteData(data, labels, options),
                state_dir=state,
                coordinator=coordinator,
                runtime_port=runtime_port,
                stop=stop,
                notify=lambda line: console.print(f"[{time.strftime('%H:%M:%S')}] {line}"),
                threads=threads,
                connect_timeout=connect_timeout,
                crash_at=crash_at,
            )
        console.print(f"{keys.site}: stopped; audit report in {state / 'audit_report.html'}")
