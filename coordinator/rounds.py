"""The coordinator's round loop: the named steps of :mod:`coordinator.round_steps`, round by round.

Each round runs :data:`~coordinator.round_steps.ROUND_STEPS` in order (train, aggregate, apply,
evaluate, record), between operator boundaries; the run then selects one round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

from clinfl.config import FederationConfig, SelectionRule
from clinfl.errors import PolicyViolation, ProtocolViolation, RoundAborted, SiteUnavailable
from clinfl.federation.fanout import Fanout, in_turn
from clinfl.federation.messages import (
    EvaluationReport,
    RoundRecord,
    RoundSettings,
    TrainingReport,
)
from clinfl.transport.contract import TrainingParticipant
from clinfl.typing import StateDict
from coordinator.aggregation import Aggregator
from coordinator.checkpoints import CheckpointStore
from coordinator.control import RunControl
from coordinator.resume import ResumePoint
from coordinator.round_steps import (
    ROUND_STEPS,
    RoundCallback,
    RoundInProgress,
    RoundStep,
    RunProgress,
)

__all__ = [
    "Coordinator",
    "FederationOutcome",
    "RoundCallback",
    "RoundEvaluator",
    "rounds_since_best",
    "select_round",
]

Step = Callable[[RunProgress, RoundInProgress], bool]
"""One step of a round: fills in its part of the round; False ends the federation there."""


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


def evaluated(record: RoundRecord) -> bool:
    """Whether the round's evaluation gave a validation macro-AUC (not NaN: unevaluated)."""
    return not math.isnan(record.report.validation.macro_auc)


def rounds_since_best(records: Sequence[RoundRecord]) -> int:
    """Return how many completed rounds came after the best one on validation macro-AUC.

    An unevaluated round (NaN) never counts as the best; it counts as a round after it.
    """
    completed = [r for r in records if r.aborted is None]
    if not any(evaluated(r) for r in completed):
        return 0
    aucs = [r.report.validation.macro_auc if evaluated(r) else -math.inf for r in completed]
    best = max(range(len(aucs)), key=lambda i: (aucs[i], -i))  # the first of equal bests
    return len(completed) - 1 - best


def select_round(records: Sequence[RoundRecord], rule: SelectionRule) -> RoundRecord | None:
    """Return the best completed round on validation macro-AUC, or the last with ``'last'``.

    Abandoned rounds count only when no round completed; None when there is no round.
    Unevaluated rounds (NaN validation macro-AUC: their federated evaluation could not be
    unmasked) are passed over by ``best`` unless no round was evaluated; ``last`` takes the
    last completed round whatever its evaluation.
    """
    completed = [r for r in records if r.aborted is None] or list(records)
    if not completed:
        return None
    if rule == "last":
        return completed[-1]
    scored = [r for r in completed if evaluated(r)] or completed
    return max(scored, key=lambda r: r.report.validation.macro_auc)


def _train_one(
    participant: TrainingParticipant, state: StateDict, settings: RoundSettings
) -> TrainingReport | SiteUnavailable | PolicyViolation | ProtocolViolation:
    """Return the participant's report, or why it is left out of the round."""
    try:
        return participant.train_round(state, settings)
    except (SiteUnavailable, PolicyViolation, ProtocolViolation) as failure:
        return failure


class GlobalEvaluator(Protocol):
    """Whoever scores the global model for the coordinator from data it holds.

    Held-out sets in one place: a test's, or (secure aggregation off) the simulation's held-out
    sets or the deployed site that evaluates for the federation in the clear.
    """

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Evaluate the global model on validation and test data."""
        ...


@runtime_checkable
class RoundEvaluator(Protocol):
    """An evaluator that needs the round's settings (the federated one).

    :class:`~coordinator.federated_evaluation.SecureEvaluator`: its sites bind the round's
    settings into their evaluation session.
    """

    def evaluate_round(self, global_state: StateDict, settings: RoundSettings) -> EvaluationReport:
        """Evaluate the global model after round ``settings.round``."""
        ...


class Coordinator:
    """Runs the rounds. It sees only aggregates and never builds or touches the ETF.

    ``step_seconds`` holds how long each step of the last round took, under the step's name.
    """

    def __init__(
        self,
        participants: Sequence[TrainingParticipant],
        aggregator: Aggregator,
        evaluator: GlobalEvaluator | RoundEvaluator,
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
        self.step_seconds: dict[str, float] = {}
        self._steps: dict[RoundStep, Step] = {
            RoundStep.TRAIN: self._train,
            RoundStep.AGGREGATE: self._aggregate,
            RoundStep.APPLY: self._apply,
            RoundStep.EVALUATE: self._evaluate,
            RoundStep.RECORD: self._record,
        }

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

        Each round runs the steps of :data:`~coordinator.round_steps.ROUND_STEPS` in order:
        train, aggregate, apply, evaluate, record.

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
        run = RunProgress(state=state, records=list(previous), on_round=on_round)
        self._started(first_round, rounds)
        for number in range(first_round, rounds + 1):
            run.stopped = self._boundary(number, rounds)
            if run.stopped is not None:
                break
            current = RoundInProgress(number, time.perf_counter(), settings_for(number))
            if not self._play(run, current) or self._ends_after(run, number, patience):
                break
        self._finished(run)
        return FederationOutcome(
            records=tuple(run.records),
            selected=select_round(run.records, self._selection),
            final_state=run.state,
            stopped=run.stopped,
            converged=run.converged,
        )

    def _play(self, run: RunProgress, current: RoundInProgress) -> bool:
        """Run the round's steps in the table's order, timing each; False: the run stops."""
        self.step_seconds = {}
        for step in ROUND_STEPS:
            started = time.perf_counter()
            going_on = self._steps[step](run, current)
            self.step_seconds[step.value] = time.perf_counter() - started
            if not going_on:
                return False
        return True

    def _train(self, run: RunProgress, current: RoundInProgress) -> bool:
        """Ask every participant to train; False (and why) when every site refused.

        A site that refuses (policy or protocol) or does not answer is left out of the round.
        """
        refusals: list[str] = []
        outcomes = self._fanout(
            [partial(_train_one, p, run.state, current.settings) for p in self._participants]
        )
        for participant, outcome in zip(self._participants, outcomes, strict=True):
            if isinstance(outcome, PolicyViolation | ProtocolViolation):
                refusals.append(outcome.message)
            elif isinstance(outcome, TrainingReport):
                current.reports[participant.site_id] = outcome
                current.trained.append(participant)
        if refusals and not current.trained:
            run.stopped = f"stopped before round {current.number}: " + "; ".join(refusals)
            return False
        return True

    def _aggregate(self, run: RunProgress, current: RoundInProgress) -> bool:
        """Turn the trained sites' answers into the mean update; an abandoned round goes on."""
        try:
            current.update = self._aggregator.aggregate(
                current.trained, round_id=current.number, template=run.state
            )
        except RoundAborted as error:
            current.aborted = error.message
        return True

    def _apply(self, run: RunProgress, current: RoundInProgress) -> bool:
        """Add the mean update to the global state, unless the operator asked to stop now."""
        update = current.update
        if update is None:
            return True
        if self._stop_now():
            current.aborted = "stopped by the operator (stop --now): nothing applied"
            return True
        run.state = {name: run.state[name] + update.mean_delta[name] for name in run.state}
        current.applied = update
        return True

    def _evaluate(self, run: RunProgress, current: RoundInProgress) -> bool:
        """Evaluate the global model as it stands after the round."""
        evaluator = self._evaluator
        if isinstance(evaluator, RoundEvaluator):
            current.report = evaluator.evaluate_round(run.state, current.settings)
        else:
            current.report = evaluator.evaluate(run.state)
        return True

    def _record(self, run: RunProgress, current: RoundInProgress) -> bool:
        """Write the checkpoint and the record; tell the control database and ``on_round``."""
        record = current.record(time.perf_counter() - current.started)
        self._checkpoints.save(current.number, run.state, record.to_json_dict())
        run.records.append(record)
        run.budgets.update(
            {s: r.epsilon_spent for s, r in current.reports.items() if r.epsilon_spent is not None}
        )
        if self._control is not None:
            self._control.record_round(current.number, record.to_full_json_dict())
            self._control.set_status(
                "running", budgets=run.budgets, sites_seen=sorted(current.reports)
            )
        if run.on_round is not None:
            run.on_round(record)
        return True

    def _ends_after(self, run: RunProgress, number: int, patience: int | None) -> bool:
        """Return whether the run ends after round ``number``: stop --now, or converged."""
        if self._stop_now():
            run.stopped = f"stopped by the operator during round {number}"
        elif patience is not None and rounds_since_best(run.records) >= patience:
            run.converged = f"validation macro-AUC has not improved for {patience} rounds"
        return run.stopped is not None or run.converged is not None

    def _started(self, first_round: int, rounds: int) -> None:
        if self._control is not None:
            self._control.set_status(
                "running",
                current_round=first_round,
                total_rounds=rounds,
                sites=[p.site_id for p in self._participants],
            )

    def _finished(self, run: RunProgress) -> None:
        if self._control is not None:
            self._control.set_status(
                "stopped" if run.stopped else "finished",
                stopped=run.stopped,
                converged=run.converged,
            )

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
