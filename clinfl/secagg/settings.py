"""The parameters of one secure-aggregation round, and the checks a site runs on them.

The coordinator proposes :class:`RoundParameters`; every site checks them against its own
:class:`SecAggRequirements` (from its policy) before it takes part, and refuses the round with
every problem listed at once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from clinfl.errors import ProtocolViolation
from clinfl.secagg.graph import neighbour_graph
from clinfl.secagg.hazmat.quantize import check_no_overflow


@dataclass(frozen=True)
class SecAggRequirements:
    """What a site insists on (the ``secagg`` table of its policy).

    ``min_sites`` is the fewest sites whose sum the site lets the coordinator learn; the round's
    threshold and its survivor set must both reach it. ``max_weight`` caps the sample count a
    site puts into the sum, so one site cannot dominate.
    """

    required: bool = True
    min_sites: int = 3
    max_weight: int = 10_000


@dataclass(frozen=True)
class RoundParameters:
    """One round's public protocol parameters, sent by the coordinator to every site.

    The masked vector has ``vector_length`` update values followed by one weight slot. Values are
    clipped to ``[-clip, clip]`` and quantised with ``scale``; weights are capped at
    ``weight_cap``; all arithmetic is modulo ``2**bits``.
    """

    round_id: int
    site_ids: tuple[str, ...]
    threshold: int
    degree: int
    bits: int
    clip: float
    scale: float
    weight_cap: int
    vector_length: int

    @property
    def graph_seed(self) -> bytes:
        """The public seed of this round's neighbour graph (same at every site)."""
        return hashlib.sha256(b"clinfl/secagg/graph/v1|" + str(self.round_id).encode()).digest()

    def neighbours(self) -> dict[str, frozenset[str]]:
        """Return the round's neighbour graph over ``site_ids``."""
        return neighbour_graph(self.site_ids, degree=self.degree, round_seed=self.graph_seed)

    def share_point(self, site_id: str) -> int:
        """Return the Shamir evaluation point of ``site_id`` (its 1-based position)."""
        return self.site_ids.index(site_id) + 1


def default_degree(sites: int) -> int:
    """Return the SecAgg+ graph degree: about ``2 log2 n`` (even), or complete for small n."""
    degree = 2 * math.ceil(math.log2(max(sites, 2)))
    return sites - 1 if degree >= sites - 1 else degree


def default_threshold(sites: int, degree: int, *, min_sites: int) -> int:
    """Return the Shamir threshold: a strict neighbourhood majority, at least ``min_sites``."""
    holders = min(degree, sites - 1) + 1
    return max(holders // 2 + 1, min_sites)


def largest_safe_scale(*, sites: int, weight_cap: int, clip: float, bits: int) -> float:
    """Return the largest power-of-two scale whose sum over ``sites`` cannot wrap.

    Raises:
        ValueError: if even a scale of 1 would overflow (use more bits).
    """
    room = (2**bits - 1) / (sites * weight_cap * 2 * clip)
    if room < 1:
        raise ValueError(
            f"{bits} bits cannot hold the sum of {sites} sites with weight cap {weight_cap} "
            f"and clip {clip}: use more bits"
        )
    exponent = math.floor(math.log2(room))
    while sites * weight_cap * math.ceil(2 * clip * 2.0**exponent) >= 2**bits:
        exponent -= 1  # float rounding of ``room`` near 2**bits
    return 2.0**exponent


def plan_round(
    *,
    round_id: int,
    site_ids: tuple[str, ...],
    vector_length: int,
    min_sites: int = 3,
    bits: int = 32,
    clip: float = 0.5,
    weight_cap: int = 10_000,
    degree: int | None = None,
    threshold: int | None = None,
) -> RoundParameters:
    """Return the coordinator's proposal for a round, with defaults derived from n.

    Raises:
        ValueError: if the numbers cannot work (too few bits for the sum).
    """
    ordered = tuple(sorted(site_ids))
    n = len(ordered)
    chosen_degree = default_degree(n) if degree is None else min(degree, n - 1)
    chosen_threshold = (
        default_threshold(n, chosen_degree, min_sites=min_sites) if threshold is None else threshold
    )
    scale = largest_safe_scale(sites=n, weight_cap=weight_cap, clip=clip, bits=bits)
    return RoundParameters(
        round_id=round_id,
        site_ids=ordered,
        threshold=chosen_threshold,
        degree=chosen_degree,
        bits=bits,
        clip=clip,
        scale=scale,
        weight_cap=weight_cap,
        vector_length=vector_length,
    )


def check_round_parameters(
    params: RoundParameters,
    *,
    own_id: str,
    requirements: SecAggRequirements,
    last_round_id: int | None,
) -> None:
    """Check a proposed round as a site must, listing every problem at once.

    Raises:
        ProtocolViolation: if the site is not listed, the round id is not fresh (replay), the
            threshold is below the site's policy or not a majority of its neighbourhood, the
            weight cap exceeds the policy, the graph is malformed, or the sum could overflow.
    """
    problems: list[str] = []
    n = len(params.site_ids)
    if own_id not in params.site_ids:
        problems.append(f"{own_id} is not among the round's sites")
    if len(set(params.site_ids)) != n:
        problems.append("the site list repeats a site")
    if last_round_id is not None and params.round_id <= last_round_id:
        problems.append(
            f"round id {params.round_id} is not after the last round {last_round_id} (replay?)"
        )
    if params.threshold < requirements.min_sites:
        problems.append(
            f"threshold {params.threshold} is below this site's policy minimum "
            f"{requirements.min_sites}"
        )
    if params.weight_cap > requirements.max_weight:
        problems.append(
            f"weight cap {params.weight_cap} exceeds this site's policy cap "
            f"{requirements.max_weight}"
        )
    if params.vector_length < 1:
        problems.append(f"vector length {params.vector_length} must be >= 1")
    try:
        graph = params.neighbours()
    except ValueError as error:
        problems.append(f"neighbour graph: {error}")
    else:
        if own_id in graph:
            holders = len(graph[own_id]) + 1
            if not holders // 2 < params.threshold <= holders:
                problems.append(
                    f"threshold {params.threshold} must be a strict majority of the "
                    f"{holders} share holders (at most {holders})"
                )
    try:
        check_no_overflow(
            clip=params.clip, scale=params.scale, bits=params.bits, sites=n * params.weight_cap
        )
    except ValueError as error:
        problems.append(str(error))
    if problems:
        raise ProtocolViolation(
            f"round {params.round_id} refused: " + "; ".join(problems),
            remedy="the coordinator must propose parameters that meet every site's policy",
        )
