"""``clinfl coordinator``: run a deployed federation, and watch and steer it from another shell.

``start`` stays in the foreground and returns when the run finishes or stops; the deployment's
rules for its run configuration are :func:`coordinator.deploy.run_config.deployment_run_config`.

The other commands read and write ``<run dir>/control.sqlite``. Requests take effect at the next
round boundary; ``stop --now`` also abandons the round in progress without applying anything.
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
from clinfl.errors import ConfigError, FederationError
from clinfl.pki import load_pki_roster
from clinfl.roster import ROSTER_FILE
from clinfl.transport.flower.processes import split_address
from coordinator.control import Request, RunControl
from coordinator.deploy.launcher import CoordinatorOptions, start_coordinator
from coordinator.deploy.remote_sites import Timeouts
from coordinator.deploy.run_config import deployment_run_config
from coordinator.deploy.superlink import DEFAULT_ADDRESS

RunDir = Annotated[
    Path,
    typer.Option(
        help="The federation's run folder (`coordinator start --run-dir`, `simulate --out`)."
    ),
]


def start(
    config: Annotated[Path, typer.Option(help="Federation config (TOML, as `simulate --config`).")],
    pki: Annotated[Path, typer.Option(help="The folder `clinfl pki init` wrote.")],
    run_dir: Annotated[Path, typer.Option(help="Run folder: checkpoints, control, results.")],
    address: Annotated[
        str, typer.Option(help="Where the SuperLink listens for sites (HTTPS), HOST:PORT.")
    ] = DEFAULT_ADDRESS,
    join_wait: Annotated[
        float, typer.Option(help="Seconds to wait for every site before round 1.")
    ] = 300.0,
    train_timeout: Annotated[
        float, typer.Option(help="Seconds a site may train a round.")
    ] = 1800.0,
    stage_timeout: Annotated[
        float, typer.Option(help="Seconds a site may take per secure-aggregation stage.")
    ] = 120.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final status as JSON.")
    ] = False,
) -> None:
    """Start the SuperLink, register the sites' keys, run the federation, stop when it ends."""
    console = Console(stderr=True)
    with cli_errors(as_json=as_json):
        split_address(address)
        if min(join_wait, train_timeout, stage_timeout) <= 0:
            raise ConfigError("timeouts must be positive", remedy="use the defaults")
        resolved = deployment_run_config(
            config, roster_size=len(load_pki_roster(pki).members), roster=pki / ROSTER_FILE
        )
        options = CoordinatorOptions(
            address=address,
            timeouts=Timeouts(train=train_timeout, stage=stage_timeout),
            join_wait=join_wait,
        )
        status = start_coordinator(
            resolved,
            pki_dir=pki,
            run_dir=run_dir,
            options=options,
            notify=lambda line: console.print(f"[{time.strftime('%H:%M:%S')}] {line}"),
        )
        if as_json:
            print(json.dumps(status, indent=2, default=str))
        state = status.get("state")
        if state == "failed":
            raise FederationError(
                f"the federation failed: {status.get('stopped')}",
                remedy=f"see {run_dir / 'flower' / 'superlink.log'}",
            )
        console.print(
            f"{state}: {status.get('stopped') or 'all rounds done'}; results in {run_dir}"
        )


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


def pause(run_dir: RunDir) -> None:
    """Pause at the next round boundary (sites keep their state; resume continues)."""
    _request(run_dir, "pause", "pause requested: the federation pauses at the next round boundary")


def resume(run_dir: RunDir) -> None:
    """Resume a paused federation."""
    _request(run_dir, "run", "resume requested")


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
