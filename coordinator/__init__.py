"""What runs at the coordinator: rounds, aggregation, checkpoints and the run record."""

from coordinator.aggregation import Aggregator, PlainAggregator
from coordinator.checkpoints import CheckpointStore
from coordinator.rounds import Coordinator, FederationOutcome
from coordinator.secure_aggregation import SecureAggregator

__all__ = [
    "Aggregator",
    "CheckpointStore",
    "Coordinator",
    "FederationOutcome",
    "PlainAggregator",
    "SecureAggregator",
]
