"""``clinfl site run``: ingest, start the SuperNode, and answer the coordinator until stopped.

The site's PKI folder is the federation's ``manifest.json`` and ``ca.crt`` with the site's own
``sites/NAME/`` folder beside them (copied from the coordinator's ``clinfl pki`` folder, without
``ca.key`` or any other site's keys). The manifest gives every site's public signing key, which
secure aggregation checks the other sites' messages against.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clinfl.errors import DeploymentError, PKIError
from clinfl.pki import CA_CERT, SITES_DIR, load_manifest
from clinfl.policy import SitePolicy
from site_agent.agent import SiteIdentity
from site_agent.deployed_site import DeployedSite, SiteData
from site_agent.flower_executor import SiteExecutor
from site_agent.supernode import SuperNode

Notify = Callable[[str], None]
RESTART_DELAY = 5.0
STABLE_SECONDS = 10.0


@dataclass(frozen=True)
class SiteKeys:
    """A site's identity and its view of the federation, read from its PKI folder."""

    site_id: str
    signing_key: Ed25519PrivateKey
    directory: dict[str, Ed25519PublicKey]
    ca_cert: Path
    node_key: Path


def read_site_keys(pki_dir: Path, site: str | None) -> SiteKeys:
    """Read the site's keys and the federation's signing-key directory.

    Raises:
        PKIError: if the folder lacks the manifest, the CA certificate or the site's keys, or
            the site must be named (several site folders) and was not.
    """
    manifest = load_manifest(pki_dir)
    if site is None:
        present = sorted(p.name for p in (pki_dir / SITES_DIR).glob("*") if p.is_dir())
        if len(present) != 1:
            raise PKIError(
                f"{pki_dir / SITES_DIR} holds {len(present)} site folders",
                remedy="name the site with --site NAME",
            )
        site = present[0]
    if site not in manifest["sites"]:
        raise PKIError(
            f"site {site!r} is not in {pki_dir}/manifest.json",
            remedy="copy the coordinator's current manifest.json (after `clinfl pki add-site`)",
        )
    folder = pki_dir / SITES_DIR / site
    try:
        key = serialization.load_pem_private_key((folder / "signing.key").read_bytes(), None)
    except (OSError, ValueError):
        raise PKIError(
            f"cannot read {folder / 'signing.key'}",
            remedy="copy the site's folder from `clinfl pki add-site` intact",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PKIError(f"{folder / 'signing.key'} is not an Ed25519 key", remedy="re-issue it")
    directory = {
        name: Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["signing_public_key"]))
        for name, entry in manifest["sites"].items()
    }
    ca = pki_dir / CA_CERT if (pki_dir / CA_CERT).is_file() else folder / CA_CERT
    return SiteKeys(site, key, directory, ca, folder / "node.key")


def run_site(
    keys: SiteKeys,
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
        DeploymentError: if the SuperNode cannot start or exits while serving.
    """
    site = DeployedSite(
        SiteIdentity(keys.site_id, keys.signing_key),
        policy=policy,
        directory=keys.directory,
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
    notify(f"{keys.site_id}: starting the SuperNode for {coordinator} (log: {supernode.log_file})")
    supernode.start()

    def on_task(call: str) -> None:
        notify(f"{keys.site_id}: {call or 'unknown call'}")
        if crash_at is not None and call == crash_at:
            notify(f"{keys.site_id}: crashing on {call} (fault injection)")
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
        notify(f"{keys.site_id}: serving")
        _supervise(supernode, stop, connect_timeout=connect_timeout, notify=notify)
    finally:
        stop.set()
        supernode.stop()
        serving.join(timeout=30)
        site.write_audit_report()


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
                remedy="check the coordinator's address, that it runs, and that this site's node "
                "key is in the coordinator's PKI manifest (`clinfl pki add-site`)",
            )
        notify(f"the SuperNode exited ({reason}); starting it again in {RESTART_DELAY:g} s")
        if stop.wait(RESTART_DELAY):
            return
        started_at = time.monotonic()
        with contextlib.suppress(DeploymentError):  # an exit while starting is seen next turn
            supernode.start()
