"""Training until validation stops improving: the coordinator's patience rule."""

from __future__ import annotations

from pathlib import Path

import torch

from clinfl.federation.messages import EvaluationReport, RoundSettings
from clinfl.metrics import MultiLabelMetrics
from clinfl.secagg.settings import SecAggRequirements
from coordinator.aggregation import PlainAggregator
from coordinator.checkpoints import CheckpointStore
from coordinator.control import RunControl
from coordinator.rounds import Coordinator
from tests.support.federation import make_agents, random_deltas

TEMPLATE = {"w": torch.zeros(6)}


class ScriptedEvaluator:
    """Returns the next validation macro-AUC of a fixed script each round."""

    def __init__(self, validation_aucs: list[float]) -> None:
        self._aucs = list(validation_aucs)

    def evaluate(self, global_state: dict[str, torch.Tensor]) -> EvaluationReport:
        auc = self._aucs.pop(0)
        metrics = MultiLabelMetrics(auc, auc, 0.1, 0.1, (auc,))
        return EvaluationReport(metrics, metrics)


def _run(tmp_path: Path, aucs: list[float], *, patience: int | None, rounds: int = 8):
    agents = make_agents(
        random_deltas(3, TEMPLATE), [10, 20, 30], requirements=SecAggRequirements(required=False)
    )
    control = RunControl(tmp_path)
    try:
        outcome = Coordinator(
            agents,  # type: ignore[arg-type]
            PlainAggregator(),
            ScriptedEvaluator(aucs),
            CheckpointStore(tmp_path),
            control=control,
        ).run(
            TEMPLATE,
            rounds=rounds,
            patience=patience,
            settings_for=lambda r: RoundSettings(round=r, local_epochs=1, batch_size=8, lr=1e-3),
        )
        status = control.status()
    finally:
        control.close()
    return outcome, status


def test_stops_after_patience_rounds_without_improvement(tmp_path: Path) -> None:
    # best at round 2; round 4 only ties it, which is not an improvement
    outcome, status = _run(tmp_path, [0.6, 0.7, 0.69, 0.7, 0.95, 0.96, 0.97, 0.98], patience=2)
    assert [r.round for r in outcome.records] == [1, 2, 3, 4]
    assert outcome.selected is not None and outcome.selected.round == 2
    assert outcome.converged is not None and "2 rounds" in outcome.converged
    assert outcome.stopped is None
    assert status["state"] == "finished" and status["converged"] == outcome.converged


def test_an_improvement_resets_the_count(tmp_path: Path) -> None:
    outcome, _ = _run(tmp_path, [0.6, 0.5, 0.7, 0.65, 0.8, 0.7, 0.7, 0.9], patience=2)
    assert [r.round for r in outcome.records] == [1, 2, 3, 4, 5, 6, 7]
    assert outcome.selected is not None and outcome.selected.round == 5


def test_without_patience_every_round_runs(tmp_path: Path) -> None:
    outcome, _ = _run(tmp_path, [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], patience=None)
    assert len(outcome.records) == 8 and outcome.converged is None


def test_status_says_when_a_round_has_passed_its_boundary(tmp_path: Path) -> None:
    """``last_round_started`` is what an operator (or a test) waits on before a mid-round pause."""
    _, status = _run(tmp_path, [0.6, 0.7, 0.8], patience=None, rounds=3)
    assert status["last_round_started"] == 3
