"""Aggregators turn the participants' answers into one mean update.

Every algorithm's update is aggregatable as a sum: the aggregate is ``sum(w_i * delta_i) /
sum(w_i)`` with ``w_i`` the site's capped sample count. :class:`PlainAggregator` asks for the
weighted updates in the clear (sites whose policy requires secure aggregation refuse);
:class:`~coordinator.secure_aggregation.SecureAggregator` runs the masked protocol behind the
same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from clinfl.errors import ProtocolViolation, RoundAborted, SiteUnavailable
from clinfl.transport.contract import TrainingParticipant
from clinfl.typing import StateDict


@dataclass(frozen=True)
class AggregateUpdate:
    """The mean update of a round, which sites it covers, and their total sample weight.

    ``mean_loss`` is the mean training loss of the sites whose policy lets them report it
    (None when none does); with secure aggregation the coordinator learns only its sum.
    """

    mean_delta: StateDict
    site_ids: frozenset[str]
    num_samples: int
    refusals: dict[str, str] = field(default_factory=dict)
    mean_loss: float | None = None

    @property
    def sites(self) -> int:
        """How many sites the aggregate covers."""
        return len(self.site_ids)


class Aggregator(Protocol):
    """Combines the trained participants' updates into the sample-weighted mean update."""

    def aggregate(
        self, participants: Sequence[TrainingParticipant], *, round_id: int, template: StateDict
    ) -> AggregateUpdate:
        """Return the mean update over the sites that completed the round.

        Raises:
            RoundAborted: if too few sites completed; nothing may be applied.
        """
        ...


class PlainAggregator:
    """Unmasked sample-weighted mean, for federations that turned secure aggregation off."""

    def __init__(self, *, min_sites: int = 1) -> None:
        self._min_sites = min_sites

    def aggregate(
        self, participants: Sequence[TrainingParticipant], *, round_id: int, template: StateDict
    ) -> AggregateUpdate:
        """Return ``sum(w_i delta_i) / sum(w_i)`` over the sites that uploaded.

        Raises:
            RoundAborted: if fewer than ``min_sites`` sites uploaded.
        """
        summed = {name: torch.zeros_like(value) for name, value in template.items()}
        included: set[str] = set()
        refusals: dict[str, str] = {}
        total = 0
        losses: list[float] = []
        for participant in participants:
            try:
                contribution = participant.upload_plain()
            except SiteUnavailable:
                continue
            except ProtocolViolation as refusal:
                refusals[participant.site_id] = refusal.message
                continue
            for name in summed:
                summed[name] += contribution.weighted_delta[name].to(summed[name].dtype)
            total += contribution.weight
            included.add(contribution.site_id)
            if contribution.mean_loss is not None:
                losses.append(contribution.mean_loss)
        if len(included) < self._min_sites or total <= 0:
            reasons = "; ".join(refusals.values())
            raise RoundAborted(
                f"round {round_id} abandoned: {len(included)} site(s) uploaded, "
                f"{self._min_sites} needed; nothing was applied"
                + (f" ({reasons})" if reasons else ""),
                remedy="bring more sites online, or turn secure aggregation on if sites require it",
            )
        mean = {name: value / float(total) for name, value in summed.items()}
        mean_loss = sum(losses) / len(losses) if losses else None
        return AggregateUpdate(mean, frozenset(included), total, refusals, mean_loss=mean_loss)
