"""The interfaces the coordinator talks to; the in-process runner and the transports fill them.

A site as the coordinator's round code sees it (:class:`TrainingParticipant`) has one method per
round call of the contract, so it is defined with the contract's table,
:mod:`clinfl.transport.contract`, and named here too.
"""

from __future__ import annotations

from typing import Protocol

from clinfl.federation.messages import EvaluationReport
from clinfl.transport.contract import SecureAggregationParticipant, TrainingParticipant
from clinfl.typing import StateDict

__all__ = ["GlobalEvaluator", "SecureAggregationParticipant", "TrainingParticipant"]


class GlobalEvaluator(Protocol):
    """Whoever holds the federation's validation and test data."""

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Evaluate the global model."""
        ...
