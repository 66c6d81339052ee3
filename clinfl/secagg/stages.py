"""Stage order of one round: local training, then the secure-aggregation protocol's stages.

:class:`Stage` is the protocol's order; any protocol step out of order is refused
(:func:`check_transition`). :data:`RoundStage` adds the training that comes before it: the one
vocabulary for where in a round a call belongs (:mod:`clinfl.transport.contract`) and for where
an injected dropout starts (``--drop site-2:masked-input``, :func:`stage_name`). The round ends
with its federated evaluation (:data:`SCORE`); a site dropped at any stage stays dropped for the
rest of the round, its evaluation included (whose summing reuses the protocol's stages).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, Literal, TypeAlias

from clinfl.errors import ProtocolViolation


class Stage(IntEnum):
    """The protocol's stages, in the only order a round may take."""

    ADVERTISE = 1
    GRAPH = 2
    SHARE = 3
    MASKED_INPUT = 4
    CONSISTENCY = 5
    UNMASK = 6


TRAIN: Final = "train"
"""Local training: the step of a round before the protocol (no protocol stage of its own)."""

SCORE: Final = "score"
"""The round's federated evaluation: each site scores the new global model on its held-out
studies; the histograms are then summed by a second run of the protocol's stages."""

RoundStage: TypeAlias = Literal["train", "score"] | Stage
"""Where in a round a call belongs: :data:`TRAIN`, each :class:`Stage` in order, :data:`SCORE`."""

ROUND_STAGES: tuple[RoundStage, ...] = (TRAIN, *Stage, SCORE)


def stage_name(stage: RoundStage) -> str:
    """Return the stage as users write it: ``train``, ``advertise``, ..., ``masked-input``."""
    return stage if isinstance(stage, str) else stage.name.lower().replace("_", "-")


def check_transition(current: Stage | None, requested: Stage) -> Stage:
    """Return ``requested`` if it directly follows ``current`` (None: the round has not started).

    Raises:
        ProtocolViolation: for a repeated, skipped or backward stage.
    """
    expected = (
        Stage.ADVERTISE
        if current is None
        else Stage(current + 1)
        if current < Stage.UNMASK
        else None
    )
    if requested != expected:
        after = "the start of the round" if current is None else current.name
        raise ProtocolViolation(
            f"stage {requested.name} requested after {after}",
            remedy="the coordinator must run the stages in order; this round is abandoned",
        )
    return requested
