"""Secure-aggregation settings: one type per side of the trust boundary, and one round's plan.

* :class:`SecAggRequirements` is what a site's policy allows (the ``[secagg]`` table of its
  policy file is read straight into it: :attr:`clinfl.config.policy.SitePolicy.secagg`).
* :class:`SecAggConfig` is what the coordinator's rounds use (the ``[secagg]`` table of a run
  configuration); :meth:`SecAggConfig.plan` turns it into one round's :class:`RoundParameters`.

:class:`RoundParameters` is the message the coordinator sends for a round (its fields and
:meth:`~RoundParameters.digest` are the wire format). Every site checks it against its own
:class:`SecAggRequirements` before it takes part, and refuses the round with every problem
listed at once. Whether a sum can wrap the modulus is decided in one place,
:func:`sum_headroom`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from clinfl.errors import ProtocolViolation
from clinfl.secagg import transcript
from clinfl.secagg.graph import neighbour_graph, round_degree, sparse_degree
from clinfl.secagg.hazmat.quantize import check_no_overflow, largest_sum

DEFAULT_MIN_SITES = 3  # the fewest sites a sum may cover when no policy and no option says


@dataclass(frozen=True)
class SecAggRequirements:
    """What a site's policy allows (the ``[secagg]`` table of its policy file).

    ``min_sites`` is the fewest sites whose sum the site lets the coordinator learn; the round's
    threshold and its survivor set must both reach it. ``max_weight`` caps the sample count a
    site puts into the sum, so one site cannot dominate. ``max_colluders`` is ``c``: how many
    sites the site assumes may collude with a malicious coordinator (SECAGG.md, "Version 2").
    ``max_retries`` caps how many times the coordinator may retry a round the site has not
    completed (R3'): each retry is a new session with fresh keys, audited and counted.
    ``max_abandoned_rounds`` caps how many of the site's attempts in one run may end before it
    completed them (retries included), so a coordinator cannot probe it without limit.
    """

    required: bool = True
    min_sites: int = DEFAULT_MIN_SITES
    max_weight: int = 10_000
    max_colluders: int = 1
    max_retries: int = 2
    max_abandoned_rounds: int = 10

    def survivor_floor(self, threshold: int) -> int:
        """Return the fewest sites a round with ``threshold`` may go on with (R5)."""
        return max(threshold, self.min_sites + self.max_colluders)

    @property
    def terms(self) -> SecAggTerms:
        """The terms a coordinator must plan each round by (what a site declares when it joins)."""
        return SecAggTerms(self.min_sites, self.max_colluders, self.max_weight)


@dataclass(frozen=True)
class SecAggTerms:
    """The part of a site's :class:`SecAggRequirements` a coordinator plans each round by.

    A deployed site declares them in its join reply (policy terms, never data), so the
    coordinator can propose rounds the site accepts; the site still checks every round against
    its own requirements, whatever it declared. The bounds are the policy file's own.

    Raises:
        ValueError: if ``min_sites`` < 2, ``max_colluders`` < 0 or ``max_weight`` < 1 (on the
            wire: a malformed join reply).
    """

    min_sites: int
    max_colluders: int
    max_weight: int

    def __post_init__(self) -> None:
        if self.min_sites < 2 or self.max_colluders < 0 or self.max_weight < 1:
            raise ValueError(f"secure-aggregation terms out of bounds: {self}")


@dataclass(frozen=True)
class SecAggConfig:
    """What the coordinator's rounds use (the ``[secagg]`` table of a run configuration).

    Every site checks each round planned from it against its own policy
    (:class:`SecAggRequirements`). ``min_sites`` is what the coordinator asks of every site
    (None: the sites' own policies decide, :data:`DEFAULT_MIN_SITES` without policies).
    ``degree`` and ``threshold`` of None derive from the number of sites (SecAgg+ graph of
    degree about 2 log2 n, complete for small n; threshold a strict majority of each
    neighbourhood and at least ``min_sites``). A degree of at least n - 1 is full SecAgg (the
    complete graph); up to 64 sites the graph is always complete. ``max_colluders`` is the
    number of sites the coordinator plans for colluding (sites check with their own policy's
    ``secagg.max_colluders``): the threshold is then ``t > (h + c) / 2`` and a sum needs at
    least ``min_sites + max_colluders`` survivors.
    """

    enabled: bool = True
    min_sites: int | None = None
    bits: int = 32
    clip: float = 0.5
    weight_cap: int = 10_000
    degree: int | None = None
    threshold: int | None = None
    max_colluders: int = 1

    @property
    def sum_floor(self) -> int:
        """The fewest sites a sum may cover: ``min_sites``, or :data:`DEFAULT_MIN_SITES`."""
        return self.min_sites or DEFAULT_MIN_SITES

    def plan(
        self,
        *,
        round_id: int,
        site_ids: tuple[str, ...],
        vector_length: int,
        run_id: str = "",
        session: str | None = None,
        purpose: Purpose = "update",
    ) -> RoundParameters:
        """Return the parameters of round ``round_id`` over ``site_ids`` (see :func:`plan_round`).

        Raises:
            ValueError: if the numbers cannot work (too few bits for the sum).
        """
        return plan_round(
            run_id=run_id,
            round_id=round_id,
            session=session,
            site_ids=site_ids,
            vector_length=vector_length,
            min_sites=self.sum_floor,
            max_colluders=self.max_colluders,
            bits=self.bits,
            clip=self.clip,
            weight_cap=self.weight_cap,
            degree=self.degree,
            threshold=self.threshold,
            purpose=purpose,
        )


Purpose: TypeAlias = Literal["update", "evaluation"]
"""What a session sums: model updates (training) or evaluation counts (score histograms)."""
PURPOSES: tuple[Purpose, ...] = ("update", "evaluation")
EVALUATION_METADATA_SLOTS = 1  # after the counts: the contributor slot (1 per site)
SESSION_NONCE_HEX = 32  # a session nonce: 16 random bytes, as lower-case hex
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
    sites never accept less than the SecAgg+ degree. ``session`` is the coordinator's fresh
    nonce for this attempt at the round (:data:`SESSION_NONCE_HEX` hex digits): it is bound into
    every advertisement, and a site never takes part in a session it has seen before, so a retry
    of a round can never reuse an earlier attempt's advertisements or signatures (R1', R3').
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
    session: str = ""
    purpose: Purpose = "update"

    @property
    def masked_length(self) -> int:
        """Length of the masked vector: the update (or counts) plus the metadata slots."""
        if self.purpose == "evaluation":
            return self.vector_length + EVALUATION_METADATA_SLOTS
        return self.vector_length + METADATA_SLOTS

    def neighbours(self, advertised: Iterable[str], *, seed: bytes) -> dict[str, frozenset[str]]:
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
            self.session.encode(),
            self.purpose.encode(),
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


def sum_headroom(*, sites: int, weight_cap: int, clip: float, bits: int) -> float:
    """Return how many times the largest possible sum fits below ``2**bits`` at a scale of 1.

    ``sites`` updates clipped to ``[-clip, clip]``, each weighted by at most ``weight_cap``, span
    at most ``sites * weight_cap * 2 * clip``; a value below 1 means the sum can wrap whatever
    the scale. This is the one overflow formula: the run configuration's check and the
    coordinator's choice of scale (:func:`largest_safe_scale`) both use it.
    """
    return ((1 << bits) - 1) / (sites * weight_cap * 2 * clip)  # (2**bits - 1) / (n w 2c)


def largest_safe_scale(*, sites: int, weight_cap: int, clip: float, bits: int) -> float:
    """Return the largest power-of-two scale whose sum over ``sites`` cannot wrap.

    Raises:
        ValueError: if even a scale of 1 would overflow (use more bits).
    """
    room = sum_headroom(sites=sites, weight_cap=weight_cap, clip=clip, bits=bits)
    if room < 1:
        raise ValueError(
            f"{bits} bits cannot hold the sum of {sites} sites with weight cap {weight_cap} "
            f"and clip {clip}: use more bits"
        )
    exponent = math.floor(math.log2(room))
    while largest_sum(clip=clip, scale=2.0**exponent, sites=sites * weight_cap) >= 2**bits:
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
    session: str | None = None,
    min_sites: int = DEFAULT_MIN_SITES,
    max_colluders: int = SecAggConfig.max_colluders,
    bits: int = SecAggConfig.bits,
    clip: float = SecAggConfig.clip,
    weight_cap: int = SecAggConfig.weight_cap,
    degree: int | None = None,
    threshold: int | None = None,
    purpose: Purpose = "update",
) -> RoundParameters:
    """Return the coordinator's proposal for a round, with defaults derived from n.

    ``session`` is the attempt's nonce; None draws a fresh one from the OS's cryptographic
    source (every call is a new attempt).

    The settings are :class:`SecAggConfig`'s (its defaults are these defaults);
    :meth:`SecAggConfig.plan` calls this with a run's settings.

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
        session=secrets.token_hex(SESSION_NONCE_HEX // 2) if session is None else session,
        purpose=purpose,
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
            the site's policy or above the number of sites, the session nonce is malformed,
            the weight cap exceeds the policy,
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
    if len(params.session) != SESSION_NONCE_HEX or not all(
        char in "0123456789abcdef" for char in params.session
    ):
        problems.append(
            f"the session nonce must be {SESSION_NONCE_HEX} lower-case hex digits (a fresh one "
            "for every attempt at a round)"
        )
    if params.purpose not in PURPOSES:
        problems.append(f"unknown session purpose {str(params.purpose)[:20]!r}")
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
