"""The site restarts a SuperNode that exits, and gives up with the reason after its timeout."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from clinfl.errors import DeploymentError
from site_agent.deploy import runner as site_runner
from site_agent.deploy.supernode import SuperNode


class FlakyNode:
    """Exits ``failures`` times, then stays up."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0
        self.up = False

    def alive(self) -> bool:
        return self.up

    def exit_reason(self) -> str:
        return "Exit Code: 305 Failed to activate SuperNode."

    def start(self) -> None:
        self.starts += 1
        self.up = self.starts > self.failures


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site_runner, "RESTART_DELAY", 0.01)


def test_a_node_that_never_connects_ends_the_site_with_the_reason() -> None:
    node = FlakyNode(failures=10**6)
    with pytest.raises(DeploymentError, match="Failed to activate") as raised:
        site_runner._supervise(
            node,
            threading.Event(),
            connect_timeout=2.5,
            notify=lambda line: None,  # type: ignore[arg-type]
        )
    assert "roster.json" in raised.value.remedy  # the node key comes from the roster
    assert node.starts >= 2


def test_a_node_that_comes_back_is_kept_and_the_site_serves_until_stopped() -> None:
    node, stop, lines = FlakyNode(failures=2), threading.Event(), []
    timer = threading.Timer(4.0, stop.set)
    timer.start()
    site_runner._supervise(node, stop, connect_timeout=60, notify=lines.append)  # type: ignore[arg-type]
    assert node.starts == 3 and node.alive()
    assert sum("starting it again" in line for line in lines) == 3


class RefusedAtFirstNode(FlakyNode):
    """Exits while starting the first time, as when its node key is not registered yet."""

    def start(self) -> None:
        super().start()
        if not self.up:
            raise DeploymentError("the SuperNode exited with code 1 while starting", remedy="-")


def test_a_node_refused_at_its_first_start_is_retried_like_any_exit() -> None:
    """A site started before the coordinator registered its node key does not give up."""
    node, stop, lines = RefusedAtFirstNode(failures=2), threading.Event(), []
    site_runner._first_start(node, lines.append)  # type: ignore[arg-type]
    assert not node.alive() and "Failed to activate" in lines[0]
    timer = threading.Timer(4.0, stop.set)
    timer.start()
    site_runner._supervise(node, stop, connect_timeout=60, notify=lines.append)  # type: ignore[arg-type]
    assert node.starts == 3 and node.alive()


def test_the_exit_reason_is_flowers_exit_message_without_colours(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    key.write_text("x")
    node = SuperNode(tmp_path, coordinator="h:1", ca_cert=key, node_key=key, runtime_port=1)
    node.log_file.parent.mkdir(parents=True)
    node.log_file.write_text(
        "INFO starting\n\x1b[91mERROR \x1b[0m:     Exit Code: 305\nFailed to initialize.\n"
        "[code: 2004] Failed to activate SuperNode.\nINFO: Shutting down\n"
    )
    assert node.exit_reason() == (
        "ERROR :     Exit Code: 305 Failed to initialize. [code: 2004] Failed to activate SuperNode."
    )
