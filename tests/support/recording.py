"""An instrumented transport: wraps a participant and records everything crossing the wire."""

from __future__ import annotations

from typing import Any

from clinfl.federation.messages import RoundSettings, SiteContribution, TrainingReport
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
from clinfl.transport.contract import TrainingParticipant
from clinfl.typing import StateDict


class RecordingParticipant:
    """Forwards every call; keeps (direction, stage, payload) for each message."""

    def __init__(self, inner: TrainingParticipant, *, allow_plain: bool = False) -> None:
        self._inner = inner
        self._allow_plain = allow_plain
        self.to_site: list[tuple[str, Any]] = []
        self.to_coordinator: list[tuple[str, Any]] = []

    @property
    def site_id(self) -> str:
        return self._inner.site_id

    def _relay(self, stage: str, request: Any, reply: Any) -> Any:
        self.to_site.append((stage, request))
        self.to_coordinator.append((stage, reply))
        return reply

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> TrainingReport:
        reply = self._inner.train_round(global_state, settings)
        return self._relay("train", (global_state, settings), reply)  # type: ignore[no-any-return]

    def upload_plain(self) -> SiteContribution:
        if not self._allow_plain:
            raise AssertionError(f"the coordinator asked {self.site_id} for a plain update")
        return self._relay("plain", None, self._inner.upload_plain())  # type: ignore[no-any-return]

    def secagg_advertise(self, params: RoundParameters) -> Advertisement:
        return self._relay("advertise", params, self._inner.secagg_advertise(params))  # type: ignore[no-any-return]

    def secagg_graph(self, adverts: tuple[Advertisement, ...]) -> GraphReveal:
        return self._relay("graph", adverts, self._inner.secagg_graph(adverts))  # type: ignore[no-any-return]

    def secagg_share(self, reveals: tuple[GraphReveal, ...]) -> list[EncryptedShare]:
        return self._relay("share", reveals, self._inner.secagg_share(reveals))  # type: ignore[no-any-return]

    def secagg_masked_input(self, shares: list[EncryptedShare]) -> MaskedInput:
        return self._relay("masked-input", shares, self._inner.secagg_masked_input(shares))  # type: ignore[no-any-return]

    def secagg_sign(self, survivors: frozenset[str]) -> SurvivorSignature:
        return self._relay("consistency", survivors, self._inner.secagg_sign(survivors))  # type: ignore[no-any-return]

    def secagg_reveal(self, request: UnmaskRequest) -> RevealedShares:
        return self._relay("unmask", request, self._inner.secagg_reveal(request))  # type: ignore[no-any-return]
