"""``clinfl coordinator start``: the SuperLink, the sites' keys, the run, and watching it.

:func:`start_coordinator` writes the run's plan (with the roster's digest, which every site
checks against the roster it pinned), starts the SuperLink, registers every site's node key from
the roster (``<pki>/roster.json``), submits clinfl's bundle, and then follows the run through the
control database until it finishes or stops; the SuperLink is stopped on the way out. Started
again on the same run folder (after a crash, or after ``stop``), it keeps the run's ID and
continues after the last completed round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinfl.config import RunConfig
from clinfl.config.secagg_bound import check_roster_size
from clinfl.config.site_fields import portable_run_config
from clinfl.errors import DeploymentError
from clinfl.pki import load_pki_roster
from clinfl.roster import ROSTER_FILE, Roster
from coordinator.control import RunControl
from coordinator.deploy.deployment import PLAN_FILE, DeploymentPlan
from coordinator.deploy.remote_sites import Timeouts
from coordinator.deploy.superlink import DEFAULT_ADDRESS, SuperLink
from coordinator.resume import new_run_id

FINAL_STATES = frozenset({"finished", "stopped", "failed"})
Notify = Callable[[str], None]


@dataclass(frozen=True)
class CoordinatorOptions:
    """How the coordinator listens and how long it waits."""

    address: str = DEFAULT_ADDRESS
    timeouts: Timeouts = field(default_factory=Timeouts)
    join_wait: float = 300.0
    poll_seconds: float = 1.0


def _plan(
    run_dir: Path, config: RunConfig, roster: Roster, options: CoordinatorOptions
) -> DeploymentPlan:
    if (run_dir / PLAN_FILE).is_file():  # started again: same run, same ID
        previous = DeploymentPlan.load(run_dir)
        run_id = previous.run_id
    else:
        run_id = new_run_id(config.method.name)
    plan = DeploymentPlan(
        run_id=run_id,
        run_config=portable_run_config(config),
        sites=roster.names,
        timeouts=options.timeouts,
        join_wait=options.join_wait,
        roster_sha256=roster.digest.hex(),
    )
    plan.save(run_dir)
    return plan


def start_coordinator(
    config: RunConfig,
    *,
    pki_dir: Path,
    run_dir: Path,
    options: CoordinatorOptions,
    notify: Notify,
) -> dict[str, Any]:
    """Run the deployed federation to its end; return the control database's final status.

    Raises:
        PKIError: if the PKI folder has no manifest or no valid roster (RosterError).
        ConfigError: if the roster is too small for the configuration's secure aggregation.
        DeploymentError: if the SuperLink cannot start, a key is refused, the run cannot be
            submitted, or the SuperLink dies during the run.
    """
    roster = load_pki_roster(pki_dir)
    sites = roster.names
    if not sites:
        raise DeploymentError(
            f"{pki_dir} lists no sites",
            remedy="admit them with `clinfl pki admit site-request.json` (each site runs "
            "`clinfl site init` first)",
        )
    check_roster_size(config.secagg, len(sites), roster=pki_dir / ROSTER_FILE)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(run_dir, config, roster, options)
    notify(f"roster: {', '.join(sites)} (fingerprint {roster.fingerprint})")
    superlink = SuperLink(run_dir, pki_dir, options.address)
    notify(f"run {plan.run_id}: starting the SuperLink (log: {superlink.log_file})")
    superlink.start()
    try:
        for member in roster.members:
            fresh = superlink.register_node(member.site, member.node_public_key)
            notify(f"{member.site}: node key {'registered' if fresh else 'already registered'}")
        control = RunControl(run_dir)
        control.set_status("starting")
        control.close()
        flower_run = superlink.submit()
        notify(f"Flower run {flower_run} submitted; waiting for {len(sites)} sites")
        return _follow(run_dir, superlink, options.poll_seconds, notify)
    finally:
        superlink.stop()


def _follow(run_dir: Path, superlink: SuperLink, poll: float, notify: Notify) -> dict[str, Any]:
    control = RunControl(run_dir)
    seen_rounds = 0
    last_state = ""
    try:
        while True:
            status = control.status()
            state = str(status.get("state", "starting"))
            done = int(status["rounds_done"]) + int(status["rounds_abandoned"])
            if done > seen_rounds and status.get("last_round"):
                seen_rounds = done
                last = status["last_round"]
                notify(
                    f"round {last['round']}: {last['sites']} sites, test macro-AUC "
                    f"{100 * last['macro_auc']:.2f}"
                    + (f" (abandoned: {last['aborted']})" if last.get("aborted") else "")
                )
            if state != last_state:
                notify(f"state: {state}")
                last_state = state
            if state in FINAL_STATES:
                return status
            if not superlink.alive():
                raise DeploymentError(
                    "the SuperLink exited during the run", remedy=f"see {superlink.log_file}"
                )
            time.sleep(poll)
    finally:
        control.close()
