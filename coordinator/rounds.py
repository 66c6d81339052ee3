"""The coordinator's round loop: broadcast, aggregate, apply, evaluate, checkpoint, record."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from clinfl.config import FederationConfig, SelectionRule
from clinfl.errors import PolicyViolation, ProtocolViolation, RoundAborted, SiteUnavailable
from clinfl.federation.fanout import Fanout, in_turn
from clinfl.federation.messages import RoundRecord, RoundSettings, TrainingReport
from clinfl.federation.roles import GlobalEvaluator, TrainingParticipant
from clinfl.typing import StateDict
from coordinator.aggregation import Aggregator
from coordinator.checkpoints import CheckpointStore
from coordinator.control import RunControl
from coordinator.resume import ResumePoint

RoundCallback = Callable[[RoundRecord], None]


@dataclass(frozen=True)
class FederationOutcome:
    """Every round's record, the selected round, the final global state, and why it stopped.

    ``selected`` is None only when no round ran; ``stopped`` says why the federation ended
    before its last round (every site refused, for example because budgets were spent);
    ``converged`` says why it ended early because validation stopped improving (``patience``).
    """

    records: tuple[RoundRecord, ...]
    selected: RoundRecord | None
    final_state: StateDict
    stopped: str | None = None
    converged: str | None = None


def rounds_since_best(records: Sequence[RoundRecord]) -> int:
    """Return how many completed rounds came after the best one on validation macro-AUC."""
    completed = [r for r in records if r.aborted is None]
    if not completed:
        return 0
    aucs = [r.report.validation.macro_auc for r in completed]
    best = max(range(len(aucs)), key=lambda i: (aucs[i], -i))  # the first of equal bests
    return len(completed) - 1 - best


class Coordinator:
    """Runs the rounds. It sees only aggregates and never builds or touches the ETF."""

    def __init__(
        self,
        participants: Sequence[TrainingParticipant],
        aggregator: Aggregator,
        evaluator: GlobalEvaluator,
        checkpoints: CheckpointStore,
        *,
        selection: SelectionRule = "best",
        control: RunControl | None = None,
        fanout: Fanout = in_turn,
    ) -> None:
        self._fanout = fanout
        self._participants = tuple(participants)
        self._aggregator = aggregator
        self._evaluator = evaluator
        self._checkpoints = checkpoints
        self._selection = selection
        self._control = control

    def _boundary(self, round_number: int, rounds: int) -> str | None:
        """Honour the operator's request at a round boundary; return why to stop, if so."""
        control = self._control
        if control is None:
            return None
        request = control.requested()
        if request == "pause":
            control.set_status("paused", current_round=round_number - 1, total_rounds=rounds)
            request = control.wait_while_paused()
        if request in ("stop", "stop-now"):
            return f"stopped by the operator before round {round_number}"
        # past the boundary: a pause requested from now on takes effect after this round
        control.set_status(
            "running",
            current_round=round_number,
            total_rounds=rounds,
            last_round_started=round_number,
        )
        return None

    def _stop_now(self) -> bool:
        return self._control is not None and self._control.requested() == "stop-now"

    def run_from(
        self,
        point: ResumePoint,
        initial_state: StateDict,
        federation: FederationConfig,
        *,
        on_round: RoundCallback | None = None,
    ) -> FederationOutcome:
        """Run ``federation``'s rounds from ``point`` (a fresh run's point is round 1).

        ``initial_state`` is the global state at ``point``: its checkpoint on a resume.
        Raises what :meth:`run` raises.
        """
        return self.run(
            initial_state,
            rounds=federation.rounds,
            patience=federation.patience,
            settings_for=partial(RoundSettings.for_round, federation),
            on_round=on_round,
            first_round=point.first_round,
            previous=point.previous,
        )

    def run(
        self,
        initial_state: StateDict,
        *,
        rounds: int,
        settings_for: Callable[[int], RoundSettings],
        on_round: RoundCallback | None = None,
        first_round: int = 1,
        previous: Sequence[RoundRecord] = (),
        patience: int | None = None,
    ) -> FederationOutcome:
        """Run rounds ``first_round`` to ``rounds`` from ``initial_state`` and select one.

        With ``patience``, the federation ends early (converged) once validation macro-AUC has
        not improved for that many completed rounds in a row; ``rounds`` is then a maximum.

        With a :class:`RunControl`, the operator's requests are honoured at each round boundary
        (pause, resume, stop); ``stop-now`` also abandons the round in progress before anything
        is applied. Each round's record and the budgets sites reported go to the control
        database for ``clinfl coordinator status``. A resumed run passes the rounds it already
        completed as ``previous`` (they count for the selection) and starts at ``first_round``.

        The selected round is the best completed round on validation macro-AUC (or the last,
        with ``selection='last'``). A round the aggregator abandons
        (:class:`~clinfl.errors.RoundAborted`) leaves the global state unchanged and is recorded
        with its reason; sites that are unavailable for training, or whose policy refuses the
        round (a spent privacy budget), are left out of the round. When every site refuses, the
        federation stops cleanly and says why.

        Raises:
            FederationError: if local training fails.
            CheckpointError: if a checkpoint cannot be written.
        """
        state = {name: value.clone() for name, value in initial_state.items()}
        records: list[RoundRecord] = list(previous)
        stopped: str | None = None
        converged: str | None = None
        budgets: dict[str, float] = {}
        if self._control is not None:
            self._control.set_status(
                "running",
                current_round=first_round,
                total_rounds=rounds,
                sites=[p.site_id for p in self._participants],
            )
        for round_number in range(first_round, rounds + 1):
            stopped = self._boundary(round_number, rounds)
            if stopped is not None:
                break
            started = time.perf_counter()
            settings = settings_for(round_number)
            reports: dict[str, TrainingReport] = {}
            trained = []
            refusals: list[str] = []

            def train(
                participant: TrainingParticipant,
                state: StateDict = state,
                settings: RoundSettings = settings,
            ) -> TrainingReport | SiteUnavailable | PolicyViolation | ProtocolViolation:
                try:
                    return participant.train_round(state, settings)
                except (SiteUnavailable, PolicyViolation, ProtocolViolation) as failure:
                    return failure

            outcomes = self._fanout([partial(train, p) for p in self._participants])
            for participant, outcome in zip(self._participants, outcomes, strict=True):
                if isinstance(outcome, PolicyViolation | ProtocolViolation):
                    refusals.append(outcome.message)
                elif isinstance(outcome, TrainingReport):
                    reports[participant.site_id] = outcome
                    trained.append(participant)
            if refusals and not trained:
                stopped = f"stopped before round {round_number}: " + "; ".join(refusals)
                break
            budgets.update(
                {s: r.epsilon_spent for s, r in reports.items() if r.epsilon_spent is not None}
            )
            aborted: str | None = None
            included: frozenset[str] = frozenset()
            num_samples = 0
            mean_loss = float("nan")
            try:
                aggregate = self._aggregator.aggregate(
                    trained, round_id=round_number, template=state
                )
            except RoundAborted as error:
                aborted = error.message
            else:
                if self._stop_now():
                    aborted = "stopped by the operator (stop --now): nothing applied"
                else:
                    state = {name: state[name] + aggregate.mean_delta[name] for name in state}
                    included, num_samples = aggregate.site_ids, aggregate.num_samples
                    if aggregate.mean_loss is not None:
                        mean_loss = aggregate.mean_loss
            report = self._evaluator.evaluate(state)
            record = RoundRecord(
                round=round_number,
                report=report,
                seconds=time.perf_counter() - started,
                sites=len(included),
                num_samples=num_samples,
                mean_loss=mean_loss,
                aborted=aborted,
            )
            self._checkpoints.save(round_number, state, record.to_json_dict())
            records.append(record)
            if self._control is not None:
                self._control.record_round(round_number, record.to_full_json_dict())
                self._control.set_status("running", budgets=budgets, sites_seen=sorted(reports))
            if on_round is not None:
                on_round(record)
            if self._stop_now():
                stopped = f"stopped by the operator during round {round_number}"
                break
            if patience is not None and rounds_since_best(records) >= patience:
                converged = f"validation macro-AUC has not improved for {patience} rounds"
                break
        if self._control is not None:
            self._control.set_status(
                "stopped" if stopped else "finished", stopped=stopped, converged=converged
            )
        completed = [r for r in records if r.aborted is None] or records
        selected: RoundRecord | None = None
        if completed and self._selection == "last":
            selected = completed[-1]
        elif completed:
            selected = max(completed, key=lambda r: r.report.validation.macro_auc)
        return FederationOutcome(
            records=tuple(records),
            selected=selected,
            final_state=state,
            stopped=stopped,
            converged=converged,
        )
