"""A site in a deployed federation: answers the coordinator's calls, checking policy on each.

Every message is checked before anything else: its run's application bundle must be clinfl's
own (:func:`~clinfl.transport.flower.bundle.check_bundle`), the call must be one of the
contract's (:mod:`clinfl.transport.contract`), and its body must decode to that call's type.
Each call then goes to its handler, through one explicit map from call to handler. The first
call of a run (``join``) carries the run's configuration and its roster's digest; the site
declines any run over another roster than the one its operator pinned (:mod:`clinfl.roster`),
then checks the configuration against its policy and declines, with the reason, if the run asks
for less protection than the policy demands. A configuration that names any local path, or
that is not valid, is declined with one fixed reason that says nothing about the site's files
(SECAGG.md, R8); the details go to the site's own log only. The site then joins with
:func:`~site_agent.join.join_run`, exactly as an in-process site does (this module keeps only
the transport's part), so training, secure aggregation and the budget are enforced by the same
:class:`~site_agent.agent.SiteAgent` as in the in-process federation. Refusals go to the
ledger's audit log and back to the coordinator; a round call's refusal goes back as its kind
and a fixed text only, since its reason may depend on the site's data (a sample count, the
epsilon a round would cost; SECAGG.md, R7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from clinfl import __version__
from clinfl.algorithms import available_algorithms
from clinfl.config import RunConfig, validate_run_config
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import SitePolicy
from clinfl.config.site_fields import named_path_fields
from clinfl.errors import ClinflError, PolicyViolation, ProtocolViolation, RosterError
from clinfl.federation.messages import EvaluationReport
from clinfl.roster import Roster, split_announcement
from clinfl.transport.contract import (
    EVALUATE,
    JOIN,
    ROUND_CALLS,
    Call,
    JoinReply,
    JoinRequest,
    answer,
    call_named,
    encode_refusal,
    encode_reply,
    withheld_refusal,
)
from clinfl.transport.flower.bundle import check_bundle
from clinfl.transport.wire import decode
from clinfl.typing import StateDict
from site_agent.agent import SiteIdentity
from site_agent.audit_report import write_site_report
from site_agent.join import JoinedSite, SimulationOnly, SiteSource, join_run
from site_agent.ledger import LEDGER_FILE, SiteLedger
from site_agent.local_split import SplitRecord, record_split
from site_agent.setup import SiteData

__all__ = ["DeployedSite", "SiteData"]  # SiteData: a deployed site's source, named here too

log = logging.getLogger("clinfl.site")
Handler = Callable[[int, Any], Any]  # (Flower run, the call's decoded argument) -> the reply
# The only reasons a join's configuration is declined for: fixed texts, whatever the coordinator
# sent, so a refusal never depends on the site's files (R8) nor quotes what the coordinator sent.
NAMES_A_PATH = "the run configuration names a local path; sites accept none"
NAMES_A_PATH_REMEDY = "send the run configuration without paths, as `clinfl coordinator start` does"
INVALID_RUN_CONFIG = "the run configuration is not valid at this site"
INVALID_RUN_CONFIG_REMEDY = "check that the coordinator and the site run the same clinfl version"


class DeployedSite:
    """One hospital's end of a deployed federation (one object for the life of the process)."""

    def __init__(
        self,
        identity: SiteIdentity,
        *,
        policy: SitePolicy,
        roster: Roster | Callable[[], Roster],
        data: SiteSource,
        state_dir: Path,
        threads: int | None = None,
        simulation: SimulationOnly | None = None,
    ) -> None:
        """Serve as ``identity`` under ``policy``; ``threads`` caps torch's CPU threads.

        ``roster`` is the roster the site's operator pinned, or a function that reads it at
        each ``join`` (so a roster trusted while the site runs counts from the next run).
        ``data`` is the site's export (:class:`~site_agent.setup.SiteData`). ``simulation`` is
        for tests that run the deployed transport in-process with a simulation's streams
        (:class:`~site_agent.join.SimulationOnly`); ``clinfl site run`` never passes it.
        """
        self._simulation = simulation
        self._threads = threads
        self._identity = identity
        self._policy = policy
        self._pinned = roster if callable(roster) else (lambda: roster)
        self._data = data
        self._state_dir = state_dir
        self._runs: dict[int, JoinedSite] = {}
        self._checked_bundles: set[str] = set()
        # every call of the contract, and only those, has its handler here
        self._handlers: dict[str, Handler] = {
            JOIN.name: self._join,
            EVALUATE.name: self._evaluate,
            **{call.name: self._round_handler(call) for call in ROUND_CALLS},
        }

    @property
    def site_id(self) -> str:
        """The site's name in the federation."""
        return self._identity.site_id

    @property
    def roster(self) -> Roster:
        """The roster this site takes part under: the one its operator pinned, read now."""
        return self._pinned()

    def handle(
        self, *, flower_run: int, bundle: bytes, bundle_hash: str, call: str, body: bytes
    ) -> bytes:
        """Answer one call; every failure becomes a refusal reply, never an exception.

        Raises:
            Nothing for a bad message; only programming errors propagate.
        """
        audited = False  # the agent writes its own refusals to the ledger
        try:
            self._check_bundle(bundle, bundle_hash)
            row = call_named(call)
            argument = decode(body, row.argument)
            audited = row.stage is not None  # a round call: the agent answers it
            result = self._handlers[row.name](flower_run, argument)
        except ClinflError as error:
            log.warning("%s refused %s: %s", self.site_id, call[:40], error.message)
            if not audited:
                self._audit(error.message)
            else:  # a round call's reason may depend on the site's data: it stays here (R7)
                error = withheld_refusal(error, site_id=self.site_id, call=call)
            return encode_refusal(error, site_id=self.site_id)
        if row.ends_round:
            self.write_audit_report()
        return encode_reply(result)

    def _check_bundle(self, bundle: bytes, bundle_hash: str) -> None:
        if bundle_hash not in self._checked_bundles:
            check_bundle(bundle, declared_hash=bundle_hash)
            self._checked_bundles.add(bundle_hash)

    def _audit(self, reason: str) -> None:
        try:
            with closing(SiteLedger(self._state_dir)) as ledger:
                ledger.record_refusal(run_id="deployment", round_number=0, reason=reason)
        except ClinflError:
            log.exception("cannot write the refusal to the ledger")

    def _joined(self, flower_run: int) -> JoinedSite:
        joined = self._runs.get(flower_run)
        if joined is None:
            raise ProtocolViolation(
                f"{self.site_id} has not joined this run",
                remedy="the coordinator must send `join` first",
            )
        return joined

    def _round_handler(self, call: Call[Any, Any]) -> Handler:
        """The handler of a round call: the run's agent answers it (see the contract)."""
        return lambda flower_run, argument: answer(self._joined(flower_run).agent, call, argument)

    def _evaluate(self, flower_run: int, global_state: StateDict) -> EvaluationReport:
        """Score ``global_state`` and return the metrics in the clear (secure aggregation off only).

        A run with secure aggregation evaluates through masked histogram sums (``score_round``);
        the clear call would hand a lying coordinator this site's own metrics for any model it
        crafts (its validation and test sizes and positives), so it is refused (R7).

        Raises:
            PolicyViolation: if the run or the site's policy has secure aggregation, or the
                policy keeps evaluation metrics at the site.
        """
        joined = self._joined(flower_run)
        if joined.run.secagg.enabled or joined.policy.secagg.required:
            raise PolicyViolation(
                f"{self.site_id} evaluates only through the masked evaluation sum: its metrics "
                "never leave in the clear where secure aggregation is on",
                remedy="evaluate with score_round and a secure-aggregation session of purpose "
                "'evaluation'",
            )
        if "auc" not in self._policy.reporting.metrics:
            raise PolicyViolation(
                f"{self.site_id}'s policy keeps evaluation metrics at the site",
                remedy="choose another evaluation site, or add 'auc' to reporting.metrics",
            )
        return joined.evaluator.evaluate(global_state)

    def _run_config(self, document: dict[str, Any]) -> RunConfig:
        """Read a join's run configuration; refuse it, with a fixed reason, if it names a path.

        No path in it is ever looked at (R8): a configuration that sets any path-typed field,
        whatever its value, is refused before anything else. Any other failure to read it is
        refused with one fixed reason too. The details go to the site's own log only.

        Raises:
            PolicyViolation: if it sets any path-typed field (one fixed message).
            ProtocolViolation: if it is not a valid run configuration (one fixed message).
        """
        named = named_path_fields(document)
        if named:
            log.warning(
                "%s declines a run configuration that sets the path field(s) %s",
                self.site_id,
                ", ".join(named),
            )
            raise PolicyViolation(NAMES_A_PATH, remedy=NAMES_A_PATH_REMEDY)
        try:
            config = run_config_from_mapping(document, base=self._state_dir)
            local = replace(config, data=self._data.localise(config.data))
            return validate_run_config(local, known_methods=available_algorithms())
        except Exception as error:  # R9: any failure on the coordinator's input is one refusal
            detail = error.message if isinstance(error, ClinflError) else repr(error)
            log.warning("%s declines an invalid run configuration: %r", self.site_id, detail[:2000])
            raise ProtocolViolation(INVALID_RUN_CONFIG, remedy=INVALID_RUN_CONFIG_REMEDY) from None

    def _check_roster(self, document: dict[str, Any]) -> tuple[Roster, dict[str, Any]]:
        """Take part only in a run over the roster this site pinned; return it and the config.

        Raises:
            RosterError: if the run names no roster or another one than the pinned roster.
        """
        pinned = self._pinned()
        announced, rest = split_announcement(document)
        if announced != pinned.digest:
            why = (
                "the run names no roster"
                if announced is None
                else "the run's roster is not the one this site's operator trusted; a member "
                "may have been added, removed or re-keyed"
            )
            raise RosterError(
                f"{self.site_id} declines the run: {why} (trusted roster: {pinned.fingerprint})",
                remedy="compare the coordinator's new roster.json with the other hospitals out "
                "of band, then run `clinfl site trust` at this site",
            )
        return pinned, rest

    def _join(self, flower_run: int, request: JoinRequest) -> JoinReply:
        roster, run_config = self._check_roster(request.run_config)
        config = self._run_config(run_config)
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        joined = join_run(
            self._identity,
            self._policy,
            self._data,
            config,
            roster=roster,
            state_dir=self._state_dir,
            run_id=request.run_id,
            simulation=self._simulation,
        )
        self._runs = {flower_run: joined}
        if isinstance(self._data, SiteData):  # for local thresholds later (stays at the site)
            record_split(self._state_dir, SplitRecord.of(self._data, joined, run_id=request.run_id))
        log.info(
            "%s joined run %s (%d training images)",
            self.site_id,
            request.run_id,
            len(joined.data.train),
        )
        initial = joined.initial_state() if request.send_initial_state else None
        return JoinReply(self.site_id, __version__, initial, joined.policy.secagg.terms)

    def write_audit_report(self) -> None:
        """Write the site's audit report (JSON, Markdown, HTML) into its state folder."""
        if not (self._state_dir / LEDGER_FILE).is_file():
            return
        write_site_report(self._state_dir)
