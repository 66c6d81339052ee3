"""Stage order of one secure-aggregation round; any step out of order is refused."""

from __future__ import annotations

from enum import IntEnum

from clinfl.errors import ProtocolViolation


class Stage(IntEnum):
    """The protocol's stages, in the only order a round may take."""

    ADVERTISE = 1
    GRAPH = 2
    SHARE = 3
    MASKED_INPUT = 4
    CONSISTENCY = 5
    UNMASK = 6


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
