"""The coordinator's round as named steps, and what a run carries from step to step.

:class:`RoundStep` is the one table of a round's steps, in the order
:class:`~coordinator.rounds.Coordinator` runs them (as a Flower workflow runs its stages):

- ``train``: every participant trains from the global state; a site that refuses or does not
  answer is left out of the round, and when every site refuses the federation stops;
- ``aggregate``: the aggregator turns the trained sites' answers into one mean update. With
  secure aggregation this is the protocol's stages (:class:`clinfl.secagg.stages.Stage`;
  :data:`~clinfl.secagg.stages.ROUND_STAGES` is ``train`` and those stages, the names
  ``--drop`` takes); a round the aggregator abandons goes on with nothing to apply;
- ``apply``: the mean update is added to the global state, unless the operator asked to stop
  now (the round is then recorded as abandoned);
- ``evaluate``: the global model is evaluated;
- ``record``: the round's checkpoint and record, the control database, the ``on_round`` callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from clinfl.federation.messages import (
    EvaluationReport,
    RoundRecord,
    RoundSettings,
    TrainingReport,
)
from clinfl.secagg.stages import TRAIN
from clinfl.transport.contract import TrainingParticipant
from clinfl.typing import StateDict
from coordinator.aggregation import AggregateUpdate

RoundCallback = Callable[[RoundRecord], None]


class RoundStep(StrEnum):
    """A round's steps, in the only order a round takes; the value is the step's name."""

    TRAIN = TRAIN
    AGGREGATE = "aggregate"
    APPLY = "apply"
    EVALUATE = "evaluate"
    RECORD = "record"


ROUND_STEPS: tuple[RoundStep, ...] = tuple(RoundStep)


@dataclass
class RunProgress:
    """What a run carries from round to round: the global state, the records, why it ended."""

    state: StateDict
    records: list[RoundRecord]
    on_round: RoundCallback | None = None
    budgets: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None
    converged: str | None = None


@dataclass
class RoundInProgress:
    """What one round carries from step to step; each step fills in its part.

    ``trained`` and ``reports`` come from ``train``; ``update`` from ``aggregate`` (None when
    the round was abandoned, with ``aborted`` saying why); ``applied`` from ``apply`` (None when
    nothing was applied); ``report`` from ``evaluate``.
    """

    number: int
    started: float
    settings: RoundSettings
    trained: list[TrainingParticipant] = field(default_factory=list)
    reports: dict[str, TrainingReport] = field(default_factory=dict)
    update: AggregateUpdate | None = None
    aborted: str | None = None
    applied: AggregateUpdate | None = None
    report: EvaluationReport | None = None

    def record(self, seconds: float) -> RoundRecord:
        """Return the round's record, ``seconds`` after it started.

        Raises:
            RuntimeError: if the round has not been evaluated (a step out of order: a bug).
        """
        if self.report is None:
            raise RuntimeError(f"round {self.number} is recorded before it was evaluated")
        applied = self.applied
        mean_loss = None if applied is None else applied.mean_loss
        return RoundRecord(
            round=self.number,
            report=self.report,
            seconds=seconds,
            sites=0 if applied is None else len(applied.site_ids),
            num_samples=0 if applied is None else applied.num_samples,
            mean_loss=float("nan") if mean_loss is None else mean_loss,
            aborted=self.aborted,
        )
