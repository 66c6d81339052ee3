"""Starting and stopping Flower's own processes (SuperLink, SuperNode) from clinfl's commands.

Each runs as a child process with its output in a log file in the run or state folder, is
stopped with SIGTERM (then SIGKILL after a grace period), and is never waited on without a
deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from clinfl.errors import ConfigError, DeploymentError


def flower_command(name: str) -> str:
    """Return the path of Flower's ``name`` command, next to this Python first.

    Raises:
        DeploymentError: if Flower is not installed.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"Flower's {name} command is not installed",
            remedy="install clinfl with its dependencies (pip install clinfl), which include flwr",
        )
    return found


def split_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 in brackets) into host and port.

    Raises:
        ConfigError: for an address without a valid port.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{address!r} is not HOST:PORT", remedy="give an address like coordinator.org:9092"
        )
    return host.strip("[]"), int(port)


def wait_for_port(
    address: str, *, timeout: float, process: subprocess.Popen[bytes], name: str
) -> None:
    """Wait until something listens at ``address``.

    Raises:
        DeploymentError: if ``process`` exits first or ``timeout`` seconds pass.
    """
    host, port = split_address(address)
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(
                f"{name} exited with code {process.returncode} while starting",
                remedy="see its log file for the reason (a port in use, a bad certificate...)",
            )
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(
        f"nothing listens at {address} after {timeout:g} s", remedy="see the process's log file"
    )


def start_logged(
    command: list[str], *, log_file: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """Stop ``process``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """Return the environment for a Flower process (``FLWR_HOME``, this Python on PATH)."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    # Flower starts its helpers (flower-superexec, flwr-serverapp) by name: find this install's
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # nothing leaves a hospital's machine
    return env
