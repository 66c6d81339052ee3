"""``clinfl site run``: ingest, start the SuperNode, and answer the coordinator until stopped.

Everything the site needs is in its own state folder (:mod:`site_agent.identity`): the keys
``clinfl site init`` made there, the CA certificate, and the roster its operator pinned with
``clinfl site trust``. The pinned roster gives every member's public signing key, which secure
aggregation checks the other sites' messages against; nothing the coordinator sends replaces it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from clinfl.config.policy import SitePolicy
from clinfl.errors import DeploymentError
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite
from site_agent.deploy.executor import SiteExecutor
from site_agent.deploy.supernode import SuperNode
from site_agent.identity import SiteFiles, pinned_roster
from site_agent.setup import SiteData

Notify = Callable[[str], None]
RESTART_DELAY = 5.0
STABLE_SECONDS = 10.0


def run_site(
    keys: SiteFiles,
    *,
    policy: SitePolicy,
    data: SiteData,
    state_dir: Path,
    coordinator: str,
    runtime_port: int,
    stop: threading.Event,
    notify: Notify,
    threads: int | None = None,
    connect_timeout: float = 900.0,
    crash_at: str | None = None,
) -> None:
    """Serve the federation until ``stop`` is set; the SuperNode is stopped on the way out.

    ``connect_timeout`` bounds how long the SuperNode keeps retrying an unreachable coordinator.
    ``crash_at`` is fault injection for tests: on receiving that call, the site kills its own
    process group (agent and SuperNode) at once, as a power cut would.

    Raises:
        DeploymentError: if the SuperNode cannot connect (or stay connected) to the
            coordinator for ``connect_timeout`` seconds.
    """
    site = DeployedSite(
        SiteIdentity(keys.site, keys.signing_key),
        policy=policy,
        roster=lambda: pinned_roster(state_dir),
        data=data,
        state_dir=state_dir,
        threads=threads,
    )
    supernode = SuperNode(
        state_dir,
        coordinator=coordinator,
        ca_cert=keys.ca_cert,
        node_key=keys.node_key,
        runtime_port=runtime_port,
        connect_timeout=connect_timeout,
    )
    notify(f"{keys.site}: starting the SuperNode for {coordinator} (log: {supernode.log_file})")
    _first_start(supernode, notify)

    def on_task(call: str) -> None:
        notify(f"{keys.site}: {call or 'unknown call'}")
        if crash_at is not None and call == crash_at:
            notify(f"{keys.site}: crashing on {call} (fault injection)")
            os.killpg(os.getpgrp(), signal.SIGKILL)

    executor = SiteExecutor(
        supernode.runtime_address,
        site,
        superexec_secret=supernode.secret,
        on_task=on_task,
    )
    serving = threading.Thread(target=executor.run, args=(stop,), daemon=True)
    serving.start()
    try:
        notify(f"{keys.site}: serving")
        _supervise(supernode, stop, connect_timeout=connect_timeout, notify=notify)
    finally:
        stop.set()
        supernode.stop()
        serving.join(timeout=30)
        site.write_audit_report()


def _first_start(supernode: SuperNode, notify: Notify) -> None:
    """Start the SuperNode; an exit while starting is left to :func:`_supervise` to retry.

    A site may start before the coordinator is up or has registered this site's node key
    (the coordinator registers the roster's keys one by one after its SuperLink starts); the
    SuperLink then refuses the SuperNode, which exits. That is the same condition as an exit
    while serving, so it gets the same restarts, bounded by the same ``connect_timeout``.
    """
    try:
        supernode.start()
    except DeploymentError as error:
        notify(f"{error.message}: {supernode.exit_reason()}; retrying")


def _supervise(
    supernode: SuperNode, stop: threading.Event, *, connect_timeout: float, notify: Notify
) -> None:
    """Restart the SuperNode whenever it exits, until it has failed for ``connect_timeout`` s.

    It exits when the coordinator is down, or does not know this site's node key (yet).

    Raises:
        DeploymentError: when the SuperNode cannot stay connected for that long.
    """
    failing_since: float | None = None
    started_at = time.monotonic()
    while not stop.wait(1.0):
        now = time.monotonic()
        if supernode.alive():
            if failing_since is not None and now - started_at > STABLE_SECONDS:
                failing_since = None  # connected and stayed up
            continue
        reason = supernode.exit_reason()
        failing_since = failing_since if failing_since is not None else now
        if now - failing_since > connect_timeout:
            raise DeploymentError(
                f"the SuperNode could not connect to the coordinator for {connect_timeout:g} s: "
                f"{reason}",
                remedy="check the coordinator's address, that it runs, and that this site is in "
                "the coordinator's roster.json (`clinfl pki admit site-request.json`)",
            )
        notify(f"the SuperNode exited ({reason}); starting it again in {RESTART_DELAY:g} s")
        if stop.wait(RESTART_DELAY):
            return
        started_at = time.monotonic()
        with contextlib.suppress(DeploymentError):  # an exit while starting is seen next turn
            supernode.start()
