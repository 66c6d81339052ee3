"""``clinfl coordinator``: watch and steer a running federation from another shell.

(``clinfl coordinator start``, which runs a deployed federation, is in :mod:`clinfl.cli.deploy`.)

The commands read and write ``<run dir>/control.sqlite``. Requests take effect at the next round
boundary; ``stop --now`` also abandons the round in progress without applying anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from coordinator.control import Request, RunControl

coordinator_app = typer.Typer(
    help="Start a deployed federation; watch and steer one (status, pause, resume, stop).",
    no_args_is_help=True,
)
RunDir = Annotated[
    Path,
    typer.Option(
        help="The federation's run folder (`coordinator start --run-dir`, `simulate --out`)."
    ),
]


def _ago(timestamp: Any) -> str:
    return "-" if timestamp is None else f"{time.time() - float(timestamp):.0f} s ago"


def _status_table(status: dict[str, Any]) -> Table:
    table = Table(title="federation", show_header=False)
    last = status.get("last_round") or {}
    rows = [
        ("state", str(status.get("state", "not started"))),
        ("pending request", str(status.get("request", "run"))),
        ("round", f"{status.get('current_round', '-')} of {status.get('total_rounds', '-')}"),
        ("rounds done", str(status.get("rounds_done", 0))),
        ("rounds abandoned", str(status.get("rounds_abandoned", 0))),
        ("sites", ", ".join(status.get("sites") or []) or "-"),
        ("sites seen last round", ", ".join(status.get("sites_seen") or []) or "-"),
        ("updated", _ago(status.get("updated_at"))),
    ]
    if last:
        rows.append(
            (
                f"round {last['round']} metrics",
                f"test macro-AUC {100 * last['macro_auc']:.2f}, val macro-AUC "
                f"{100 * last['val_macro_auc']:.2f}, {last['sites']} sites"
                + (f" (abandoned: {last['aborted']})" if last.get("aborted") else ""),
            )
        )
    if status.get("sites_joined") is not None:
        rows.append(("sites joined", ", ".join(status["sites_joined"]) or "-"))
    if status.get("evaluated_by"):
        rows.append(("evaluated by", str(status["evaluated_by"])))
    for site, reason in sorted((status.get("refusals") or {}).items()):
        rows.append((f"{site} declined", str(reason)))
    for site, epsilon in sorted((status.get("budgets") or {}).items()):
        rows.append((f"{site} epsilon spent", f"{epsilon:.3f}"))
    if status.get("stopped"):
        rows.append(("stopped", str(status["stopped"])))
    for key, value in rows:
        table.add_row(key, value)
    return table


@coordinator_app.command("status")
def status(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show the round, sites seen, rounds done, last metrics and reported budgets."""
    with cli_errors(as_json=as_json):
        control = RunControl(run_dir, create=False)
        try:
            current = control.status()
        finally:
            control.close()
        if as_json:
            print(json.dumps(current, indent=2))
        else:
            Console().print(_status_table(current))


def _request(run_dir: Path, action: Request, message: str) -> None:
    with cli_errors(as_json=False):
        control = RunControl(run_dir, create=False)
        try:
            state = control.status().get("state")
            if state in ("finished", "stopped"):
                Console(stderr=True).print(f"the federation has already {state}; nothing to do")
                return
            control.request(action)
        finally:
            control.close()
        Console().print(message)


@coordinator_app.command("pause")
def pause(run_dir: RunDir) -> None:
    """Pause at the next round boundary (sites keep their state; resume continues)."""
    _request(run_dir, "pause", "pause requested: the federation pauses at the next round boundary")


@coordinator_app.command("resume")
def resume(run_dir: RunDir) -> None:
    """Resume a paused federation."""
    _request(run_dir, "run", "resume requested")


@coordinator_app.command("stop")
def stop(
    run_dir: RunDir,
    now: Annotated[
        bool, typer.Option("--now", help="Abandon the round in progress; apply nothing.")
    ] = False,
) -> None:
    """Stop at the next round boundary (``--now``: abandon the current round)."""
    if now:
        _request(run_dir, "stop-now", "stop --now requested: the current round is abandoned")
    else:
        _request(run_dir, "stop", "stop requested: the federation stops at the next round boundary")
