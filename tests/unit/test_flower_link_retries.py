"""The coordinator's link to the SuperLink rides out a server error (HTTP 500) under load.

Regression: a restarted coordinator on a loaded machine got one HTTP 500 from the SuperLink
while pulling a reply, and the whole federation failed. Flower 1.42's HTTP grid retries 502,
503 and 504 itself, but raises 500 to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
import pytest

from clinfl.errors import DeploymentError, SiteUnavailable
from clinfl.transport.flower.records import reply_content
from coordinator.deploy import remote_sites
from coordinator.deploy.remote_sites import FlowerLink


class Clock:
    """The module's ``time``: it moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://superlink/v1/runtime/pull-messages")
    return httpx.HTTPStatusError(
        f"status {code}", request=request, response=httpx.Response(code, request=request)
    )


@dataclass
class Reply:
    body: bytes

    def has_error(self) -> bool:
        return False

    @property
    def content(self) -> object:
        return reply_content(self.body)


@dataclass
class FailingGrid:
    """A grid whose requests fail with HTTP ``code`` the first ``failures[kind]`` times."""

    code: int
    failures: dict[str, int]
    calls: dict[str, int] = field(default_factory=dict)

    def _maybe_fail(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if self.calls[kind] <= self.failures.get(kind, 0):
            raise status_error(self.code)

    def create_message(self, *args: object, **kwargs: object) -> str:
        return "message"

    def push_messages(self, messages: Iterable[str]) -> list[str]:
        self._maybe_fail("push")
        return ["id-1"]

    def pull_messages(self, ids: Iterable[str]) -> list[Reply]:
        self._maybe_fail("pull")
        return [Reply(b"the reply")]

    def get_node_ids(self) -> list[int]:
        self._maybe_fail("nodes")
        return [7]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(remote_sites, "time", clock)
    return clock


def test_server_errors_on_push_pull_and_node_list_are_retried(clock: Clock) -> None:
    grid = FailingGrid(500, {"push": 1, "pull": 3, "nodes": 2})
    link = FlowerLink(grid, poll_seconds=0.5)  # type: ignore[arg-type]
    assert link.call(7, "train", b"body", timeout=60) == b"the reply"
    assert link.node_ids() == {7}
    assert grid.calls == {"push": 2, "pull": 4, "nodes": 3}


def test_a_superlink_that_keeps_failing_is_a_dropout_at_the_deadline(clock: Clock) -> None:
    link = FlowerLink(FailingGrid(500, {"pull": 10**9}), poll_seconds=0.5)  # type: ignore[arg-type]
    with pytest.raises(SiteUnavailable, match="did not answer train within 30 s"):
        link.call(7, "train", b"body", timeout=30)
    assert clock.now <= 30


def test_a_node_list_that_keeps_failing_stops_the_run_with_the_reason(clock: Clock) -> None:
    link = FlowerLink(FailingGrid(500, {"nodes": 10**9}))  # type: ignore[arg-type]
    with pytest.raises(DeploymentError, match="failed to list the connected nodes"):
        link.node_ids()


def test_a_client_error_is_not_retried(clock: Clock) -> None:
    grid = FailingGrid(400, {"pull": 1})
    link = FlowerLink(grid)  # type: ignore[arg-type]
    with pytest.raises(httpx.HTTPStatusError):
        link.call(7, "train", b"body", timeout=60)
    assert grid.calls["pull"] == 1
