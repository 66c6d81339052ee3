"""Federated evaluation through secure aggregation: every site's held-out studies, one pooled sum.

After each round's ``apply`` step, :class:`SecureEvaluator` asks every participant to score the
new global model (``score_round``): each site that joins federated evaluations (``auc`` in its
policy's ``reporting.metrics``) counts its validation and test studies by score bin, per class
and label, with its loss sums (:mod:`site_agent.federated_scoring`). The counts are then summed
by the same six-stage protocol as the updates
(:func:`~coordinator.secure_aggregation.run_protocol`: same checks, same floor
``min_sites + max_colluders``, same threshold), in a session of purpose ``evaluation`` bound
into every advertisement. The coordinator unmasks only the federation-wide
histograms and computes from them:

- validation and test macro/micro AUC and F1 at 0.5
  (:func:`~clinfl.evaluation.auc.histogram_metrics`); round selection reads the pooled
  validation macro-AUC;
- per-class thresholds on pooled validation under the run's threshold rule, and test F1,
  sensitivity and specificity at them (:mod:`clinfl.evaluation.operating`).

A round whose evaluation cannot be unmasked (too few sites scored or survived, or no class with
both outcomes) is *unevaluated*: its metrics are NaN, the reason is kept in
:attr:`SecureEvaluator.unevaluated`, and selection passes over it
(:func:`~coordinator.rounds.select_round`). It never stops the run. A state identical to the
last evaluated one (a round that applied nothing) keeps that evaluation: the sites would refuse
to score one model twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from clinfl.config import SecAggConfig
from clinfl.errors import ClinflError, RoundAborted, SiteUnavailable
from clinfl.evaluation.auc import histogram_metrics, per_class_auc
from clinfl.evaluation.grid import DEFAULT_GRID, BinGrid
from clinfl.evaluation.histograms import ScoreHistograms
from clinfl.evaluation.operating import (
    choose_histogram_thresholds,
    histogram_operating_point,
    histogram_sensitivity_specificity,
)
from clinfl.evaluation.vector import from_integer_vector, vector_length
from clinfl.federation.digests import canonical_state_digest
from clinfl.federation.fanout import Fanout, in_turn
from clinfl.federation.messages import EvaluationReport, RoundSettings
from clinfl.metrics import MultiLabelMetrics
from clinfl.secagg.encoding import decode_counts
from clinfl.thresholds import ThresholdRule
from clinfl.transport.contract import ScoreAck, TrainingParticipant
from clinfl.typing import StateDict
from coordinator.secure_aggregation import run_protocol

log = logging.getLogger("clinfl.coordinator")
CHOSEN_ON = "pooled validation (secure aggregation)"


def no_metrics(num_classes: int) -> MultiLabelMetrics:
    """Metrics of an evaluation that could not run (every value NaN or None)."""
    nan = float("nan")
    return MultiLabelMetrics(nan, nan, nan, nan, (None,) * num_classes)


@dataclass(frozen=True)
class PooledEvaluation:
    """The federation-wide histograms of one evaluation and the sites in the sum."""

    validation: ScoreHistograms
    test: ScoreHistograms
    sites: int


def hanley_mcneil_interval(auc: float, positives: int, negatives: int) -> list[float]:
    """Return the 95% interval ``auc +- 1.96 SE`` of Hanley and McNeil (1982), within [0, 1].

    From counts alone (the pooled histograms), where a bootstrap would need the scores:
    ``SE^2 = (A(1-A) + (P-1)(Q1-A^2) + (N-1)(Q2-A^2)) / (PN)``, ``Q1 = A/(2-A)``,
    ``Q2 = 2A^2/(1+A)``.
    """
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    ) / (positives * negatives)
    half = 1.96 * math.sqrt(max(variance, 0.0))
    return [max(0.0, auc - half), min(1.0, auc + half)]


def describe_pooled(
    pooled: PooledEvaluation, rule: ThresholdRule, class_names: Sequence[str]
) -> dict[str, Any]:
    """Return the selected model's operating thresholds and test rates from pooled histograms.

    The same keys as the simulation's central description
    (:func:`~site_agent.selected_model.describe_selected_model`): ``rule``, ``chosen_on``,
    ``classes`` (threshold, flagged, pooled validation positives, test sensitivity and
    specificity at the threshold, the test AUC's 95% interval by Hanley-McNeil), ``bootstrap``
    (None: no scores to resample), plus ``sites`` (how many sites the sums cover).
    """
    chosen = choose_histogram_thresholds(pooled.validation, rule)
    sensitivity, specificity = histogram_sensitivity_specificity(
        pooled.test, np.asarray(chosen.thresholds)
    )
    aucs = per_class_auc(pooled.test)
    positives, negatives = pooled.test.positive_totals, pooled.test.negative_totals
    validation_positives = pooled.validation.positive_totals
    classes = {
        name: {
            "threshold": chosen.thresholds[k],
            "flagged": chosen.flagged[k],
            "validation_positives": int(validation_positives[k]),
            "test_sensitivity": sensitivity[k],
            "test_specificity": specificity[k],
            "test_auc_ci": None
            if aucs[k] is None
            else hanley_mcneil_interval(float(aucs[k]), int(positives[k]), int(negatives[k])),  # type: ignore[arg-type]
        }
        for k, name in enumerate(class_names)
    }
    return {
        "rule": rule.text,
        "chosen_on": CHOSEN_ON,
        "classes": classes,
        "interval": "Hanley-McNeil 95% (from the pooled test histograms)",
        "bootstrap": None,
        "sites": pooled.sites,
    }


@dataclass
class _Last:
    digest: bytes
    report: EvaluationReport
    pooled: PooledEvaluation | None


@dataclass
class EvaluationLog:
    """What the evaluator did, round by round (for ``results.json``'s ``evaluation`` block)."""

    pooled: dict[int, PooledEvaluation] = field(default_factory=dict)
    unevaluated: dict[int, str] = field(default_factory=dict)
    refusals: dict[int, dict[str, str]] = field(default_factory=dict)


class SecureEvaluator:
    """Evaluates each round's global model from the sites' masked histograms (module docstring).

    A :class:`~coordinator.rounds.RoundEvaluator`: the coordinator calls :meth:`evaluate_round`
    after each round's ``apply`` step.
    """

    def __init__(
        self,
        participants: Sequence[TrainingParticipant],
        config: SecAggConfig,
        *,
        num_classes: int,
        threshold_rule: ThresholdRule,
        run_id: str = "",
        fanout: Fanout = in_turn,
        grid: BinGrid = DEFAULT_GRID,
    ) -> None:
        """Evaluate over ``participants`` with ``config``'s floor and threshold, run ``run_id``."""
        self._participants = tuple(participants)
        self._config = config
        self._classes = num_classes
        self._rule = threshold_rule
        self._run_id = run_id
        self._fanout = fanout
        self._grid = grid
        self._last: _Last | None = None
        self.log = EvaluationLog()
        self.stage_seconds: dict[str, float] = {}

    @property
    def threshold_rule(self) -> ThresholdRule:
        """The rule thresholds are chosen by on pooled validation."""
        return self._rule

    @property
    def grid(self) -> BinGrid:
        """The score grid every site's histograms are on."""
        return self._grid

    @property
    def vector_length(self) -> int:
        """The length of every site's evaluation vector (validation's, then test's)."""
        return 2 * vector_length(self._grid, self._classes)

    def unevaluated_report(self) -> EvaluationReport:
        """The report of a round that could not be evaluated (NaN metrics)."""
        empty = no_metrics(self._classes)
        return EvaluationReport(validation=empty, test=empty)

    def evaluate_round(self, global_state: StateDict, settings: RoundSettings) -> EvaluationReport:
        """Return the pooled evaluation of ``global_state`` after round ``settings.round``.

        Never raises for what the sites do: a round that cannot be evaluated gets NaN metrics
        and its reason in ``log.unevaluated``.
        """
        number = settings.round
        digest = canonical_state_digest(global_state)
        last = self._last
        if last is not None and last.digest == digest:  # nothing applied: the same model
            if last.pooled is not None:
                self.log.pooled[number] = last.pooled
            else:
                self.log.unevaluated[number] = self.log.unevaluated.get(
                    number, "the model did not change and its evaluation could not be unmasked"
                )
            return last.report
        try:
            pooled = self._pool(global_state, settings)
            report = EvaluationReport(
                validation=histogram_metrics(pooled.validation),
                test=histogram_metrics(pooled.test),
                operating=histogram_operating_point(pooled.validation, pooled.test, self._rule),
            )
        except ClinflError as failure:
            reason = f"round {number} unevaluated: {failure.message}"
            log.warning("%s", reason)
            self.log.unevaluated[number] = reason
            report = self.unevaluated_report()
            self._last = _Last(digest, report, None)
            return report
        self.log.pooled[number] = pooled
        self._last = _Last(digest, report, pooled)
        return report

    def describe(self, round_number: int, class_names: Sequence[str]) -> dict[str, Any] | None:
        """Return the operating description of round ``round_number`` (None if unevaluated)."""
        pooled = self.log.pooled.get(round_number)
        return None if pooled is None else describe_pooled(pooled, self._rule, class_names)

    def _pool(self, global_state: StateDict, settings: RoundSettings) -> PooledEvaluation:
        """Ask every site to score, sum their vectors securely, decode the pooled histograms.

        Raises:
            RoundAborted: if too few sites scored or survived the session.
            EvaluationError: if the sum does not decode, or no class has both outcomes.
        """
        number, expected = settings.round, self.vector_length
        refusals: dict[str, str] = {}
        answers = self._fanout(
            [partial(_score_one, p, global_state, settings) for p in self._participants]
        )
        scored = {}
        for participant, answer in zip(self._participants, answers, strict=True):
            if isinstance(answer, ScoreAck) and answer.vector_length == expected:
                scored[participant.site_id] = participant
            elif isinstance(answer, ScoreAck):
                refusals[participant.site_id] = (
                    f"its evaluation vector has {answer.vector_length} slots, the run's {expected}"
                )
            elif isinstance(answer, ClinflError) and not isinstance(answer, SiteUnavailable):
                refusals[participant.site_id] = answer.message
        self.log.refusals[number] = refusals
        floor = max(2, self._config.sum_floor)
        if len(scored) < floor:
            raise RoundAborted(
                f"{len(scored)} site(s) scored the model, a secure evaluation needs at least "
                f"{floor}",
                remedy="bring more sites online, or add 'auc' to more sites' reporting.metrics",
            )
        params = self._config.plan(
            run_id=self._run_id,
            round_id=number,
            site_ids=tuple(scored),
            vector_length=expected,
            purpose="evaluation",
        )
        self.stage_seconds = {}
        masked = run_protocol(
            scored,
            params,
            fanout=self._fanout,
            refusals=refusals,
            stage_seconds=self.stage_seconds,
        )
        try:
            counts = decode_counts(masked.total, params=params)
        except ValueError as error:
            raise RoundAborted(str(error), remedy="check the sites' clinfl versions") from None
        half = expected // 2
        # noisy=True clamps negative pooled counts to 0: a no-op without evaluation noise
        validation = from_integer_vector(counts.counts[:half], grid=self._grid, noisy=True)
        test = from_integer_vector(counts.counts[half:], grid=self._grid, noisy=True)
        return PooledEvaluation(validation, test, counts.contributors)


def _score_one(
    participant: TrainingParticipant, global_state: StateDict, settings: RoundSettings
) -> ScoreAck | ClinflError:
    """Return the site's acknowledgement, or why it does not take part."""
    try:
        return participant.score_round(global_state, settings)
    except ClinflError as failure:
        return failure


def evaluation_summary(
    evaluator: SecureEvaluator | None,
    *,
    method: str,
    central: dict[str, Any] | None = None,
    evaluated_by: str | None = None,
) -> dict[str, Any]:
    """Return ``results.json``'s ``evaluation`` block: how the rounds were evaluated.

    ``method`` names it (``secure-aggregation``, or a fallback without secure aggregation);
    with the secure evaluator: the score grid, how many sites each round's sums cover, the
    unevaluated rounds with why, and the sites that did not score each round with why.
    ``central`` is the simulation's centralized comparison (None in a deployment).
    """
    summary: dict[str, Any] = {"method": method}
    if evaluator is not None:
        grid = evaluator.grid
        summary.update(
            grid={"bins": grid.bins, "kind": grid.kind},
            sites={str(r): pooled.sites for r, pooled in sorted(evaluator.log.pooled.items())},
            unevaluated={str(r): why for r, why in sorted(evaluator.log.unevaluated.items())},
            refusals={
                str(r): dict(sorted(sites.items()))
                for r, sites in sorted(evaluator.log.refusals.items())
                if sites
            },
        )
    if evaluated_by is not None:
        summary["evaluated_by"] = evaluated_by
    summary["central"] = central
    return summary
