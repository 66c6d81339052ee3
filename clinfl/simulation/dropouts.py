"""Injected dropouts for demos and tests: a site that stops answering at a chosen stage.

``site-2:share`` drops site-2 at the share stage of every round; ``site-2:share:3`` only in
round 3. A dropped site answers nothing from that stage on, for the rest of the round.
"""

from __future__ import annotations

from collections.abc import Sequence

from clinfl.config import DROP_STAGES, Dropout
from clinfl.errors import ConfigError, SiteUnavailable
from clinfl.federation.messages import RoundSettings, SiteContribution, TrainingReport
from clinfl.federation.roles import TrainingParticipant
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


class DroppingParticipant:
    """Wraps a participant and makes it unavailable from its configured stage on."""

    def __init__(self, inner: TrainingParticipant, drops: Sequence[Dropout]) -> None:
        self._inner = inner
        self._drops = [d for d in drops if d.site == inner.site_id]
        self._round = 0

    @property
    def site_id(self) -> str:
        """The wrapped site's identifier."""
        return self._inner.site_id

    def _check(self, stage: str) -> None:
        for drop in self._drops:
            if drop.round in (None, self._round) and DROP_STAGES.index(stage) >= DROP_STAGES.index(
                drop.stage
            ):
                raise SiteUnavailable(
                    f"{self.site_id} dropped out at {drop.stage} (injected)",
                    remedy="this dropout was requested with --drop",
                )

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        """Train unless dropped at ``train``."""
        self._round = settings.round
        self._check("train")
        return self._inner.train_round(global_state, settings)

    def upload_plain(self) -> SiteContribution:
        """Upload unless dropped at any later stage."""
        self._check("advertise")
        return self._inner.upload_plain()

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        """Advertise unless dropped."""
        self._check("advertise")
        return self._inner.secagg_advertise(params)

    def secagg_graph(self, adverts: tuple[Advertisement, ...]) -> GraphReveal:
        """Open the graph commitment unless dropped."""
        self._check("graph")
        return self._inner.secagg_graph(adverts)

    def secagg_share(self, reveals: tuple[GraphReveal, ...]) -> list[EncryptedShare]:
        """Share unless dropped."""
        self._check("share")
        return self._inner.secagg_share(reveals)

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        """Send the masked input unless dropped."""
        self._check("masked-input")
        return self._inner.secagg_masked_input(shares)

    def secagg_sign(self, survivors: frozenset[str]) -> SurvivorSignature:
        """Sign U3 unless dropped."""
        self._check("consistency")
        return self._inner.secagg_sign(survivors)

    def secagg_reveal(self, request: UnmaskRequest) -> RevealedShares:
        """Reveal shares unless dropped."""
        self._check("unmask")
        return self._inner.secagg_reveal(request)
