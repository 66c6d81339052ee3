"""The site's SuperNode: TLS to the coordinator, node-key authentication, and no code execution.

:class:`SuperNode` starts ``flower-supernode`` with:

- ``--root-certificates`` the federation's CA (the coordinator must present a certificate the
  federation's CA signed for the address the site dials);
- ``--auth-supernode-private-key`` the site's node key (made at the site by ``clinfl site init``),
  which the coordinator registered from its roster; an unregistered key is refused by the
  SuperLink;
- ``--isolation process``: the SuperNode starts no ClientApp process of its own, so no bundle is
  ever installed or imported; the site's executor (:mod:`site_agent.deploy.executor`) answers;
- a fresh random secret (``--superexec-auth-secret-file``) that only this site's executor knows,
  so no other local process can take its tasks; the Runtime API listens on 127.0.0.1 only.

Runtime dependency installation stays off (Flower's default; clinfl never passes
``--allow-runtime-dependency-installation``).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path

from clinfl.errors import DeploymentError
from clinfl.transport.flower.processes import (
    flower_command,
    flower_environment,
    start_logged,
    stop_process,
    wait_for_port,
)

SECRET_FILE = "superexec.secret"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class SuperNode:
    """One ``flower-supernode`` process for a site."""

    def __init__(
        self,
        state_dir: Path,
        *,
        coordinator: str,
        ca_cert: Path,
        node_key: Path,
        runtime_port: int,
        connect_timeout: float = 900.0,
    ) -> None:
        for path in (ca_cert, node_key):
            if not path.is_file():
                raise DeploymentError(
                    f"{path} is missing",
                    remedy="run `clinfl site init` and `clinfl site trust --ca ca.crt --cert "
                    "SITE.crt` with this --state",
                )
        self._state_dir = state_dir
        self._coordinator = coordinator
        self._ca = ca_cert
        self._node_key = node_key
        self._port = runtime_port
        self._connect_timeout = connect_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.secret = secrets.token_bytes(32)

    @property
    def runtime_address(self) -> str:
        """The SuperNode's Runtime API (loopback)."""
        return f"127.0.0.1:{self._port}"

    @property
    def log_file(self) -> Path:
        """The SuperNode's log."""
        return self._state_dir / "flower" / "supernode.log"

    def _write_secret(self) -> Path:
        path = self._state_dir / "flower" / SECRET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(self.secret)
        return path

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the SuperNode and wait until its Runtime API listens.

        Raises:
            DeploymentError: if it exits or does not listen within ``timeout`` seconds.
        """
        secret_file = self._write_secret()
        command = [
            flower_command("flower-supernode"),
            "--superlink", self._coordinator,
            "--root-certificates", str(self._ca.resolve()),
            "--auth-supernode-private-key", str(self._node_key.resolve()),
            "--isolation", "process",
            "--host", "127.0.0.1",
            "--port", str(self._port),
            "--superexec-auth-secret-file", str(secret_file),
            "--max-wait-time", f"{self._connect_timeout:g}",
        ]  # fmt: skip
        env = flower_environment(self._state_dir / "flower")
        self._process = start_logged(command, log_file=self.log_file, env=env)
        wait_for_port(
            self.runtime_address, timeout=timeout, process=self._process, name="the SuperNode"
        )

    def exit_reason(self) -> str:
        """Return why the SuperNode exited, from the end of its log (Flower's exit message)."""
        try:
            tail = self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return "no log"
        plain = ANSI_ESCAPE.sub("", tail)
        lines = [line.strip() for line in plain.splitlines() if line.strip()]
        for k in range(len(lines) - 1, -1, -1):
            if "Exit Code" in lines[k]:
                return " ".join(lines[k : k + 3])[:300]
        return lines[-1][:300] if lines else "no output"

    def alive(self) -> bool:
        """Whether the SuperNode process is running."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the SuperNode (SIGTERM, then SIGKILL)."""
        if self._process is not None:
            stop_process(self._process)
