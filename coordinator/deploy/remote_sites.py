"""The coordinator's view of deployed sites (runs in the coordinator's ServerApp process).

:class:`FlowerLink` sends one call to one SuperNode through Flower and waits for its reply, with
a deadline (no wait is open-ended). :class:`SiteRoster` learns which node is which site by
sending each new node the run's ``join`` call, and remembers the sites whose policy declined the
run, with their reasons, and the secure-aggregation terms each joined site declared.
:class:`RemoteSite` is a :class:`~clinfl.transport.contract.TrainingParticipant` like an
in-process site, with one generic :meth:`~RemoteSite.call` driven by the contract's table: a
site that does not answer in time is a dropout (:class:`~clinfl.errors.SiteUnavailable`), and a
site's refusal is raised as the same clinfl error the site raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import httpx
from flwr.serverapp import Grid

from clinfl.errors import ClinflError, DeploymentError, PolicyViolation, SiteUnavailable
from clinfl.federation.messages import EvaluationReport
from clinfl.metrics import MultiLabelMetrics
from clinfl.secagg.settings import SecAggTerms
from clinfl.transport.contract import (
    EVALUATE,
    JOIN,
    Call,
    CallingParticipant,
    JoinRequest,
    Refusal,
    TimeoutClass,
    decode_reply,
    open_reply,
)
from clinfl.transport.flower.records import call_content, read_reply
from clinfl.transport.wire import encode
from clinfl.typing import StateDict

A = TypeVar("A")
R = TypeVar("R")
log = logging.getLogger("clinfl.coordinator")
T = TypeVar("T")
NODE_LIST_RETRY_SECONDS = 60.0


def is_transient(error: Exception) -> bool:
    """Whether ``error`` is a server error from the SuperLink that a retry may clear.

    Under load the SuperLink answers some requests with HTTP 500 (its database busy). Flower
    1.42's HTTP grid retries 502, 503 and 504 itself, but raises 500 to the caller.
    """
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code >= 500


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for a reply, per timeout class (``stage``: each secure-aggregation stage)."""

    join: float = 120.0
    train: float = 1800.0
    stage: float = 120.0
    evaluate: float = 600.0

    def seconds(self, kind: TimeoutClass) -> float:
        """Return the seconds to wait for a call of timeout class ``kind``."""
        match kind:
            case TimeoutClass.JOIN:
                return self.join
            case TimeoutClass.TRAIN:
                return self.train
            case TimeoutClass.STAGE:
                return self.stage
            case TimeoutClass.EVALUATE:
                return self.evaluate


class Link(Protocol):
    """Reaches sites: which nodes are connected, and one call to one node."""

    def node_ids(self) -> set[int]:
        """Return the nodes connected now."""
        ...

    def call(self, node_id: int, call: str, body: bytes, *, timeout: float) -> bytes:
        """Send ``call`` to ``node_id`` and return the reply body (SiteUnavailable if none)."""
        ...


class FlowerLink:
    """Sends calls to SuperNodes through a Flower grid; safe to use from several threads."""

    def __init__(self, grid: Grid, *, poll_seconds: float = 0.3) -> None:
        self._grid = grid
        self._lock = threading.Lock()
        self._poll = poll_seconds

    def node_ids(self) -> set[int]:
        """Return the nodes connected now.

        Raises:
            DeploymentError: if the SuperLink keeps failing for ``NODE_LIST_RETRY_SECONDS``.
        """
        deadline = time.monotonic() + NODE_LIST_RETRY_SECONDS
        nodes = self._retrying(lambda: set(self._grid.get_node_ids()), deadline, "listing nodes")
        if nodes is None:
            raise DeploymentError(
                f"the SuperLink failed to list the connected nodes for "
                f"{NODE_LIST_RETRY_SECONDS:g} s",
                remedy="see the SuperLink's log in the run folder",
            )
        return nodes

    def call(self, node_id: int, call: str, body: bytes, *, timeout: float) -> bytes:
        """Send ``call`` to ``node_id`` and return the reply body.

        A transient SuperLink error (:func:`is_transient`) is retried until the deadline.

        Raises:
            SiteUnavailable: if no reply comes within ``timeout`` seconds, or Flower reports
                that the node could not handle the message.
        """
        content = call_content(call, body)
        deadline = time.monotonic() + timeout
        with self._lock:
            message = self._grid.create_message(content, "query", node_id, call, ttl=timeout)
        ids = self._retrying(
            lambda: list(self._grid.push_messages([message])), deadline, f"sending {call}"
        )
        while ids is not None and time.monotonic() < deadline:
            replies = self._retrying(
                lambda: list(self._grid.pull_messages(ids)), deadline, f"pulling {call}"
            )
            if replies:
                reply = replies[0]
                if reply.has_error():
                    raise SiteUnavailable(
                        f"node {node_id} failed {call}: {str(reply.error.reason)[:200]}",
                        remedy="see the site's log",
                    )
                data = read_reply(reply.content)
                if data is None:
                    raise SiteUnavailable(
                        f"node {node_id} sent an empty reply to {call}", remedy="see its log"
                    )
                return data
            time.sleep(self._poll)
        raise SiteUnavailable(
            f"node {node_id} did not answer {call} within {timeout:g} s",
            remedy="check that the site's agent is running, or raise the timeout",
        )

    def _retrying(self, request: Callable[[], T], deadline: float, what: str) -> T | None:
        """Run ``request`` under the lock; retry transient SuperLink errors until ``deadline``.

        Returns None if the deadline passes first. Any other error propagates.
        """
        pause = self._poll
        while True:
            try:
                with self._lock:
                    return request()
            except httpx.HTTPStatusError as error:
                if not is_transient(error):
                    raise
                log.warning("the SuperLink failed %s (%s); retrying", what, error)
            if time.monotonic() + pause >= deadline:
                return None
            time.sleep(pause)
            pause = min(2 * pause, 5.0)


class SiteRoster:
    """Which node is which site, and which sites declined the run and why."""

    def __init__(
        self, link: Link, join: JoinRequest, *, expected: frozenset[str], timeout: float
    ) -> None:
        self._link = link
        self._join = join
        self._expected = expected
        self._timeout = timeout
        self._lock = threading.Lock()
        self._nodes: dict[str, int] = {}
        self._asked: set[int] = set()
        self.refusals: dict[str, str] = {}
        self.initial_state: StateDict | None = None
        self._declared: dict[str, SecAggTerms] = {}

    def refresh(self) -> None:
        """Send ``join`` to every node not asked yet, and record who answered what."""
        with self._lock:
            for node in sorted(self._link.node_ids() - self._asked):
                self._asked.add(node)
                self._ask(node)

    def _ask(self, node: int) -> None:
        join = self._join
        if self.initial_state is None and not join.send_initial_state:
            join = JoinRequest(join.run_id, join.run_config, send_initial_state=True)
        try:
            data = self._link.call(node, JOIN.name, encode(join), timeout=self._timeout)
            reply = open_reply(data, JOIN.reply)
        except ClinflError as error:
            self._asked.discard(node)  # ask again at the next refresh
            log.warning("node %d did not join: %s", node, error.message)
            return
        if isinstance(reply, Refusal):
            site = reply.site_id or f"node {node}"
            self.refusals[site] = reply.error.message
            log.warning("%s declined the run: %s", site, reply.error.message)
            return
        if reply.site_id not in self._expected or reply.site_id in self._nodes:
            log.warning("node %d claims site %r, which is unknown or taken", node, reply.site_id)
            return
        self._nodes[reply.site_id] = node
        self.refusals.pop(reply.site_id, None)
        if reply.secagg is not None:
            self._declared[reply.site_id] = reply.secagg
        if self.initial_state is None and reply.initial_state is not None:
            self.initial_state = reply.initial_state
        log.info("%s joined as node %d", reply.site_id, node)

    def wait_for_sites(
        self,
        *,
        deadline_seconds: float,
        quorum: int,
        settle_seconds: float = 20.0,
        poll_seconds: float = 1.0,
    ) -> None:
        """Refresh until every expected site joined or declined, or the deadline passes.

        Once ``quorum`` sites have joined, a site that has not come ``settle_seconds`` after
        the last one joined is not waited for (it may join any later round). The window is
        measured from when the last join came back: a join can take long (the site ingests
        and builds its trainer), and the time it took is not taken from the window.
        """
        now = time.monotonic()
        deadline, last_change, seen = now + deadline_seconds, now, 0
        while time.monotonic() < deadline:
            self.refresh()
            now = time.monotonic()  # after the joins this refresh waited for
            answered = set(self._nodes) | set(self.refusals)
            if answered >= self._expected:
                return
            if len(answered) != seen:
                seen, last_change = len(answered), now
            if len(self._nodes) >= quorum and now - last_change >= settle_seconds:
                return
            time.sleep(poll_seconds)

    def joined(self) -> list[str]:
        """Return the sites that joined, sorted."""
        return sorted(self._nodes)

    def declared_secagg(self) -> dict[str, SecAggTerms]:
        """Return the secure-aggregation terms each joined site declared in its join reply."""
        with self._lock:
            return {site: self._declared[site] for site in self._nodes if site in self._declared}

    def node_of(self, site_id: str) -> int:
        """Return the node of ``site_id``, looking again for a site that left and came back.

        Raises:
            PolicyViolation: if the site declined the run.
            SiteUnavailable: if the site is not connected.
        """
        node = self._nodes.get(site_id)
        if node is None or node not in self._link.node_ids():
            with self._lock:
                self._nodes.pop(site_id, None)
            self.refresh()
            node = self._nodes.get(site_id)
        if site_id in self.refusals:
            raise PolicyViolation(self.refusals[site_id], remedy="see the site's policy")
        if node is None:
            raise SiteUnavailable(f"{site_id} is not connected", remedy="start its site agent")
        return node


class RemoteSite(CallingParticipant):
    """One deployed site as a :class:`~clinfl.transport.contract.TrainingParticipant`."""

    def __init__(self, site_id: str, roster: SiteRoster, link: Link, timeouts: Timeouts) -> None:
        self._site_id = site_id
        self._roster = roster
        self._link = link
        self._timeouts = timeouts

    @property
    def site_id(self) -> str:
        """The site's name."""
        return self._site_id

    def call(self, call: Call[A, R], argument: A) -> R:
        """Send ``call`` to the site and return its reply, within the call's timeout class.

        Raises:
            ClinflError: what the site raised (PolicyViolation, ProtocolViolation...).
            SiteUnavailable: if the site is not connected or does not answer in time.
        """
        node = self._roster.node_of(self._site_id)
        timeout = self._timeouts.seconds(call.timeout)
        data = self._link.call(node, call.name, encode(argument), timeout=timeout)
        reply: R = decode_reply(data, call.reply)
        return reply

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Ask the site to evaluate the global model on its held-out studies."""
        return self.call(EVALUATE, global_state)


def no_metrics(num_classes: int) -> MultiLabelMetrics:
    """Metrics of an evaluation that could not run (every value NaN or None)."""
    nan = float("nan")
    return MultiLabelMetrics(nan, nan, nan, nan, (None,) * num_classes)


class RemoteEvaluator:
    """Evaluates the global model at the first site (in name order) that agrees to."""

    def __init__(self, sites: list[RemoteSite], num_classes: int) -> None:
        self._sites = sorted(sites, key=lambda s: s.site_id)
        self._num_classes = num_classes
        self.evaluated_by: str | None = None

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Return the first evaluation a site gives, or NaN metrics if none does."""
        for site in self._sites:
            try:
                report = site.evaluate(global_state)
            except ClinflError as failure:
                log.info("%s did not evaluate: %s", site.site_id, failure.message)
                continue
            self.evaluated_by = site.site_id
            return report
        self.evaluated_by = None
        empty = no_metrics(self._num_classes)
        return EvaluationReport(validation=empty, test=empty)
