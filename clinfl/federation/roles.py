"""The interfaces the coordinator talks to; the in-process runner and the transports fill them.

A participant trains, then either uploads in the clear (only when secure aggregation is off and
its policy allows it) or answers the five secure-aggregation stages. Any stage may raise
:class:`~clinfl.errors.SiteUnavailable` (the site dropped out) or
:class:`~clinfl.errors.ProtocolViolation` (the site refused the request).
"""

from __future__ import annotations

from typing import Protocol

from clinfl.federation.messages import (
    EvaluationReport,
    RoundSettings,
    SiteContribution,
    TrainingReport,
)
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import RoundParameters
from clinfl.typing import StateDict


class SecureAggregationParticipant(Protocol):
    """A site as the secure-aggregation protocol sees it (one method per stage)."""

    @property
    def site_id(self) -> str:
        """The site's pseudonymous identifier."""
        ...

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        """Check the round's parameters and advertise fresh public keys."""
        ...

    def secagg_graph(self, adverts: tuple[Advertisement, ...]) -> GraphReveal:
        """Check the advertisements and open the site's graph commitment."""
        ...

    def secagg_share(self, reveals: tuple[GraphReveal, ...]) -> list[EncryptedShare]:
        """Check every site's graph reveal and return sealed shares for the neighbours."""
        ...

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        """Open the received shares and return the masked, encoded update."""
        ...

    def secagg_sign(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Sign the announced survivor set."""
        ...

    def secagg_reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Check the unmask request and reveal the shares it allows."""
        ...


class TrainingParticipant(SecureAggregationParticipant, Protocol):
    """A site, as the coordinator sees it."""

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        """Train locally from ``global_state``; the update stays at the site until sent."""
        ...

    def upload_plain(self) -> SiteContribution:
        """Send the update unmasked (refused when the site's policy requires secure aggregation)."""
        ...


class GlobalEvaluator(Protocol):
    """Whoever holds the federation's validation and test data."""

    def evaluate(self, global_state: StateDict) -> EvaluationReport:
        """Evaluate the global model."""
        ...
