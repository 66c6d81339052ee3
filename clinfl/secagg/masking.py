"""Applying and removing masks on quantised vectors, modulo ``2**bits``.

A site ``u`` sends ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)``; the
pairwise terms cancel in the sum over sites whose neighbours all survived. For a neighbour pair
(survivor u, dropped v) the coordinator, having reconstructed ``s_uv``, removes u's uncancelled
pairwise term; for each survivor it removes ``PRG(b_u)``. Each stream is folded into the vector
chunk by chunk (:func:`~clinfl.secagg.hazmat.prg.add_mask_stream`), in the working dtype, which
wraps modulo its width.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from clinfl.secagg.hazmat.prg import add_mask_stream, reduce_residues, residue_dtype


def pairwise_sign(own: str, peer: str) -> int:
    """Return +1 when ``own`` adds the pair's mask (peer sorts after it), else -1."""
    return 1 if peer > own else -1


def mask_vector(
    values: np.ndarray,
    *,
    own_id: str,
    self_seed: bytes,
    pairwise_seeds: Mapping[str, bytes],
    bits: int,
) -> np.ndarray:
    """Return ``values`` (residues) masked with the self mask and every pairwise mask."""
    masked = values.astype(residue_dtype(bits), copy=True)
    add_mask_stream(masked, self_seed, bits=bits)
    for peer, seed in pairwise_seeds.items():
        add_mask_stream(masked, seed, bits=bits, subtract=pairwise_sign(own_id, peer) < 0)
    return reduce_residues(masked, bits)


def unmask_sum(
    masked_total: np.ndarray,
    *,
    self_seeds: Iterable[bytes],
    orphaned_pairs: Iterable[tuple[str, str, bytes]],
    bits: int,
) -> np.ndarray:
    """Remove survivors' self masks and the pairwise masks left by dropped neighbours.

    ``orphaned_pairs`` holds ``(survivor, dropped, s_uv)`` for every neighbour pair whose other
    end dropped after being masked against.
    """
    total = masked_total.astype(residue_dtype(bits), copy=True)
    for seed in self_seeds:
        add_mask_stream(total, seed, bits=bits, subtract=True)
    for survivor, dropped, seed in orphaned_pairs:
        add_mask_stream(total, seed, bits=bits, subtract=pairwise_sign(survivor, dropped) > 0)
    return reduce_residues(total, bits)
