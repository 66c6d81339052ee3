"""The coordinator's SuperLink: started with TLS, node authentication and a database.

:class:`SuperLink` starts ``flower-superlink`` so that:

- its one HTTPS port (Flower 1.42 serves the sites' Fleet API, the Control API and the ServerApp
  API on it) uses the coordinator's certificate;
- only SuperNodes whose node key is registered may connect (``--enable-supernode-auth``); the
  keys registered are exactly those in the federation's roster (``<pki>/roster.json``);
- the run state lives in ``<run dir>/flower/superlink.db``, so a restarted SuperLink knows it;
- no app dependencies are ever installed at run time.

It then submits clinfl's bundle as a Flower run with ``flwr run``. Flower's command-line tools
reach the Control API through ``<run dir>/flower/config.toml`` (on 127.0.0.1 when the SuperLink
listens on every interface).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from clinfl.errors import DeploymentError
from clinfl.pki import CA_CERT, COORDINATOR_CERT, COORDINATOR_KEY
from clinfl.transport.flower.bundle import RUN_DIR_KEY, app_pyproject
from clinfl.transport.flower.processes import (
    flower_command,
    flower_environment,
    split_address,
    start_logged,
    stop_process,
    wait_for_port,
)

FLOWER_DIR = "flower"
CONNECTION = "clinfl"
COMMAND_TIMEOUT = 120.0


DEFAULT_ADDRESS = "0.0.0.0:9092"


def local_address(address: str) -> str:
    """Return how a process on the coordinator's machine reaches the SuperLink at ``address``."""
    host, port = split_address(address)
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else address


class SuperLink:
    """One ``flower-superlink`` process for a run folder."""

    def __init__(self, run_dir: Path, pki_dir: Path, address: str = DEFAULT_ADDRESS) -> None:
        self._run_dir = run_dir
        self._pki = pki_dir
        self._address = address
        self._home = run_dir / FLOWER_DIR
        self._process: subprocess.Popen[bytes] | None = None
        for name in (CA_CERT, COORDINATOR_CERT, COORDINATOR_KEY):
            if not (pki_dir / name).is_file():
                raise DeploymentError(
                    f"{pki_dir / name} is missing",
                    remedy="pass the folder `clinfl pki init` wrote as --pki",
                )

    @property
    def log_file(self) -> Path:
        """The SuperLink's log."""
        return self._home / "superlink.log"

    def _env(self) -> dict[str, str]:
        return flower_environment(self._home)

    def _write_connection(self) -> None:
        self._home.mkdir(parents=True, exist_ok=True)
        ca = (self._pki / CA_CERT).resolve()
        (self._home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{local_address(self._address)}"\nroot-certificates = "{ca}"\n'
        )

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until its APIs listen.

        Raises:
            DeploymentError: if it exits or does not listen within ``timeout`` seconds.
        """
        self._write_connection()
        pki = self._pki.resolve()
        host, port = split_address(self._address)
        command = [
            flower_command("flower-superlink"),
            "--ssl-ca-certfile", str(pki / CA_CERT),
            "--ssl-certfile", str(pki / COORDINATOR_CERT),
            "--ssl-keyfile", str(pki / COORDINATOR_KEY),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database", str(self._home / "superlink.db"),
            "--host", host,
            "--port", str(port),
        ]  # fmt: skip
        self._process = start_logged(command, log_file=self.log_file, env=self._env())
        wait_for_port(
            local_address(self._address),
            timeout=timeout,
            process=self._process,
            name="the SuperLink",
        )

    def alive(self) -> bool:
        """Whether the SuperLink process is running."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the SuperLink (SIGTERM, then SIGKILL)."""
        if self._process is not None:
            stop_process(self._process)

    def _flwr(self, *arguments: str) -> dict[str, Any]:
        command = [flower_command("flwr"), *arguments, "--format", "json"]
        try:
            done = subprocess.run(
                command,
                env=self._env(),
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"`flwr {arguments[0]}` did not finish in {COMMAND_TIMEOUT:g} s",
                remedy=f"see {self.log_file}",
            ) from None
        text = done.stdout.decode(errors="replace").strip()
        try:
            result: dict[str, Any] = json.loads(text[text.index("{") :])
        except ValueError:
            result = {"success": False, "error-message": text or done.stderr.decode()[-500:]}
        return result

    def register_node(self, site: str, public_key: str) -> bool:
        """Register a site's node key; return False if it was registered before.

        Raises:
            DeploymentError: if Flower refuses the key for another reason.
        """
        keys = self._home / "node-keys"
        keys.mkdir(parents=True, exist_ok=True)
        path = keys / f"{site}.pub"
        path.write_text(public_key)
        result = self._flwr("supernode", "register", str(path), CONNECTION, "--name", site)
        if result.get("success"):
            return True
        message = str(result.get("error-message", result))
        if "already" in message.lower():
            return False
        raise DeploymentError(
            f"Flower refused {site}'s node key: {message[:300]}",
            remedy="check the roster (`clinfl pki admit site-request.json` adds the key)",
        )

    def submit(self) -> int:
        """Submit clinfl's bundle as a Flower run for this run folder; return its run ID.

        Raises:
            DeploymentError: if Flower refuses the run.
        """
        app = self._home / "app"
        app.mkdir(parents=True, exist_ok=True)
        (app / "pyproject.toml").write_text(app_pyproject())
        setting = f'{RUN_DIR_KEY}="{self._run_dir.resolve()}"'
        result = self._flwr("run", str(app), CONNECTION, "--run-config", setting)
        if not result.get("success") or "run-id" not in result:
            raise DeploymentError(
                f"Flower did not start the run: {str(result.get('error-message', result))[:300]}",
                remedy=f"see {self.log_file}",
            )
        return int(result["run-id"])
