"""Real coordinator and site processes on 127.0.0.1 for the deployment tests.

The PKI is made as real hospitals make it: each site makes its keys in its own state folder
(`site init`), the coordinator admits each request (`pki admit`), and every site pins the roster
(`site trust`). No site's private key is ever in the coordinator's PKI folder.

Every process is started in its own session (process group) with its output in a log file, so a
test can kill a whole site or coordinator (the clinfl process and the Flower processes under it)
as a crash would, and the teardown kills whatever is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinfl.data.make_export import make_digits_export
from tests.support.roster_pki import trusted_federation

CLI = "from clinfl.cli.app import main; main()"
ROOT = Path(__file__).resolve().parents[2]
FEDERATION = """
[data]
label_space = "digits"
image_size = 16

[federation]
rounds = {rounds}
# the default policy keeps sample counts at the site: it trains a fixed number of steps
local_steps = 4
batch_size = 16

[secagg]
min_sites = 2
max_colluders = {max_colluders}
"""


def free_port() -> int:
    """Return a TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def policy_text(*, min_sites: int = 2, max_colluders: int = 1) -> str:
    """The default clinical policy (DP-SGD and secure aggregation required), sized for tests.

    With three sites, ``min_sites = 2`` and one assumed colluder a round needs all three; a
    test that drops a site assumes no colluder (``max_colluders = 0``) so two may sum.
    """
    text = (ROOT / "policies" / "default.toml").read_text()
    return (
        text.replace("min_sites = 3", f"min_sites = {min_sites}")
        .replace("min_samples = 50", "min_samples = 10")
        .replace("max_colluders = 1", f"max_colluders = {max_colluders}")
    )


@dataclass
class Federation:
    """A PKI, one small DICOM export per site, and the processes started on them."""

    root: Path
    sites: tuple[str, ...]
    address: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def state(self, site: str) -> Path:
        return self.root / f"state-{site}"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def _start(self, name: str, arguments: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log(name), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", CLI, *arguments],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.root,
            )
        self.processes[name] = process
        return process

    def start_coordinator(
        self, *, rounds: int = 2, name: str = "coordinator", max_colluders: int = 1
    ) -> subprocess.Popen[bytes]:
        config = self.root / "federation.toml"
        config.write_text(FEDERATION.format(rounds=rounds, max_colluders=max_colluders))
        return self._start(
            name,
            [
                "coordinator", "start",
                "--config", str(config),
                "--pki", str(self.pki),
                "--run-dir", str(self.run_dir),
                "--address", self.address,
                "--join-wait", "120",
                "--train-timeout", "180",
                "--stage-timeout", "25",
            ],
        )  # fmt: skip

    def start_site(
        self,
        site: str,
        *,
        policy: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> subprocess.Popen[bytes]:
        policy_file = self.root / f"{site}-policy.toml"
        policy_file.write_text(policy or policy_text())
        return self._start(
            site,
            [
                "site", "run",
                "--data", str(self.root / f"export-{site}"),
                "--policy", str(policy_file),
                "--coordinator", self.address,
                "--state", str(self.state(site)),
                "--label-space", "digits",
                "--image-size", "16",
                "--runtime-port", str(free_port()),
                "--threads", "1",
                *extra,
            ],
        )  # fmt: skip

    def kill(self, name: str) -> None:
        """Kill a process's whole group at once (SIGKILL), as a crash would."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.kill(name)
            else:  # its Flower children may outlive it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def status(self) -> dict[str, Any]:
        """The control database's status, as `clinfl coordinator status --json` prints it."""
        done = subprocess.run(
            [sys.executable, "-c", CLI, "coordinator", "status", "--json",
             "--run-dir", str(self.run_dir)],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            return {}
        return result

    def rounds_recorded(self) -> list[int]:
        path = self.run_dir / "control.sqlite"
        if not path.is_file():
            return []
        try:
            with sqlite3.connect(path, timeout=10) as db:
                return [r for (r,) in db.execute("SELECT round FROM rounds ORDER BY round")]
        except sqlite3.OperationalError:
            return []

    def control(self, *arguments: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-c", CLI, "coordinator", *arguments, "--run-dir", str(self.run_dir)],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip

    def logs(self) -> str:
        """Every process's log (for assertion messages)."""
        return "\n".join(
            f"--- {name}\n{self.log(name).read_text(errors='replace')[-3000:]}"
            for name in self.processes
        )


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, logs: Callable[[], str]
) -> None:
    """Poll ``condition`` until true, or fail the test with every log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs()}")


def build_federation(root: Path, sites: tuple[str, ...], *, images: int = 90) -> Federation:
    """Write the PKI (CA and coordinator for 127.0.0.1, site-made keys, the roster every site
    trusts) and the exports."""
    trusted_federation(root, sites)
    for k, site in enumerate(sites):
        make_digits_export(root / f"export-{site}", seed=k, limit=images, image_size=32)
    return Federation(root, sites, f"127.0.0.1:{free_port()}")


def federation_processes(root: Path, sites: tuple[str, ...]) -> Iterator[Federation]:
    """A fixture body: build the federation, stop every process at the end."""
    federation = build_federation(root, sites)
    try:
        yield federation
    finally:
        federation.stop_all()
