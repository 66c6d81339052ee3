"""The simulation's evaluation: federated, as in a deployment, with a centralized comparison.

With secure aggregation on, the simulated sites evaluate each round as deployed sites do: each
scores its own slice of the held-out sets (:func:`~clinfl.simulation.sites.held_out_slices`)
and the coordinator unmasks only the pooled histograms
(:class:`~coordinator.federated_evaluation.SecureEvaluator`), which select the round and choose
the thresholds. As a clearly labelled simulation-only extra, :class:`SimulationEvaluator` also
scores the global model on the whole held-out sets in one place (what every earlier result
reported), for ``results.json``'s ``evaluation.central`` block. It never chooses anything.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from clinfl.federation.messages import EvaluationReport, RoundSettings
from clinfl.typing import StateDict
from coordinator.federated_evaluation import SecureEvaluator
from site_agent.evaluation import HeldOutEvaluator

CENTRAL_NOTE = (
    "simulation only: the global model scored centrally on the whole held-out sets, for "
    "comparison with earlier results; the federated evaluation (rounds, best) chose everything"
)


class SimulationEvaluator:
    """The federated evaluation of each round, and its centralized twin kept for comparison."""

    def __init__(self, secure: SecureEvaluator, central: HeldOutEvaluator) -> None:
        self.secure = secure
        self.central = central
        self.central_rounds: list[dict[str, Any]] = []

    def evaluate_round(self, global_state: StateDict, settings: RoundSettings) -> EvaluationReport:
        """Return the federated evaluation; record the centralized one on the side.

        The centralized evaluation's model diagnostics (LADM models, measured on validation
        images) are carried into the report, as before: a deployment has none.
        """
        report = self.secure.evaluate_round(global_state, settings)
        central = self.central.evaluate(global_state)
        operating = central.operating
        self.central_rounds.append(
            {
                "round": settings.round,
                "val_macro_auc": central.validation.macro_auc,
                "macro_auc": central.test.macro_auc,
                "micro_auc": central.test.micro_auc,
                "macro_f1_at_thresholds": None if operating is None else operating.macro_f1,
                "micro_f1_at_thresholds": None if operating is None else operating.micro_f1,
            }
        )
        return replace(report, model_diagnostics=central.model_diagnostics)

    def central_block(self, selected: dict[str, Any] | None) -> dict[str, Any]:
        """Return ``evaluation.central``: every round's central metrics and the selected model's."""
        return {"note": CENTRAL_NOTE, "rounds": self.central_rounds, "selected": selected}
