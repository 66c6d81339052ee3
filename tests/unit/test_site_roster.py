"""The coordinator's join window: once a quorum joined, a late site still has ``settle_seconds``
after the last join came back (regression: the window was measured from before the joins, so
slow joins on a loaded machine left a returning site no time at all)."""

from __future__ import annotations

import pytest

from clinfl import __version__
from clinfl.transport.contract import JoinReply, JoinRequest, encode_reply
from coordinator.deploy import remote_sites
from coordinator.deploy.remote_sites import SiteRoster

SITES = {1: "site-1", 2: "site-2", 3: "site-3"}


class Clock:
    """The module's ``time``: a clock that moves only when someone sleeps or a join runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class SlowJoins:
    """Nodes 1 and 2 are connected from the start, node 3 from ``late_at``; a join takes 15 s."""

    def __init__(self, clock: Clock, late_at: float | None) -> None:
        self.clock = clock
        self.late_at = late_at

    def node_ids(self) -> set[int]:
        late = self.late_at is not None and self.clock.now >= self.late_at
        return {1, 2, 3} if late else {1, 2}

    def call(self, node_id: int, call: str, body: bytes, *, timeout: float) -> bytes:
        assert call == "join"
        self.clock.now += 15.0
        return encode_reply(JoinReply(SITES[node_id], __version__))


def _wait(monkeypatch: pytest.MonkeyPatch, late_at: float | None) -> tuple[SiteRoster, Clock]:
    clock = Clock()
    monkeypatch.setattr(remote_sites, "time", clock)
    roster = SiteRoster(
        SlowJoins(clock, late_at),
        JoinRequest("run-1"),
        expected=frozenset(SITES.values()),
        timeout=120,
    )
    roster.wait_for_sites(deadline_seconds=300, quorum=2, settle_seconds=20, poll_seconds=1)
    return roster, clock


def test_a_site_that_comes_within_the_window_after_slow_joins_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # sites 1 and 2 join at 15 s and 30 s; site 3 connects 10 s after the last join
    roster, _ = _wait(monkeypatch, late_at=40.0)
    assert roster.joined() == ["site-1", "site-2", "site-3"]


def test_the_window_still_ends_settle_seconds_after_the_last_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    roster, clock = _wait(monkeypatch, late_at=None)
    assert roster.joined() == ["site-1", "site-2"]
    assert 50.0 <= clock.now < 52.0  # the last join came back at 30 s
