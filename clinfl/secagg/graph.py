"""The neighbour graph: complete for SecAgg, a k-regular Harary graph for SecAgg+.

The coordinator has no say over who neighbours whom (SECAGG.md, "Version 2", R3). Up to
:data:`COMPLETE_GRAPH_LIMIT` sites the graph is complete. Above it, sites are ordered by
SHA-256(seed || site id), placed on a ring, and each is linked to ``degree // 2`` sites on each
side (Bell et al., CCS 2020). The seed is the hash of every advertised site's revealed random
contribution (:func:`graph_seed`); each site committed to its contribution in its signed
advertisement before it saw anyone else's, so neither the coordinator nor a colluding site can
grind the graph, and a missing reveal aborts the round instead of changing the seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

from clinfl.secagg.transcript import digest

COMPLETE_GRAPH_LIMIT = 64


def graph_seed(reveals: Mapping[str, bytes]) -> bytes:
    """Return the round's graph seed from every advertised site's revealed nonce."""
    parts: list[bytes] = []
    for site in sorted(reveals):
        parts += [site.encode(), reveals[site]]
    return digest(b"clinfl/secagg/graph-seed/v2", *parts)


def sparse_degree(sites: int) -> int:
    """Return the SecAgg+ degree for ``sites`` sites: about ``2 log2 n``, even."""
    return 2 * math.ceil(math.log2(max(sites, 2)))


def round_degree(sites: int, *, proposed: int) -> int:
    """Return the degree a site uses: complete up to the limit, else at least the SecAgg+ one."""
    if sites <= COMPLETE_GRAPH_LIMIT:
        return sites - 1
    return min(max(proposed + proposed % 2, sparse_degree(sites)), sites - 1)


def neighbour_graph(
    site_ids: Sequence[str], *, degree: int, round_seed: bytes
) -> dict[str, frozenset[str]]:
    """Return each site's neighbours (never itself), the same at every site for one round seed.

    Raises:
        ValueError: for repeated site ids, fewer than two sites, or an odd degree below n - 1.
    """
    if len(set(site_ids)) != len(site_ids):
        raise ValueError("site ids repeat")
    n = len(site_ids)
    if n < 2:
        raise ValueError("a neighbour graph needs at least two sites")
    if degree >= n - 1:
        return {site: frozenset(set(site_ids) - {site}) for site in site_ids}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree must be even and >= 2 (or >= n - 1), got {degree}")
    ring = sorted(site_ids, key=lambda s: hashlib.sha256(round_seed + s.encode()).digest())
    half = degree // 2
    graph: dict[str, frozenset[str]] = {}
    for position, site in enumerate(ring):
        offsets = [d for d in range(-half, half + 1) if d != 0]
        graph[site] = frozenset(ring[(position + d) % n] for d in offsets)
    return graph
