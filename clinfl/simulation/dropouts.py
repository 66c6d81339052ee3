"""Injected dropouts for demos and tests: a site that stops answering at a chosen stage.

``site-2:share`` drops site-2 at the share stage of every round; ``site-2:share:3`` only in
round 3. A dropped site answers nothing from that stage on, for the rest of the round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from clinfl.config import DROP_STAGES, Dropout
from clinfl.errors import ConfigError, SiteUnavailable
from clinfl.secagg.stages import RoundStage, stage_name
from clinfl.transport.contract import (
    TRAIN_ROUND,
    Call,
    CallingParticipant,
    TrainingParticipant,
    TrainRequest,
    answer,
)

A = TypeVar("A")
R = TypeVar("R")


def parse_dropout(text: str) -> Dropout:
    """Parse ``SITE:STAGE`` or ``SITE:STAGE:ROUND``.

    Raises:
        ConfigError: for a malformed spec, an unknown stage or a bad round number.
    """
    parts = text.strip().split(":")
    remedy = f"write SITE:STAGE[:ROUND], e.g. site-2:share:1; stages: {', '.join(DROP_STAGES)}"
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"cannot read dropout {text!r}", remedy=remedy)
    if parts[1] not in DROP_STAGES:
        raise ConfigError(f"unknown stage {parts[1]!r} in dropout {text!r}", remedy=remedy)
    round_number: int | None = None
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise ConfigError(f"round must be a positive integer in {text!r}", remedy=remedy)
        round_number = int(parts[2])
    return Dropout(site=parts[0], stage=parts[1], round=round_number)


class DroppingParticipant(CallingParticipant):
    """Wraps a participant and makes it unavailable from its configured stage on.

    Every round call passes through :meth:`call`, which checks the call's stage (from the
    contract's table) against the dropouts before the wrapped participant answers.
    """

    def __init__(self, inner: TrainingParticipant, drops: Sequence[Dropout]) -> None:
        self._inner = inner
        self._drops = [d for d in drops if d.site == inner.site_id]
        self._round = 0

    @property
    def site_id(self) -> str:
        """The wrapped site's identifier."""
        return self._inner.site_id

    def _check(self, stage: RoundStage) -> None:
        reached = DROP_STAGES.index(stage_name(stage))
        for drop in self._drops:
            if drop.round in (None, self._round) and reached >= DROP_STAGES.index(drop.stage):
                raise SiteUnavailable(
                    f"{self.site_id} dropped out at {drop.stage} (injected)",
                    remedy="this dropout was requested with --drop",
                )

    def call(self, call: Call[A, R], argument: A) -> R:
        """Pass ``call`` on unless the site dropped out at or before the call's stage.

        Raises:
            SiteUnavailable: for an injected dropout.
        """
        if call is TRAIN_ROUND and isinstance(argument, TrainRequest):
            self._round = argument.settings.round
        if call.stage is not None:
            self._check(call.stage)
        return answer(self._inner, call, argument)
