"""The parameters of one secure-aggregation round, and the checks a site runs on them.

The coordinator proposes :class:`RoundParameters`; every site checks them against its own
:class:`SecAggRequirements` (from its policy) before it takes part, and refuses the round with
every problem listed at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from clinfl.errors import ProtocolViolation
from clinfl.secagg import transcript
from clinfl.secagg.graph import neighbour_graph, round_degree, sparse_degree
from clinfl.secagg.hazmat.quantize import check_no_overflow


@dataclass(frozen=True)
class SecAggRequirements:
    """What a site insists on (the ``secagg`` table of its policy).

    ``min_sites`` is the fewest sites whose sum the site lets the coordinator learn; the round's
    threshold and its survivor set must both reach it. ``max_weight`` caps the sample count a
    site puts into the sum, so one site cannot dominate. ``max_colluders`` is ``c``: how many
    sites the site assumes may collude with a malicious coordinator (SECAGG.md, "Version 2").
    """

    required: bool = True
    min_sites: int = 3
    max_weight: int = 10_000
    max_colluders: int = 1

    def survivor_floor(self, threshold: int) -> int:
        """Return the fewest sites a round with ``threshold`` may go on with (R5)."""
        return max(threshold, self.min_sites + self.max_colluders)


METADATA_SLOTS = 3  # after the update: sample weight, loss-reporting flag, quantised loss
LOSS_CLIP = 64.0  # a site's reported mean loss is clipped to [0, LOSS_CLIP] before quantising


@dataclass(frozen=True)
class RoundParameters:
    """One round's public protocol parameters, sent by the coordinator to every site.

    The masked vector has ``vector_length`` update values followed by :data:`METADATA_SLOTS`
    slots: the sample weight, a flag saying the site reports its loss, and its quantised mean
    loss, so the coordinator learns sample counts and losses only as federation-wide sums.
    Values are clipped to ``[-clip, clip]`` and quantised with ``scale``; weights are capped at
    ``weight_cap``; losses are clipped to ``[0, LOSS_CLIP]`` and quantised with ``loss_scale``;
    all arithmetic is modulo ``2**bits``. ``degree`` is only a proposal: up to
    :data:`~clinfl.secagg.graph.COMPLETE_GRAPH_LIMIT` sites the graph is complete, and above it
    sites never accept less than the SecAgg+ degree.
    """

    run_id: str
    round_id: int
    site_ids: tuple[str, ...]
    threshold: int
    degree: int
    bits: int
    clip: float
    scale: float
    weight_cap: int
    vector_length: int
    loss_scale: float = 1.0

    @property
    def masked_length(self) -> int:
        """Length of the masked vector: the update plus the metadata slots."""
        return self.vector_length + METADATA_SLOTS

    def neighbours(
        self, advertised: Iterable[str], *, seed: bytes
    ) -> dict[str, frozenset[str]]:
        """Return the round's neighbour graph over the ``advertised`` sites for graph ``seed``."""
        members = tuple(sorted(advertised))
        degree = round_degree(len(members), proposed=self.degree)
        return neighbour_graph(members, degree=degree, round_seed=seed)

    def bound_to(self, settings_hash: bytes) -> bytes:
        """Return the hash of these parameters with the round's training settings (R1)."""
        return transcript.digest(b"clinfl/round/v2", self.digest(), settings_hash)

    def share_point(self, site_id: str) -> int:
        """Return the Shamir evaluation point of ``site_id`` (its 1-based position)."""
        return self.site_ids.index(site_id) + 1

    def digest(self) -> bytes:
        """Return the hash of every parameter (bound into each advertisement)."""
        return transcript.digest(
            b"clinfl/secagg/round-parameters/v2",
            self.run_id.encode(),
            str(self.round_id).encode(),
            *(site.encode() for site in self.site_ids),
            b"|",
            str(self.threshold).encode(),
            str(self.degree).encode(),
            str(self.bits).encode(),
            transcript.canonical_number(self.clip),
            transcript.canonical_number(self.scale),
            str(self.weight_cap).encode(),
            str(self.vector_length).encode(),
            transcript.canonical_number(self.loss_scale),
        )


def default_degree(sites: int) -> int:
    """Return the graph degree: complete up to the limit, else about ``2 log2 n`` (even)."""
    return round_degree(sites, proposed=sparse_degree(sites))


def split_proof_threshold(holders: int, *, max_colluders: int) -> int:
    """Return the smallest threshold ``t > (h + c) / 2`` for ``h`` holders and ``c`` colluders."""
    return (holders + max_colluders) // 2 + 1


def default_threshold(sites: int, degree: int, *, min_sites: int, max_colluders: int = 1) -> int:
    """Return the Shamir threshold: split-proof for ``c`` colluders, at least ``min_sites``."""
    holders = min(degree, sites - 1) + 1
    return max(split_proof_threshold(holders, max_colluders=max_colluders), min_sites)


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


def largest_loss_scale(*, sites: int, bits: int) -> float:
    """Return the largest power-of-two loss scale whose sum of clipped losses cannot wrap.

    Raises:
        ValueError: if even a scale of 1 would overflow (use more bits).
    """
    return largest_safe_scale(sites=sites, weight_cap=1, clip=LOSS_CLIP / 2, bits=bits)


def plan_round(
    *,
    round_id: int,
    site_ids: tuple[str, ...],
    vector_length: int,
    run_id: str = "",
    min_sites: int = 3,
    max_colluders: int = 1,
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
    chosen_degree = round_degree(n, proposed=sparse_degree(n) if degree is None else degree)
    chosen_threshold = (
        default_threshold(n, chosen_degree, min_sites=min_sites, max_colluders=max_colluders)
        if threshold is None
        else threshold
    )
    scale = largest_safe_scale(sites=n, weight_cap=weight_cap, clip=clip, bits=bits)
    return RoundParameters(
        run_id=run_id,
        round_id=round_id,
        site_ids=ordered,
        threshold=chosen_threshold,
        degree=chosen_degree,
        bits=bits,
        clip=clip,
        scale=scale,
        weight_cap=weight_cap,
        vector_length=vector_length,
        loss_scale=largest_loss_scale(sites=n, bits=bits),
    )


def check_round_parameters(
    params: RoundParameters,
    *,
    own_id: str,
    requirements: SecAggRequirements,
) -> None:
    """Check a proposed round as a site must, listing every problem at once.

    The round id and run id are checked against the site's own records by the caller (they
    are part of the round's binding); the threshold against the holders of this site's shares
    once the advertised sites are known (:func:`check_holders`).

    Raises:
        ProtocolViolation: if the site is not listed, a site repeats, the threshold is below
            the site's policy or above the number of sites, the weight cap exceeds the policy,
            a number is not finite and positive, or the sum could overflow.
    """
    problems: list[str] = []
    n = len(params.site_ids)
    if own_id not in params.site_ids:
        problems.append(f"{own_id} is not among the round's sites")
    if len(set(params.site_ids)) != n:
        problems.append("the site list repeats a site")
    if params.threshold < requirements.min_sites:
        problems.append(
            f"threshold {params.threshold} is below this site's policy minimum "
            f"{requirements.min_sites}"
        )
    if not 1 <= params.threshold <= n:
        problems.append(f"threshold {params.threshold} must lie between 1 and {n} sites")
    if params.weight_cap > requirements.max_weight or params.weight_cap < 1:
        problems.append(
            f"weight cap {params.weight_cap} must lie between 1 and this site's policy cap "
            f"{requirements.max_weight}"
        )
    if params.vector_length < 1:
        problems.append(f"vector length {params.vector_length} must be >= 1")
    if not 8 <= params.bits <= 64:
        problems.append(f"{params.bits} bits: the modulus must have 8 to 64 bits")
    numbers = {"clip": params.clip, "scale": params.scale, "loss scale": params.loss_scale}
    bad = [name for name, value in numbers.items() if not (math.isfinite(value) and value > 0)]
    if bad:
        problems.append(f"{', '.join(bad)} must be finite and positive")
    elif 8 <= params.bits <= 64 and n >= 1:
        for clip, scale, weight in (
            (params.clip, params.scale, params.weight_cap),
            (LOSS_CLIP / 2, params.loss_scale, 1),
        ):
            try:
                check_no_overflow(clip=clip, scale=scale, bits=params.bits, sites=n * weight)
            except ValueError as error:
                problems.append(str(error))
    if problems:
        raise ProtocolViolation(
            f"round {params.round_id} refused: " + "; ".join(problems),
            remedy="the coordinator must propose parameters that meet every site's policy",
        )


def check_holders(
    params: RoundParameters, *, holders: int, requirements: SecAggRequirements
) -> None:
    """Check the threshold against the ``holders`` of this site's shares (R5).

    The threshold must satisfy ``t > (h + c) / 2`` for ``c`` = the policy's ``max_colluders``,
    so two survivor sets that disagree about a site cannot both gather ``t`` honest answers,
    and ``t <= h`` so the site's secrets can be recovered at all.

    Raises:
        ProtocolViolation: if the threshold is not split-proof or exceeds the holders.
    """
    needed = split_proof_threshold(holders, max_colluders=requirements.max_colluders)
    if not needed <= params.threshold <= holders:
        raise ProtocolViolation(
            f"round {params.round_id} refused: threshold {params.threshold} must be at least "
            f"{needed} (more than half of {holders} share holders plus "
            f"{requirements.max_colluders} possible colluder(s)) and at most {holders}",
            remedy="the coordinator must propose a split-proof threshold, or more sites must join",
        )
