"""The coordinator's round as named steps: their order, and what each step decides.

Recording doubles (participants, aggregator, evaluator, checkpoint store) write one journal, so
the order of a round's steps is seen from outside, as the steps' collaborators see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import typer.main

from clinfl.cli.app import app
from clinfl.errors import PolicyViolation, RoundAborted, SiteUnavailable
from clinfl.federation.messages import EvaluationReport, RoundRecord, RoundSettings, TrainingReport
from clinfl.metrics import MultiLabelMetrics
from clinfl.secagg.stages import ROUND_STAGES, stage_name
from clinfl.typing import StateDict
from coordinator.aggregation import AggregateUpdate
from coordinator.control import RunControl
from coordinator.round_steps import ROUND_STEPS, RoundStep
from coordinator.rounds import Coordinator

TEMPLATE = {"w": torch.zeros(2)}
Journal = list[tuple[str, object]]


def _settings(round_number: int) -> RoundSettings:
    return RoundSettings(round=round_number, local_epochs=1, batch_size=8, lr=1e-3)


class Participant:
    """Trains (journals it), refuses, or is unavailable; reports ``epsilon`` when given."""

    def __init__(
        self, site_id: str, journal: Journal, *, fails: Exception | None = None, epsilon=None
    ) -> None:
        self.site_id = site_id
        self._journal = journal
        self._fails = fails
        self._epsilon = epsilon

    def train_round(self, state: StateDict, settings: RoundSettings) -> TrainingReport:
        if self._fails is not None:
            raise self._fails
        self._journal.append(("train", self.site_id))
        return TrainingReport(self.site_id, epsilon_spent=self._epsilon)


class Aggregator:
    """Adds 1 to every value, or abandons the round given in ``aborts``."""

    def __init__(self, journal: Journal, *, aborts: int | None = None) -> None:
        self._journal = journal
        self._aborts = aborts

    def aggregate(
        self, participants: Sequence[Participant], *, round_id: int, template: StateDict
    ) -> AggregateUpdate:
        sites = [p.site_id for p in participants]
        self._journal.append(("aggregate", sites))
        if round_id == self._aborts:
            raise RoundAborted(f"round {round_id} abandoned: scripted", remedy="none")
        delta = {name: torch.ones_like(value) for name, value in template.items()}
        return AggregateUpdate(delta, frozenset(sites), 10 * len(sites), mean_loss=0.25)


class Evaluator:
    """Journals the first value of the global state it is shown (what was applied)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def evaluate(self, state: StateDict) -> EvaluationReport:
        value = float(state["w"][0])
        self._journal.append(("evaluate", value))
        metrics = MultiLabelMetrics(0.5 + value / 100, 0.5, 0.1, 0.1, (0.5,))
        return EvaluationReport(metrics, metrics)


class Checkpoints:
    """Journals each checkpoint written."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def save(self, round_number: int, state: StateDict, metrics: dict[str, object]) -> Path:
        self._journal.append(("record", round_number))
        return Path(f"round-{round_number}")


def _coordinator(
    journal: Journal,
    participants: Sequence[Participant],
    *,
    aborts: int | None = None,
    control: RunControl | None = None,
) -> Coordinator:
    return Coordinator(
        participants,  # type: ignore[arg-type]
        Aggregator(journal, aborts=aborts),  # type: ignore[arg-type]
        Evaluator(journal),
        Checkpoints(journal),  # type: ignore[arg-type]
        control=control,
    )


def _sites(journal: Journal, count: int = 2) -> list[Participant]:
    return [Participant(f"site-{k + 1}", journal) for k in range(count)]


def test_the_step_table_names_the_round_in_order() -> None:
    assert [str(step) for step in ROUND_STEPS] == [
        "train",
        "aggregate",
        "apply",
        "evaluate",
        "record",
    ]
    # the loop's first step is the first stage ``--drop`` and the call table name
    assert stage_name(ROUND_STAGES[0]) == RoundStep.TRAIN


def test_each_round_trains_aggregates_applies_evaluates_and_records_in_that_order() -> None:
    journal: Journal = []
    seen: list[int] = []

    def on_round(record: RoundRecord) -> None:
        journal.append(("on_round", record.round))
        seen.append(record.round)

    coordinator = _coordinator(journal, _sites(journal))
    outcome = coordinator.run(TEMPLATE, rounds=2, settings_for=_settings, on_round=on_round)
    one_round = [
        ("train", "site-1"),
        ("train", "site-2"),
        ("aggregate", ["site-1", "site-2"]),
    ]
    # the evaluator sees the applied update (1 after round 1, 2 after round 2): apply ran first
    assert journal == [
        *one_round,
        ("evaluate", 1.0),
        ("record", 1),
        ("on_round", 1),
        *one_round,
        ("evaluate", 2.0),
        ("record", 2),
        ("on_round", 2),
    ]
    assert seen == [1, 2]
    assert torch.equal(outcome.final_state["w"], torch.full((2,), 2.0))
    assert TEMPLATE["w"].sum() == 0  # the caller's state is never changed
    # the coordinator timed the last round's steps under the table's names, in its order
    assert list(coordinator.step_seconds) == [str(step) for step in ROUND_STEPS]
    assert all(seconds >= 0 for seconds in coordinator.step_seconds.values())


def test_an_abandoned_round_applies_nothing_but_is_evaluated_and_recorded() -> None:
    journal: Journal = []
    coordinator = _coordinator(journal, _sites(journal), aborts=1)
    outcome = coordinator.run(TEMPLATE, rounds=2, settings_for=_settings)
    evaluated = [value for step, value in journal if step == "evaluate"]
    assert evaluated == [0.0, 1.0]  # round 1 left the state as it was
    assert [step for step, _ in journal].count("record") == 2
    first, second = outcome.records
    assert first.aborted == "round 1 abandoned: scripted"
    assert (first.sites, first.num_samples) == (0, 0) and first.mean_loss != first.mean_loss
    assert second.aborted is None and (second.sites, second.num_samples) == (2, 20)
    assert second.mean_loss == 0.25
    assert outcome.selected is second  # a completed round is selected over an abandoned one


def test_refusing_and_unavailable_sites_are_left_out_of_the_round() -> None:
    journal: Journal = []
    sites = [
        Participant("site-1", journal),
        Participant("site-2", journal, fails=PolicyViolation("budget spent", remedy="r")),
        Participant("site-3", journal, fails=SiteUnavailable("gone", remedy="r")),
    ]
    outcome = _coordinator(journal, sites).run(TEMPLATE, rounds=1, settings_for=_settings)
    assert ("aggregate", ["site-1"]) in journal
    assert outcome.stopped is None and len(outcome.records) == 1


def test_when_every_site_refuses_the_federation_stops_before_the_round_and_says_why(
    tmp_path: Path,
) -> None:
    journal: Journal = []
    sites = [
        Participant("site-1", journal, fails=PolicyViolation("site-1 budget spent", remedy="r")),
        Participant("site-2", journal, fails=PolicyViolation("site-2 budget spent", remedy="r")),
    ]
    control = RunControl(tmp_path)
    try:
        outcome = _coordinator(journal, sites, control=control).run(
            TEMPLATE, rounds=3, settings_for=_settings
        )
        status = control.status()
    finally:
        control.close()
    assert outcome.stopped == "stopped before round 1: site-1 budget spent; site-2 budget spent"
    assert journal == [] and outcome.records == () and outcome.selected is None
    assert status["state"] == "stopped" and status["stopped"] == outcome.stopped


def test_only_unavailable_sites_is_not_a_stop(tmp_path: Path) -> None:
    """No refusal, no site: the round is still run (and the aggregator decides)."""
    journal: Journal = []
    sites = [Participant("site-1", journal, fails=SiteUnavailable("gone", remedy="r"))]
    outcome = _coordinator(journal, sites).run(TEMPLATE, rounds=1, settings_for=_settings)
    assert ("aggregate", []) in journal and outcome.stopped is None


def test_reported_budgets_and_sites_seen_go_to_the_control_database(tmp_path: Path) -> None:
    journal: Journal = []
    sites = [
        Participant("site-1", journal, epsilon=1.5),
        Participant("site-2", journal),
    ]
    control = RunControl(tmp_path)
    try:
        _coordinator(journal, sites, control=control).run(
            TEMPLATE, rounds=2, settings_for=_settings
        )
        status = control.status()
        rounds = control.rounds()
    finally:
        control.close()
    assert status["budgets"] == {"site-1": 1.5}
    assert status["sites_seen"] == ["site-1", "site-2"]
    assert status["sites"] == ["site-1", "site-2"]
    assert status["state"] == "finished" and status["stopped"] is None
    assert [r["round"] for r in rounds] == [1, 2]


def test_the_drop_option_lists_exactly_the_stage_tables_stages() -> None:
    command = typer.main.get_command(app).commands["simulate"]  # type: ignore[attr-defined]
    help_text = {p.name: p.help for p in command.params}["drop"]
    listed = help_text.split(" stages ", 1)[1].removesuffix(" (repeatable).").split(", ")
    assert listed == [stage_name(stage) for stage in ROUND_STAGES]
    assert "graph" in listed  # the stage the hand-written list had left out
