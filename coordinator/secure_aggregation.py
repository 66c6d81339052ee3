"""The default aggregator: SecAgg / SecAgg+ over the trained participants.

The coordinator relays keys, graph reveals and sealed shares, adds masked vectors into a running
sum as they arrive, and unmasks only the sum (whose metadata slots carry the total sample weight
and the sites' summed losses). Sites that stop answering at any stage are dropouts; sites that
refuse a request are recorded with their reason. If fewer than the threshold remain, the round is
abandoned with :class:`~clinfl.errors.RoundAborted` and nothing is applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from clinfl.config import SecAggConfig
from clinfl.errors import ProtocolViolation, RoundAborted, SiteUnavailable
from clinfl.federation.fanout import Fanout, in_turn
from clinfl.federation.vectors import unflatten_state, vector_length
from clinfl.secagg.encoding import decode_sum
from clinfl.secagg.messages import MaskedInput
from clinfl.secagg.server_session import ServerSession
from clinfl.secagg.settings import RoundParameters
from clinfl.secagg.stages import Stage, stage_name
from clinfl.transport.contract import SecureAggregationParticipant, TrainingParticipant
from clinfl.typing import StateDict
from coordinator.aggregation import AggregateUpdate, Aggregator, PlainAggregator

T = TypeVar("T")


class SecureAggregator:
    """Runs one secure-aggregation round per call of :meth:`aggregate`.

    ``stage_seconds`` holds how long each stage of the last round took, under the stage's name
    (:func:`~clinfl.secagg.stages.stage_name`, in :class:`~clinfl.secagg.stages.Stage` order).
    """

    def __init__(self, config: SecAggConfig, *, fanout: Fanout = in_turn, run_id: str = "") -> None:
        """Aggregate with ``config`` for run ``run_id``; ``fanout`` asks a stage's sites."""
        self._config = config
        self._fanout = fanout
        self._run_id = run_id
        self.stage_seconds: dict[str, float] = {}

    def aggregate(
        self, participants: Sequence[TrainingParticipant], *, round_id: int, template: StateDict
    ) -> AggregateUpdate:
        """Return the weighted mean update of the sites that survived the round.

        Raises:
            RoundAborted: if fewer than the threshold remain at any stage (nothing is applied).
        """
        refusals: dict[str, str] = {}
        self.stage_seconds = {}
        try:
            return self._run(participants, round_id=round_id, template=template, refusals=refusals)
        except RoundAborted as aborted:
            if not refusals:
                raise
            reasons = "; ".join(f"{site}: {why}" for site, why in sorted(refusals.items()))
            raise RoundAborted(
                f"{aborted.message} (refused: {reasons})", remedy=aborted.remedy
            ) from None

    def _run(
        self,
        participants: Sequence[TrainingParticipant],
        *,
        round_id: int,
        template: StateDict,
        refusals: dict[str, str],
    ) -> AggregateUpdate:
        config = self._config
        by_id = {p.site_id: p for p in participants}
        floor = max(2, config.sum_floor)
        if len(by_id) < floor:
            raise RoundAborted(
                f"round {round_id} abandoned: {len(by_id)} site(s) trained, secure aggregation "
                f"needs at least {floor}; nothing was applied",
                remedy="bring more sites online",
            )
        params = config.plan(
            run_id=self._run_id,
            round_id=round_id,
            site_ids=tuple(by_id),
            vector_length=vector_length(template),
        )
        masked = run_protocol(
            by_id, params, fanout=self._fanout, refusals=refusals, stage_seconds=self.stage_seconds
        )
        total, survivors = masked.total, masked.survivors
        clock = time.perf_counter()
        if int(total[params.vector_length]) == 0:  # every survivor's training failed (R7')
            raise RoundAborted(
                f"round {round_id} abandoned: the sum of {len(survivors)} sites carries no "
                "weight (no site's local training succeeded); nothing was applied",
                remedy="see the sites' audit reports; lower the learning rate",
            )
        decoded = decode_sum(total, params=params)
        mean = unflatten_state(decoded.mean, template=template)
        self.stage_seconds[stage_name(Stage.UNMASK)] += time.perf_counter() - clock
        return AggregateUpdate(
            mean, survivors, decoded.total_weight, refusals, mean_loss=decoded.mean_loss
        )


@dataclass(frozen=True)
class MaskedSum:
    """What one run of the protocol unmasked: the sum modulo ``2**bits`` and who is in it."""

    total: np.ndarray
    survivors: frozenset[str]


def run_protocol(
    by_id: Mapping[str, SecureAggregationParticipant],
    params: RoundParameters,
    *,
    fanout: Fanout = in_turn,
    refusals: dict[str, str] | None = None,
    stage_seconds: dict[str, float] | None = None,
) -> MaskedSum:
    """Run the six stages of one session with ``params`` over ``by_id``; return the unmasked sum.

    The one run of the protocol, for training updates (:class:`SecureAggregator`) and for
    evaluation counts (:class:`~coordinator.federated_evaluation.SecureEvaluator`) alike: every
    site checks every stage, and the coordinator learns only the sum of the survivors. A site
    that does not answer a stage is a dropout; one that refuses is left out and its reason goes
    to ``refusals``. ``stage_seconds`` gets each stage's duration under its name.

    Raises:
        RoundAborted: if fewer than the threshold (or a site's floor) remain at any stage.
    """
    refused = refusals if refusals is not None else {}
    seconds = stage_seconds if stage_seconds is not None else {}
    server = ServerSession(params)

    def ask(site: str, request: Callable[[], T]) -> T | None:
        try:
            return request()
        except SiteUnavailable:
            return None
        except ProtocolViolation as refusal:
            refused[site] = refusal.message
            return None

    clock = time.perf_counter()

    def lap(stage: Stage) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage_name(stage)] = now - clock
        clock = now

    adverts = fanout(
        [partial(ask, s, partial(by_id[s].secagg_advertise, params)) for s in params.site_ids]
    )
    relayed = server.relay_advertisements([a for a in adverts if a is not None])
    lap(Stage.ADVERTISE)
    advertised = [advert.site_id for advert in relayed]
    opened = fanout([partial(ask, s, partial(by_id[s].secagg_graph, relayed)) for s in advertised])
    reveals = server.relay_graph_reveals([r for r in opened if r is not None])
    lap(Stage.GRAPH)
    sent = fanout([partial(ask, s, partial(by_id[s].secagg_share, reveals)) for s in advertised])
    shares = {s: out for s, out in zip(advertised, sent, strict=True) if out is not None}
    inbox = server.route_shares(shares)
    lap(Stage.SHARE)
    arrived: list[MaskedInput | None] = fanout(
        [
            partial(ask, s, partial(by_id[s].secagg_masked_input, inbox[s]))
            for s in sorted(server.sharers)
        ]
    )
    survivors = server.add_masked_inputs(m for m in arrived if m is not None)
    lap(Stage.MASKED_INPUT)
    signatures = fanout(
        [partial(ask, s, partial(by_id[s].secagg_sign, survivors)) for s in sorted(survivors)]
    )
    server.collect_signatures([s for s in signatures if s is not None])
    lap(Stage.CONSISTENCY)
    revealed = fanout(
        [
            partial(ask, s, partial(by_id[s].secagg_reveal, server.unmask_request(s)))
            for s in sorted(server.signers)
        ]
    )
    total = server.unmask([r for r in revealed if r is not None])
    lap(Stage.UNMASK)
    return MaskedSum(total, survivors)


def build_aggregator(
    secagg: SecAggConfig, *, fanout: Fanout = in_turn, run_id: str = ""
) -> Aggregator:
    """Return the secure aggregator for run ``run_id``, or the plain one when it is off."""
    if secagg.enabled:
        return SecureAggregator(secagg, fanout=fanout, run_id=run_id)
    return PlainAggregator()
