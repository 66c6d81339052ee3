"""The coordinator's view of deployed sites: each one a participant reached through Flower.

:class:`FlowerLink` sends one call to one SuperNode and waits for its reply, with a deadline
(no wait is open-ended). :class:`SiteRoster` learns which node is which site by sending each new
node the run's ``join`` call, and remembers the sites whose policy declined the run, with their
reasons. :class:`RemoteSite` is a :class:`~clinfl.federation.roles.TrainingParticipant` like an
in-process site: a site that does not answer in time is a dropout
(:class:`~clinfl.errors.SiteUnavailable`), and a site's refusal is raised as the same clinfl
error the site raised.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from clinfl.errors import ClinflError, PolicyViolation, SiteUnavailable
from clinfl.federation.messages import (
    EvaluationReport,
    RoundSettings,
    SiteContribution,
    TrainingReport,
)
from clinfl.metrics import MultiLabelMetrics
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import RoundParameters
from clinfl.transport.calls import (
    CALLS,
    JoinReply,
    JoinRequest,
    Nothing,
    Refusal,
    TrainRequest,
    decode_reply,
    open_reply,
)
from clinfl.transport.wire import encode
from clinfl.typing import StateDict

RECORD = "clinfl"
log = logging.getLogger("clinfl.coordinator")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for a reply to each kind of call (one secure-aggregation stage each)."""

    join: float = 120.0
    train: float = 1800.0
    stage: float = 120.0
    evaluate: float = 600.0


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
        """Return the nodes connected now."""
        with self._lock:
            return set(self._grid.get_node_ids())

    def call(self, node_id: int, call: str, body: bytes, *, timeout: float) -> bytes:
        """Send ``call`` to ``node_id`` and return the reply body.

        Raises:
            SiteUnavailable: if no reply comes within ``timeout`` seconds, or Flower reports
                that the node could not handle the message.
        """
        content = RecordDict({RECORD: ConfigRecord({"call": call, "body": body})})
        with self._lock:
            message = self._grid.create_message(content, "query", node_id, call, ttl=timeout)
            ids = list(self._grid.push_messages([message]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                replies = list(self._grid.pull_messages(ids))
            if replies:
                reply = replies[0]
                if reply.has_error():
                    raise SiteUnavailable(
                        f"node {node_id} failed {call}: {str(reply.error.reason)[:200]}",
                        remedy="see the site's log",
                    )
                record = reply.content.config_records.get(RECORD)
                data = record.get("body") if record is not None else None
                if not isinstance(data, bytes):
                    raise SiteUnavailable(
                        f"node {node_id} sent an empty reply to {call}", remedy="see its log"
                    )
                return data
            time.sleep(self._poll)
        raise SiteUnavailable(
            f"node {node_id} did not answer {call} within {timeout:g} s",
            remedy="check that the site's agent is running, or raise the timeout",
        )


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
            data = self._link.call(node, "join", encode(join), timeout=self._timeout)
            reply = open_reply(data, JoinReply)
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
        the last one joined is not waited for (it may join any later round).
        """
        now = time.monotonic()
        deadline, last_change, seen = now + deadline_seconds, now, 0
        while (now := time.monotonic()) < deadline:
            self.refresh()
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


class RemoteSite:
    """One deployed site as a :class:`~clinfl.federation.roles.TrainingParticipant`."""

    def __init__(self, site_id: str, roster: SiteRoster, link: Link, timeouts: Timeouts) -> None:
        self._site_id = site_id
        self._roster = roster
        self._link = link
        self._timeouts = timeouts

    @property
    def site_id(self) -> str:
        """The site's name."""
        return self._site_id

    def _call(self, call: str, argument: object, timeout: float) -> Any:
        node = self._roster.node_of(self._site_id)
        data = self._link.call(node, call, encode(argument), timeout=timeout)
        return decode_reply(data, CALLS[call][1])

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        """Ask the site to train (raises what the site raised, or SiteUnavailable)."""
        request = TrainRequest(global_state, settings)
        report: TrainingReport = self._call("train_round", request, self._timeouts.train)
        return report

    def upload_plain(self) -> SiteContribution:
        """Ask for the update in the clear (the site refuses when its policy forbids it)."""
        contribution: SiteContribution = self._call("upload_plain", Nothing(), self._timeouts.stage)
        return contribution

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        """Secure aggregation, stage 1."""
        advert: Advertisement = self._call("secagg_advertise", params, self._timeouts.stage)
        return advert

    def secagg_graph(self, adverts: tuple[Advertisement, ...]) -> GraphReveal:
        """Secure aggregation, stage 2."""
        reveal: GraphReveal = self._call("secagg_graph", adverts, self._timeouts.stage)
        return reveal

    def secagg_share(self, reveals: tuple[GraphReveal, ...]) -> list[EncryptedShare]:
        """Secure aggregation, stage 3."""
        shares: list[EncryptedShare] = self._call("secagg_share", reveals, self._timeouts.stage)
        return shares

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        """Secure aggregation, stage 4."""
        masked: MaskedInput = self._call("secagg_masked_input", shares, self._timeouts.stage)
        return masked

    def secagg_sign(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Secure aggregation, stage 5."""
        signature: SurvivorSignature = self._call("secagg_sign", survivors, self._timeouts.stage)
        return signature

    def secagg_reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Secure aggregation, stage 6."""
        revealed: RevealedShares = self._call("secagg_reveal", request, self._timeouts.stage)
        return revealed

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Ask the site to evaluate the global model on its held-out studies."""
        report: EvaluationReport = self._call("evaluate", global_state, self._timeouts.evaluate)
        return report


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
